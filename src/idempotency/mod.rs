//! Idempotency keys: a write carrying a key applies at most once per (user, key), also when the
//! retry arrives through another region's sidecar or after a sidecar crashed mid-request.
//!
//! The authority is a record in the home primary (`homeport.idempotency_keys`, see [`store`]),
//! written by the same transaction as the write, so a write and its record commit or vanish
//! together. A request first claims the key inside its transaction: the claim takes a
//! transaction-scoped advisory lock on the key (a second request meanwhile is "in flight", 409)
//! and refuses a key that already has a record (replay, or 422 for a different request). A crash
//! before COMMIT rolls back both the write and the record, and a crash after it leaves both.
//!
//! The regional Redis ([`cache`]) is only a shortcut in front of that, used when the home primary
//! is in another region: completed responses, so a replay in the same region needs no trip to
//! the home primary, and a short in-flight lock. It
//! is written only after PostgreSQL committed, and nothing it says can make a write apply twice.

pub mod cache;
pub mod store;

use sha2::{Digest, Sha256};

/// Longest key accepted (the IETF draft leaves it to the server; Stripe uses 255).
pub const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// 1 to 255 printable ASCII characters (the draft's key is a structured-field string).
    pub fn parse(text: &str) -> Result<Key, String> {
        if text.is_empty() {
            return Err("the idempotency key is empty".into());
        }
        if text.len() > MAX_KEY_LEN {
            return Err(format!(
                "the idempotency key is {} characters long; at most {MAX_KEY_LEN} are allowed",
                text.len()
            ));
        }
        if !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err("the idempotency key must be printable ASCII".into());
        }
        Ok(Key(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What identifies "the same request": SHA-256 over the method, the path and the body bytes,
/// each length-prefixed so no two different requests share an encoding.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes(), body] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().to_vec()
}

/// Lowercase hex of a fingerprint (Redis entries, the wire claim's bytea literal).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of a wire-protocol transaction: there is no request body to compare, so the
/// key alone decides (and an HTTP request reusing a wire key is a mismatch).
pub fn wire_fingerprint() -> Vec<u8> {
    fingerprint("PG", "transaction", b"")
}

/// How a claim on the home primary ended, from the SQLSTATE the claim function raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A request with the same key holds its lock right now.
    InFlight,
    /// The key has a record with this fingerprint: the write was applied before.
    Completed,
    /// The key has a record with another fingerprint.
    Mismatch,
}

impl Refusal {
    /// The documented SQLSTATEs of the claim function.
    pub const IN_FLIGHT: &'static str = "HP409";
    pub const COMPLETED: &'static str = "HP200";
    pub const MISMATCH: &'static str = "HP422";

    pub fn from_sqlstate(code: &str) -> Option<Refusal> {
        match code {
            Self::IN_FLIGHT => Some(Refusal::InFlight),
            Self::COMPLETED => Some(Refusal::Completed),
            Self::MISMATCH => Some(Refusal::Mismatch),
            _ => None,
        }
    }

    pub fn sqlstate(self) -> &'static str {
        match self {
            Refusal::InFlight => Self::IN_FLIGHT,
            Refusal::Completed => Self::COMPLETED,
            Refusal::Mismatch => Self::MISMATCH,
        }
    }

    /// The `result` label of `homeport_idempotency_total`.
    pub fn metric(self) -> &'static str {
        match self {
            Refusal::InFlight => "conflict",
            Refusal::Completed => "replayed",
            Refusal::Mismatch => "mismatch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_up_to_255() {
        assert!(Key::parse("order-42/retry").is_ok());
        assert!(Key::parse(&"k".repeat(255)).is_ok());
        assert!(Key::parse(&"k".repeat(256)).is_err());
        assert!(Key::parse("").is_err());
        assert!(Key::parse("tab\there").is_err());
        assert!(Key::parse("ключ").is_err());
    }

    #[test]
    fn fingerprints_separate_method_path_and_body() {
        let a = fingerprint("POST", "/v1/query", b"{}");
        assert_eq!(a, fingerprint("POST", "/v1/query", b"{}"));
        assert_ne!(a, fingerprint("POST", "/v1/query", b"{ }"));
        assert_ne!(a, fingerprint("POST", "/v1/transaction", b"{}"));
        // Moving bytes between parts changes the fingerprint.
        assert_ne!(
            fingerprint("POST", "/a", b"b"),
            fingerprint("POST", "/ab", b"")
        );
        assert_ne!(a, wire_fingerprint());
    }

    #[test]
    fn refusals_round_trip_their_sqlstates() {
        for r in [Refusal::InFlight, Refusal::Completed, Refusal::Mismatch] {
            assert_eq!(Refusal::from_sqlstate(r.sqlstate()), Some(r));
        }
        assert_eq!(Refusal::from_sqlstate("23505"), None);
    }
}

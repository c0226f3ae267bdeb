//! SCRAM-SHA-256 client authentication on the wire endpoint, the server side of RFC 5802/7677 as
//! PostgreSQL speaks it (no channel binding). Keys are derived once per configured user when the
//! config loads; each login costs two HMACs and a hash.
//! See <https://www.postgresql.org/docs/15/sasl-authentication.html>.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const ITERATIONS: u32 = 4096;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with a 32-byte output (one block).
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// What the server keeps for a user: never the password itself.
#[derive(Clone)]
pub struct Verifier {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(redacted)")
    }
}

impl Verifier {
    pub fn new(password: &str, salt: Vec<u8>, iterations: u32) -> Verifier {
        let salted = salted_password(password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Verifier {
            salt,
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

/// One SCRAM exchange in progress.
pub struct Exchange {
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message")]
    Malformed,
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("password authentication failed")]
    BadProof,
}

/// Handles the client-first message; returns the exchange and the server-first message.
pub fn server_first(
    verifier: &Verifier,
    client_first: &str,
    server_nonce: &str,
) -> Result<(Exchange, String), ScramError> {
    let bare = match client_first
        .strip_prefix("n,,")
        .or_else(|| client_first.strip_prefix("y,,"))
    {
        Some(b) => b,
        None if client_first.starts_with("p=") => return Err(ScramError::ChannelBinding),
        None => return Err(ScramError::Malformed),
    };
    let client_nonce = bare
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed)?;
    if client_nonce.is_empty()
        || !client_nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(ScramError::Malformed);
    }
    let nonce = format!("{client_nonce}{server_nonce}");
    let server_first = format!(
        "r={nonce},s={},i={}",
        B64.encode(&verifier.salt),
        verifier.iterations
    );
    Ok((
        Exchange {
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        },
        server_first,
    ))
}

/// Verifies the client-final message; returns the server-final message.
pub fn server_final(
    verifier: &Verifier,
    ex: &Exchange,
    client_final: &str,
) -> Result<String, ScramError> {
    let (without_proof, proof) = client_final
        .rsplit_once(",p=")
        .ok_or(ScramError::Malformed)?;
    let nonce = without_proof
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed)?;
    if nonce != ex.nonce {
        return Err(ScramError::BadProof);
    }
    let channel = without_proof
        .split(',')
        .find_map(|a| a.strip_prefix("c="))
        .ok_or(ScramError::Malformed)?;
    if channel != "biws" && channel != "eSws" {
        return Err(ScramError::ChannelBinding);
    }
    let proof = B64.decode(proof).map_err(|_| ScramError::Malformed)?;
    if proof.len() != 32 {
        return Err(ScramError::Malformed);
    }
    let auth_message = format!(
        "{},{},{}",
        ex.client_first_bare, ex.server_first, without_proof
    );
    let signature = hmac(&verifier.stored_key, auth_message.as_bytes());
    let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
    let computed: [u8; 32] = Sha256::digest(&client_key).into();
    // Constant-time comparison: the difference accumulates over every byte.
    let diff = computed
        .iter()
        .zip(verifier.stored_key)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(ScramError::BadProof);
    }
    Ok(format!(
        "v={}",
        B64.encode(hmac(&verifier.server_key, auth_message.as_bytes()))
    ))
}

/// Random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// The client side from postgres-protocol (what tokio-postgres uses) against this server side.
    fn login(server_password: &str, client_password: &str) -> Result<(), ScramError> {
        let verifier = Verifier::new(server_password, b"0123456789abcdef".to_vec(), ITERATIONS);
        let mut client =
            ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let first = std::str::from_utf8(client.message()).unwrap().to_string();
        let (ex, server_first) = server_first(&verifier, &first, "servernonce123")?;
        client
            .update(server_first.as_bytes())
            .map_err(|_| ScramError::Malformed)?;
        let client_final = std::str::from_utf8(client.message()).unwrap().to_string();
        let server_final = server_final(&verifier, &ex, &client_final)?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| ScramError::Malformed)
    }

    #[test]
    fn right_password_logs_in_and_server_is_verified() {
        assert_eq!(login("s3cret", "s3cret"), Ok(()));
    }

    #[test]
    fn wrong_password_is_refused() {
        assert_eq!(login("s3cret", "guess"), Err(ScramError::BadProof));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let v = Verifier::new("pw", vec![1; 16], 4096);
        assert!(server_first(&v, "garbage", "n").is_err());
        assert_eq!(
            server_first(&v, "p=tls-server-end-point,,n=,r=abc", "n").err(),
            Some(ScramError::ChannelBinding)
        );
        let (ex, _) = server_first(&v, "n,,n=,r=abc", "xyz").unwrap();
        assert!(server_final(&v, &ex, "c=biws,r=abcxyz").is_err());
        assert_eq!(
            server_final(&v, &ex, "c=biws,r=other,p=AAAA").err(),
            Some(ScramError::BadProof)
        );
        assert!(server_final(&v, &ex, "c=biws,r=abcxyz,p=!!!").is_err());
    }
}

//! The consistency token: what a client carries from a write to later reads so that homeport can
//! serve those reads from a copy that has the write (read-your-writes).
//!
//! Wire form: `v1.<payload>.<mac>`, both parts unpadded base64url, so a token fits in an HTTP
//! header, a URL or a `SET` value without quoting. The payload holds the issue time and, per
//! shard written, the server's system identifier, timeline and the commit WAL position; the MAC is
//! HMAC-SHA256 over the version and payload with the current key. Verification also accepts the
//! previous key, so keys rotate without breaking tokens in flight.
//!
//! Merging keeps, per shard, the later position: the maximum of (timeline, position, system) in a
//! total order, which makes merge commutative, associative and idempotent.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::types::{Lsn, ShardId};

const VERSION: &str = "v1";
/// Longest token accepted, so a hostile header never costs more than this to look at.
/// Room for `MAX_SHARDS` shards with the longest region names (84 bytes each, base64).
pub const MAX_TOKEN_LEN: usize = 8192;
/// Shards a token tracks at most; `record` and `merge` never go past it, so every token homeport
/// encodes decodes again.
pub const MAX_SHARDS: usize = 64;

/// Where a write committed on one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Timeline first: after a failover the new timeline's positions are the later ones.
    pub timeline: u32,
    pub lsn: Lsn,
    pub system_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Token {
    /// Unix milliseconds of the latest write the token covers.
    pub issued_at_ms: u64,
    pub shards: BTreeMap<ShardId, Position>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("consistency token is malformed")]
    Malformed,
    #[error("consistency token has an unsupported version")]
    Version,
    #[error(
        "consistency token signature is invalid (forged, damaged, or signed with a retired key)"
    )]
    Signature,
    #[error("consistency token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
}

/// The signing keys: tokens are signed with `current` and verified with either.
#[derive(Clone)]
pub struct Keys {
    pub current: Vec<u8>,
    pub previous: Option<Vec<u8>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(redacted)")
    }
}

/// Now, in Unix milliseconds: a token's issue time.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn mac(key: &[u8], signed: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(signed);
    m
}

impl Token {
    /// Records a write on `shard`, keeping the later of the old and new positions.
    pub fn record(&mut self, shard: ShardId, position: Position, at_ms: u64) {
        if self.shards.len() >= MAX_SHARDS && !self.shards.contains_key(&shard) {
            // Only a token full of shards from elsewhere gets here; the new one is not tracked.
            return;
        }
        let entry = self.shards.entry(shard).or_insert(position);
        *entry = (*entry).max(position);
        self.issued_at_ms = self.issued_at_ms.max(at_ms);
    }

    /// Both tokens' knowledge: per shard the later position.
    pub fn merge(&self, other: &Token) -> Token {
        let mut out = self.clone();
        for (shard, p) in &other.shards {
            out.record(shard.clone(), *p, other.issued_at_ms);
        }
        out.issued_at_ms = self.issued_at_ms.max(other.issued_at_ms);
        out
    }

    fn payload(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + self.shards.len() * 40);
        b.extend_from_slice(&self.issued_at_ms.to_be_bytes());
        b.push(self.shards.len() as u8);
        for (shard, p) in &self.shards {
            let name = shard.as_str().as_bytes();
            b.push(name.len() as u8);
            b.extend_from_slice(name);
            b.extend_from_slice(&p.system_id.to_be_bytes());
            b.extend_from_slice(&p.timeline.to_be_bytes());
            b.extend_from_slice(&p.lsn.0.to_be_bytes());
        }
        b
    }

    pub fn encode(&self, keys: &Keys) -> String {
        let payload = B64.encode(self.payload());
        let signed = format!("{VERSION}.{payload}");
        let tag = B64.encode(
            mac(&keys.current, signed.as_bytes())
                .finalize()
                .into_bytes(),
        );
        format!("{signed}.{tag}")
    }

    /// Verifies and decodes a token. The signature is checked before anything is parsed.
    pub fn decode(text: &str, keys: &Keys) -> Result<Token, TokenError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut parts = text.split('.');
        let (Some(version), Some(payload), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if version != VERSION {
            return Err(if version.starts_with('v') {
                TokenError::Version
            } else {
                TokenError::Malformed
            });
        }
        let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
        let signed = &text[..version.len() + 1 + payload.len()];
        let verified = std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .any(|k| mac(k, signed.as_bytes()).verify_slice(&tag).is_ok());
        if !verified {
            return Err(TokenError::Signature);
        }
        parse_payload(&B64.decode(payload).map_err(|_| TokenError::Malformed)?)
    }
}

fn parse_payload(b: &[u8]) -> Result<Token, TokenError> {
    let mut r = b;
    let mut take = |n: usize| -> Result<&[u8], TokenError> {
        let (head, rest) = r.split_at_checked(n).ok_or(TokenError::Malformed)?;
        r = rest;
        Ok(head)
    };
    let issued_at_ms = u64::from_be_bytes(take(8)?.try_into().map_err(|_| TokenError::Malformed)?);
    let n = usize::from(take(1)?[0]);
    if n > MAX_SHARDS {
        return Err(TokenError::Malformed);
    }
    let mut shards = BTreeMap::new();
    for _ in 0..n {
        let len = usize::from(take(1)?[0]);
        let name = std::str::from_utf8(take(len)?).map_err(|_| TokenError::Malformed)?;
        let shard = ShardId::parse(name).map_err(|_| TokenError::Malformed)?;
        let system_id = u64::from_be_bytes(take(8)?.try_into().map_err(|_| TokenError::Malformed)?);
        let timeline = u32::from_be_bytes(take(4)?.try_into().map_err(|_| TokenError::Malformed)?);
        let lsn = Lsn(u64::from_be_bytes(
            take(8)?.try_into().map_err(|_| TokenError::Malformed)?,
        ));
        shards.insert(
            shard,
            Position {
                timeline,
                lsn,
                system_id,
            },
        );
    }
    if !r.is_empty() {
        return Err(TokenError::Malformed);
    }
    Ok(Token {
        issued_at_ms,
        shards,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys {
            current: b"current-key-current-key-current!".to_vec(),
            previous: None,
        }
    }

    /// A small deterministic generator (xorshift), so the property tests need no extra crate
    /// and every failure is reproducible.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn token(&mut self) -> Token {
            let mut t = Token {
                issued_at_ms: self.next() % 1_000_000,
                ..Default::default()
            };
            for _ in 0..self.next() % 4 {
                let shard =
                    ShardId::parse(["eu", "us", "ap", "sa"][(self.next() % 4) as usize]).unwrap();
                let p = Position {
                    timeline: (self.next() % 3) as u32 + 1,
                    lsn: Lsn(self.next() % 10_000),
                    system_id: self.next() % 3,
                };
                t.record(shard, p, t.issued_at_ms);
            }
            t
        }
    }

    #[test]
    fn round_trip() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..500 {
            let t = g.token();
            let text = t.encode(&keys());
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "URL-safe: {text}"
            );
            assert_eq!(Token::decode(&text, &keys()).unwrap(), t);
        }
    }

    #[test]
    fn merge_is_commutative_associative_idempotent() {
        let mut g = Gen(12345);
        for _ in 0..500 {
            let (a, b, c) = (g.token(), g.token(), g.token());
            assert_eq!(a.merge(&b), b.merge(&a));
            assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
            assert_eq!(a.merge(&a), a);
        }
    }

    #[test]
    fn merge_keeps_the_later_position_per_shard() {
        let eu = ShardId::parse("eu").unwrap();
        let mut a = Token::default();
        a.record(
            eu.clone(),
            Position {
                timeline: 1,
                lsn: Lsn(100),
                system_id: 7,
            },
            1,
        );
        let mut b = Token::default();
        b.record(
            eu.clone(),
            Position {
                timeline: 1,
                lsn: Lsn(50),
                system_id: 7,
            },
            2,
        );
        assert_eq!(a.merge(&b).shards[&eu].lsn, Lsn(100));
        let mut after_failover = Token::default();
        after_failover.record(
            eu.clone(),
            Position {
                timeline: 2,
                lsn: Lsn(10),
                system_id: 7,
            },
            3,
        );
        assert_eq!(a.merge(&after_failover).shards[&eu].timeline, 2);
    }

    #[test]
    fn any_bit_flip_is_rejected() {
        let mut g = Gen(777);
        let t = g.token();
        let text = t.encode(&keys());
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.to_vec();
                flipped[i] ^= 1 << bit;
                // The base64 decoder rejects non-canonical trailing bits, so no flip can decode
                // to the same bytes and pass the MAC.
                if let Ok(s) = std::str::from_utf8(&flipped)
                    && let Ok(decoded) = Token::decode(s, &keys())
                {
                    panic!("flipped bit {bit} of byte {i} still verified: {decoded:?}");
                }
            }
        }
    }

    #[test]
    fn rotation_accepts_the_previous_key_only() {
        let t = Gen(5).token();
        let old = keys();
        let rotated = Keys {
            current: b"next-key-next-key-next-key-next!".to_vec(),
            previous: Some(old.current.clone()),
        };
        let text = t.encode(&old);
        assert_eq!(Token::decode(&text, &rotated).unwrap(), t);
        let retired = Keys {
            current: b"next-key-next-key-next-key-next!".to_vec(),
            previous: None,
        };
        assert_eq!(Token::decode(&text, &retired), Err(TokenError::Signature));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        for text in [
            "",
            ".",
            "v1",
            "v1..",
            "v1.a.b.c",
            "v2.AA.AA",
            "x.AA.AA",
            "v1.!!.??",
            &"v1.".repeat(3000),
        ] {
            assert!(Token::decode(text, &keys()).is_err(), "{text:?}");
        }
        // A correctly signed but structurally broken payload is still refused.
        let signed = format!("v1.{}", B64.encode([0u8; 3]));
        let tag = B64.encode(
            mac(&keys().current, signed.as_bytes())
                .finalize()
                .into_bytes(),
        );
        assert_eq!(
            Token::decode(&format!("{signed}.{tag}"), &keys()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn tokens_never_grow_past_what_decode_accepts() {
        let keys = Keys {
            current: b"0123456789abcdef0123456789abcdef".to_vec(),
            previous: None,
        };
        let mut t = Token::default();
        for i in 0..100 {
            let name = format!("{i:0>63}");
            let shard = ShardId::parse(&name).unwrap();
            t.record(
                shard,
                Position {
                    timeline: u32::MAX,
                    lsn: Lsn(u64::MAX),
                    system_id: u64::MAX,
                },
                u64::MAX,
            );
        }
        assert_eq!(t.shards.len(), MAX_SHARDS);
        assert_eq!(Token::decode(&t.encode(&keys), &keys), Ok(t));
    }
}

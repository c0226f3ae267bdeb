//! SCRAM-SHA-256 client authentication on the wire endpoint, the server side of RFC 5802/7677 as
//! PostgreSQL speaks it (no channel binding). Keys are derived once per configured user when the
//! config loads; each login costs two HMACs and a hash.
//! See <https://www.postgresql.org/docs/15/sasl-authentication.html>.
//!
//! Users cannot be enumerated: every user's salt, known or not, is derived from a random server
//! secret, so it is stable for the life of the process, and every user gets the same iteration
//! count. An unknown user goes through the same exchange against a mock verifier (PostgreSQL's
//! `scram_mock_salt` does the same) and fails at the proof, like a wrong password.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::random::RandomError;

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

/// Length of the salts sent to clients (PostgreSQL's `SCRAM_DEFAULT_SALT_LEN`).
const SALT_LEN: usize = 16;

/// The configured users' verifiers and the server secret salts and mock verifiers derive from.
pub struct Credentials {
    secret: [u8; 32],
    verifiers: HashMap<String, Verifier>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} user(s), redacted)", self.verifiers.len())
    }
}

impl Credentials {
    /// Derives the verifiers of `(user, password)` pairs under a fresh random server secret.
    pub fn new(users: &[(String, String)]) -> Result<Credentials, RandomError> {
        let secret = crate::random::bytes::<32>()?;
        let verifiers = users
            .iter()
            .map(|(name, pw)| {
                let salt = derived(&secret, b"salt", name)[..SALT_LEN].to_vec();
                (name.clone(), Verifier::new(pw, salt, ITERATIONS))
            })
            .collect();
        Ok(Credentials { secret, verifiers })
    }

    /// The verifier to run a login against, and whether the user exists. An unknown user gets a
    /// mock verifier: the salt a known user of that name would have, the same iteration count,
    /// and keys derived from the secret that no password produces. It costs what a real one does
    /// (no key derivation at login time for either).
    pub fn verifier(&self, user: &str) -> (Cow<'_, Verifier>, bool) {
        if let Some(v) = self.verifiers.get(user) {
            return (Cow::Borrowed(v), true);
        }
        let mock = Verifier {
            salt: derived(&self.secret, b"salt", user)[..SALT_LEN].to_vec(),
            iterations: ITERATIONS,
            stored_key: derived(&self.secret, b"mock stored key", user),
            server_key: derived(&self.secret, b"mock server key", user),
        };
        (Cow::Owned(mock), false)
    }
}

/// HMAC-SHA-256 under the server secret of a purpose label and a user name.
fn derived(secret: &[u8], purpose: &[u8], user: &str) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(purpose);
    m.update(&[0]);
    m.update(user.as_bytes());
    m.finalize().into_bytes().into()
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
    // Constant time: how much of the proof matched must not show in the answer's timing.
    if !bool::from(computed.ct_eq(&verifier.stored_key)) {
        return Err(ScramError::BadProof);
    }
    Ok(format!(
        "v={}",
        B64.encode(hmac(&verifier.server_key, auth_message.as_bytes()))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// The client side from postgres-protocol (what tokio-postgres uses) against this server side.
    fn login(server_password: &str, client_password: &str) -> Result<(), ScramError> {
        let verifier = Verifier::new(server_password, b"0123456789abcdef".to_vec(), ITERATIONS);
        login_against(&verifier, client_password)
    }

    fn login_against(verifier: &Verifier, client_password: &str) -> Result<(), ScramError> {
        let mut client =
            ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let first = std::str::from_utf8(client.message()).unwrap().to_string();
        let (ex, server_first) = server_first(verifier, &first, "servernonce123")?;
        client
            .update(server_first.as_bytes())
            .map_err(|_| ScramError::Malformed)?;
        let client_final = std::str::from_utf8(client.message()).unwrap().to_string();
        let server_final = server_final(verifier, &ex, &client_final)?;
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

    /// The salt and iteration count the server-first message shows for `user`.
    fn salt_and_cost(creds: &Credentials, user: &str) -> (String, String) {
        let (v, _) = creds.verifier(user);
        let (_, first) = server_first(&v, "n,,n=,r=clientnonce", "servernonce").unwrap();
        let attr = |k: &str| {
            first
                .split(',')
                .find_map(|a| a.strip_prefix(k))
                .unwrap()
                .to_string()
        };
        (attr("s="), attr("i="))
    }

    #[test]
    fn unknown_users_cannot_be_told_from_known_ones() {
        let creds = Credentials::new(&[("app".into(), "s3cret".into())]).unwrap();
        let known = salt_and_cost(&creds, "app");
        let unknown = salt_and_cost(&creds, "nobody");
        // Stable for the life of the process, for known and unknown users alike.
        assert_eq!(salt_and_cost(&creds, "app"), known);
        assert_eq!(salt_and_cost(&creds, "nobody"), unknown);
        // The same cost and the same salt length.
        assert_eq!(unknown.1, known.1);
        assert_eq!(unknown.1, ITERATIONS.to_string());
        assert_eq!(B64.decode(&unknown.0).unwrap().len(), SALT_LEN);
        assert_eq!(B64.decode(&known.0).unwrap().len(), SALT_LEN);
        // Each name its own salt; another process (another secret) other salts.
        assert_ne!(salt_and_cost(&creds, "other").0, unknown.0);
        let restarted = Credentials::new(&[("app".into(), "s3cret".into())]).unwrap();
        assert_ne!(salt_and_cost(&restarted, "app").0, known.0);
        // The real user logs in; the mock verifier lets no password in.
        let (v, exists) = creds.verifier("app");
        assert!(exists);
        assert_eq!(login_against(&v, "s3cret"), Ok(()));
        let (mock, exists) = creds.verifier("nobody");
        assert!(!exists);
        for pw in ["s3cret", "", "nobody"] {
            assert_eq!(login_against(&mock, pw), Err(ScramError::BadProof));
        }
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

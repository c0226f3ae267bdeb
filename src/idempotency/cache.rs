//! The regional Redis side of idempotency: completed responses (so a same-region replay needs no
//! trip to the home primary) and a short in-flight lock (so a same-region duplicate is told 409
//! without one). Entries are written only after the home primary committed; when Redis is absent,
//! down or wrong, the claim in PostgreSQL still decides.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Key;
use crate::kv::Kv;
use crate::types::UserId;

/// A completed response as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    /// Hex of the request fingerprint.
    pub fingerprint: String,
    pub status: u16,
    pub body: String,
    pub token: Option<String>,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `homeport:idem:<len>:<user>:<key>`: the user's length keeps (user, key) pairs apart even when
/// either contains a colon.
fn entry_key(user: &UserId, key: &Key) -> String {
    format!(
        "homeport:idem:{}:{}:{}",
        user.as_str().len(),
        user.as_str(),
        key.as_str()
    )
}

fn lock_key(user: &UserId, key: &Key) -> String {
    format!("{}:lock", entry_key(user, key))
}

pub async fn get(kv: &Kv, user: &UserId, key: &Key) -> Option<Cached> {
    let text = kv.get(&entry_key(user, key)).await?;
    serde_json::from_str(&text).ok()
}

pub async fn put(kv: &Kv, user: &UserId, key: &Key, entry: &Cached, ttl: Duration) {
    if let Ok(text) = serde_json::to_string(entry) {
        kv.set_ex(&entry_key(user, key), &text, ttl).await;
    }
}

/// Takes the in-flight lock: `Some(true)` taken, `Some(false)` held by another request,
/// `None` Redis could not say.
pub async fn lock(kv: &Kv, user: &UserId, key: &Key, holder: &str, ttl: Duration) -> Option<bool> {
    kv.set_nx(&lock_key(user, key), holder, ttl).await
}

pub async fn unlock(kv: &Kv, user: &UserId, key: &Key, holder: &str) {
    kv.del_if(&lock_key(user, key), holder).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_pairs_never_collide() {
        let k =
            |u: &str, key: &str| entry_key(&UserId::parse(u).unwrap(), &Key::parse(key).unwrap());
        assert_ne!(k("a:b", "c"), k("a", "b:c"));
        assert_eq!(k("u1", "k"), "homeport:idem:2:u1:k");
    }
}

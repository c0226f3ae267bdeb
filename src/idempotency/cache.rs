//! The regional Redis side of idempotency: completed responses (so a same-region replay needs no
//! trip to the home primary) and a short in-flight lock (so a same-region duplicate is told 409
//! without one). Each step is one atomic script, one round trip: before the write "the cached
//! response, or else take the lock", after the commit "release the lock and cache the response".
//! Entries are written only after the home primary committed; when Redis is absent, down or
//! wrong, the claim in PostgreSQL still decides.

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

/// `homeport:idem:{<len>:<user>:<key>}`: the user's length keeps (user, key) pairs apart even
/// when either contains a colon; the braces keep an entry and its lock in one Redis Cluster slot.
fn entry_key(user: &UserId, key: &Key) -> String {
    format!(
        "homeport:idem:{{{}:{}:{}}}",
        user.as_str().len(),
        user.as_str(),
        key.as_str()
    )
}

fn lock_key(user: &UserId, key: &Key) -> String {
    format!("{}:lock", entry_key(user, key))
}

/// What Redis knows before a write.
#[derive(Debug, PartialEq, Eq)]
pub enum Before {
    /// A completed response.
    Cached(Cached),
    /// No response; this request now holds the in-flight lock.
    Locked,
    /// No response; another request holds the lock.
    Busy,
    /// Redis could not say (absent, down, slow, or a damaged entry).
    Unknown,
}

const BEFORE: &str = "local v = redis.call('GET', KEYS[1]) \
    if v then return {1, v} end \
    if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, 'locked'} end \
    return {0, 'busy'}";

const AFTER: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end \
    if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end \
    return 1";

/// The cached response, or else the lock (one round trip).
pub async fn before(kv: &Kv, user: &UserId, key: &Key, holder: &str, lock_ttl: Duration) -> Before {
    let ms = lock_ttl.as_millis().max(1).to_string();
    let reply: Option<(i64, String)> = kv
        .eval(
            BEFORE,
            &[&entry_key(user, key), &lock_key(user, key)],
            &[holder, &ms],
        )
        .await;
    match reply {
        Some((1, text)) => serde_json::from_str(&text).map_or(Before::Unknown, Before::Cached),
        Some((_, s)) if s == "locked" => Before::Locked,
        Some((_, s)) if s == "busy" => Before::Busy,
        _ => Before::Unknown,
    }
}

/// Releases the lock (if still this holder's) and, after a commit, caches the response for `ttl`
/// (one round trip).
pub async fn after(
    kv: &Kv,
    user: &UserId,
    key: &Key,
    holder: &str,
    done: Option<(&Cached, Duration)>,
) {
    let (text, ms) = match done {
        Some((entry, ttl)) => (
            serde_json::to_string(entry).unwrap_or_default(),
            ttl.as_millis().max(1).to_string(),
        ),
        None => (String::new(), String::new()),
    };
    let _: Option<i64> = kv
        .eval(
            AFTER,
            &[&lock_key(user, key), &entry_key(user, key)],
            &[holder, &text, &ms],
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_pairs_never_collide() {
        let k =
            |u: &str, key: &str| entry_key(&UserId::parse(u).unwrap(), &Key::parse(key).unwrap());
        assert_ne!(k("a:b", "c"), k("a", "b:c"));
        assert_eq!(k("u1", "k"), "homeport:idem:{2:u1:k}");
    }
}

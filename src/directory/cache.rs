//! The in-process directory cache: user -> home shard with a TTL and a size bound. A plain mutex
//! around a map is enough here: it is never held across an `.await`, and each operation is a
//! hash lookup.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::types::{ShardId, UserId};

pub struct TtlCache {
    ttl: Duration,
    capacity: usize,
    map: Mutex<HashMap<UserId, (ShardId, Instant)>>,
}

impl TtlCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            ttl,
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, user: &UserId, now: Instant) -> Option<ShardId> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(user)
            .filter(|(_, expires)| *expires > now)
            .map(|(r, _)| r.clone())
    }

    pub fn insert(&self, user: UserId, region: ShardId, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity && !map.contains_key(&user) {
            map.retain(|_, (_, expires)| *expires > now);
            if map.len() >= self.capacity {
                // Still full of live entries: drop an arbitrary one. A directory entry is cheap
                // to fetch again, and a bound on memory matters more than a perfect hit ratio.
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                }
            }
        }
        map.insert(user, (region, now + self.ttl));
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }
    fn r(s: &str) -> ShardId {
        ShardId::parse(s).unwrap()
    }

    #[test]
    fn entries_expire() {
        let c = TtlCache::new(Duration::from_secs(10), 10);
        let t0 = Instant::now();
        c.insert(u("a"), r("eu"), t0);
        assert_eq!(c.get(&u("a"), t0 + Duration::from_secs(9)), Some(r("eu")));
        assert_eq!(c.get(&u("a"), t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn size_is_bounded() {
        let c = TtlCache::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        for i in 0..100 {
            c.insert(u(&format!("u{i}")), r("eu"), t0);
        }
        assert!(c.len() <= 3);
        assert_eq!(c.get(&u("u99"), t0), Some(r("eu")));
    }
}

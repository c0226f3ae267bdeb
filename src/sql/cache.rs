//! A bounded cache of classifications by statement text, so the hot path does not re-lex a
//! statement it has seen. Applications send a small set of distinct statements (parameters are
//! bound, not inlined), so a plain map that is emptied when full is enough.
//!
//! It also remembers statements a replica refused although they only read (a read of an unlogged
//! or temporary table: "cannot access temporary or unlogged relations during recovery"): those
//! are classified with a primary route from then on, so they go straight to a primary.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::{Classification, classify_with};

/// Longer statements are classified every time rather than kept.
const MAX_CACHED_SQL_LEN: usize = 4096;

pub struct ClassifyCache {
    capacity: usize,
    map: Mutex<HashMap<Box<str>, Arc<Classification>>>,
    /// Functions the operator declared free of session state (`pg.stateless_functions`),
    /// lowercased, as `name` or `schema.name`.
    stateless: HashSet<String>,
    /// Statement texts that must run on a primary although they read; bounded like `map`.
    primary_only: Mutex<HashSet<Box<str>>>,
}

impl ClassifyCache {
    pub fn new(capacity: usize) -> Self {
        Self::with_stateless(capacity, HashSet::new())
    }

    pub fn with_stateless(capacity: usize, stateless: HashSet<String>) -> Self {
        ClassifyCache {
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
            stateless,
            primary_only: Mutex::new(HashSet::new()),
        }
    }

    fn classify_now(&self, sql: &str) -> Classification {
        let mut c = classify_with(sql, &|name| self.stateless.contains(name));
        if c.route.is_none()
            && self
                .primary_only
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(sql)
        {
            c.route = Some(super::RouteHint::Primary);
        }
        c
    }

    /// From now on `sql` is classified with a primary route: a replica cannot run it.
    pub fn remember_primary_only(&self, sql: &str) {
        if sql.len() > MAX_CACHED_SQL_LEN {
            return;
        }
        {
            let mut set = self.primary_only.lock().unwrap_or_else(|p| p.into_inner());
            if set.len() >= self.capacity {
                set.clear();
            }
            set.insert(sql.into());
        }
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sql);
    }

    /// A cached answer if there is one, else a fresh classification that is not kept.
    pub fn classify_uncached(&self, sql: &str) -> Arc<Classification> {
        if let Some(c) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(sql) {
            return c.clone();
        }
        Arc::new(self.classify_now(sql))
    }

    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        if sql.len() > MAX_CACHED_SQL_LEN {
            return Arc::new(self.classify_now(sql));
        }
        if let Some(c) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(sql) {
            return c.clone();
        }
        // Classify outside the lock; two threads may both classify a new statement, which is
        // harmless (same input, same answer).
        let c = Arc::new(self.classify_now(sql));
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(sql.into(), c.clone());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::super::classify;
    use super::*;

    #[test]
    fn cached_answers_match_and_size_is_bounded() {
        let cache = ClassifyCache::new(2);
        for sql in [
            "select 1",
            "insert into t values (1)",
            "select 2",
            "select 1",
        ] {
            assert_eq!(*cache.classify(sql), classify(sql));
        }
        assert!(cache.map.lock().unwrap().len() <= 2);
    }

    #[test]
    fn remembered_statements_route_to_a_primary() {
        let cache = ClassifyCache::new(8);
        let sql = "select value from accessed";
        assert_eq!(cache.classify(sql).route, None);
        cache.remember_primary_only(sql);
        for c in [cache.classify(sql), cache.classify_uncached(sql)] {
            assert_eq!(c.route, Some(super::super::RouteHint::Primary));
            assert!(c.read_only);
        }
        assert_eq!(cache.classify("select 1").route, None);
    }
}

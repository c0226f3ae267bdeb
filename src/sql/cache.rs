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
        // Under its own text (extended protocol) and its simple-protocol key.
        let masked = super::lexer::numbers_masked(sql);
        let keys = std::iter::once(sql).chain(masked.as_deref());
        for key in keys {
            {
                let mut set = self.primary_only.lock().unwrap_or_else(|p| p.into_inner());
                if set.len() >= self.capacity {
                    set.clear();
                }
                set.insert(key.into());
            }
            self.map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
        }
    }

    /// A simple-protocol statement: values come inline, so each text is usually new. A text
    /// without quotes or comments is classified by its [`numbers_masked`] key and kept (all
    /// texts that differ only in numbers share it); any other is classified without filling the
    /// cache with texts that will not come again.
    ///
    /// [`numbers_masked`]: super::lexer::numbers_masked
    pub fn classify_simple(&self, sql: &str) -> Arc<Classification> {
        match super::lexer::numbers_masked(sql) {
            Some(key) => self.classify(&key),
            None => self.classify_uncached(sql),
        }
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

    #[test]
    fn simple_statements_share_a_key_by_their_numbers() {
        let cache = ClassifyCache::new(8);
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 99;",
            "UPDATE t SET x = x + -5 WHERE id = 3",
            "select 'quoted', 1",
        ] {
            assert_eq!(*cache.classify_simple(sql), classify(sql), "{sql}");
        }
        // Two texts under one key, the update, and nothing for the quoted one.
        assert_eq!(cache.map.lock().unwrap().len(), 2);
        let unlogged = "select v from unlogged_t where id = 7";
        cache.classify_simple(unlogged);
        cache.remember_primary_only(unlogged);
        let other = cache.classify_simple("select v from unlogged_t where id = 8");
        assert_eq!(other.route, Some(super::super::RouteHint::Primary));
    }
}

//! A bounded cache of classifications by statement text, so the hot path does not re-lex a
//! statement it has seen. Applications send a small set of distinct statements (parameters are
//! bound, not inlined), so a plain map that is emptied when full is enough.

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
        }
    }

    fn classify_now(&self, sql: &str) -> Classification {
        classify_with(sql, &|name| self.stateless.contains(name))
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
}

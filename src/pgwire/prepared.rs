//! The statements homeport prepared on one server connection, bounded: past the limit the least
//! recently used one is closed on the server (PgBouncer's `max_prepared_statements` approach), so
//! a client that prepares ever new statements cannot grow a pooled server's memory without end.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct PreparedSet {
    /// Server statement name -> the tick it was last used at.
    names: HashMap<String, u64>,
    tick: u64,
}

impl PreparedSet {
    /// Whether the server has `name`; a hit counts as a use.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.names.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    pub fn insert(&mut self, name: String) {
        self.tick += 1;
        self.names.insert(name, self.tick);
    }

    pub fn remove(&mut self, name: &str) {
        self.names.remove(name);
    }

    pub fn clear(&mut self) {
        self.names.clear();
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The current tick: statements used after it are in use by the batch being built.
    pub fn mark(&self) -> u64 {
        self.tick
    }

    /// Takes out the least recently used statement not used since `mark`, to be closed on the
    /// server, while more than `keep` statements are held.
    pub fn evict(&mut self, keep: usize, mark: u64) -> Option<String> {
        if self.names.len() <= keep {
            return None;
        }
        let name = self
            .names
            .iter()
            .filter(|(_, t)| **t <= mark)
            .min_by_key(|(_, t)| **t)
            .map(|(n, _)| n.clone())?;
        self.names.remove(&name);
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_outside_the_batch() {
        let mut set = PreparedSet::default();
        for n in ["a", "b", "c"] {
            set.insert(n.into());
        }
        assert!(set.touch("a"));
        assert!(!set.touch("zz"));
        assert_eq!(set.evict(2, set.mark()).as_deref(), Some("b"));
        assert_eq!(set.evict(2, set.mark()), None);
        let mark = set.mark();
        set.insert("d".into());
        set.touch("c");
        // c and d are used by the batch after `mark`: only a may go.
        assert_eq!(set.evict(1, mark).as_deref(), Some("a"));
        assert_eq!(set.evict(1, mark), None);
        assert_eq!(set.len(), 2);
    }
}

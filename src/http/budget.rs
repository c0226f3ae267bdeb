//! The global budget of bytes that HTTP requests may hold in memory at once
//! (`http.result_budget`): request bodies and result buffers. Each reserves from it as it grows;
//! a request that cannot get more answers 503 with `Retry-After` instead of growing the process,
//! so concurrency cannot multiply the per-request limits (`http.max_body`,
//! `http.max_result_bytes`) into an out-of-memory kill. A reservation is given back when its
//! buffer is dropped.
//!
//! Reservations never wait: a waiting reservation would hold what it has while waiting for more,
//! and a few large requests could then wait on each other forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Reservations grow in steps of this many bytes, so a small result costs one atomic update.
const GRANULE: usize = 16 << 10;

/// The shared budget; cheap to clone.
#[derive(Clone, Debug)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(capacity: usize) -> Budget {
        Budget {
            inner: Arc::new(Inner {
                capacity,
                used: AtomicUsize::new(0),
            }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Bytes reserved by all requests right now.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, grown with [`Reservation::cover`].
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: 0,
        }
    }
}

/// Bytes one request holds from the budget; released on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Budget,
    held: usize,
}

impl Reservation {
    /// Makes the reservation cover at least `bytes`. `false` when the budget has no room left:
    /// the reservation keeps what it had.
    pub fn cover(&mut self, bytes: usize) -> bool {
        if bytes <= self.held {
            return true;
        }
        let want = bytes.div_ceil(GRANULE) * GRANULE - self.held;
        let inner = &self.budget.inner;
        let mut used = inner.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(want).filter(|n| *n <= inner.capacity) else {
                return false;
            };
            match inner
                .used
                .compare_exchange_weak(used, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        self.held += want;
        true
    }

    pub fn held(&self) -> usize {
        self.held
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .inner
            .used
            .fetch_sub(self.held, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_grow_in_granules_and_are_given_back() {
        let budget = Budget::new(4 * GRANULE);
        let mut a = budget.reservation();
        assert!(a.cover(1));
        assert_eq!(a.held(), GRANULE);
        assert!(a.cover(GRANULE));
        assert_eq!(budget.used(), GRANULE);
        assert!(a.cover(GRANULE + 1));
        assert_eq!(budget.used(), 2 * GRANULE);
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_full_budget_refuses_without_taking_anything() {
        let budget = Budget::new(2 * GRANULE);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.cover(2 * GRANULE));
        assert!(!b.cover(1));
        assert_eq!(b.held(), 0);
        assert_eq!(budget.used(), 2 * GRANULE);
        drop(a);
        assert!(b.cover(1));
    }
}

//! Replication lag in seconds, measured on this sidecar's own clock, so clock skew between hosts
//! never enters the figure.
//!
//! The primary's probes record when each WAL position was first and last seen. When a replica
//! reports that it has replayed up to `L`, the oldest write it is missing appeared on the primary
//! after the last probe that still saw a position `<= L` and no later than the first probe that
//! saw one `> L`; the lag is the time from the middle of that window to the replica's probe.
//! An idle primary whose position the replica has reached gives zero (no false lag); a paused
//! replica gives a lag that grows with the wall clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::types::Lsn;

/// Most positions remembered per shard; older ones fold into a lower bound.
const MAX_SAMPLES: usize = 8192;

#[derive(Debug, Clone, Copy)]
struct Sample {
    lsn: Lsn,
    first_seen: Instant,
    last_seen: Instant,
}

/// The primary's WAL position history for one shard. Pure data; the probe tasks feed it.
#[derive(Debug, Default)]
pub struct LagTracker {
    samples: VecDeque<Sample>,
}

impl LagTracker {
    /// Records that the primary's current WAL position was `lsn` at `at`.
    pub fn observe_primary(&mut self, lsn: Lsn, at: Instant) {
        match self.samples.back_mut() {
            Some(last) if last.lsn == lsn => last.last_seen = at,
            Some(last) if lsn < last.lsn => {
                // A different server (failover to a replica that was behind) or a rewound one:
                // the old history says nothing about the new primary.
                self.samples.clear();
                self.push(lsn, at);
            }
            _ => self.push(lsn, at),
        }
    }

    fn push(&mut self, lsn: Lsn, at: Instant) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            lsn,
            first_seen: at,
            last_seen: at,
        });
    }

    /// Lag of a replica that had replayed up to `replay` when probed at `at`.
    /// `None` until the primary has been seen at least once.
    pub fn lag(&self, replay: Lsn, at: Instant) -> Option<Duration> {
        let last = self.samples.back()?;
        if replay >= last.lsn {
            return Some(Duration::ZERO);
        }
        // First sample the replica has not reached; positions only grow, so binary search.
        let idx = self.samples.partition_point(|s| s.lsn <= replay);
        let missing = self.samples[idx];
        let appeared = match idx.checked_sub(1).map(|i| self.samples[i]) {
            Some(before) => {
                before.last_seen
                    + (missing
                        .first_seen
                        .saturating_duration_since(before.last_seen))
                        / 2
            }
            // Older than anything remembered: a lower bound.
            None => missing.first_seen,
        };
        Some(at.saturating_duration_since(appeared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn idle_primary_reached_by_replica_has_no_lag() {
        let t = Instant::now();
        let mut l = LagTracker::default();
        for i in 0..100 {
            l.observe_primary(Lsn(500), t + ms(100 * i));
        }
        assert_eq!(l.lag(Lsn(500), t + ms(10_000)), Some(Duration::ZERO));
    }

    #[test]
    fn paused_replica_lag_grows_with_time() {
        let t = Instant::now();
        let mut l = LagTracker::default();
        l.observe_primary(Lsn(100), t);
        l.observe_primary(Lsn(100), t + ms(1000));
        l.observe_primary(Lsn(200), t + ms(1100));
        l.observe_primary(Lsn(200), t + ms(5000));
        // The write landed between 1000 and 1100 ms: estimate 1050 ms.
        assert_eq!(l.lag(Lsn(100), t + ms(2050)), Some(ms(1000)));
        assert_eq!(l.lag(Lsn(100), t + ms(6050)), Some(ms(5000)));
    }

    #[test]
    fn delayed_replica_lag_tracks_the_delay() {
        // A write every 100 ms; the replica applies each one 500 ms later.
        let t = Instant::now();
        let mut l = LagTracker::default();
        for i in 0..50u64 {
            l.observe_primary(Lsn(i * 10), t + ms(i * 100));
        }
        // At 4000 ms the replica has replayed what the primary had at 3500 ms.
        let lag = l.lag(Lsn(350), t + ms(4000)).unwrap();
        assert!(lag >= ms(400) && lag <= ms(500), "{lag:?}");
    }

    #[test]
    fn unknown_before_first_primary_sample() {
        assert_eq!(LagTracker::default().lag(Lsn(1), Instant::now()), None);
    }

    #[test]
    fn going_backwards_resets_history() {
        let t = Instant::now();
        let mut l = LagTracker::default();
        l.observe_primary(Lsn(1000), t);
        l.observe_primary(Lsn(10), t + ms(100));
        assert_eq!(l.lag(Lsn(10), t + ms(200)), Some(Duration::ZERO));
    }

    #[test]
    fn history_is_bounded() {
        let t = Instant::now();
        let mut l = LagTracker::default();
        for i in 0..(MAX_SAMPLES as u64 + 100) {
            l.observe_primary(Lsn(i + 1), t + ms(i));
        }
        assert_eq!(l.samples.len(), MAX_SAMPLES);
        // Older than the history: a lower bound from the oldest sample.
        assert!(l.lag(Lsn(0), t + ms(20_000)).unwrap() <= ms(20_000));
    }
}

//! Bounded staleness as pure functions: how stale can a read from a replica be, at most, and
//! which candidates may serve a read that accepts at most so much.
//!
//! At its last probe a replica was `lag` behind; since then it may have replayed nothing at all,
//! so the data it serves now is at most `lag + (now - probe time)` old. Without a lag measurement
//! the bound is unknown and the replica does not qualify for a bounded read.

use std::time::{Duration, Instant};

use crate::routing::{Candidate, Target};
use crate::topology::{EndpointStatus, Snapshot};

/// Upper bound of how far behind its primary the data on a replica is, now.
pub fn bound(status: &EndpointStatus, now: Instant) -> Option<Duration> {
    let probed = status.last_ok?;
    Some(status.lag? + now.saturating_duration_since(probed))
}

/// The candidates that may serve a read accepting at most `max` staleness (primaries always).
pub fn within(
    snapshot: &Snapshot,
    candidates: &[Candidate],
    max: Duration,
    now: Instant,
) -> Vec<Candidate> {
    candidates
        .iter()
        .copied()
        .filter(|c| {
            c.target == Target::Primary
                || bound(&snapshot.get(c.index).status, now).is_some_and(|b| b <= max)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(lag_ms: Option<u64>, probed_ago_ms: u64, now: Instant) -> EndpointStatus {
        EndpointStatus {
            lag: lag_ms.map(Duration::from_millis),
            last_ok: Some(now - Duration::from_millis(probed_ago_ms)),
            ..Default::default()
        }
    }

    #[test]
    fn bound_adds_time_since_the_probe() {
        let now = Instant::now();
        assert_eq!(
            bound(&status(Some(200), 50, now), now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(bound(&status(None, 50, now), now), None);
        assert_eq!(bound(&EndpointStatus::default(), now), None);
    }

    #[test]
    fn only_fresh_enough_replicas_and_primaries_qualify() {
        use std::sync::Arc;

        use crate::topology::{Configured, EndpointInfo, EndpointView};
        let now = Instant::now();
        let view = |index: usize, s: EndpointStatus| EndpointView {
            info: Arc::new(EndpointInfo {
                index,
                name: format!("e{index}"),
                shard: crate::types::RegionName::parse("eu").unwrap(),
                region: crate::types::RegionName::parse("us").unwrap(),
                configured: Configured::Replica,
                pg: tokio_postgres::Config::new(),
                probe_pg: tokio_postgres::Config::new(),
                pooler: Default::default(),
            }),
            status: s,
        };
        let snapshot = Snapshot {
            endpoints: vec![
                view(0, status(Some(900), 10, now)),
                view(1, status(Some(100), 10, now)),
                view(2, status(None, 0, now)),
                view(3, EndpointStatus::default()),
            ],
        };
        let c = |index, target| Candidate { index, target };
        let all = [
            c(0, Target::LocalReplica),
            c(1, Target::RemoteReplica),
            c(2, Target::RemoteReplica),
            c(3, Target::Primary),
        ];
        assert_eq!(
            within(&snapshot, &all, Duration::from_millis(500), now),
            [c(1, Target::RemoteReplica), c(3, Target::Primary)]
        );
    }
}

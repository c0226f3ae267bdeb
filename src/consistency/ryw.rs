//! Read-your-writes as pure decisions: given what the probes last saw of a copy and the position a
//! token requires on that copy's shard, may the copy serve the read now, later, or never?
//! The read plan (`plan.rs`) turns these answers into the attempts a read makes.

use crate::routing::{Candidate, Target};
use crate::topology::{EndpointStatus, Snapshot};

use super::token::Position;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    /// The copy had replayed the required position when last probed; replay only moves forward,
    /// so a read started now sees the write.
    Now,
    /// Same history, not there yet: worth waiting a little.
    NotYet,
    /// Another cluster or another timeline: this copy cannot prove it has the write.
    Never,
}

/// Whether a replica with `status` can serve a read that must see `required`.
pub fn replica_eligibility(status: &EndpointStatus, required: &Position) -> Eligibility {
    if status.system_id.is_some_and(|s| s != required.system_id) {
        return Eligibility::Never;
    }
    match status.timeline {
        // After a failover the positions of two timelines cannot be compared without the switch
        // point, so tokens from another timeline go to the primary.
        Some(t) if t != required.timeline => Eligibility::Never,
        _ => match status.wal_lsn {
            Some(lsn) if lsn >= required.lsn && status.system_id.is_some() => Eligibility::Now,
            _ => Eligibility::NotYet,
        },
    }
}

/// The system identifier of the shard's primary when it differs from the token's: the token was
/// issued by another database cluster (another environment, or a rebuilt shard), so no copy here
/// can be shown to have its write.
pub fn foreign_system(
    snapshot: &Snapshot,
    candidates: &[Candidate],
    required: &Position,
) -> Option<u64> {
    candidates
        .iter()
        .filter(|c| c.target == Target::Primary)
        .find_map(|c| snapshot.get(c.index).status.system_id)
        .filter(|s| *s != required.system_id)
}

/// What to tell a client whose token came from another cluster.
pub fn foreign_message(token_system: u64, here: u64) -> String {
    format!(
        "the consistency token was issued by another database cluster (system {token_system}, this shard's primary is system {here}); it cannot be honoured here"
    )
}

/// Whether waiting up to `max_wait` for a replica behind the position can pay off: not when its
/// measured lag (how long a commit takes to show up there) is longer than the wait.
pub fn worth_waiting(status: &EndpointStatus, max_wait: std::time::Duration) -> bool {
    status.lag.is_none_or(|lag| lag <= max_wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Lsn;

    fn status(system: u64, timeline: u32, lsn: u64) -> EndpointStatus {
        EndpointStatus {
            system_id: Some(system),
            timeline: Some(timeline),
            wal_lsn: Some(Lsn(lsn)),
            ..Default::default()
        }
    }

    fn need(system: u64, timeline: u32, lsn: u64) -> Position {
        Position {
            system_id: system,
            timeline,
            lsn: Lsn(lsn),
        }
    }

    #[test]
    fn replica_at_or_past_the_position_serves_now() {
        assert_eq!(
            replica_eligibility(&status(1, 1, 100), &need(1, 1, 100)),
            Eligibility::Now
        );
        assert_eq!(
            replica_eligibility(&status(1, 1, 101), &need(1, 1, 100)),
            Eligibility::Now
        );
    }

    #[test]
    fn replica_behind_is_worth_waiting_for() {
        assert_eq!(
            replica_eligibility(&status(1, 1, 99), &need(1, 1, 100)),
            Eligibility::NotYet
        );
        assert_eq!(
            replica_eligibility(&EndpointStatus::default(), &need(1, 1, 100)),
            Eligibility::NotYet
        );
    }

    #[test]
    fn no_waiting_for_a_replica_lagging_more_than_the_wait() {
        use std::time::Duration;
        let lagging = |ms| EndpointStatus {
            lag: Some(Duration::from_millis(ms)),
            ..Default::default()
        };
        let wait = Duration::from_millis(50);
        assert!(worth_waiting(&lagging(10), wait));
        assert!(worth_waiting(&lagging(50), wait));
        assert!(!worth_waiting(&lagging(200), wait));
        assert!(
            worth_waiting(&EndpointStatus::default(), wait),
            "unknown lag: try"
        );
    }

    #[test]
    fn other_cluster_or_timeline_never_serves() {
        assert_eq!(
            replica_eligibility(&status(2, 1, 500), &need(1, 1, 100)),
            Eligibility::Never
        );
        assert_eq!(
            replica_eligibility(&status(1, 2, 500), &need(1, 1, 100)),
            Eligibility::Never
        );
        assert_eq!(
            replica_eligibility(&status(1, 1, 500), &need(1, 2, 100)),
            Eligibility::Never
        );
    }

    #[test]
    fn a_token_from_another_cluster_is_recognised() {
        use std::sync::Arc;

        use crate::topology::{Configured, EndpointInfo, EndpointView};
        let primary = EndpointView {
            info: Arc::new(EndpointInfo {
                index: 0,
                name: "p".into(),
                shard: crate::types::ShardId::parse("eu").unwrap(),
                region: crate::types::RegionName::parse("eu").unwrap(),
                configured: Configured::PrimaryCandidate,
                pg: tokio_postgres::Config::new(),
                probe_pg: tokio_postgres::Config::new(),
                pooler: Default::default(),
            }),
            status: status(7, 1, 500),
        };
        let snapshot = Snapshot {
            endpoints: vec![primary],
        };
        let c = [Candidate {
            index: 0,
            target: Target::Primary,
        }];
        assert_eq!(foreign_system(&snapshot, &c, &need(7, 1, 100)), None);
        assert_eq!(foreign_system(&snapshot, &c, &need(8, 1, 100)), Some(7));
    }
}

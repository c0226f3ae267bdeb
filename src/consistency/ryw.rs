//! Read-your-writes as pure decisions: given what the probes last saw of a copy and the position a
//! token requires on that copy's shard, may the copy serve the read now, later, or never?
//! The request path (to come) waits up to `ryw.max_wait` for "later" copies, then falls back to the
//! next copy and finally the primary.

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

/// Splits read candidates (nearest first) into those that can serve now and those worth waiting
/// for; candidates that can never serve are dropped. The primary always qualifies: the write
/// committed there (or on its predecessor, whose history it continues) unless it is another
/// cluster altogether.
pub fn split_candidates(
    snapshot: &Snapshot,
    candidates: &[Candidate],
    required: Option<&Position>,
) -> (Vec<Candidate>, Vec<Candidate>) {
    let Some(required) = required else {
        return (candidates.to_vec(), Vec::new());
    };
    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    for c in candidates {
        let status = &snapshot.get(c.index).status;
        if c.target == Target::Primary {
            if status.system_id.is_none_or(|s| s == required.system_id) {
                ready.push(*c);
            }
            continue;
        }
        match replica_eligibility(status, required) {
            Eligibility::Now => ready.push(*c),
            Eligibility::NotYet => waiting.push(*c),
            Eligibility::Never => {}
        }
    }
    (ready, waiting)
}

/// Why a token-carrying read left its nearest copy, noted while the candidates are tried and
/// counted once per read (`homeport_ryw_fallbacks_total{reason, target}`): the first reason a copy
/// was passed over, and where the read finally ran. Counting every passed-over copy and the
/// final target separately would count one fallback two or more times.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    reason: Option<&'static str>,
}

impl Fallback {
    /// A copy was passed over: `timeout`, `lagging`, `history` or `unavailable`.
    pub fn passed_over(&mut self, reason: &'static str) {
        self.reason.get_or_insert(reason);
    }

    /// The labels to count once the read ran on `ran_on` (`None`: no copy could serve it), or
    /// `None` when the nearest copy served it.
    pub fn outcome(self, ran_on: Option<Target>) -> Option<(&'static str, &'static str)> {
        let reason = self.reason?;
        let target = match ran_on {
            Some(Target::Primary) => "primary",
            Some(Target::LocalReplica | Target::RemoteReplica) => "replica",
            None => "none",
        };
        Some((reason, target))
    }
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
    fn candidates_split_into_ready_and_waiting() {
        use std::sync::Arc;

        use crate::topology::{Configured, EndpointInfo, EndpointView};
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
                view(0, status(1, 1, 50)),
                view(1, status(1, 1, 200)),
                view(2, status(1, 1, 300)),
                view(3, status(1, 2, 900)),
            ],
        };
        let c = |index, target| Candidate { index, target };
        let candidates = [
            c(0, Target::LocalReplica),
            c(1, Target::RemoteReplica),
            c(3, Target::RemoteReplica),
            c(2, Target::Primary),
        ];
        let (ready, waiting) = split_candidates(&snapshot, &candidates, Some(&need(1, 1, 100)));
        assert_eq!(ready, [c(1, Target::RemoteReplica), c(2, Target::Primary)]);
        assert_eq!(waiting, [c(0, Target::LocalReplica)]);
        let (all, none) = split_candidates(&snapshot, &candidates, None);
        assert_eq!((all.len(), none.len()), (4, 0));
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
                shard: crate::types::RegionName::parse("eu").unwrap(),
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

    #[test]
    fn a_fallback_is_counted_once_with_the_first_reason_and_the_final_target() {
        let mut f = Fallback::default();
        assert_eq!(
            f.outcome(Some(Target::LocalReplica)),
            None,
            "nearest copy served"
        );
        f.passed_over("lagging");
        f.passed_over("timeout");
        assert_eq!(
            f.outcome(Some(Target::Primary)),
            Some(("lagging", "primary"))
        );
        assert_eq!(
            f.outcome(Some(Target::RemoteReplica)),
            Some(("lagging", "replica"))
        );
        assert_eq!(f.outcome(None), Some(("lagging", "none")));
    }
}

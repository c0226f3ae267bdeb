//! Routing decisions as pure functions: a request's intent, the user's home shard and a topology
//! snapshot in, an ordered list of candidate endpoints out. No I/O happens here; the callers try
//! candidates in order.
//!
//! - Writes go to the home shard's primary, and only there.
//! - Reads go to the nearest healthy copy: a replica in the sidecar's own region, the primary if
//!   it is in the sidecar's region, the other replicas by measured RTT, then the primary
//!   (`primary_reads = "last-resort"` moves the primary to the very end in every case).

use std::time::Duration;

use crate::config::PrimaryReads;
use crate::sql::RouteHint;
use crate::topology::{EndpointView, Snapshot};
use crate::types::{Intent, RegionName, ShardId};

/// What a request (HTTP) or a transaction (wire) runs as, and which copies may serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    /// Read or write: the `intent` metric label, whether a commit position is taken, whether a
    /// token read waits for a replica, whether an unprovable read is guarded.
    pub intent: Intent,
    /// Only the home primary may serve it (a `homeport_route='primary'` hint).
    pub primary_only: bool,
}

impl Effective {
    /// The intent whose candidates may serve it: a write's (the home primary) when the hint
    /// asks for the primary.
    pub fn candidates_for(self) -> Intent {
        if self.primary_only {
            Intent::Write
        } else {
            self.intent
        }
    }
}

/// The one intent rule of both front ends. `read_only`: every statement is provably read-only
/// (the classifier); `explicit`: what the client declared (`"intent"` over HTTP; `BEGIN READ ONLY`
/// or an optimistic transaction on the wire); `hint`: a `homeport_route` comment.
///
/// An explicit intent wins; otherwise a request is a read only when provably read-only. A
/// `primary` hint does not make a read a write: it stays a read (counted as one, no commit
/// position taken, an unprovable explicit read still guarded) that only the home primary may
/// serve. A `replica` hint changes nothing: a write never leaves the primary.
pub fn effective_intent(
    read_only: bool,
    explicit: Option<Intent>,
    hint: Option<RouteHint>,
) -> Effective {
    let intent = match explicit {
        Some(intent) => intent,
        None if read_only => Intent::Read,
        None => Intent::Write,
    };
    Effective {
        intent,
        primary_only: hint == Some(RouteHint::Primary),
    }
}

/// Where a candidate sits relative to the sidecar, also the `target` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    LocalReplica,
    RemoteReplica,
    Primary,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::LocalReplica => "local_replica",
            Target::RemoteReplica => "remote_replica",
            Target::Primary => "primary",
        }
    }

    /// The `primary|replica` half of `Homeport-Served-By`.
    pub fn role_str(self) -> &'static str {
        match self {
            Target::Primary => "primary",
            _ => "replica",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Index of the endpoint in the snapshot.
    pub index: usize,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no healthy primary for shard {0}")]
    NoPrimary(ShardId),
    #[error("no healthy copy of shard {0} can serve this read")]
    NoCopy(ShardId),
}

/// The only place a write for `shard` may run.
pub fn write_candidate(snapshot: &Snapshot, shard: &ShardId) -> Result<Candidate, RouteError> {
    snapshot
        .primary_of(shard)
        .map(|p| Candidate {
            index: p.info.index,
            target: Target::Primary,
        })
        .ok_or_else(|| RouteError::NoPrimary(shard.clone()))
}

/// Healthy copies of `shard` in nearest-copy order.
pub fn read_candidates(
    snapshot: &Snapshot,
    shard: &ShardId,
    local: &RegionName,
    primary_reads: PrimaryReads,
) -> Result<Vec<Candidate>, RouteError> {
    let mut replicas: Vec<&EndpointView> = snapshot
        .shard_copies(shard)
        .filter(|e| e.is_up() && e.status.role == Some(crate::types::Role::Replica))
        .collect();
    // Local replicas first, then by RTT; unmeasured RTTs sort last, ties keep config order.
    replicas.sort_by_key(|e| {
        (
            &e.info.region != local,
            e.status.rtt.is_none(),
            e.status.rtt,
        )
    });
    let primary = snapshot.primary_of(shard);

    let mut out = Vec::with_capacity(replicas.len() + 1);
    // The sort put local replicas first (this runs per routed statement: no second list).
    let (local_replicas, remote_replicas) =
        replicas.split_at(replicas.partition_point(|e| &e.info.region == local));
    out.extend(local_replicas.iter().map(|e| Candidate {
        index: e.info.index,
        target: Target::LocalReplica,
    }));
    let primary_is_local = primary.is_some_and(|p| &p.info.region == local);
    let primary_candidate = primary.map(|p| Candidate {
        index: p.info.index,
        target: Target::Primary,
    });
    if primary_is_local && primary_reads == PrimaryReads::Nearest {
        out.extend(primary_candidate);
    }
    out.extend(remote_replicas.iter().map(|e| Candidate {
        index: e.info.index,
        target: Target::RemoteReplica,
    }));
    if !(primary_is_local && primary_reads == PrimaryReads::Nearest) {
        out.extend(primary_candidate);
    }
    if out.is_empty() {
        return Err(RouteError::NoCopy(shard.clone()));
    }
    Ok(out)
}

/// Moves replicas that are slow to answer (smoothed probe RTT over `slow_rtt`) or far behind
/// (measured lag over `max_lag`) to the end of the list, keeping the order otherwise: they still
/// serve when nothing else can, but no read waits on them while a healthy copy exists.
pub fn demote_slow(
    snapshot: &Snapshot,
    candidates: Vec<Candidate>,
    slow_rtt: Duration,
    max_lag: Duration,
) -> Vec<Candidate> {
    let slow = |c: &Candidate| {
        let s = &snapshot.get(c.index).status;
        c.target != Target::Primary
            && (s.rtt.is_some_and(|r| r > slow_rtt) || s.lag.is_some_and(|l| l > max_lag))
    };
    // A stable sort keeps the order within each group, in place (a handful of candidates).
    let mut candidates = candidates;
    candidates.sort_by_key(slow);
    candidates
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_intent_rule() {
        use Intent::{Read, Write};
        let p = Some(RouteHint::Primary);
        let r = Some(RouteHint::Replica);
        // (provably read-only, explicit, hint) -> (intent, primary only, candidates of)
        let table = [
            (true, None, None, Read, false, Read),
            (false, None, None, Write, false, Write),
            (false, Some(Read), None, Read, false, Read),
            (true, Some(Write), None, Write, false, Write),
            (true, None, p, Read, true, Write),
            (false, Some(Read), p, Read, true, Write),
            (false, None, p, Write, true, Write),
            (false, None, r, Write, false, Write),
            (true, None, r, Read, false, Read),
        ];
        for (read_only, explicit, hint, intent, primary_only, of) in table {
            let e = effective_intent(read_only, explicit, hint);
            let case = (read_only, explicit, hint);
            assert_eq!(
                (e.intent, e.primary_only),
                (intent, primary_only),
                "{case:?}"
            );
            assert_eq!(e.candidates_for(), of, "{case:?}");
        }
    }

    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::topology::health::Health;
    use crate::topology::{Configured, EndpointInfo, EndpointStatus};
    use crate::types::Role;

    fn shard(s: &str) -> ShardId {
        ShardId::parse(s).unwrap()
    }

    fn region(s: &str) -> RegionName {
        RegionName::parse(s).unwrap()
    }

    /// (shard, region, role, up, rtt ms)
    fn snapshot(rows: &[(&str, &str, Role, bool, u64)]) -> Snapshot {
        let endpoints = rows
            .iter()
            .enumerate()
            .map(|(index, (shard, reg, role, up, rtt))| {
                let health = Health::default().observe(*up, 1, 1);
                crate::topology::EndpointView {
                    info: Arc::new(EndpointInfo {
                        index,
                        name: format!("e{index}"),
                        shard: self::shard(shard),
                        region: region(reg),
                        configured: if *role == Role::Primary {
                            Configured::PrimaryCandidate
                        } else {
                            Configured::Replica
                        },
                        pg: tokio_postgres::Config::new(),
                        probe_pg: tokio_postgres::Config::new(),
                        pooler: Default::default(),
                    }),
                    status: EndpointStatus {
                        health,
                        role: Some(*role),
                        rtt: Some(Duration::from_millis(*rtt)),
                        ..Default::default()
                    },
                }
            })
            .collect();
        Snapshot { endpoints }
    }

    fn order(s: &Snapshot, shard: &str, local: &str, pr: PrimaryReads) -> Vec<(usize, Target)> {
        read_candidates(s, &self::shard(shard), &region(local), pr)
            .unwrap()
            .into_iter()
            .map(|c| (c.index, c.target))
            .collect()
    }

    use Role::{Primary as P, Replica as R};
    use Target::{LocalReplica as LR, Primary as PT, RemoteReplica as RR};

    #[test]
    fn write_for_remote_user_goes_to_home_primary() {
        let s = snapshot(&[
            ("eu", "eu", P, true, 1),
            ("eu", "us", R, true, 1),
            ("us", "us", P, true, 1),
        ]);
        assert_eq!(
            write_candidate(&s, &shard("eu")).unwrap(),
            Candidate {
                index: 0,
                target: PT
            }
        );
        assert_eq!(write_candidate(&s, &shard("us")).unwrap().index, 2);
    }

    #[test]
    fn write_without_healthy_primary_fails() {
        let s = snapshot(&[("eu", "eu", P, false, 1), ("eu", "us", R, true, 1)]);
        assert_eq!(
            write_candidate(&s, &shard("eu")),
            Err(RouteError::NoPrimary(shard("eu")))
        );
    }

    #[test]
    fn promoted_replica_takes_writes() {
        let s = snapshot(&[("eu", "eu", P, false, 1), ("eu", "eu", P, true, 1)]);
        assert_eq!(write_candidate(&s, &shard("eu")).unwrap().index, 1);
    }

    #[test]
    fn remote_user_reads_from_local_replica_of_their_shard() {
        let s = snapshot(&[("eu", "eu", P, true, 80), ("eu", "us", R, true, 1)]);
        assert_eq!(
            order(&s, "eu", "us", PrimaryReads::Nearest),
            [(1, LR), (0, PT)]
        );
    }

    #[test]
    fn local_user_prefers_local_replica_then_local_primary() {
        let s = snapshot(&[
            ("eu", "eu", P, true, 1),
            ("eu", "us", R, true, 90),
            ("eu", "eu", R, true, 2),
        ]);
        assert_eq!(
            order(&s, "eu", "eu", PrimaryReads::Nearest),
            [(2, LR), (0, PT), (1, RR)]
        );
    }

    #[test]
    fn last_resort_keeps_primary_at_the_end() {
        let s = snapshot(&[("eu", "eu", P, true, 1), ("eu", "us", R, true, 90)]);
        assert_eq!(
            order(&s, "eu", "eu", PrimaryReads::LastResort),
            [(1, RR), (0, PT)]
        );
    }

    #[test]
    fn remote_replicas_sorted_by_rtt() {
        let s = snapshot(&[
            ("eu", "eu", P, true, 100),
            ("eu", "ap", R, true, 150),
            ("eu", "sa", R, true, 50),
        ]);
        assert_eq!(
            order(&s, "eu", "us", PrimaryReads::Nearest),
            [(2, RR), (1, RR), (0, PT)]
        );
    }

    #[test]
    fn unhealthy_copies_are_skipped() {
        let s = snapshot(&[("eu", "eu", P, true, 80), ("eu", "us", R, false, 1)]);
        assert_eq!(order(&s, "eu", "us", PrimaryReads::Nearest), [(0, PT)]);
        let dead = snapshot(&[("eu", "eu", P, false, 80), ("eu", "us", R, false, 1)]);
        assert_eq!(
            read_candidates(&dead, &shard("eu"), &region("us"), PrimaryReads::Nearest),
            Err(RouteError::NoCopy(shard("eu")))
        );
    }

    #[test]
    fn other_shards_are_never_candidates() {
        let s = snapshot(&[
            ("us", "us", P, true, 1),
            ("us", "eu", R, true, 1),
            ("eu", "eu", P, true, 1),
        ]);
        assert_eq!(order(&s, "eu", "eu", PrimaryReads::Nearest), [(2, PT)]);
    }

    #[test]
    fn slow_or_far_behind_replicas_go_last() {
        let mut s = snapshot(&[
            ("eu", "us", Role::Replica, true, 1),
            ("eu", "ap", Role::Replica, true, 40),
            ("eu", "eu", Role::Primary, true, 80),
        ]);
        let all = read_candidates(&s, &shard("eu"), &region("us"), PrimaryReads::Nearest).unwrap();
        let order = |c: &[Candidate]| c.iter().map(|c| c.index).collect::<Vec<_>>();
        let (rtt, lag) = (Duration::from_millis(250), Duration::from_secs(30));
        assert_eq!(order(&demote_slow(&s, all.clone(), rtt, lag)), [0, 1, 2]);
        // The local replica answers slowly: everything else first.
        s.endpoints[0].status.rtt = Some(Duration::from_millis(900));
        assert_eq!(order(&demote_slow(&s, all.clone(), rtt, lag)), [1, 2, 0]);
        // ... or is a minute behind.
        s.endpoints[0].status.rtt = Some(Duration::from_millis(1));
        s.endpoints[0].status.lag = Some(Duration::from_secs(60));
        assert_eq!(order(&demote_slow(&s, all.clone(), rtt, lag)), [1, 2, 0]);
        // A slow primary is never demoted: it is the copy of last resort anyway.
        s.endpoints[0].status.lag = None;
        s.endpoints[2].status.rtt = Some(Duration::from_secs(2));
        assert_eq!(order(&demote_slow(&s, all, rtt, lag)), [0, 1, 2]);
    }
}

//! What `/readyz` answers, as a pure decision over a topology snapshot.
//!
//! Readiness gates the whole application pod: a pod that is not ready leaves its Services. All
//! pods of a region share the same databases, so an unready verdict caused by a database takes
//! the whole region out of rotation at once. The rule therefore only says "not ready" when this
//! sidecar cannot serve anything useful, and keeps the pod ready through partial failures
//! (static stability):
//!
//! - draining (SIGTERM received): not ready;
//! - before every endpoint has had its first probe outcome (success or failure, bounded by
//!   `probe.timeout`): not ready, so a fresh pod does not take traffic on a guessed topology;
//! - some endpoint located in this region is up: ready. A cross-region cut leaves the local
//!   copies, so the pod stays ready, keeps serving local reads, and fails remote writes fast
//!   with 503 / `08006`. A local replica that is down while the local primary is up: ready;
//! - no local endpoint up, but every shard's primary is up (reachable across regions): ready.
//!   Writes go home anyway and reads fall back to the primaries, slower but correct;
//! - otherwise not ready: this region's databases are gone and some shard has no reachable
//!   primary, so every pod of the region is in the same state and the regional load balancer
//!   should send users elsewhere.

use super::Snapshot;
use crate::types::{RegionName, ShardId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Local copies are reachable.
    Ready,
    /// No local copy is up, but every shard's primary is.
    ReadyThroughPrimaries,
    Draining,
    /// Some endpoint has not had its first probe outcome yet.
    Starting,
    /// Nothing local is up and some shard has no reachable primary.
    Unreachable,
}

impl Readiness {
    pub fn is_ready(self) -> bool {
        matches!(self, Readiness::Ready | Readiness::ReadyThroughPrimaries)
    }

    /// The reason `/readyz` reports.
    pub fn describe(self) -> &'static str {
        match self {
            Readiness::Ready => "local copies reachable",
            Readiness::ReadyThroughPrimaries => {
                "no local copy is up; serving through the shards' primaries"
            }
            Readiness::Draining => "draining",
            Readiness::Starting => "waiting for the first probe of every endpoint",
            Readiness::Unreachable => "no local copy is up and some shard's primary is unreachable",
        }
    }
}

/// The readiness of a sidecar in `region` serving `shards`, given what the probes last saw.
pub fn readiness(
    snapshot: &Snapshot,
    region: &RegionName,
    shards: &[ShardId],
    draining: bool,
) -> Readiness {
    if draining {
        return Readiness::Draining;
    }
    if !snapshot.endpoints.iter().all(|e| e.status.health.probed) {
        return Readiness::Starting;
    }
    if snapshot
        .endpoints
        .iter()
        .any(|e| &e.info.region == region && e.is_up())
    {
        return Readiness::Ready;
    }
    if !shards.is_empty() && shards.iter().all(|s| snapshot.primary_of(s).is_some()) {
        return Readiness::ReadyThroughPrimaries;
    }
    Readiness::Unreachable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::health::Health;
    use crate::topology::{Configured, EndpointInfo, EndpointStatus, EndpointView};
    use crate::types::Role;
    use std::sync::Arc;

    /// (shard, located in, role, probed, up)
    type Row = (&'static str, &'static str, Role, bool, bool);

    fn snapshot(rows: &[Row]) -> Snapshot {
        let endpoints = rows
            .iter()
            .enumerate()
            .map(|(index, (shard, region, role, probed, up))| {
                let mut health = Health::default();
                if *probed {
                    health = health.observe(*up, 1, 1);
                }
                EndpointView {
                    info: Arc::new(EndpointInfo {
                        index,
                        name: format!("{shard}-{region}-{index}"),
                        shard: ShardId::parse(shard).unwrap(),
                        region: RegionName::parse(region).unwrap(),
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
                        role: probed.then_some(*role),
                        ..Default::default()
                    },
                }
            })
            .collect();
        Snapshot { endpoints }
    }

    fn name(s: &str) -> RegionName {
        RegionName::parse(s).unwrap()
    }

    /// The us sidecar of a two-region topology: shards eu and us, each with a replica in the other
    /// region, and a directory primary in eu with a replica in us. Each case flips endpoints.
    #[test]
    fn readiness_table() {
        use Readiness::*;
        use Role::{Primary as P, Replica as R};
        let all_up: [Row; 6] = [
            ("eu", "eu", P, true, true),
            ("eu", "us", R, true, true),
            ("us", "us", P, true, true),
            ("us", "eu", R, true, true),
            ("directory", "eu", P, true, true),
            ("directory", "us", R, true, true),
        ];
        let with = |changes: &[(usize, bool)]| {
            let mut rows = all_up;
            for (i, up) in changes {
                rows[*i].4 = *up;
            }
            rows
        };
        let cases: Vec<(&str, [Row; 6], bool, Readiness)> = vec![
            ("everything up", all_up, false, Ready),
            ("draining wins over everything", all_up, true, Draining),
            (
                "local replica of eu down, local primary up",
                with(&[(1, false)]),
                false,
                Ready,
            ),
            (
                "cross-region cut: every eu endpoint unreachable",
                with(&[(0, false), (3, false), (4, false)]),
                false,
                Ready,
            ),
            (
                "every local copy down, both home primaries reachable",
                with(&[(1, false), (2, false), (5, false)]),
                false,
                Unreachable,
            ),
            (
                "local primary down, local replica of eu up",
                with(&[(2, false)]),
                false,
                Ready,
            ),
            (
                "nothing reachable",
                with(&[
                    (0, false),
                    (1, false),
                    (2, false),
                    (3, false),
                    (4, false),
                    (5, false),
                ]),
                false,
                Unreachable,
            ),
        ];
        let shards = [ShardId::parse("eu").unwrap(), ShardId::parse("us").unwrap()];
        for (what, rows, draining, want) in cases {
            let got = readiness(&snapshot(&rows), &name("us"), &shards, draining);
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_region_of_replicas_stays_ready_through_the_home_primaries() {
        use Role::{Primary as P, Replica as R};
        // Region ap holds only replicas; both are down, both home primaries are reachable.
        let rows: [Row; 4] = [
            ("eu", "eu", P, true, true),
            ("eu", "ap", R, true, false),
            ("us", "us", P, true, true),
            ("us", "ap", R, true, false),
        ];
        let shards = [ShardId::parse("eu").unwrap(), ShardId::parse("us").unwrap()];
        let got = readiness(&snapshot(&rows), &name("ap"), &shards, false);
        assert_eq!(got, Readiness::ReadyThroughPrimaries);
        assert!(got.is_ready());
        // With one home primary gone as well, the region cannot serve that shard at all.
        let mut rows = rows;
        rows[2].4 = false;
        assert_eq!(
            readiness(&snapshot(&rows), &name("ap"), &shards, false),
            Readiness::Unreachable
        );
    }

    #[test]
    fn not_ready_until_every_endpoint_has_a_first_outcome() {
        use Role::{Primary as P, Replica as R};
        let rows: [Row; 2] = [("eu", "eu", P, true, true), ("eu", "us", R, false, false)];
        assert_eq!(
            readiness(
                &snapshot(&rows),
                &name("eu"),
                &[ShardId::parse("eu").unwrap()],
                false
            ),
            Readiness::Starting
        );
        // A failed first probe counts as an outcome: a cut link does not hold readiness back.
        let rows: [Row; 2] = [("eu", "eu", P, true, true), ("eu", "us", R, true, false)];
        assert_eq!(
            readiness(
                &snapshot(&rows),
                &name("eu"),
                &[ShardId::parse("eu").unwrap()],
                false
            ),
            Readiness::Ready
        );
    }
}

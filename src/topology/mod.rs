//! The live topology: every configured endpoint with what its probe last saw (role, WAL
//! position, smoothed RTT, health). Request paths read an immutable [`Snapshot`] through an
//! atomic pointer swap and never wait on a lock; probe tasks (`probe`) publish new snapshots.

pub mod health;
pub mod lag;
pub mod probe;
pub mod readiness;
pub mod share;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::{Config, EndpointConfig, ShardConfig};
use crate::types::{Lsn, RegionName, Role, ShardId};
use health::Health;

/// Whether the config lists an endpoint as a primary candidate or as a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Configured {
    PrimaryCandidate,
    Replica,
}

/// What never changes about an endpoint while a config is loaded.
#[derive(Debug)]
pub struct EndpointInfo {
    /// Position in [`Snapshot::endpoints`]; also the key of its connection pool.
    pub index: usize,
    pub name: String,
    pub shard: ShardId,
    pub region: RegionName,
    pub configured: Configured,
    pub pg: tokio_postgres::Config,
    /// Where probes connect: `probe_url` when configured, else the data path's `pg`.
    pub probe_pg: tokio_postgres::Config,
    /// `pooler = "transaction"`: `pg` is a transaction-mode pooler (no server state may
    /// outlive a transaction on it).
    pub pooler: crate::config::Pooler,
}

impl EndpointView {
    /// A replica of shard `eu` in region `us` with `status`, for tests of the pure decisions.
    #[cfg(test)]
    pub fn for_tests(index: usize, status: EndpointStatus) -> EndpointView {
        EndpointView {
            info: Arc::new(EndpointInfo {
                index,
                name: format!("e{index}"),
                shard: crate::types::ShardId::parse("eu").expect("valid"),
                pooler: Default::default(),
                region: RegionName::parse("us").expect("valid"),
                configured: Configured::Replica,
                pg: tokio_postgres::Config::new(),
                probe_pg: tokio_postgres::Config::new(),
            }),
            status,
        }
    }
}

/// What the probes last saw.
#[derive(Debug, Clone, Default)]
pub struct EndpointStatus {
    pub health: Health,
    pub role: Option<Role>,
    /// `pg_current_wal_lsn()` on a primary, `pg_last_wal_replay_lsn()` on a replica.
    pub wal_lsn: Option<Lsn>,
    pub rtt: Option<Duration>,
    /// `pg_control_system()`'s system identifier: which cluster the WAL positions belong to.
    pub system_id: Option<u64>,
    /// The control file's timeline.
    pub timeline: Option<u32>,
    /// Replication lag in seconds on this sidecar's clock (replicas only), see `lag`.
    pub lag: Option<Duration>,
    pub last_ok: Option<Instant>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EndpointView {
    pub info: Arc<EndpointInfo>,
    pub status: EndpointStatus,
}

impl EndpointView {
    pub fn is_up(&self) -> bool {
        self.status.health.up
    }

    pub fn is_primary(&self) -> bool {
        self.status.role == Some(Role::Primary)
    }
}

/// An immutable picture of the whole topology at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub endpoints: Vec<EndpointView>,
}

impl Snapshot {
    pub fn shard_copies<'s>(
        &'s self,
        shard: &'s ShardId,
    ) -> impl Iterator<Item = &'s EndpointView> + 's {
        self.endpoints
            .iter()
            .filter(move |e| &e.info.shard == shard)
    }

    /// The healthy endpoint of `shard` whose probe says it is not in recovery. With more than one
    /// (a split brain during failover), the first configured candidate wins.
    pub fn primary_of<'s>(&'s self, shard: &'s ShardId) -> Option<&'s EndpointView> {
        self.shard_copies(shard)
            .find(|e| e.is_up() && e.is_primary())
    }

    /// Replication lag in bytes of a replica behind its shard's primary, as last probed.
    pub fn lag_bytes(&self, replica: &EndpointView) -> Option<u64> {
        let primary = self.primary_of(&replica.info.shard)?;
        Some(primary.status.wal_lsn?.bytes_since(replica.status.wal_lsn?))
    }

    pub fn get(&self, index: usize) -> &EndpointView {
        &self.endpoints[index]
    }
}

/// Shared handle to the current snapshot.
pub struct Topology {
    current: ArcSwap<Snapshot>,
    /// How every connection to these servers is made: plain or TLS (`postgres.sslmode`).
    pub tls: crate::db::tls::ServerTls,
    /// WAL position history of each shard's primary, fed and read only by probe tasks.
    lag: std::sync::Mutex<std::collections::HashMap<ShardId, lag::LagTracker>>,
}

impl Topology {
    /// Resolves once the probes declare endpoint `index` down (at once if it is down now). A
    /// request waiting on a server races this, so a partition or a dead server fails the request
    /// within the probes' detection time instead of leaving it hanging.
    pub async fn down(&self, index: usize, poll: std::time::Duration) {
        while self.snapshot().get(index).is_up() {
            tokio::time::sleep(poll).await;
        }
    }

    pub fn from_config(config: &Config) -> Topology {
        let mut endpoints = Vec::new();
        let shards = config
            .shards
            .iter()
            .chain(std::iter::once(&config.directory.shard));
        for shard in shards {
            add_shard(&mut endpoints, shard);
        }
        Topology {
            current: ArcSwap::from_pointee(Snapshot { endpoints }),
            tls: crate::db::tls::ServerTls::new(config.postgres.tls_roots.as_ref()),
            lag: Default::default(),
        }
    }

    /// Feeds a primary's position into its shard's lag history.
    pub fn observe_primary(&self, shard: &ShardId, lsn: Lsn, at: Instant) {
        let mut map = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(shard.clone())
            .or_default()
            .observe_primary(lsn, at);
    }

    /// Forgets every primary's position history (see `share`: a sidecar that read positions
    /// second hand starts its own history afresh when it probes again).
    pub fn reset_lag_history(&self) {
        self.lag.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Lag of a replica of `shard` that had replayed `replay` at `at`.
    pub fn replica_lag(&self, shard: &ShardId, replay: Lsn, at: Instant) -> Option<Duration> {
        let map = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        map.get(shard)?.lag(replay, at)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Applies `f` to one endpoint's status and publishes the result. Probe tasks are the only
    /// writers; `rcu` retries if two of them publish at once.
    pub fn update(&self, index: usize, f: impl Fn(&mut EndpointStatus)) {
        self.current.rcu(|old| {
            let mut next = Snapshot::clone(old);
            f(&mut next.endpoints[index].status);
            next
        });
    }
}

fn add_shard(endpoints: &mut Vec<EndpointView>, shard: &ShardConfig) {
    let tagged = shard
        .primaries
        .iter()
        .map(|e| (e, Configured::PrimaryCandidate))
        .chain(shard.replicas.iter().map(|e| (e, Configured::Replica)));
    for (e, configured) in tagged {
        let EndpointConfig {
            name,
            region,
            pg,
            probe_pg,
            pooler,
        } = e;
        endpoints.push(EndpointView {
            info: Arc::new(EndpointInfo {
                index: endpoints.len(),
                name: name.clone(),
                shard: shard.name.clone(),
                region: region.clone(),
                configured,
                probe_pg: probe_pg.clone().unwrap_or_else(|| pg.clone()),
                pg: pg.clone(),
                pooler: *pooler,
            }),
            status: EndpointStatus::default(),
        });
    }
}

/// The JSON shape of `GET /v1/topology` and the table of `homeport check`.
#[derive(Debug, Serialize)]
pub struct EndpointReport {
    pub endpoint: String,
    pub shard: String,
    pub region: String,
    pub configured: Configured,
    pub role: Option<Role>,
    pub up: bool,
    pub probed: bool,
    pub rtt_ms: Option<f64>,
    pub wal_lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub last_error: Option<String>,
}

impl Snapshot {
    pub fn report(&self) -> Vec<EndpointReport> {
        self.endpoints
            .iter()
            .map(|e| EndpointReport {
                endpoint: e.info.name.clone(),
                shard: e.info.shard.to_string(),
                region: e.info.region.to_string(),
                configured: e.info.configured,
                role: e.status.role,
                up: e.is_up(),
                probed: e.status.health.probed,
                rtt_ms: e.status.rtt.map(|d| d.as_secs_f64() * 1000.0),
                wal_lsn: e.status.wal_lsn.map(|l| l.to_string()),
                lag_seconds: e.status.lag.map(|d| d.as_secs_f64()),
                lag_bytes: if e.status.role == Some(Role::Replica) {
                    self.lag_bytes(e)
                } else {
                    None
                },
                last_error: e.status.last_error.clone(),
            })
            .collect()
    }
}

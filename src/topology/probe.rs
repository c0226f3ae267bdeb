//! One probe task per endpoint. Each keeps its own connection (not a pooled one, so a full pool
//! never hides a healthy server) and asks, in one round trip, for the server's role and WAL
//! position; the time that takes is the endpoint's RTT sample. Results go through the health
//! hysteresis and are published into the topology snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::health::smooth_rtt;
use super::share::{self, Mode, ModeCell};
use super::{EndpointInfo, Topology};
use crate::config::ProbeConfig;
use crate::db::tls::ServerTls;
use crate::kv::Kv;
use crate::metrics;
use crate::types::{Lsn, RegionName, Role};

/// `pg_is_in_recovery()` is the role; the WAL position is the replay position on a replica and
/// the insert position on a primary. Text results keep this a single simple-protocol round trip.
/// The system identifier and the timeline identify which history a position belongs to
/// (consistency tokens carry both); all of it is readable without superuser rights. A primary's
/// timeline comes from the name of its current WAL file (its first 8 hex digits): the control
/// file's checkpoint timeline stays the old one after a promotion until the next checkpoint. A
/// replica reports its last restartpoint's timeline, which can only lag behind (then tokens of the
/// new timeline go to the primary, never to a copy that lacks them).
/// What a reader sends (`share`), rarely; the comment tells it apart in `pg_stat_statements`.
pub const RTT_SQL: &str = "SELECT 1 /* homeport rtt */";

pub const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
     (SELECT system_identifier FROM pg_control_system())::text, \
     (CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
      ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END)::text";

/// What one successful probe saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeResult {
    pub role: Role,
    pub wal_lsn: Option<Lsn>,
    pub rtt: Duration,
    /// When the server answered, estimated as the middle of the round trip.
    pub at: Instant,
    pub system_id: Option<u64>,
    pub timeline: Option<u32>,
}

/// Starts a probe task for every endpoint of the topology and, with a regional Redis and
/// `probe.shared`, the coordinator that shares results between the region's sidecars (`share`).
pub fn spawn_all(
    topology: Arc<Topology>,
    config: ProbeConfig,
    kv: Option<Arc<Kv>>,
    region: RegionName,
) -> Vec<JoinHandle<()>> {
    let mode = Arc::new(ModeCell::default());
    crate::metrics::probe_mode(share::mode_name(Mode::OnOwn));
    let mut tasks: Vec<JoinHandle<()>> = topology
        .snapshot()
        .endpoints
        .iter()
        .map(|e| {
            tokio::spawn(run(
                topology.clone(),
                e.info.clone(),
                config.clone(),
                mode.clone(),
            ))
        })
        .collect();
    if let Some(kv) = kv.filter(|_| config.shared) {
        tasks.push(tokio::spawn(share::coordinate(
            topology, kv, region, config, mode,
        )));
    }
    tasks
}

async fn run(
    topology: Arc<Topology>,
    info: Arc<EndpointInfo>,
    config: ProbeConfig,
    mode: Arc<ModeCell>,
) {
    let mut client: Option<Client> = None;
    let started = Instant::now();
    let mut last_rtt: Option<Instant> = None;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if mode.get() == Mode::Reader {
            // A reader holds no probe connection and measures only its own round trip.
            client = None;
            if last_rtt.is_none_or(|t| t.elapsed() >= config.rtt_interval) {
                last_rtt = Some(Instant::now());
                let sample = tokio::time::timeout(config.timeout, rtt_once(&info, &topology.tls));
                if let Ok(Ok(rtt)) = sample.await {
                    topology.update(info.index, |s| s.rtt = Some(smooth_rtt(s.rtt, rtt)));
                }
            }
            export(&topology, &info, started);
            continue;
        }
        let outcome = tokio::time::timeout(
            config.timeout,
            probe_once(&info, &topology.tls, &mut client),
        )
        .await;
        let outcome = match outcome {
            Ok(r) => r,
            Err(_) => Err(format!("probe timed out after {:?}", config.timeout)),
        };
        if outcome.is_err() {
            // A connection that failed or hung is not trusted again; the next tick reconnects.
            client = None;
        }
        publish(&topology, &info, &config, outcome, started);
    }
}

/// A reader's round-trip sample: one trivial query on a connection closed right after, so the
/// readers of a fleet hold no connections between samples.
async fn rtt_once(info: &EndpointInfo, tls: &ServerTls) -> Result<Duration, String> {
    let client = connect(&info.probe_pg, tls).await?;
    let started = Instant::now();
    client
        .simple_query(RTT_SQL)
        .await
        .map_err(|e| e.to_string())?;
    Ok(started.elapsed())
}

/// Runs the probe query once, connecting first if needed.
pub async fn probe_once(
    info: &EndpointInfo,
    tls: &ServerTls,
    client: &mut Option<Client>,
) -> Result<ProbeResult, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(connect(&info.probe_pg, tls).await?);
    }
    let c = client.as_ref().expect("connected above");
    let started = Instant::now();
    let messages = c.simple_query(PROBE_SQL).await.map_err(|e| e.to_string())?;
    let rtt = started.elapsed();
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .ok_or("probe returned no row")?;
    let role = match row.get(0) {
        Some("t") => Role::Replica,
        Some("f") => Role::Primary,
        other => return Err(format!("unexpected pg_is_in_recovery() value {other:?}")),
    };
    let wal_lsn = row.get(1).and_then(|s| s.parse().ok());
    let system_id = row.get(2).and_then(|s| s.parse().ok());
    let timeline = row.get(3).and_then(|s| s.parse().ok());
    Ok(ProbeResult {
        role,
        system_id,
        timeline,
        wal_lsn,
        rtt,
        at: started + rtt / 2,
    })
}

pub async fn connect(pg: &tokio_postgres::Config, tls: &ServerTls) -> Result<Client, String> {
    let client = match tls.make_connect() {
        Some(tls) => {
            let (client, connection) =
                pg.connect(tls).await.map_err(|e| crate::db::describe(&e))?;
            tokio::spawn(connection);
            client
        }
        None => {
            let (client, connection) = pg
                .connect(NoTls)
                .await
                .map_err(|e| crate::db::describe(&e))?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

fn publish(
    topology: &Topology,
    info: &EndpointInfo,
    config: &ProbeConfig,
    outcome: Result<ProbeResult, String>,
    started: Instant,
) {
    let ok = outcome.is_ok();
    let lag = match &outcome {
        Ok(ProbeResult {
            role: Role::Primary,
            wal_lsn: Some(lsn),
            at,
            ..
        }) => {
            topology.observe_primary(&info.shard, *lsn, *at);
            None
        }
        Ok(ProbeResult {
            role: Role::Replica,
            wal_lsn: Some(lsn),
            at,
            ..
        }) => topology.replica_lag(&info.shard, *lsn, *at),
        _ => None,
    };
    topology.update(info.index, |s| {
        s.health = s.health.observe(ok, config.rise, config.fall);
        match &outcome {
            Ok(r) => {
                s.role = Some(r.role);
                s.wal_lsn = r.wal_lsn.or(s.wal_lsn);
                s.rtt = Some(smooth_rtt(s.rtt, r.rtt));
                s.system_id = r.system_id.or(s.system_id);
                s.timeline = r.timeline.or(s.timeline);
                s.lag = lag.or(if r.role == Role::Replica { s.lag } else { None });
                s.last_ok = Some(Instant::now());
                s.last_error = None;
            }
            Err(e) => s.last_error = Some(e.clone()),
        }
    });
    export(topology, info, started);
    if let Err(e) = &outcome {
        tracing::debug!(endpoint = %info.name, error = %e, "probe failed");
    }
}

/// Exports an endpoint's status as metrics, whoever probed it.
fn export(topology: &Topology, info: &EndpointInfo, started: Instant) {
    let snapshot = topology.snapshot();
    let view = snapshot.get(info.index);
    // The configured role, not the probed one: a label that changed on failover would leave a
    // stale series stuck at 0 and a false "endpoint down" alert.
    let role = match info.configured {
        super::Configured::PrimaryCandidate => "primary",
        super::Configured::Replica => "replica",
    };
    metrics::endpoint_up(
        &info.name,
        info.shard.as_str(),
        role,
        view.is_up(),
        view.status.rtt,
    );
    let since = view.status.last_ok.unwrap_or(started);
    metrics::probe_age(&info.name, info.shard.as_str(), role, since.elapsed());
    if view.status.role == Some(Role::Replica)
        && let Some(lag) = view.status.lag
    {
        metrics::replication_lag_seconds(
            info.shard.as_str(),
            &info.name,
            info.region.as_str(),
            lag,
        );
    }
    if view.status.role == Some(Role::Replica)
        && let Some(bytes) = snapshot.lag_bytes(view)
    {
        metrics::replication_lag_bytes(
            info.shard.as_str(),
            &info.name,
            info.region.as_str(),
            bytes,
        );
    }
}

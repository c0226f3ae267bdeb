//! Probe results shared by the sidecars of a region, so the probe load on a database does not
//! grow with the number of pods.
//!
//! Every tick (`probe.interval`) each sidecar asks the regional Redis for a lease. The one that
//! holds it is the **publisher**: its probe tasks probe every endpoint as usual, and it publishes
//! what they saw (role, timeline, WAL position, health, and the replicas' lag measured on *its*
//! clock, so the lag SLI stays free of clock skew) under a key whose TTL is
//! `probe.stale_after`. The others are **readers**: they apply the published snapshot and only
//! measure their own round trip to each endpoint, every `probe.rtt_interval`, on a connection
//! they close again (a reader holds no probe connection).
//!
//! Static stability first: when Redis has not answered for `stale_after` (a reader keeps what
//! it last read that long, on its own clock, so one slow round trip does not make the fleet
//! probe), or the snapshot is gone because the publisher stopped publishing for `stale_after`
//! (the TTL expires on Redis's clock, no cross-host clock enters), a sidecar is **on its own**
//! and probes everything itself, exactly as without Redis. A publisher that dies leaves its lease to expire after the same bound; the next
//! sidecar to ask takes it over.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::health::Health;
use super::{Snapshot, Topology};
use crate::config::ProbeConfig;
use crate::kv::Kv;
use crate::types::{Lsn, RegionName, Role};

/// What this sidecar's probe tasks do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Probe every endpoint (no Redis, Redis down, or no fresh snapshot).
    OnOwn = 0,
    /// Probe every endpoint and publish the results.
    Publisher = 1,
    /// Apply the published snapshot; measure only the own round trip, rarely.
    Reader = 2,
}

/// The mode, shared between the coordinator and the probe tasks.
#[derive(Debug, Default)]
pub struct ModeCell(AtomicU8);

impl ModeCell {
    pub fn get(&self) -> Mode {
        match self.0.load(Ordering::Relaxed) {
            1 => Mode::Publisher,
            2 => Mode::Reader,
            _ => Mode::OnOwn,
        }
    }

    fn set(&self, mode: Mode) {
        self.0.store(mode as u8, Ordering::Relaxed);
    }
}

/// One endpoint as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedEndpoint {
    pub name: String,
    pub up: bool,
    pub role: Option<Role>,
    pub wal_lsn: Option<String>,
    pub system_id: Option<u64>,
    pub timeline: Option<u32>,
    /// Replication lag on the publisher's clock, at its last probe.
    pub lag_ms: Option<f64>,
    /// How long before publishing the publisher last probed it successfully.
    pub age_ms: Option<u64>,
    pub error: Option<String>,
}

/// The published snapshot of a region's topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub v: u32,
    pub publisher: String,
    pub endpoints: Vec<PublishedEndpoint>,
}

/// What a publisher writes: only endpoints its own probes have seen.
pub fn publishable(snapshot: &Snapshot, publisher: &str, now: Instant) -> Published {
    Published {
        v: 1,
        publisher: publisher.to_string(),
        endpoints: snapshot
            .endpoints
            .iter()
            .filter(|e| e.status.health.probed)
            .map(|e| PublishedEndpoint {
                name: e.info.name.clone(),
                up: e.status.health.up,
                role: e.status.role,
                wal_lsn: e.status.wal_lsn.map(|l| l.to_string()),
                system_id: e.status.system_id,
                timeline: e.status.timeline,
                lag_ms: e.status.lag.map(|d| d.as_secs_f64() * 1000.0),
                age_ms: e
                    .status
                    .last_ok
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                error: e.status.last_error.clone(),
            })
            .collect(),
    }
}

/// Applies a published snapshot to this sidecar's topology; the round trip stays its own.
/// Returns how many endpoints it updated (names it does not know are ignored).
pub fn apply(topology: &Topology, published: &Published, now: Instant) -> usize {
    let snapshot = topology.snapshot();
    let mut applied = 0;
    for p in &published.endpoints {
        let Some(view) = snapshot.endpoints.iter().find(|e| e.info.name == p.name) else {
            continue;
        };
        let p = p.clone();
        topology.update(view.info.index, move |s| {
            s.health = Health::published(p.up);
            s.role = p.role;
            s.wal_lsn = p.wal_lsn.as_deref().and_then(|l| l.parse::<Lsn>().ok());
            s.system_id = p.system_id;
            s.timeline = p.timeline;
            s.lag = p
                .lag_ms
                .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0));
            s.last_ok = p
                .age_ms
                .and_then(|a| now.checked_sub(Duration::from_millis(a)));
            s.last_error = p.error.clone();
        });
        applied += 1;
    }
    applied
}

/// The Redis keys of a region's sidecars that share one endpoint table. Sidecars configured
/// with different endpoints never read each other's snapshot.
pub fn keys(region: &RegionName, snapshot: &Snapshot) -> (String, String) {
    let mut h = sha2::Sha256::new();
    for e in &snapshot.endpoints {
        h.update(e.info.name.as_bytes());
        h.update([0]);
        h.update(e.info.shard.as_str().as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let base = format!("homeport:probe:v1:{region}:{tag}");
    (format!("{base}:lease"), format!("{base}:snapshot"))
}

/// Takes the lease if free, renews it if ours: 1 = we publish, 0 = someone else does.
const LEASE_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// Decides the mode once per interval and moves snapshots through Redis. Runs for the life of
/// a generation (aborted with it).
pub async fn coordinate(
    topology: Arc<Topology>,
    kv: Arc<Kv>,
    region: RegionName,
    config: ProbeConfig,
    mode: Arc<ModeCell>,
) {
    let me: String = crate::random::bytes::<8>()
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .unwrap_or_else(|_| format!("pid{}", std::process::id()));
    let (lease, snapshot_key) = keys(&region, &topology.snapshot());
    let ttl_ms = config.stale_after.as_millis().to_string();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When this sidecar last applied a published snapshot (its own clock).
    let mut last_read: Option<Instant> = None;
    loop {
        ticker.tick().await;
        let before = mode.get();
        let held: Option<i64> = kv.eval(LEASE_SCRIPT, &[&lease], &[&me, &ttl_ms]).await;
        let next = match held {
            None => Mode::OnOwn,
            Some(1) => {
                // A reader that just took over publishes from the next tick, once its own
                // probes have refreshed what it only knew second hand.
                if before != Mode::Reader {
                    let text = serde_json::to_string(&publishable(
                        &topology.snapshot(),
                        &me,
                        Instant::now(),
                    ))
                    .unwrap_or_default();
                    kv.set_px(&snapshot_key, &text, config.stale_after).await;
                }
                Mode::Publisher
            }
            Some(_) => match read(&kv, &snapshot_key).await {
                Some(p) if p.publisher != me => {
                    apply(&topology, &p, Instant::now());
                    last_read = Some(Instant::now());
                    Mode::Reader
                }
                _ => Mode::OnOwn,
            },
        };
        // One slow or failed Redis round trip does not send a reader back to probing: what it
        // read stays good until it is `stale_after` old, like the snapshot in Redis itself.
        let next = match next {
            Mode::OnOwn
                if before == Mode::Reader
                    && last_read.is_some_and(|t| t.elapsed() < config.stale_after) =>
            {
                Mode::Reader
            }
            other => other,
        };
        if before == Mode::Reader && next != Mode::Reader {
            // Positions seen second hand leave gaps in the primary's history that would read as
            // lag; the own probes start a fresh one.
            topology.reset_lag_history();
        }
        if next != before {
            tracing::info!(from = ?before, to = ?next, "probe sharing mode changed");
            crate::metrics::probe_mode(mode_name(next));
        }
        mode.set(next);
    }
}

async fn read(kv: &Kv, key: &str) -> Option<Published> {
    let text = kv.get(key).await?;
    serde_json::from_str(&text)
        .map_err(|e| tracing::warn!(error = %e, "published probe snapshot unreadable; probing on our own"))
        .ok()
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::OnOwn => "own",
        Mode::Publisher => "publisher",
        Mode::Reader => "reader",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        let base = include_str!("../../config/eu.toml")
            .replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "");
        Topology::from_config(&crate::config::Config::parse(&base).unwrap())
    }

    #[test]
    fn a_reader_sees_what_the_publisher_probed() {
        let publisher = topology();
        let now = Instant::now();
        publisher.update(0, |s| {
            s.health = Health::default().observe(true, 1, 2);
            s.role = Some(Role::Primary);
            s.wal_lsn = Some(Lsn(0x1_0000_0010));
            s.timeline = Some(3);
            s.system_id = Some(42);
            s.last_ok = Some(now);
        });
        publisher.update(1, |s| {
            s.health = Health::default().observe(false, 1, 2);
            s.last_error = Some("connection refused".into());
        });
        publisher.update(2, |s| {
            s.health = Health::default().observe(true, 1, 2);
            s.role = Some(Role::Replica);
            s.lag = Some(Duration::from_millis(1500));
        });
        let p = publishable(&publisher.snapshot(), "a", now);
        assert_eq!(p.endpoints.len(), 3, "unprobed endpoints are not published");
        let text = serde_json::to_string(&p).unwrap();
        let reader = topology();
        let n = apply(&reader, &serde_json::from_str(&text).unwrap(), now);
        assert_eq!(n, 3);
        let s = reader.snapshot();
        assert!(s.get(0).is_up() && s.get(0).is_primary());
        assert_eq!(s.get(0).status.wal_lsn, Some(Lsn(0x1_0000_0010)));
        assert_eq!(s.get(0).status.timeline, Some(3));
        assert!(!s.get(1).is_up());
        assert_eq!(s.get(2).status.lag, Some(Duration::from_millis(1500)));
        assert_eq!(
            s.get(0).status.rtt,
            None,
            "the round trip is never taken second hand"
        );
    }

    #[test]
    fn unknown_endpoints_are_ignored() {
        let reader = topology();
        let p = Published {
            v: 1,
            publisher: "x".into(),
            endpoints: vec![PublishedEndpoint {
                name: "elsewhere:5432/app".into(),
                up: true,
                role: Some(Role::Primary),
                wal_lsn: None,
                system_id: None,
                timeline: None,
                lag_ms: None,
                age_ms: None,
                error: None,
            }],
        };
        assert_eq!(apply(&reader, &p, Instant::now()), 0);
        assert!(!reader.snapshot().get(0).status.health.probed);
    }

    #[test]
    fn keys_depend_on_region_and_endpoints() {
        let t = topology();
        let eu = RegionName::parse("eu").unwrap();
        let us = RegionName::parse("us").unwrap();
        let (lease, snap) = keys(&eu, &t.snapshot());
        assert!(lease.starts_with("homeport:probe:v1:eu:") && lease.ends_with(":lease"));
        assert_ne!(lease, snap);
        assert_ne!(keys(&us, &t.snapshot()).0, lease);
        let mut fewer = Snapshot::clone(&t.snapshot());
        fewer.endpoints.pop();
        assert_ne!(keys(&eu, &fewer).0, lease);
    }
}

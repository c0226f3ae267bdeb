//! Every metric homeport exports, named in one place (base units, `_total` counters), and the
//! Prometheus recorder that renders them for `GET /metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REPLICATION_LAG_SECONDS: &str = "homeport_replication_lag_seconds";
pub const REPLICATION_LAG_BYTES: &str = "homeport_replication_lag_bytes";
pub const ENDPOINT_UP: &str = "homeport_endpoint_up";
pub const ENDPOINT_RTT_SECONDS: &str = "homeport_endpoint_rtt_seconds";
pub const PROBE_AGE_SECONDS: &str = "homeport_probe_age_seconds";
pub const REQUESTS_TOTAL: &str = "homeport_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "homeport_request_duration_seconds";
pub const CROSS_REGION_REQUESTS_TOTAL: &str = "homeport_cross_region_requests_total";
pub const DIRECTORY_LOOKUPS_TOTAL: &str = "homeport_directory_lookups_total";
pub const RYW_WAIT_SECONDS: &str = "homeport_ryw_wait_seconds";
pub const RYW_FALLBACKS_TOTAL: &str = "homeport_ryw_fallbacks_total";
pub const IDEMPOTENCY_TOTAL: &str = "homeport_idempotency_total";
pub const IDEMPOTENCY_CACHE_TOTAL: &str = "homeport_idempotency_cache_lookups_total";
pub const CONFIG_RELOADS_TOTAL: &str = "homeport_config_reloads_total";
pub const WIRE_PINS_TOTAL: &str = "homeport_wire_pins_total";
pub const OPTIMISTIC_TRANSACTIONS_TOTAL: &str = "homeport_optimistic_transactions_total";
pub const OPTIMISTIC_REPLAY_SECONDS: &str = "homeport_optimistic_replay_seconds";
pub const PROBE_MODE: &str = "homeport_probe_mode";
pub const WIRE_REROUTED_TOTAL: &str = "homeport_wire_rerouted_total";
pub const RESIDENCY_REQUESTS_TOTAL: &str = "homeport_residency_requests_total";

/// Every metric name above, for tests that check dashboards and alert rules only use real names.
pub const ALL: &[&str] = &[
    REPLICATION_LAG_SECONDS,
    REPLICATION_LAG_BYTES,
    ENDPOINT_UP,
    ENDPOINT_RTT_SECONDS,
    PROBE_AGE_SECONDS,
    REQUESTS_TOTAL,
    REQUEST_DURATION_SECONDS,
    CROSS_REGION_REQUESTS_TOTAL,
    DIRECTORY_LOOKUPS_TOTAL,
    RYW_WAIT_SECONDS,
    RYW_FALLBACKS_TOTAL,
    IDEMPOTENCY_TOTAL,
    IDEMPOTENCY_CACHE_TOTAL,
    CONFIG_RELOADS_TOTAL,
    WIRE_PINS_TOTAL,
    OPTIMISTIC_TRANSACTIONS_TOTAL,
    OPTIMISTIC_REPLAY_SECONDS,
    PROBE_MODE,
    WIRE_REROUTED_TOTAL,
    RESIDENCY_REQUESTS_TOTAL,
];

/// How this sidecar learns the topology (`topology::share`): 1 for the current mode (`own`:
/// probes everything itself; `publisher`: probes and publishes for the region; `reader`: reads
/// the publisher's snapshot), 0 for the others.
pub fn probe_mode(current: &'static str) {
    for mode in ["own", "publisher", "reader"] {
        gauge!(PROBE_MODE, "mode" => mode).set(if mode == current { 1.0 } else { 0.0 });
    }
}

/// Time a read carrying a consistency token spent before a copy could serve it.
pub fn ryw_wait(waited: Duration) {
    histogram!(RYW_WAIT_SECONDS).record(waited.as_secs_f64());
}

/// A read with a token that did not run on its nearest copy, counted once per read: `reason` is
/// why the nearest copy was passed over (`timeout`: waited max_wait; `lagging`: its measured lag
/// is longer than max_wait, so no wait; `history`: other timeline or cluster; `unavailable`),
/// `target` where the read finally ran (`replica`, `primary`, or `none` when no copy could).
pub fn ryw_fallback(reason: &'static str, target: &'static str) {
    counter!(RYW_FALLBACKS_TOTAL, "reason" => reason, "target" => target).increment(1);
}

/// A request with an idempotency key: `new` (applied now), `replayed` (already applied: the
/// stored response, or on the wire the refusal to apply twice), `conflict` (same key in flight),
/// `mismatch` (same key, different request).
pub fn idempotency(result: &'static str, frontend: &'static str) {
    counter!(IDEMPOTENCY_TOTAL, "result" => result, "frontend" => frontend).increment(1);
}

/// A lookup of a completed response in the regional Redis: `hit` or `miss` (the ratio is the
/// share of same-region replays that needed no trip to the home primary).
pub fn idempotency_cache(result: &'static str) {
    counter!(IDEMPOTENCY_CACHE_TOTAL, "result" => result).increment(1);
}

/// A config reload: `ok`, `invalid` (the file did not validate) or `needs_restart`.
pub fn config_reload(result: &'static str) {
    counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
}

/// A wire session pinned to its server connection because a statement left session state
/// there (`reason`: a [`crate::sql::SessionState`] label). The pin rate of a workload is this
/// over the wire sessions it opened.
pub fn wire_pin(reason: &'static str) {
    counter!(WIRE_PINS_TOTAL, "reason" => reason).increment(1);
}

/// A plain-`BEGIN` transaction on the wire: `read_only` (stayed on a read copy and ended there),
/// `promoted` (moved to the home primary, its reads replayed and equal), `conflict` (a replayed
/// read differed: 40001), `primary` (went to the primary from its first unit).
pub fn optimistic_transaction(result: &'static str) {
    // Once per wire transaction: the labelled counters are looked up once, then only bumped.
    static COUNTERS: OnceLock<Vec<Counter>> = OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        // Handles taken before the recorder exists would count nowhere.
        install();
        OPTIMISTIC_RESULTS
            .iter()
            .map(|r| counter!(OPTIMISTIC_TRANSACTIONS_TOTAL, "result" => *r))
            .collect()
    });
    match OPTIMISTIC_RESULTS.iter().position(|r| *r == result) {
        Some(i) => counters[i].increment(1),
        None => counter!(OPTIMISTIC_TRANSACTIONS_TOTAL, "result" => result).increment(1),
    }
}

const OPTIMISTIC_RESULTS: [&str; 4] = ["read_only", "promoted", "conflict", "primary"];

/// Time an optimistic transaction spent on a read copy before its promotion, including the replay.
pub fn optimistic_replay(took: Duration) {
    histogram!(OPTIMISTIC_REPLAY_SECONDS).record(took.as_secs_f64());
}

/// A read ran again: `recovery_refusal` (a replica refused an unlogged or temporary table; it
/// ran on a primary) or `server_gone` (the idle connection it was lent had lost its server
/// before answering; it ran on another connection).
pub fn wire_rerouted(reason: &'static str) {
    counter!(WIRE_REROUTED_TOTAL, "reason" => reason).increment(1);
}

/// A request for a user of a resident shard, by the shard's policy and what this sidecar did:
/// `local` (inside the residency), `forwarded`, `redirected` or `denied`.
pub fn residency_request(shard: &str, policy: &'static str, outcome: &'static str) {
    counter!(RESIDENCY_REQUESTS_TOTAL, "shard" => shard.to_string(), "policy" => policy, "outcome" => outcome)
        .increment(1);
}

/// Registers a resident shard's residency counters at zero, so rates exist before traffic.
pub fn residency_register(shard: &str, policy: &'static str) {
    for outcome in ["local", "forwarded", "redirected", "denied"] {
        counter!(RESIDENCY_REQUESTS_TOTAL, "shard" => shard.to_string(), "policy" => policy, "outcome" => outcome)
            .increment(0);
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .expect("static bucket list is valid")
                .build_recorder();
            let handle = recorder.handle();
            // A second recorder can only exist in tests that embed several sidecars; they share it.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

const INTENTS: [&str; 2] = ["read", "write"];
const TARGETS: [&str; 4] = ["local_replica", "remote_replica", "primary", "none"];
const OUTCOMES: [&str; 3] = ["ok", "client_error", "error"];
const DIRECTORY_SOURCES: [&str; 5] = ["claim", "cache", "redis", "table", "placement"];

fn position(list: &[&str], label: &str) -> usize {
    list.iter()
        .position(|l| *l == label)
        .unwrap_or(list.len() - 1)
}

/// Request counters and histograms of one front end, registered once so the hot path only bumps
/// atomics (building a labelled key per request costs allocations and hashing).
pub struct RequestMetrics {
    counters: Vec<Counter>,
    durations: Vec<Histogram>,
}

impl RequestMetrics {
    pub fn new(frontend: &'static str) -> Self {
        let mut counters = Vec::new();
        let mut durations = Vec::new();
        for intent in INTENTS {
            for target in TARGETS {
                for outcome in OUTCOMES {
                    counters.push(counter!(REQUESTS_TOTAL, "frontend" => frontend, "intent" => intent, "target" => target, "outcome" => outcome));
                }
                durations.push(histogram!(REQUEST_DURATION_SECONDS, "frontend" => frontend, "intent" => intent, "target" => target));
            }
        }
        RequestMetrics {
            counters,
            durations,
        }
    }

    /// `target` is a `routing::Target` label or `"none"`; `outcome` one of ok, client_error, error.
    pub fn record(&self, intent: &str, target: &str, outcome: &str, took: Duration) {
        let (i, t, o) = (
            position(&INTENTS, intent),
            position(&TARGETS, target),
            position(&OUTCOMES, outcome),
        );
        self.counters[(i * TARGETS.len() + t) * OUTCOMES.len() + o].increment(1);
        self.durations[i * TARGETS.len() + t].record(took.as_secs_f64());
    }
}

/// Directory lookups by source, registered once.
pub struct DirectoryMetrics {
    lookups: Vec<Counter>,
}

impl DirectoryMetrics {
    pub fn new() -> Self {
        DirectoryMetrics {
            lookups: DIRECTORY_SOURCES
                .iter()
                .map(|s| counter!(DIRECTORY_LOOKUPS_TOTAL, "source" => *s))
                .collect(),
        }
    }

    pub fn lookup(&self, source: &str) {
        self.lookups[position(&DIRECTORY_SOURCES, source)].increment(1);
    }
}

impl Default for DirectoryMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Requests that ran in another region, by destination, registered once per region pair.
pub struct CrossRegionMetrics {
    to: Vec<(String, Counter)>,
}

impl CrossRegionMetrics {
    pub fn new(from: &str, regions: impl IntoIterator<Item = String>) -> Self {
        let to = regions
            .into_iter()
            .filter(|r| r != from)
            .map(|r| {
                let c = counter!(CROSS_REGION_REQUESTS_TOTAL, "from" => from.to_string(), "to" => r.clone());
                (r, c)
            })
            .collect();
        CrossRegionMetrics { to }
    }

    pub fn record(&self, to: &str) {
        if let Some((_, c)) = self.to.iter().find(|(r, _)| r == to) {
            c.increment(1);
        }
    }
}

pub fn endpoint_up(
    endpoint: &str,
    shard: &str,
    role: &'static str,
    up: bool,
    rtt: Option<Duration>,
) {
    let labels = [
        ("endpoint", endpoint.to_string()),
        ("shard", shard.to_string()),
        ("role", role.to_string()),
    ];
    gauge!(ENDPOINT_UP, &labels).set(if up { 1.0 } else { 0.0 });
    if let Some(rtt) = rtt {
        gauge!(ENDPOINT_RTT_SECONDS, &labels).set(rtt.as_secs_f64());
    }
}

/// Seconds since the last successful probe of an endpoint, on this sidecar's clock (since the
/// probe task started, before the first success). Set on every probe tick, so it keeps growing
/// while the endpoint is unreachable, when its lag and role figures are only the last ones seen.
pub fn probe_age(endpoint: &str, shard: &str, role: &'static str, age: Duration) {
    gauge!(PROBE_AGE_SECONDS, "endpoint" => endpoint.to_string(), "shard" => shard.to_string(), "role" => role)
        .set(age.as_secs_f64());
}

pub fn replication_lag_seconds(shard: &str, replica: &str, replica_region: &str, lag: Duration) {
    gauge!(REPLICATION_LAG_SECONDS, "shard" => shard.to_string(), "replica" => replica.to_string(), "replica_region" => replica_region.to_string())
        .set(lag.as_secs_f64());
}

pub fn replication_lag_bytes(shard: &str, replica: &str, replica_region: &str, bytes: u64) {
    gauge!(REPLICATION_LAG_BYTES, "shard" => shard.to_string(), "replica" => replica.to_string(), "replica_region" => replica_region.to_string())
        .set(bytes as f64);
}

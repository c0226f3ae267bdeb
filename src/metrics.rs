//! Every metric homeport exports, named in one place (base units, `_total` counters), and the
//! Prometheus recorder that renders them for `GET /metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REPLICATION_LAG_SECONDS: &str = "homeport_replication_lag_seconds";
pub const REPLICATION_LAG_BYTES: &str = "homeport_replication_lag_bytes";
pub const ENDPOINT_UP: &str = "homeport_endpoint_up";
pub const ENDPOINT_RTT_SECONDS: &str = "homeport_endpoint_rtt_seconds";
pub const REQUESTS_TOTAL: &str = "homeport_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "homeport_request_duration_seconds";
pub const CROSS_REGION_REQUESTS_TOTAL: &str = "homeport_cross_region_requests_total";
pub const DIRECTORY_LOOKUPS_TOTAL: &str = "homeport_directory_lookups_total";

/// Every metric name above, for tests that check dashboards and alert rules only use real names.
pub const ALL: &[&str] = &[
    REPLICATION_LAG_SECONDS,
    REPLICATION_LAG_BYTES,
    ENDPOINT_UP,
    ENDPOINT_RTT_SECONDS,
    REQUESTS_TOTAL,
    REQUEST_DURATION_SECONDS,
    CROSS_REGION_REQUESTS_TOTAL,
    DIRECTORY_LOOKUPS_TOTAL,
];

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

pub fn request(
    frontend: &'static str,
    intent: &'static str,
    target: &'static str,
    outcome: &'static str,
    took: Duration,
) {
    counter!(REQUESTS_TOTAL, "frontend" => frontend, "intent" => intent, "target" => target, "outcome" => outcome)
        .increment(1);
    histogram!(REQUEST_DURATION_SECONDS, "frontend" => frontend, "intent" => intent, "target" => target)
        .record(took.as_secs_f64());
}

pub fn cross_region(from: &str, to: &str) {
    counter!(CROSS_REGION_REQUESTS_TOTAL, "from" => from.to_string(), "to" => to.to_string())
        .increment(1);
}

pub fn directory_lookup(source: &'static str) {
    counter!(DIRECTORY_LOOKUPS_TOTAL, "source" => source).increment(1);
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

pub fn replication_lag_bytes(shard: &str, replica: &str, replica_region: &str, bytes: u64) {
    gauge!(REPLICATION_LAG_BYTES, "shard" => shard.to_string(), "replica" => replica.to_string(), "replica_region" => replica_region.to_string())
        .set(bytes as f64);
}

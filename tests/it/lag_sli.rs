//! The replication-lag SLI against real streaming replicas: the gauge tracks
//! `recovery_min_apply_delay`, grows while replay is paused, falls back after resume, and stays
//! near zero on an idle primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{Env, options, start};

/// The us sidecar's view of the lag of the eu shard's replica located in us, in seconds.
async fn lag(env: &Env) -> Option<f64> {
    let topo = env.send(env.http.get(env.url("us", "/v1/topology"))).await;
    let port = env.replica_port("eu", "us");
    topo.body["endpoints"].as_array()?.iter().find(|e| {
        e["shard"] == "eu"
            && e["endpoint"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("127.0.0.1:{port}/")))
    })?["lag_seconds"]
        .as_f64()
}

async fn median_lag(env: &Env, window: Duration) -> f64 {
    let mut samples = Vec::new();
    let steps = (window.as_millis() / 100).max(1);
    for _ in 0..steps {
        if let Some(l) = lag(env).await {
            samples.push(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!samples.is_empty(), "no lag samples");
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

/// Commits a small write to the eu primary every 20 ms until stopped (the gauge reports the age
/// of the oldest write a replica lacks, so sparse writes would read up to one gap low).
fn writer(env: &Env, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let url = homeport::dev::superuser_url(env.primary_port("eu"), "app");
    tokio::spawn(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        while !stop.load(Ordering::SeqCst) {
            client
                .execute(
                    "INSERT INTO notes (user_id, body) VALUES ('lag', 'tick')",
                    &[],
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

async fn set_delay(env: &Env, delay: &str) {
    let replica = env.direct(env.replica_port("eu", "us")).await;
    replica
        .batch_execute(&format!(
            "ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'"
        ))
        .await
        .unwrap();
    replica
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_gauge_tracks_delay_pause_and_idle() {
    let mut opts = options(&["eu", "us"]);
    opts.replica_delay = Duration::from_millis(500);
    let env = start(opts).await;
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&env, stop.clone());

    // 500 ms apply delay, writes every 20 ms: the gauge reads 500 ms +-20%.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at_500 = median_lag(&env, Duration::from_secs(3)).await;
    assert!(
        (0.4..=0.6).contains(&at_500),
        "lag with a 500 ms delay: {at_500}"
    );

    // 2 s apply delay.
    set_delay(&env, "2s").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let at_2000 = median_lag(&env, Duration::from_secs(3)).await;
    assert!(
        (1.6..=2.4).contains(&at_2000),
        "lag with a 2 s delay: {at_2000}"
    );

    // Paused replay: the lag grows with the wall clock.
    set_delay(&env, "0").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replica = env.direct(env.replica_port("eu", "us")).await;
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused_a = lag(&env).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused_b = lag(&env).await.unwrap();
    assert!(paused_a >= 1.5, "paused for 2 s: {paused_a}");
    assert!(
        paused_b >= paused_a + 1.5,
        "lag grows while paused: {paused_a} then {paused_b}"
    );
    let metrics = env.send(env.http.get(env.ops_url("us", "/metrics"))).await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("homeport_replication_lag_seconds{shard=\"eu\"")
    );

    // Resumed: back near zero.
    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resumed = median_lag(&env, Duration::from_secs(2)).await;
    assert!(resumed < 0.3, "after resume: {resumed}");

    // Idle primary: no false lag builds up.
    stop.store(true, Ordering::SeqCst);
    w.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_a = median_lag(&env, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_b = median_lag(&env, Duration::from_secs(1)).await;
    assert!(
        idle_a < 0.2 && idle_b < 0.2,
        "idle primary: {idle_a}, {idle_b}"
    );
    eprintln!(
        "lag: delay 500ms -> {at_500:.3}s, delay 2s -> {at_2000:.3}s, paused {paused_a:.2}s then {paused_b:.2}s, resumed {resumed:.3}s, idle {idle_a:.3}s/{idle_b:.3}s"
    );
}

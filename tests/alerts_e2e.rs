//! The lag alert fires for real: a real Prometheus server scrapes the sandbox's sidecars, loads the
//! project's alert rules (with `for:` shortened so the test is quick), and the replication-lag
//! alert goes pending, then firing, while replay on a replica is paused, and resolves after
//! replay resumes.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Env, options, start};
use serde_json::Value;

/// The Prometheus server, killed when the test ends.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// State of the lag warning for the eu shard's replica, as Prometheus reports it.
async fn lag_alert_state(env: &Env, prom: u16) -> Option<String> {
    let r = env
        .send(
            env.http
                .get(format!("http://127.0.0.1:{prom}/api/v1/alerts")),
        )
        .await;
    r.body["data"]["alerts"]
        .as_array()?
        .iter()
        .find_map(|a: &Value| {
            (a["labels"]["alertname"] == "HomeportReplicationLagHigh"
                && a["labels"]["shard"] == "eu")
                .then(|| a["state"].as_str().unwrap_or("").to_string())
        })
}

async fn wait_for(env: &Env, prom: u16, want: Option<&str>, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let state = lag_alert_state(env, prom).await;
        if state.as_deref() == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "alert state {state:?}, wanted {want:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_alert_goes_pending_then_firing_and_resolves() {
    let env = start(options(&["eu", "us"])).await;
    let dir = env.sandbox.dir.join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/k8s/monitoring/rules/homeport.rules.yml"
    ))
    .unwrap()
    .replace("for: 1m", "for: 4s");
    assert!(rules.contains("HomeportReplicationLagHigh"));
    std::fs::write(dir.join("rules.yml"), rules).unwrap();
    let targets: Vec<String> = env
        .sandbox
        .regions
        .iter()
        .map(|r| format!("'127.0.0.1:{}'", r.http_port))
        .collect();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\n\
             scrape_configs:\n  - job_name: homeport\n    static_configs:\n      - targets: [{}]\n",
            dir.join("rules.yml").display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let prom_port = homeport::dev::pick_ports(1).unwrap()[0];
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus is installed (scripts/test.sh installs it)"),
    );

    // Writes keep coming on the eu primary, so a paused replica really falls behind.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = homeport::dev::superuser_url(env.primary_port("eu"), "app");
        tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            while !stop.load(Ordering::SeqCst) {
                c.execute(
                    "INSERT INTO notes (user_id, body) VALUES ('alert', 'tick')",
                    &[],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Healthy first: no alert once Prometheus has scraped a few times.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        lag_alert_state(&env, prom_port).await,
        None,
        "no lag alert while replicas keep up"
    );

    let replica = env.direct(env.replica_port("eu", "us")).await;
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let pending = wait_for(&env, prom_port, Some("pending"), Duration::from_secs(30)).await;
    let firing = wait_for(&env, prom_port, Some("firing"), Duration::from_secs(30)).await;
    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    let resolved = wait_for(&env, prom_port, None, Duration::from_secs(30)).await;
    eprintln!(
        "lag alert: pending after {pending:?} of pause, firing {firing:?} later, resolved {resolved:?} after resume"
    );
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
}

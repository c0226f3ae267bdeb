//! The alerts fire for real: a real Prometheus server scrapes the sandbox's sidecars on their ops
//! listeners and loads the project's alert rules (every `for:` shortened to 4s, and the 30 s
//! threshold of the lag-unknown rule to 3 s, so the test is quick). Only after Prometheus has
//! scraped every sidecar and evaluated the rules since is "no alert" checked. Then, one after the
//! other, each goes firing and resolves: the replication-lag warning (replay paused on a replica
//! while its primary keeps writing), lag-unknown (the replica stopped), the primary-down page (a
//! shard primary stopped) and metrics-absent (every sidecar stopped).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::common::{Env, options, start};
use serde_json::Value;

/// The Prometheus server, killed when the test ends.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn api(&self, env: &Env, path: &str) -> Value {
        env.send(
            env.http
                .get(format!("http://127.0.0.1:{}/api/v1/{path}", self.port)),
        )
        .await
        .body
    }

    /// Every alert Prometheus holds (pending or firing): (alertname, labels, state).
    async fn alerts(&self, env: &Env) -> Vec<(String, Value, String)> {
        let body = self.api(env, "alerts").await;
        body["data"]["alerts"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|a| {
                        (
                            a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                            a["labels"].clone(),
                            a["state"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// State of alert `name` whose labels include `labels`, if Prometheus holds one.
    async fn state(&self, env: &Env, name: &str, labels: &[(&str, &str)]) -> Option<String> {
        self.alerts(env)
            .await
            .into_iter()
            .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
            .map(|(_, _, state)| state)
    }

    /// Waits until alert `name` is in state `want` (`None`: gone, i.e. resolved); how long it took.
    async fn wait_for(
        &self,
        env: &Env,
        name: &str,
        labels: &[(&str, &str)],
        want: Option<&str>,
        limit: Duration,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let state = self.state(env, name, labels).await;
            if state.as_deref() == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "{name} {labels:?}: state {state:?}, wanted {want:?} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until Prometheus answers `/-/ready`.
    async fn wait_started(&self, env: &Env) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://127.0.0.1:{}/-/ready", self.port);
        while !env
            .http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "prometheus did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every target has been scraped successfully, then until every rule group has
    /// been evaluated after that, so an empty alert list means "evaluated on data: nothing wrong",
    /// not "nothing scraped yet".
    async fn wait_scraped_and_evaluated(&self, env: &Env, targets: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let scraped_at = loop {
            let t = self.api(env, "targets").await;
            let active = t["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = active
                .iter()
                .filter(|a| a["health"] == "up" && a["lastScrape"].as_str().is_some())
                .count();
            if active.len() == targets && up == targets {
                break SystemTime::now();
            }
            assert!(Instant::now() < deadline, "targets never all up: {t}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        loop {
            let r = self.api(env, "rules").await;
            let groups = r["data"]["groups"].as_array().cloned().unwrap_or_default();
            let evaluated_since = |g: &Value| {
                g["lastEvaluation"]
                    .as_str()
                    .and_then(|s| humantime::parse_rfc3339(s).ok())
                    .is_some_and(|t| t > scraped_at)
            };
            if !groups.is_empty() && groups.iter().all(evaluated_since) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rules not evaluated after the scrape: {r}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn start_prometheus(env: &Env) -> Prometheus {
    let dir = env.sandbox.dir.join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/k8s/monitoring/rules/homeport.rules.yml"
    ))
    .unwrap();
    let mut short = String::new();
    for line in rules.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("for: ") {
            let indent = &line[..line.len() - trimmed.len()];
            short.push_str(&format!("{indent}for: 4s\n"));
        } else {
            short.push_str(line);
            short.push('\n');
        }
    }
    let unknown = "(homeport_probe_age_seconds{role=\"replica\"}) > 30";
    assert!(short.contains(unknown), "the lag-unknown rule as tested");
    let short = short.replace(
        unknown,
        "(homeport_probe_age_seconds{role=\"replica\"}) > 3",
    );
    for alert in [
        "HomeportReplicationLagHigh",
        "HomeportReplicationLagUnknown",
        "HomeportPrimaryDown",
        "HomeportMetricsAbsent",
    ] {
        assert!(short.contains(alert), "{alert} is in the rule file");
    }
    std::fs::write(dir.join("rules.yml"), short).unwrap();
    // The scrape job is named like the chart's metrics Service, as the ServiceMonitor names it.
    let targets: Vec<String> = env
        .sandbox
        .regions
        .iter()
        .map(|r| format!("'127.0.0.1:{}'", r.ops_port))
        .collect();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\n\
             scrape_configs:\n  - job_name: shop-homeport-metrics\n    static_configs:\n      - targets: [{}]\n",
            dir.join("rules.yml").display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let port = homeport::dev::pick_ports(1).unwrap()[0];
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus is installed (scripts/test.sh installs it)");
    Prometheus { child, port }
}

/// Keeps writing on `region`'s primary (straight to the server) so a paused replica really falls
/// behind; stops when `stop` is set, tolerating a primary that goes away.
fn keep_writing(env: &Env, region: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let url = homeport::dev::superuser_url(env.primary_port(region), "app");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_and_resolve_against_a_real_prometheus() {
    let mut env = start(options(&["eu", "us"])).await;
    let prom = start_prometheus(&env);
    let limit = Duration::from_secs(40);
    prom.wait_started(&env).await;

    // Healthy: no alert at all, checked only once Prometheus has data and has evaluated it.
    prom.wait_scraped_and_evaluated(&env, env.sandbox.regions.len())
        .await;
    let alerts = prom.alerts(&env).await;
    assert!(alerts.is_empty(), "no alert while healthy: {alerts:?}");

    // 1. Replay paused on the eu shard's replica in us while the eu primary keeps writing.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = keep_writing(&env, "eu", stop.clone());
    let replica = env.direct(env.replica_port("eu", "us")).await;
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let lag = [("shard", "eu")];
    let pending = prom
        .wait_for(
            &env,
            "HomeportReplicationLagHigh",
            &lag,
            Some("pending"),
            limit,
        )
        .await;
    let firing = prom
        .wait_for(
            &env,
            "HomeportReplicationLagHigh",
            &lag,
            Some("firing"),
            limit,
        )
        .await;
    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    let resolved = prom
        .wait_for(&env, "HomeportReplicationLagHigh", &lag, None, limit)
        .await;
    eprintln!(
        "lag alert: pending after {pending:?} of pause, firing {firing:?} later, resolved {resolved:?} after resume"
    );
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    drop(replica);

    // 2. The replica stops: its lag gauge freezes, its probe age grows, lag-unknown fires.
    env.sandbox.stop_server("eu-replica-us");
    let firing = prom
        .wait_for(
            &env,
            "HomeportReplicationLagUnknown",
            &lag,
            Some("firing"),
            limit,
        )
        .await;
    assert_eq!(
        prom.state(&env, "HomeportReplicationLagHigh", &lag).await,
        None,
        "the frozen lag gauge alone would have stayed green"
    );
    env.sandbox.start_server("eu-replica-us").unwrap();
    let resolved = prom
        .wait_for(&env, "HomeportReplicationLagUnknown", &lag, None, limit)
        .await;
    eprintln!("lag-unknown: firing after {firing:?}, resolved {resolved:?} after restart");

    // 3. The eu shard's only primary stops: a page, resolved when it is back.
    env.sandbox.stop_server("eu-primary");
    let firing = prom
        .wait_for(&env, "HomeportPrimaryDown", &lag, Some("firing"), limit)
        .await;
    let page = prom
        .alerts(&env)
        .await
        .into_iter()
        .find(|(n, ..)| n == "HomeportPrimaryDown")
        .map(|(_, labels, _)| labels["severity"].clone());
    assert_eq!(page, Some(Value::from("page")));
    env.sandbox.start_server("eu-primary").unwrap();
    let resolved = prom
        .wait_for(&env, "HomeportPrimaryDown", &lag, None, limit)
        .await;
    eprintln!("primary-down page: firing after {firing:?}, resolved {resolved:?} after restart");

    // 4. Every sidecar gone: nothing is scraped, the metrics-absent page fires; back, it resolves.
    for region in ["eu", "us"] {
        env.sandbox.stop_sidecar(region, Duration::from_secs(5));
    }
    let firing = prom
        .wait_for(&env, "HomeportMetricsAbsent", &[], Some("firing"), limit)
        .await;
    for region in ["eu", "us"] {
        env.sandbox.restart_sidecar(region).unwrap();
    }
    let resolved = prom
        .wait_for(&env, "HomeportMetricsAbsent", &[], None, limit)
        .await;
    eprintln!("metrics-absent page: firing after {firing:?}, resolved {resolved:?} after restart");
}

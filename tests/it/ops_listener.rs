//! The two HTTP listeners and readiness, against a real two-region sandbox: the ops listener
//! serves `/healthz`, `/readyz` and `/metrics` and nothing of the data API; the data listener
//! serves the API and the probes but not the metrics; `homeport serve` refuses trusted-header
//! identity on a data listener that is not loopback unless told otherwise; `/readyz` stays ready
//! through a lost local replica but not when nothing local can serve; and while draining, the
//! ops listener still answers, with 503.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{Env, options, start};
use serde_json::json;

async fn get(env: &Env, url: String) -> common::Resp {
    env.send(env.http.get(url)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_on_the_ops_listener_and_the_data_api_is_not() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "ops-user", "eu").await.status, 201);

    // The ops listener: probes and metrics.
    let metrics = get(&env, env.ops_url("us", "/metrics")).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body.as_str().unwrap().to_string();
    for name in ["homeport_endpoint_up", "homeport_probe_age_seconds"] {
        assert!(text.contains(name), "{name} on the ops listener: {text}");
    }
    assert_eq!(get(&env, env.ops_url("us", "/healthz")).await.status, 200);
    let ready = get(&env, env.ops_url("us", "/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["reason"], "local copies reachable");

    // ... and nothing of the data API, whatever the identity header says.
    let query = env
        .send(
            env.http
                .post(env.ops_url("us", "/v1/query"))
                .header("homeport-user", "ops-user")
                .json(&json!({ "sql": "SELECT 1" })),
        )
        .await;
    assert_eq!(query.status, 404, "{:?}", query.body);
    assert_eq!(
        query.header("content-type"),
        Some("application/problem+json")
    );
    assert!(
        query.body["detail"]
            .as_str()
            .unwrap()
            .contains("http.listen"),
        "{:?}",
        query.body
    );
    let put = env
        .send(
            env.http
                .put(env.ops_url("us", "/v1/users/someone/home"))
                .json(&json!({ "home_region": "us" })),
        )
        .await;
    assert_eq!(put.status, 404);
    assert_eq!(
        get(&env, env.ops_url("us", "/v1/topology")).await.status,
        404
    );
    assert_eq!(
        get(&env, env.ops_url("us", "/v1/users/ops-user/home"))
            .await
            .status,
        404
    );
    let post_metrics = env.send(env.http.post(env.ops_url("us", "/metrics"))).await;
    assert_eq!(post_metrics.status, 405);

    // The data listener: the API and the probes, not the metrics.
    let read = env
        .query("us", "ops-user", "SELECT 1 AS one", json!([]))
        .await;
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(get(&env, env.url("us", "/healthz")).await.status, 200);
    assert_eq!(get(&env, env.url("us", "/readyz")).await.status, 200);
    let no_metrics = get(&env, env.url("us", "/metrics")).await;
    assert_eq!(no_metrics.status, 404);
    assert!(
        no_metrics.body["detail"]
            .as_str()
            .unwrap()
            .contains("ops.listen"),
        "{:?}",
        no_metrics.body
    );

    // endpoints.json names the ops listener of every region.
    let endpoints: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.sandbox.dir.join("endpoints.json")).unwrap(),
    )
    .unwrap();
    for (i, r) in env.sandbox.regions.iter().enumerate() {
        assert_eq!(endpoints["regions"][i]["ops"], r.ops_url());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_trusted_header_on_a_network_data_listener_unless_allowed() {
    let env = start(options(&["eu", "us"])).await;
    let (config, http_port, _) = common::region_config_on_new_ports(&env, "us");
    let open = config.replace(
        &format!("listen = \"127.0.0.1:{http_port}\""),
        &format!("listen = \"0.0.0.0:{http_port}\""),
    );
    assert_ne!(open, config);
    let dir = env.sandbox.dir.join("us-open");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("homeport.toml"), &open).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(["serve", "--config"])
        .arg(dir.join("homeport.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve must refuse: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("http.listen")
            && stderr.contains("http.allow_trusted_header_on_network = true"),
        "{stderr}"
    );

    // With the explicit override it serves (reachable through loopback too).
    let allowed = open.replace(
        "auth = \"trusted-header\"",
        "auth = \"trusted-header\"\nallow_trusted_header_on_network = true",
    );
    assert_ne!(allowed, open);
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-open-allowed", &allowed, http_port)
        .unwrap();
    let ready = get(&env, format!("http://127.0.0.1:{http_port}/readyz")).await;
    assert_eq!(ready.status, 200);
}

/// Polls `region`'s `/readyz` on the ops listener until its status is `want`.
async fn wait_ready_status(env: &Env, region: &str, want: u16) -> common::Resp {
    let port = env.sandbox.region(region).ops_port;
    wait_ready_status_at(env, port, want, Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_survives_a_lost_local_replica_and_drops_when_nothing_local_serves() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "rita", "eu").await.status, 201);
    // In us, the local endpoints are the us primary and the replica of eu located in us (which
    // also holds the directory's replica).
    env.sandbox.stop_server("eu-replica-us");
    // Wait until the probes have marked it down, then readiness must still be 200.
    let started = Instant::now();
    loop {
        let topo = get(&env, env.url("us", "/v1/topology")).await;
        let down = topo.body["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["shard"] == "eu" && e["region"] == "us" && e["up"] == false);
        if down {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "replica never marked down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = wait_ready_status(&env, "us", 200).await;
    assert_eq!(ready.body["reason"], "local copies reachable");
    // The pod keeps serving: rita's reads now go to a copy that is up.
    let read = env
        .query("us", "rita", "SELECT count(*) FROM notes", json!([]))
        .await;
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(read.served_by(), "eu/primary");

    // The us primary goes as well: nothing in us is up and shard us has no primary anywhere.
    env.sandbox.stop_server("us-primary");
    let unready = wait_ready_status(&env, "us", 503).await;
    assert!(
        unready.body["detail"]
            .as_str()
            .unwrap()
            .contains("no local copy is up"),
        "{:?}",
        unready.body
    );
    // Both back: ready again by itself.
    env.sandbox.start_server("us-primary").unwrap();
    env.sandbox.start_server("eu-replica-us").unwrap();
    wait_ready_status(&env, "us", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_the_ops_listener_answers_not_ready() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "dora", "us").await.status, 201);
    let (config, http_port, _) = common::region_config_on_new_ports(&env, "us");
    let ops = common::ops_port(&config);
    let sidecar = env
        .sandbox
        .spawn_sidecar("us-draining", &config, http_port)
        .unwrap();
    // A request that keeps the drain busy for two seconds.
    let slow = {
        let http = env.http.clone();
        tokio::spawn(async move {
            http.post(format!("http://127.0.0.1:{http_port}/v1/query"))
                .header("homeport-user", "dora")
                .json(&json!({ "sql": "SELECT pg_sleep(2)", "intent": "read" }))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::process::Command::new("kill")
        .args(["-TERM", &sidecar.pid().to_string()])
        .status()
        .unwrap();
    let ready = wait_ready_status_at(&env, ops, 503, Duration::from_secs(5)).await;
    assert!(
        ready.body["detail"].as_str().unwrap().contains("draining"),
        "{:?}",
        ready.body
    );
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
}

/// Polls `/readyz` on the ops port `port` until its status is `want`, for at most `limit`.
async fn wait_ready_status_at(env: &Env, port: u16, want: u16, limit: Duration) -> common::Resp {
    let started = Instant::now();
    loop {
        let r = get(env, format!("http://127.0.0.1:{port}/readyz")).await;
        if r.status == want {
            return r;
        }
        assert!(
            started.elapsed() < limit,
            "/readyz stayed {} ({:?}), wanted {want}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

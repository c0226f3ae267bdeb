//! Bad input gets a clear problem+json error and loses nothing: the sidecar keeps serving and no
//! pooled connection is poisoned. Unreachable servers give a fast 503 with Retry-After.

use std::time::{Duration, Instant};

use crate::common::{options, start};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_the_sidecar_keeps_serving() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "frank", "eu").await.status, 201);
    let q = env.url("eu", "/v1/query");
    let post = |body: &str| {
        env.http
            .post(&q)
            .header("homeport-user", "frank")
            .header("content-type", "application/json")
            .body(body.to_string())
    };

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, Option<&str>)> = vec![
        ("malformed JSON", post("{\"sql\": "), 400, None),
        ("not JSON at all", post("\u{1}\u{2}garbage"), 400, None),
        (
            "unknown field",
            post(r#"{"sql":"select 1","parms":[]}"#),
            400,
            None,
        ),
        ("wrong type for sql", post(r#"{"sql":42}"#), 400, None),
        (
            "wrong type for params",
            post(r#"{"sql":"select 1","params":"x"}"#),
            400,
            None,
        ),
        (
            "unknown intent",
            post(r#"{"sql":"select 1","intent":"sometimes"}"#),
            400,
            None,
        ),
        ("empty sql", post(r#"{"sql":"  "}"#), 400, None),
        (
            "two statements",
            post(r#"{"sql":"select 1; select 2"}"#),
            400,
            None,
        ),
        (
            "syntax error",
            post(r#"{"sql":"SELEC 1"}"#),
            400,
            Some("42601"),
        ),
        (
            "unknown table",
            post(r#"{"sql":"select * from nope"}"#),
            400,
            Some("42P01"),
        ),
        (
            "value the type cannot take",
            post(r#"{"sql":"select $1::int","params":["abc"]}"#),
            422,
            Some("22P02"),
        ),
        (
            "division by zero",
            post(r#"{"sql":"select 1/0"}"#),
            422,
            Some("22012"),
        ),
        (
            "too few params",
            post(r#"{"sql":"select $1::int + $2::int","params":[1]}"#),
            400,
            None,
        ),
        (
            "too many params",
            post(r#"{"sql":"select 1","params":[1]}"#),
            400,
            None,
        ),
        (
            "object for an int",
            post(r#"{"sql":"select $1::int","params":[{"a":1}]}"#),
            400,
            None,
        ),
        (
            "NUL in a string",
            post(r#"{"sql":"select $1::text","params":["a\u0000b"]}"#),
            400,
            None,
        ),
        (
            "SQL injection through a parameter is just a string",
            post(r#"{"sql":"select $1::text","params":["'; DROP TABLE notes; --"]}"#),
            200,
            None,
        ),
        (
            "oversized body",
            post(&format!(
                r#"{{"sql":"select 1","params":["{}"]}}"#,
                "x".repeat(2 << 20)
            )),
            413,
            None,
        ),
        (
            "wrong content type",
            env.http
                .post(&q)
                .header("homeport-user", "frank")
                .header("content-type", "text/plain")
                .body("select 1"),
            415,
            None,
        ),
        (
            "missing identity",
            env.http.post(&q).json(&json!({"sql": "select 1"})),
            401,
            None,
        ),
        (
            "overlong user id",
            env.http
                .post(&q)
                .header("homeport-user", "u".repeat(300))
                .json(&json!({"sql": "select 1"})),
            400,
            None,
        ),
        (
            "unknown user",
            env.http
                .post(&q)
                .header("homeport-user", "nobody")
                .json(&json!({"sql": "select 1"})),
            404,
            None,
        ),
        (
            "unknown path",
            env.http.get(env.url("eu", "/v2/nothing")),
            404,
            None,
        ),
        ("wrong method", env.http.get(&q), 405, None),
        (
            "place in unknown region",
            env.http
                .put(env.url("eu", "/v1/users/zed/home"))
                .json(&json!({"home_region": "mars"})),
            422,
            None,
        ),
        (
            "move a placed user",
            env.http
                .put(env.url("eu", "/v1/users/frank/home"))
                .json(&json!({"home_region": "us"})),
            409,
            None,
        ),
        (
            "bad percent-encoding in path",
            env.http.get(env.url("eu", "/v1/users/%ff/home")),
            400,
            None,
        ),
        (
            "unknown user home",
            env.http.get(env.url("eu", "/v1/users/nobody/home")),
            404,
            None,
        ),
        (
            "empty transaction",
            env.http
                .post(env.url("eu", "/v1/transaction"))
                .header("homeport-user", "frank")
                .json(&json!({"statements": []})),
            400,
            None,
        ),
    ];
    for (name, req, status, sqlstate) in cases {
        let r = env.send(req).await;
        assert_eq!(r.status, status, "{name}: {:?}", r.body);
        if status >= 400 {
            assert_eq!(
                r.header("content-type"),
                Some("application/problem+json"),
                "{name}"
            );
            for member in ["type", "title", "status", "detail"] {
                assert!(
                    r.body.get(member).is_some(),
                    "{name}: problem lacks {member}: {:?}",
                    r.body
                );
            }
            assert_eq!(r.body["status"], status, "{name}");
        }
        if let Some(code) = sqlstate {
            assert_eq!(r.body["sqlstate"], code, "{name}");
        }
        assert!(
            !r.served_by().is_empty(),
            "{name}: Homeport-Served-By on every response"
        );
    }

    // A failed statement inside a transaction leaves no aborted transaction behind on the pooled
    // connections: many plain queries afterwards all succeed.
    for _ in 0..3 {
        let bad = env
            .send(
                env.http
                    .post(env.url("eu", "/v1/transaction"))
                    .header("homeport-user", "frank")
                    .json(&json!({"statements": [
                        {"sql": "INSERT INTO notes (user_id, body) VALUES ('frank', 'x')"},
                        {"sql": "SELECT 1/0"},
                    ]})),
            )
            .await;
        assert_eq!(bad.status, 422);
    }
    for i in 0..40 {
        let r = env
            .query("eu", "frank", "SELECT $1::int AS i", json!([i]))
            .await;
        assert_eq!(
            (r.status, &r.body["rows"][0][0]),
            (200, &json!(i)),
            "{:?}",
            r.body
        );
    }
    let eu = env.direct(env.primary_port("eu")).await;
    let n: i64 = eu
        .query_one("SELECT count(*) FROM notes WHERE user_id = 'frank'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "rolled-back inserts stayed rolled back");
    assert_eq!(
        env.send(env.http.get(env.url("eu", "/healthz")))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_primary_gives_fast_503_and_reads_fall_back() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "gina", "us").await.status, 201);
    assert_eq!(
        env.query(
            "eu",
            "gina",
            "INSERT INTO notes (user_id, body) VALUES ('gina', 'x')",
            json!([])
        )
        .await
        .status,
        200
    );

    env.sandbox.stop_server("us-primary");
    let started = Instant::now();
    let w = env
        .query(
            "eu",
            "gina",
            "INSERT INTO notes (user_id, body) VALUES ('gina', 'y')",
            json!([]),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(w.status, 503, "{:?}", w.body);
    assert!(w.header("retry-after").is_some(), "503 carries Retry-After");
    assert!(
        took < Duration::from_secs(10),
        "the configured timeouts bound the wait (took {took:?})"
    );

    // Reads of the us shard still work through eu: its replica there is alive.
    let r = env
        .query(
            "eu",
            "gina",
            "SELECT count(*) FROM notes WHERE user_id = 'gina'",
            json!([]),
        )
        .await;
    assert_eq!(
        (r.status, r.served_by()),
        (200, "eu/replica"),
        "{:?}",
        r.body
    );

    // Once the probes have noticed, the write fails without even trying to connect.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let w = env
        .query(
            "eu",
            "gina",
            "INSERT INTO notes (user_id, body) VALUES ('gina', 'z')",
            json!([]),
        )
        .await;
    assert_eq!(w.status, 503);
    let topo = env.send(env.http.get(env.url("eu", "/v1/topology"))).await;
    let down = topo.body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["up"] == false)
        .count();
    assert_eq!(down, 1, "{:?}", topo.body);

    // The primary comes back: writes resume by themselves.
    env.sandbox.start_server("us-primary").unwrap();
    let mut ok = false;
    for _ in 0..100 {
        let w = env
            .query(
                "eu",
                "gina",
                "INSERT INTO notes (user_id, body) VALUES ('gina', 'back')",
                json!([]),
            )
            .await;
        if w.status == 200 {
            assert_eq!(w.served_by(), "us/primary");
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "writes resumed after the primary came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints_and_commands() {
    let env = start(options(&["eu", "us"])).await;
    let ready = env.send(env.http.get(env.url("us", "/readyz"))).await;
    assert_eq!(ready.status, 200);
    let topo = env.send(env.http.get(env.url("us", "/v1/topology"))).await;
    assert_eq!(topo.body["region"], "us");
    // 2 primaries + 2 replicas for the shards, 1 primary + 1 replica for the directory.
    assert_eq!(topo.body["endpoints"].as_array().unwrap().len(), 6);

    assert_eq!(env.place("us", "hank", "us").await.status, 201);
    assert_eq!(
        env.query("us", "hank", "SELECT 1", json!([])).await.status,
        200
    );
    // Lag gauges appear once a replica has been probed after its primary: poll briefly.
    let mut text = String::new();
    for _ in 0..50 {
        let metrics = env.send(env.http.get(env.ops_url("us", "/metrics"))).await;
        text = metrics.body.as_str().unwrap().to_string();
        if text.contains("homeport_replication_lag_bytes")
            && text.contains("homeport_replication_lag_seconds")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in [
        "homeport_requests_total{frontend=\"http\",intent=\"read\",target=\"primary\",outcome=\"ok\"} 1",
        "homeport_request_duration_seconds_bucket",
        "homeport_endpoint_up",
        "homeport_replication_lag_bytes",
        "homeport_replication_lag_seconds",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }

    // endpoints.json describes the sandbox.
    let endpoints: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.sandbox.dir.join("endpoints.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(endpoints["regions"][1]["name"], "us");
    assert_eq!(
        endpoints["regions"][1]["http"],
        env.sandbox.region("us").http_url()
    );
    assert!(
        endpoints["regions"][0]["replicas"]["us"]
            .as_str()
            .unwrap()
            .starts_with("postgresql://")
    );

    // `homeport check` on the generated config: everything reachable, exit 0.
    let exe = env!("CARGO_BIN_EXE_homeport");
    let out = std::process::Command::new(exe)
        .arg("check")
        .arg("--config")
        .arg(&env.sandbox.region("eu").config_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("replica") && stdout.contains("primary"),
        "{stdout}"
    );

    // With a replica down, check says so and fails.
    env.sandbox.stop_server("eu-replica-us");
    let out = std::process::Command::new(exe)
        .arg("check")
        .arg("--config")
        .arg(&env.sandbox.region("eu").config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("UNREACHABLE"));
}

#[test]
fn bad_config_is_one_line_and_exit_code_2() {
    let dir = std::env::temp_dir().join(format!("homeport-badconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    let base = include_str!("../../config/eu.toml")
        .replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "");
    for (broken, expect) in [
        (
            base.replace("[probe]\n", "[probe]\nintervall = \"1s\"\n"),
            "probe.intervall",
        ),
        (
            base.replace("listen = \"127.0.0.1:7400\"", "listen = \"localhost\""),
            "http.listen",
        ),
        ("not toml at all [[[".to_string(), "config error"),
    ] {
        std::fs::write(&path, broken).unwrap();
        for cmd in ["serve", "check"] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_homeport"))
                .arg(cmd)
                .arg("--config")
                .arg(&path)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
            assert_eq!(
                stderr.trim().lines().count(),
                1,
                "{cmd}: one line: {stderr}"
            );
            assert!(stderr.contains(expect), "{cmd}: {stderr}");
            assert!(!stderr.contains("panicked"));
        }
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(["serve", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exported_metric_names_are_in_the_deployment_contract() {
    // Dashboards and alert rules are checked against k8s/metric-names.txt (k8s/tests/run.sh);
    // the list and the metrics the code exports must be the same.
    let listed = include_str!("../../k8s/metric-names.txt");
    let listed: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for name in homeport::metrics::ALL {
        assert!(
            listed.contains(name),
            "{name} is exported but missing from k8s/metric-names.txt"
        );
    }
    // And the other way round: the deployment never relies on a metric the code does not export.
    for name in &listed {
        assert!(
            homeport::metrics::ALL.contains(name),
            "k8s/metric-names.txt lists {name}, which homeport does not export"
        );
    }
}

//! Pools that give connections back: after a burst over HTTP and the wire, a sidecar's server
//! connections on the primary return to the minimum (its probe connection) once they have been
//! idle for `postgres.idle_timeout`. Counted on the server, in `pg_stat_activity`.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{Env, options, start};
use serde_json::json;

/// Connections on `port` (database `app`) opened by sidecars with this `application_name`.
async fn server_connections(env: &Env, port: u16, app_name: &str) -> i64 {
    env.direct(port)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = 'app'",
            &[&app_name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_connections_return_to_the_minimum_within_the_idle_timeout() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "ida", "us").await.status, 201);
    let (config, http_port, pg_port) = common::region_config_on_new_ports(&env, "us");
    // A name of its own to count its connections, a short idle timeout, and its own probes (a
    // reader of the region's shared probe snapshot would hold no probe connection at all).
    let config = config
        .replace(
            "pool_size = 16\n",
            "pool_size = 16\napplication_name = \"homeport-idle\"\nidle_timeout = \"1s\"\n",
        )
        .replace("[probe]\n", "[probe]\nshared = false\n");
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-idle", &config, http_port)
        .unwrap();
    let primary = env.primary_port("us");

    // A burst: 24 concurrent HTTP writes and 12 concurrent wire sessions with transactions.
    let http = (0..24).map(|i| {
        let req = env
            .http
            .post(format!("http://127.0.0.1:{http_port}/v1/query"))
            .header("homeport-user", "ida")
            .json(&json!({
                "sql": "INSERT INTO notes (user_id, body) SELECT 'ida', $1 FROM pg_sleep(0.2)",
                "params": [format!("http {i}")],
            }));
        async move { req.send().await.unwrap().status().as_u16() }
    });
    let wire = (0..12).map(|i| async move {
        let url =
            format!("postgresql://app@127.0.0.1:{pg_port}/app?options=-c%20homeport.user%3Dida");
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for k in 0..3 {
            c.batch_execute(&format!(
                "BEGIN; INSERT INTO notes (user_id, body) VALUES ('ida', 'wire {i} {k}'); \
                 SELECT pg_sleep(0.1); COMMIT"
            ))
            .await
            .unwrap();
        }
    });
    let (statuses, _) = tokio::join!(
        futures_util::future::join_all(http),
        futures_util::future::join_all(wire)
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let after_burst = server_connections(&env, primary, "homeport-idle").await;
    // Both pools grew (each burst needed more than one connection at once) plus the probe.
    println!("homeport-idle connections on the us primary after the burst: {after_burst}");
    assert!(
        after_burst >= 4,
        "after the burst: {after_burst} connections"
    );

    // Idle: the reaper closes every pooled connection; the probe's own stays.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut now = after_burst;
    while now > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = server_connections(&env, primary, "homeport-idle").await;
    }
    assert_eq!(
        now, 1,
        "idle pooled connections closed ({after_burst} after the burst), only the probe left"
    );

    // And the pools grow again on demand.
    let r = env
        .send(
            env.http
                .post(format!("http://127.0.0.1:{http_port}/v1/query"))
                .header("homeport-user", "ida")
                .json(&json!({"sql": "SELECT count(*) FROM notes WHERE user_id = 'ida'", "intent": "write"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rows"][0][0], json!(24 + 36));
}

//! A fleet on one machine: up to 30 more `homeport serve` sidecars in region eu of the sandbox,
//! all against the same databases, under a light mixed load. Counted on the eu primary: probe
//! queries per second (`pg_stat_statements`) and homeport's server connections
//! (`pg_stat_activity`), at 1, 10 and 30 sidecars. The structural claims asserted:
//! - with the regional Redis, probe queries per second on the primary do not grow with the
//!   number of sidecars (one publisher per region probes, the others read its snapshot);
//! - with Redis stopped every sidecar probes on its own again, and routing and the lag SLI
//!   still work on every one of them.
//!
//! The printed table is the source of docs/fleet.md (`cargo test --test it fleet:: -- --nocapture`).

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{Env, options, start_alone};
use homeport::dev::Managed;
use serde_json::json;

/// The probe query's text contains `pg_walfile_name`; the pattern is split so this counting
/// query is not counted itself.
const PROBE_CALLS: &str = "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements \
     WHERE query LIKE '%' || 'pg_walfile' || '_name%'";

/// Probe queries per second on the server at `port`, over `window`.
async fn probe_rate(env: &Env, port: u16, window: Duration) -> f64 {
    let c = env.direct(port).await;
    let before: i64 = c.query_one(PROBE_CALLS, &[]).await.unwrap().get(0);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after: i64 = c.query_one(PROBE_CALLS, &[]).await.unwrap().get(0);
    (after - before) as f64 / started.elapsed().as_secs_f64()
}

/// homeport's connections on the server at `port` (every database, every sidecar).
async fn homeport_connections(env: &Env, port: u16) -> i64 {
    env.direct(port)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'homeport'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A light mixed load spread over the sidecars' HTTP ports: a write and two reads per round,
/// until aborted.
fn light_load(env: &Env, ports: Vec<u16>) -> tokio::task::JoinHandle<()> {
    let http = env.http.clone();
    tokio::spawn(async move {
        for round in 0usize.. {
            let url = format!("http://127.0.0.1:{}/v1/query", ports[round % ports.len()]);
            let bodies = [
                json!({"sql": "INSERT INTO notes (user_id, body) VALUES ('fay', $1)", "params": [round.to_string()]}),
                json!({"sql": "SELECT count(*) FROM notes WHERE user_id = 'fay'"}),
                json!({"sql": "SELECT 1"}),
            ];
            for body in bodies {
                let _ = http
                    .post(&url)
                    .header("homeport-user", "fay")
                    .json(&body)
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

struct Fleet {
    sidecars: Vec<(Managed, u16, u16)>,
}

impl Fleet {
    /// Grows the fleet to `n` sidecars (region eu's config on fresh ports, 200 ms probes, 2 s
    /// idle timeout).
    async fn grow(&mut self, env: &Env, n: usize) {
        while self.sidecars.len() < n {
            let (config, http_port, _) = common::region_config_on_new_ports(env, "eu");
            let ops = common::ops_port(&config);
            let config = config
                .replace(
                    "pool_size = 16\n",
                    "pool_size = 16\nidle_timeout = \"2s\"\n",
                )
                .replace(
                    "[probe]\ninterval = \"100ms\"",
                    "[probe]\ninterval = \"200ms\"",
                )
                // 31 sidecars on two shared cores: a Redis round trip may take longer than the
                // sandbox's 100 ms without anything being wrong, and when Redis stops, 31
                // sidecars connect their own probes at once (CI saw two probes in a row miss
                // the sandbox's 500 ms, which marks the primary down: 503 for a moment).
                .replace("timeout = \"100ms\"", "timeout = \"1s\"")
                .replace("timeout = \"500ms\"", "timeout = \"3s\"");
            let name = format!("eu-fleet-{}", self.sidecars.len());
            let sidecar = tokio::task::block_in_place(|| {
                env.sandbox.spawn_sidecar(&name, &config, http_port)
            })
            .unwrap();
            self.sidecars.push((sidecar, http_port, ops));
        }
    }

    fn http_ports(&self) -> Vec<u16> {
        self.sidecars.iter().map(|(_, p, _)| *p).collect()
    }
}

async fn metrics(env: &Env, ops_port: u16) -> String {
    env.http
        .get(format!("http://127.0.0.1:{ops_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn mode_of(env: &Env, ops_port: u16) -> String {
    let text = metrics(env, ops_port).await;
    ["own", "publisher", "reader"]
        .into_iter()
        .find(|m| text.contains(&format!("homeport_probe_mode{{mode=\"{m}\"}} 1")))
        .unwrap_or("none")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_load_does_not_grow_with_the_fleet_and_falls_back_without_redis() {
    let mut o = options(&["eu", "us"]);
    o.remove_dir = std::env::var_os("FLEET_KEEP").is_none();
    let env = start_alone(o).await;
    if env.sandbox.region("eu").redis_port.is_none() {
        panic!("this test needs redis-server (scripts/test.sh installs it)");
    }
    assert_eq!(env.place("eu", "fay", "eu").await.status, 201);
    let primary = env.primary_port("eu");
    env.direct(primary)
        .await
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .unwrap();
    let window = Duration::from_secs(3);

    println!(
        "sidecars in eu | probe queries/s on eu primary | homeport connections: idle / under load / idle again"
    );
    let mut fleet = Fleet {
        sidecars: Vec::new(),
    };
    let mut rates = Vec::new();
    for n in [1usize, 10, 30] {
        fleet.grow(&env, n).await;
        let idle = homeport_connections(&env, primary).await;
        let load = light_load(&env, fleet.http_ports());
        let rate = probe_rate(&env, primary, window).await;
        let loaded = homeport_connections(&env, primary).await;
        load.abort();
        assert!(load.await.is_err(), "the load ran until aborted");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle_again = homeport_connections(&env, primary).await;
        println!(
            "{:>14} | {rate:>28.1} | {idle} / {loaded} / {idle_again}",
            n + 1
        );
        rates.push(rate);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let modes = futures_util::future::join_all(
            fleet.sidecars.iter().map(|(_, _, ops)| mode_of(&env, *ops)),
        )
        .await;
        if modes.iter().all(|m| m == "reader" || m == "publisher") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every fleet sidecar reads the region's snapshot (or publishes it): {modes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Independent of the fleet size within a small constant: 30 sidecars probing on their own
    // would multiply the 1-sidecar rate by about 8 (see the fallback below).
    assert!(
        rates[2] <= rates[0] * 2.0 + 10.0,
        "probe queries/s at 2, 11, 31 sidecars: {rates:?}"
    );

    // Redis gone: every sidecar probes on its own; routing and lag still work everywhere.
    let mut env = env;
    env.sandbox.stop_redis("eu");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let modes = futures_util::future::join_all(
            fleet.sidecars.iter().map(|(_, _, ops)| mode_of(&env, *ops)),
        )
        .await;
        if modes.iter().all(|m| m == "own") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sidecars still sharing without Redis: {modes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let alone = probe_rate(&env, primary, window).await;
    println!(
        "{:>14} | {alone:>28.1} | (Redis stopped: every sidecar probes on its own)",
        31
    );
    // 31 sidecars probing on their own measure 3.5-5x the shared rate (3.5x on a loaded CI
    // machine, where each sidecar's probes fall behind their interval); sharing would stay ~1x.
    assert!(
        alone > rates[2] * 2.0,
        "without Redis the sidecars probe on their own: {alone} vs {} shared",
        rates[2]
    );
    for (_, http_port, ops) in fleet.sidecars.iter().step_by(7) {
        // A 503 is the sidecar saying its own probes missed the primary (the machine is
        // starved, not the primary down): it must turn into a write within seconds.
        let deadline = Instant::now() + Duration::from_secs(15);
        let w = loop {
            let w = env
                .send(
                    env.http
                        .post(format!("http://127.0.0.1:{http_port}/v1/query"))
                        .header("homeport-user", "fay")
                        .json(&json!({"sql": "INSERT INTO notes (user_id, body) VALUES ('fay', 'alone')"})),
                )
                .await;
            if w.status != 503 || Instant::now() > deadline {
                break w;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            (w.status, w.served_by()),
            (200, "eu/primary"),
            "{:?}",
            w.body
        );
        let text = metrics(&env, *ops).await;
        assert!(
            text.contains("homeport_replication_lag_seconds{"),
            "lag SLI exported without Redis"
        );
    }
}

async fn wait_for_mode(env: &Env, ops: u16, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mode = mode_of(env, ops).await;
        if mode == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {mode}, expected {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_takes_over_publishing_when_the_publisher_stops() {
    let mut env = start_alone(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "gus", "eu").await.status, 201);
    let mut fleet = Fleet {
        sidecars: Vec::new(),
    };
    fleet.grow(&env, 1).await;
    let (_, http_port, ops) = fleet.sidecars[0];
    wait_for_mode(&env, ops, "reader").await;
    // The region's own sidecar held the lease; it stops, its lease and snapshot expire after
    // probe.stale_after, and the reader takes over.
    env.sandbox.stop_sidecar("eu", Duration::from_secs(5));
    wait_for_mode(&env, ops, "publisher").await;
    let w = env
        .send(
            env.http
                .post(format!("http://127.0.0.1:{http_port}/v1/query"))
                .header("homeport-user", "gus")
                .json(&json!({"sql": "INSERT INTO notes (user_id, body) VALUES ('gus', 'x')"})),
        )
        .await;
    assert_eq!(
        (w.status, w.served_by()),
        (200, "eu/primary"),
        "{:?}",
        w.body
    );
    assert!(
        metrics(&env, ops)
            .await
            .contains("homeport_replication_lag_seconds{")
    );
}

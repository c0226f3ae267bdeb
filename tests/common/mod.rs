//! Shared test harness: starts a real `homeport dev` sandbox (PostgreSQL primaries and streaming
//! replicas, Redis, one `homeport serve` per region) through the library, and gives tests an HTTP
//! client and direct database connections. Everything is stopped when the sandbox is dropped,
//! also when a test fails.
#![allow(dead_code)]

use std::time::Duration;

use homeport::dev::{Sandbox, SandboxOptions, superuser_url};
use serde_json::{Value, json};

pub struct Env {
    pub sandbox: Sandbox,
    pub http: reqwest::Client,
    /// Released after the sandbox is stopped (fields drop in order).
    _machine: Machine,
}

/// Sandboxes run in parallel, except one that loads the machine on purpose (a fleet of 31
/// sidecars): it starts with `start_alone` and runs with no other test's sandbox up, so neither
/// it nor the others run on a machine it starves. No test holds two sandboxes at once, so the
/// fair lock cannot deadlock.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

enum Machine {
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
}

pub fn options(regions: &[&str]) -> SandboxOptions {
    SandboxOptions::for_test(regions, env!("CARGO_BIN_EXE_homeport"))
}

/// Starts a sandbox; blocking work runs off the async runtime.
pub async fn start(options: SandboxOptions) -> Env {
    boot(options, Machine::Shared(MACHINE.read().await)).await
}

/// Starts a sandbox once no other test has one up, and keeps the others waiting while it runs.
pub async fn start_alone(options: SandboxOptions) -> Env {
    boot(options, Machine::Alone(MACHINE.write().await)).await
}

async fn boot(options: SandboxOptions, machine: Machine) -> Env {
    let sandbox = tokio::task::spawn_blocking(move || Sandbox::start(options))
        .await
        .expect("sandbox thread")
        .unwrap_or_else(|e| panic!("sandbox failed to start: {e}"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    Env {
        sandbox,
        http,
        _machine: machine,
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn served_by(&self) -> &str {
        self.headers
            .get("homeport-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Env {
    pub fn url(&self, region: &str, path: &str) -> String {
        format!("{}{path}", self.sandbox.region(region).http_url())
    }

    /// `region`'s sidecar's metrics, in the Prometheus text format.
    pub async fn metrics(&self, region: &str) -> String {
        self.http
            .get(self.ops_url(region, "/metrics"))
            .send()
            .await
            .expect("metrics reachable")
            .text()
            .await
            .expect("metrics text")
    }

    /// A URL on `region`'s ops listener (`/healthz`, `/readyz`, `/metrics`).
    pub fn ops_url(&self, region: &str, path: &str) -> String {
        format!("{}{path}", self.sandbox.region(region).ops_url())
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let resp = req.send().await.expect("request reached homeport");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Resp {
            status,
            headers,
            body,
        }
    }

    /// `POST /v1/query` as `user` through `region`'s sidecar.
    pub async fn query(&self, region: &str, user: &str, sql: &str, params: Value) -> Resp {
        self.send(
            self.http
                .post(self.url(region, "/v1/query"))
                .header("homeport-user", user)
                .json(&json!({ "sql": sql, "params": params })),
        )
        .await
    }

    pub async fn place(&self, region: &str, user: &str, home: &str) -> Resp {
        self.send(
            self.http
                .put(self.url(region, &format!("/v1/users/{user}/home")))
                .json(&json!({ "home_region": home })),
        )
        .await
    }

    /// A superuser connection straight to a sandbox server, bypassing homeport.
    pub async fn direct(&self, port: u16) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&superuser_url(port, "app"), tokio_postgres::NoTls)
                .await
                .expect("direct connection");
        tokio::spawn(conn);
        client
    }

    pub fn primary_port(&self, region: &str) -> u16 {
        self.sandbox.region(region).primary_port
    }

    /// Port of the replica of `shard` located in `located`.
    pub fn replica_port(&self, shard: &str, located: &str) -> u16 {
        let r = self.sandbox.region(shard);
        *r.replica_ports
            .iter()
            .find(|(k, _)| k.as_str() == located)
            .expect("replica exists")
            .1
    }
}

/// Waits until a replica has replayed everything its primary had written when called.
pub async fn wait_caught_up(env: &Env, shard: &str, located: &str) {
    wait_caught_up_port(env.primary_port(shard), env.replica_port(shard, located)).await
}

/// [`wait_caught_up`] for a primary and a replica named by port (e.g. of a cell).
pub async fn wait_caught_up_port(primary_port: u16, replica_port: u16) {
    let connect = |port| async move {
        let (c, conn) = tokio_postgres::connect(&superuser_url(port, "app"), tokio_postgres::NoTls)
            .await
            .expect("direct connection");
        tokio::spawn(conn);
        c
    };
    let primary = connect(primary_port).await;
    let replica = connect(replica_port).await;
    let target: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..500 {
        let row = replica
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&target],
            )
            .await
            .unwrap();
        if row.get::<_, Option<bool>>(0) == Some(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the replica on port {replica_port} did not catch up");
}

/// The sandbox's consistency-token keys, to decode the tokens homeport hands out.
pub fn token_keys(env: &Env) -> homeport::consistency::token::Keys {
    homeport::consistency::token::Keys {
        current: std::fs::read(env.sandbox.dir.join("consistency.key")).unwrap(),
        previous: None,
    }
}

/// Keeps `region`'s primary writing (a row every 20 ms, straight to the server) so a delayed
/// replica really falls behind by its delay; abort the handle to stop.
pub fn keep_primary_busy(env: &Env, region: &str) -> tokio::task::JoinHandle<()> {
    let url = superuser_url(env.primary_port(region), "app");
    tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        loop {
            let _ = c
                .execute(
                    "INSERT INTO notes (user_id, body) VALUES ('bg', 'tick')",
                    &[],
                )
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// `region`'s generated sidecar config moved to fresh HTTP, wire and ops ports, for tests that
/// start a variant of a sidecar next to the sandbox's own: (config text, http port, wire port);
/// [`ops_port`] reads the ops port back from the text.
pub fn region_config_on_new_ports(env: &Env, region: &str) -> (String, u16, u16) {
    let r = env.sandbox.region(region);
    let ports = homeport::dev::pick_ports(3).unwrap();
    let config = move_ports(&std::fs::read_to_string(&r.config_path).unwrap(), r, &ports);
    (config, ports[0], ports[1])
}

/// A region's config text with its http, wire and ops ports replaced by `ports[0..3]`.
pub fn move_ports(config: &str, r: &homeport::dev::RegionInfo, ports: &[u16]) -> String {
    let mut config = config.to_string();
    for (old, new) in [r.http_port, r.pg_port, r.ops_port].iter().zip(ports) {
        config = config.replace(&format!("127.0.0.1:{old}\""), &format!("127.0.0.1:{new}\""));
    }
    config
}

/// The port of `[ops] listen` in a config text.
pub fn ops_port(config: &str) -> u16 {
    let ops = config.split("[ops]").nth(1).expect("an [ops] table");
    let listen = ops
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen = \"127.0.0.1:"))
        .expect("ops listen");
    listen.trim_end_matches('"').parse().expect("a port")
}

/// A PostgreSQL program (pgbench, psql, ...) of the newest installed version.
pub fn pg_bin(name: &str) -> std::path::PathBuf {
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.pop().unwrap().join(name)
}

/// Runs a command, returns stdout, fails the test with its output otherwise.
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// The Python with the client drivers (`scripts/test.sh` sets up target/pyenv).
pub fn python() -> String {
    std::env::var("HOMEPORT_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/target/pyenv/bin/python", env!("CARGO_MANIFEST_DIR")))
}

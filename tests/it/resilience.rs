//! Faults against a real two-region sandbox whose sidecars reach the other region through link
//! relays: a region cut off from the others keeps serving its reads (directory included) and
//! fails remote writes fast, then recovers by itself; a promoted replica takes over writes
//! without a restart.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{Env, options, start, wait_caught_up};
use serde_json::json;

/// These tests time faults against probe intervals; run them one at a time so six sandboxes do
/// not compete for the machine's cores and make a healthy local server miss its probes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What happened to one request during a fault.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Seen {
    Status(u16, String),
    /// No answer within the client's patience: a hang.
    Hung,
}

async fn post(env: &Env, region: &str, user: &str, sql: &str) -> (Seen, Duration, Option<String>) {
    let started = Instant::now();
    let sent = env
        .http
        .post(env.url(region, "/v1/query"))
        .header("homeport-user", user)
        .timeout(Duration::from_secs(15))
        .json(&json!({ "sql": sql }))
        .send()
        .await;
    let elapsed = started.elapsed();
    match sent {
        Ok(r) => {
            let served = r
                .headers()
                .get("homeport-served-by")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            (Seen::Status(r.status().as_u16(), served), elapsed, retry)
        }
        Err(_) => (Seen::Hung, elapsed, None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_region_keeps_serving_reads_and_fails_remote_writes_fast() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut opts = options(&["eu", "us"]);
    opts.link_delay = Some(Duration::from_millis(5));
    let env = start(opts).await;
    assert_eq!(env.place("us", "ana", "eu").await.status, 201);
    assert_eq!(env.place("us", "ben", "us").await.status, 201);
    // Placed through eu: the us sidecar has never looked cyd up, so its first lookup happens
    // during the cut and must be answered by the directory's local replica.
    assert_eq!(env.place("eu", "cyd", "eu").await.status, 201);
    let eu = env.direct(env.primary_port("eu")).await;
    eu.batch_execute("INSERT INTO notes (user_id, body) VALUES ('ana', 'kept'), ('cyd', 'kept')")
        .await
        .unwrap();
    wait_caught_up(&env, "eu", "us").await;

    env.sandbox.partition("us", true);
    let cut_at = Instant::now();
    let mut seen: Vec<(&str, Seen, Duration, Option<String>)> = Vec::new();
    while cut_at.elapsed() < Duration::from_secs(4) {
        let (a, b, c, d, e) = tokio::join!(
            post(
                &env,
                "us",
                "ana",
                "SELECT count(*) FROM notes WHERE user_id = 'ana'"
            ),
            post(
                &env,
                "us",
                "ben",
                "SELECT count(*) FROM notes WHERE user_id = 'ben'"
            ),
            post(
                &env,
                "us",
                "cyd",
                "SELECT count(*) FROM notes WHERE user_id = 'cyd'"
            ),
            post(
                &env,
                "us",
                "ben",
                "INSERT INTO notes (user_id, body) VALUES ('ben', 'local')"
            ),
            post(
                &env,
                "us",
                "ana",
                "INSERT INTO notes (user_id, body) VALUES ('ana', 'remote')"
            ),
        );
        seen.push(("read eu-homed", a.0, a.1, a.2));
        seen.push(("read us-homed", b.0, b.1, b.2));
        seen.push(("read unseen user", c.0, c.1, c.2));
        seen.push(("write us-homed", d.0, d.1, d.2));
        seen.push(("write eu-homed", e.0, e.1, e.2));
    }
    let total = seen.len();
    let hung = seen.iter().filter(|s| s.1 == Seen::Hung).count();
    assert_eq!(hung, 0, "no request hangs: {seen:?}");
    for (what, s, _, retry) in &seen {
        match (*what, s) {
            ("read eu-homed" | "read unseen user", Seen::Status(200, by)) => {
                assert_eq!(by, "us/replica")
            }
            ("read us-homed" | "write us-homed", Seen::Status(200, by)) => {
                assert_eq!(by, "us/primary")
            }
            ("write eu-homed", Seen::Status(502 | 503, _)) => {
                assert!(retry.is_some(), "a failed remote write says when to retry")
            }
            other => panic!("during the cut: {other:?}"),
        }
    }
    let slowest_remote_write = seen
        .iter()
        .filter(|s| s.0 == "write eu-homed")
        .map(|s| s.2)
        .max()
        .unwrap();
    println!(
        "cut: {total} requests, all answered; slowest failed remote write {slowest_remote_write:?}"
    );

    // The wire endpoint: local reads go on, a remote write fails with a clear SQLSTATE.
    let url = format!(
        "postgresql://app@127.0.0.1:{}/app?options=-c%20homeport.user%3Dana",
        env.sandbox.region("us").pg_port
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = c
        .query_one("SELECT count(*) FROM notes WHERE user_id = 'ana'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let err = tokio::time::timeout(
        Duration::from_secs(15),
        c.execute(
            "INSERT INTO notes (user_id, body) VALUES ('ana', 'wire')",
            &[],
        ),
    )
    .await
    .expect("the remote write fails instead of hanging")
    .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("08006"), "{err:?}");
    assert_eq!(
        env.send(env.http.get(env.url("us", "/readyz")))
            .await
            .status,
        200,
        "the region still serves"
    );

    // The link returns: writes resume by themselves.
    env.sandbox.partition("us", false);
    let healed_at = Instant::now();
    let mut resumed = false;
    while healed_at.elapsed() < Duration::from_secs(30) {
        let (s, _, _) = post(
            &env,
            "us",
            "ana",
            "INSERT INTO notes (user_id, body) VALUES ('ana', 'after')",
        )
        .await;
        if s == Seen::Status(200, "eu/primary".into()) {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "writes resumed after the link came back");
    println!(
        "healed: remote writes resumed after {:?}",
        healed_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_takes_over_writes_without_a_restart() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "fay", "eu").await.status, 201);
    // A us sidecar that knows the eu replica as a second primary candidate (like libpq's
    // host list with target_session_attrs=read-write).
    let replica = env.replica_port("eu", "us");
    let primary = env.primary_port("eu");
    let (config, http_port, _) = common::region_config_on_new_ports(&env, "us");
    let primary_url = format!("postgresql://app@127.0.0.1:{primary}/app");
    let replica_url = format!("postgresql://app@127.0.0.1:{replica}/app");
    let config = config.replace(
        &format!("primary = [\"{primary_url}\"]"),
        &format!("primary = [\"{primary_url}\", {{ url = \"{replica_url}\", region = \"us\" }}]"),
    );
    assert!(config.contains(&replica_url));
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-failover", &config, http_port)
        .unwrap();
    let url = format!("http://127.0.0.1:{http_port}/v1/query");
    let request = |sql: &str, token: Option<&str>| {
        let mut r = env
            .http
            .post(&url)
            .header("homeport-user", "fay")
            .json(&json!({ "sql": sql }));
        if let Some(t) = token {
            r = r.header("consistency-token", t);
        }
        env.send(r)
    };

    let mut acknowledged = 0;
    let mut old_token = String::new();
    for i in 0..20 {
        let w = request(
            &format!("INSERT INTO notes (user_id, body) VALUES ('fay', 'before {i}')"),
            None,
        )
        .await;
        assert_eq!((w.status, w.served_by()), (200, "eu/primary"));
        acknowledged += 1;
        old_token = w.header("consistency-token").unwrap().to_string();
    }
    wait_caught_up(&env, "eu", "us").await;

    env.sandbox.stop_server("eu-primary");
    let promoting = Instant::now();
    env.sandbox.promote_server("eu-replica-us").unwrap();
    let promoted = Instant::now();
    let promote_took = promoting.elapsed();
    let mut failed_meanwhile = 0;
    let first_write = loop {
        let w = request(
            "INSERT INTO notes (user_id, body) VALUES ('fay', 'after')",
            None,
        )
        .await;
        if w.status == 200 {
            break w;
        }
        assert!(
            matches!(w.status, 502 | 503),
            "during the failover writes fail clearly: {} {:?}",
            w.status,
            w.body
        );
        failed_meanwhile += 1;
        assert!(
            promoted.elapsed() < Duration::from_secs(30),
            "writes never resumed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let failover = promoted.elapsed();
    assert_eq!(first_write.served_by(), "us/primary", "the promoted server");
    println!(
        "failover: pg_ctl promote took {promote_took:?}; first successful write {failover:?} after it returned ({failed_meanwhile} writes refused meanwhile)"
    );

    // Every write acknowledged before the failover is there.
    let new_primary = env.direct(replica).await;
    let n: i64 = new_primary
        .query_one(
            "SELECT count(*) FROM notes WHERE user_id = 'fay' AND body LIKE 'before %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, acknowledged);

    // A token from the old timeline is served by the primary, and sees its write.
    let read = request(
        "SELECT count(*) FROM notes WHERE user_id = 'fay' AND body LIKE 'before %'",
        Some(&old_token),
    )
    .await;
    assert_eq!(
        (read.status, read.served_by(), &read.body["rows"][0][0]),
        (200, "us/primary", &json!(acknowledged))
    );
    // New writes carry tokens of the new timeline, which verify and serve.
    let new_token = first_write.header("consistency-token").unwrap();
    let keys = common::token_keys(&env);
    let eu = homeport::types::RegionName::parse("eu").unwrap();
    let old = homeport::consistency::token::Token::decode(&old_token, &keys).unwrap();
    let new = homeport::consistency::token::Token::decode(new_token, &keys).unwrap();
    assert!(new.shards[&eu].timeline > old.shards[&eu].timeline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_fast_and_clearly_without_harming_others() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "gil", "us").await.status, 201);
    // A us sidecar with tiny pools and a low client limit.
    let (config, http_port, pg_port) = common::region_config_on_new_ports(&env, "us");
    let config = config
        .replace("max_client_conn = 1000", "max_client_conn = 40")
        .replace("pool_size = 20", "pool_size = 2")
        .replace("pool_size = 16", "pool_size = 2");
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-small", &config, http_port)
        .unwrap();
    let url = format!("http://127.0.0.1:{http_port}/v1/query");
    let query = |sql: &'static str| {
        env.http
            .post(&url)
            .header("homeport-user", "gil")
            .json(&json!({ "sql": sql, "intent": "write" }))
            .send()
    };

    // HTTP: both connections of the primary's pool busy; the next request waits acquire_timeout
    // (1 s) at most, then gets a clear 503.
    let busy = tokio::spawn({
        let (a, b) = (query("SELECT pg_sleep(3)"), query("SELECT pg_sleep(3)"));
        async move { tokio::join!(a, b) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let refused = query("SELECT 1").await.unwrap();
    let waited = started.elapsed();
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("timed out"),
        "{body}"
    );
    let (a, b) = busy.await.unwrap();
    assert_eq!(
        (a.unwrap().status().as_u16(), b.unwrap().status().as_u16()),
        (200, 200),
        "the busy requests finished normally"
    );
    println!("pool exhausted: refused after {waited:?}");

    // Wire: a session opened before a flood of clients keeps working; past max_client_conn the
    // flood is refused with 53300, and nothing of it lingers once it goes away.
    let wire_url =
        format!("postgresql://app@127.0.0.1:{pg_port}/app?options=-c%20homeport.user%3Dgil");
    let (survivor, conn) = tokio_postgres::connect(&wire_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        match tokio_postgres::connect(&wire_url, tokio_postgres::NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                flood.push(c);
            }
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(flood.len(), 39, "up to max_client_conn sessions");
    assert_eq!(refused, 261);
    let one: i32 = survivor.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the existing session is unharmed");
    drop(flood);
    let mut admitted = false;
    for _ in 0..50 {
        if tokio_postgres::connect(&wire_url, tokio_postgres::NoTls)
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "new clients are admitted once the flood is gone");

    // Wire pool exhaustion: two sessions hold both server connections in open transactions; a
    // third session's statement fails after acquire_timeout with a clear error, then works.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let (c, conn) = tokio_postgres::connect(&wire_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.batch_execute("BEGIN").await.unwrap();
        c.batch_execute("INSERT INTO notes (user_id, body) VALUES ('gil', 'held')")
            .await
            .unwrap();
        holders.push(c);
    }
    let err = survivor
        .batch_execute("INSERT INTO notes (user_id, body) VALUES ('gil', 'waits')")
        .await
        .unwrap_err();
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(message.contains("timed out"), "{message}");
    for h in &holders {
        h.batch_execute("COMMIT").await.unwrap();
    }
    survivor
        .batch_execute("INSERT INTO notes (user_id, body) VALUES ('gil', 'after')")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_and_transactions_then_exits() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "ivo", "us").await.status, 201);
    let us = env.sandbox.region("us").clone();
    let wire = || async {
        let url = format!(
            "postgresql://app@127.0.0.1:{}/app?options=-c%20homeport.user%3Divo",
            us.pg_port
        );
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    };
    let in_txn = wire().await;
    let idle = wire().await;
    in_txn.batch_execute("BEGIN").await.unwrap();
    in_txn
        .batch_execute("INSERT INTO notes (user_id, body) VALUES ('ivo', 'drained')")
        .await
        .unwrap();
    let slow = tokio::spawn({
        let req = env
            .http
            .post(env.url("us", "/v1/query"))
            .header("homeport-user", "ivo")
            .json(&json!({"sql": "SELECT pg_sleep(1.5)", "intent": "write"}));
        async move { req.send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = env.sandbox.sidecar_pid("us").unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();

    // New connections are refused soon after the signal.
    let mut refused = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if tokio::net::TcpStream::connect(("127.0.0.1", us.http_port))
            .await
            .is_err()
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "the HTTP listener closed");
    // The idle session was told to go; the one inside a transaction finishes it.
    let err = idle.simple_query("SELECT 1").await.unwrap_err();
    assert!(err.code().is_none_or(|c| c.code() == "57P01"), "{err:?}");
    in_txn
        .batch_execute("INSERT INTO notes (user_id, body) VALUES ('ivo', 'drained too')")
        .await
        .unwrap();
    in_txn.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
    let mut exited = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
        {
            exited = true;
            break;
        }
    }
    assert!(exited, "the sidecar exited once drained");
    let n: i64 = env
        .direct(env.primary_port("us"))
        .await
        .query_one(
            "SELECT count(*) FROM notes WHERE user_id = 'ivo' AND body LIKE 'drained%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the drained transaction committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_reload_the_topology_without_dropping_anyone() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "jon", "eu").await.status, 201);
    let primary = env.primary_port("eu");
    let (good, http_port, pg_port) = common::region_config_on_new_ports(&env, "us");
    let primary_url = format!("postgresql://app@127.0.0.1:{primary}/app");
    // Start with the eu shard's primary at a wrong address.
    let dead = homeport::dev::pick_ports(1).unwrap()[0];
    let wrong = good.replace(
        &format!("primary = [\"{primary_url}\"]"),
        &format!("primary = [\"postgresql://app@127.0.0.1:{dead}/app\"]"),
    );
    assert_ne!(wrong, good);
    let sidecar = env
        .sandbox
        .spawn_sidecar("us-reload", &wrong, http_port)
        .unwrap();
    let path = env.sandbox.dir.join("us-reload").join("homeport.toml");
    let http = reqwest::Client::new(); // keeps its connection alive across the reload
    let url = format!("http://127.0.0.1:{http_port}");
    let write = || {
        http.post(format!("{url}/v1/query"))
            .header("homeport-user", "jon")
            .json(&json!({"sql": "INSERT INTO notes (user_id, body) VALUES ('jon', 'x')"}))
            .send()
    };
    assert_eq!(write().await.unwrap().status().as_u16(), 503);
    let wire_url =
        format!("postgresql://app@127.0.0.1:{pg_port}/app?options=-c%20homeport.user%3Djon");
    let (session, conn) = tokio_postgres::connect(&wire_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    session
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap();

    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &sidecar.pid().to_string()])
            .status()
            .unwrap()
    };
    std::fs::write(&path, &good).unwrap();
    hup();
    let until_written = |what: &'static str| async move {
        for _ in 0..100 {
            if write().await.unwrap().status().as_u16() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: writes never resumed");
    };
    until_written("after SIGHUP").await;
    // The wire session opened before the reload moves to the new config at its next transaction.
    session
        .execute(
            "INSERT INTO notes (user_id, body) VALUES ('jon', 'wire')",
            &[],
        )
        .await
        .expect("the old session writes through the reloaded topology");

    // A file that does not validate is refused; the sidecar keeps serving with what it had.
    std::fs::write(&path, "region = [this is not toml").unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(write().await.unwrap().status().as_u16(), 200);
    // A change of a listener needs a restart: refused too.
    let relisten = good.replace(
        &format!("127.0.0.1:{http_port}\""),
        &format!("127.0.0.1:{dead}\""),
    );
    std::fs::write(&path, relisten).unwrap();
    hup();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(write().await.unwrap().status().as_u16(), 200);
    // Without a signal, a changed file is noticed too: back to the wrong primary.
    std::fs::write(&path, &wrong).unwrap();
    let mut refused = false;
    for _ in 0..100 {
        if write().await.unwrap().status().as_u16() == 503 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the file change was picked up");
    let metrics = http
        .get(format!(
            "http://127.0.0.1:{}/metrics",
            common::ops_port(&good)
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for result in ["ok", "invalid", "needs_restart"] {
        assert!(
            metrics.contains(&format!(
                "homeport_config_reloads_total{{result=\"{result}\"}}"
            )),
            "{result}: {metrics}"
        );
    }
    let one: i64 = session
        .query_one("SELECT 1::bigint", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1, "the wire session survived every reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_local_replica_is_passed_over_until_it_is_fast_again() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "kim", "eu").await.status, 201);
    // A us sidecar that reaches its local replica of the eu shard through a link we can slow.
    let links = homeport::dev::link::Links::new().unwrap();
    let replica = env.replica_port("eu", "us");
    let link = links.start(replica, Duration::ZERO).unwrap();
    let (config, http_port, _) = common::region_config_on_new_ports(&env, "us");
    let config = config
        .replace(
            &format!("127.0.0.1:{replica}/app"),
            &format!("127.0.0.1:{}/app", link.port),
        )
        .replace("timeout = \"500ms\"", "timeout = \"3s\"");
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-slow-replica", &config, http_port)
        .unwrap();
    let url = format!("http://127.0.0.1:{http_port}/v1/query");
    let served = || async {
        env.send(
            env.http
                .post(&url)
                .header("homeport-user", "kim")
                .json(&json!({"sql": "SELECT 1"})),
        )
        .await
        .served_by()
        .to_string()
    };
    assert_eq!(served().await, "us/replica");
    // 200 ms each way: the probes' smoothed RTT climbs past routing.slow_rtt (250 ms).
    link.set_delay(Duration::from_millis(200));
    let mut passed_over = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if served().await == "eu/primary" {
            passed_over = true;
            break;
        }
    }
    assert!(passed_over, "the slow local replica was passed over");
    link.set_delay(Duration::ZERO);
    let mut back = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if served().await == "us/replica" {
            back = true;
            break;
        }
    }
    assert!(back, "the replica serves again once it is fast");
}

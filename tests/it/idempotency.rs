//! Idempotency keys against a real two-region sandbox (PostgreSQL primaries and replicas, one
//! Redis per region, two sidecars): HTTP semantics and bad input, retries through the other
//! region, 50 concurrent requests with one key, Redis killed or holding a stale lock, the sidecar
//! killed with SIGKILL mid-run, and `SET LOCAL homeport.idempotency_key` on the wire.

use crate::common;

use std::time::Duration;

use crate::common::{Env, Resp, options, start};
use serde_json::{Value, json};
use tokio_postgres::NoTls;

fn write(env: &Env, region: &str, user: &str, key: &str, body: &str) -> reqwest::RequestBuilder {
    env.http
        .post(env.url(region, "/v1/query"))
        .header("homeport-user", user)
        .header("idempotency-key", key)
        .json(&json!({
            "sql": "INSERT INTO notes (user_id, body) VALUES ($1, $2) RETURNING body",
            "params": [user, body],
        }))
}

async fn rows(env: &Env, home: &str, user: &str, body: &str) -> i64 {
    env.direct(env.primary_port(home))
        .await
        .query_one(
            "SELECT count(*) FROM notes WHERE user_id = $1 AND body = $2",
            &[&user, &body],
        )
        .await
        .unwrap()
        .get(0)
}

fn replayed(r: &Resp) -> bool {
    r.header("idempotent-replayed") == Some("true")
}

fn problem(r: &Resp, status: u16, sqlstate: Option<&str>) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{:?}",
        r.body
    );
    assert!(r.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    if let Some(code) = sqlstate {
        assert_eq!(r.body["sqlstate"], code, "{:?}", r.body);
    }
}

async fn metrics(env: &Env, region: &str) -> String {
    env.send(env.http.get(env.ops_url(region, "/metrics")))
        .await
        .body
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_keys_apply_once_and_replay_everywhere() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "ivy", "eu").await.status, 201);

    let first = env.send(write(&env, "us", "ivy", "k1", "pay 10")).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert!(!replayed(&first));
    assert_eq!(first.served_by(), "eu/primary");
    assert!(first.header("consistency-token").is_some());

    // The same request again in the same region: Redis answers, nothing runs.
    let again = env.send(write(&env, "us", "ivy", "k1", "pay 10")).await;
    assert_eq!(
        (again.status, replayed(&again), again.served_by()),
        (200, true, "us/cache")
    );
    assert_eq!(again.body, first.body);
    // Through the other region's sidecar (its Redis knows nothing): the home primary's record.
    let other = env.send(write(&env, "eu", "ivy", "k1", "pay 10")).await;
    assert_eq!(
        (other.status, replayed(&other), other.served_by()),
        (200, true, "eu/primary")
    );
    assert_eq!(other.body, first.body);
    assert!(other.header("consistency-token").is_some());
    assert_eq!(rows(&env, "eu", "ivy", "pay 10").await, 1);

    // Same key, different request: 422, in both regions.
    for region in ["us", "eu"] {
        let r = env.send(write(&env, region, "ivy", "k1", "pay 99")).await;
        problem(&r, 422, Some("HP422"));
    }
    assert_eq!(rows(&env, "eu", "ivy", "pay 99").await, 0);

    // A failed write leaves no record: the retry with the same key applies.
    let failed = env
        .send(
            env.http
                .post(env.url("us", "/v1/query"))
                .header("homeport-user", "ivy")
                .header("idempotency-key", "k2")
                .json(&json!({"sql": "INSERT INTO no_such_table VALUES (1)"})),
        )
        .await;
    problem(&failed, 400, Some("42P01"));
    let retried = env.send(write(&env, "us", "ivy", "k2", "pay 20")).await;
    assert_eq!((retried.status, replayed(&retried)), (200, false));
    assert_eq!(rows(&env, "eu", "ivy", "pay 20").await, 1);

    // A transaction with a key applies once, and replays with its results.
    let txn = || {
        env.http
            .post(env.url("us", "/v1/transaction"))
            .header("homeport-user", "ivy")
            .header("idempotency-key", "t1")
            .json(&json!({"statements": [
                {"sql": "INSERT INTO notes (user_id, body) VALUES ('ivy', 'txn a')"},
                {"sql": "INSERT INTO notes (user_id, body) VALUES ('ivy', 'txn b') RETURNING body"}
            ]}))
    };
    let t1 = env.send(txn()).await;
    assert_eq!((t1.status, replayed(&t1)), (200, false), "{:?}", t1.body);
    let t2 = env.send(txn()).await;
    assert_eq!((t2.status, replayed(&t2)), (200, true));
    assert_eq!(t2.body["results"][1]["rows"][0][0], "txn b");
    assert_eq!(rows(&env, "eu", "ivy", "txn a").await, 1);

    // Bad keys are the client's mistake: 400 with a problem body.
    let long = "k".repeat(256);
    problem(
        &env.send(write(&env, "us", "ivy", &long, "x")).await,
        400,
        None,
    );
    let non_ascii = env
        .send(
            env.http
                .post(env.url("us", "/v1/query"))
                .header("homeport-user", "ivy")
                .header(
                    "idempotency-key",
                    reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
                )
                .json(&json!({"sql": "INSERT INTO notes (user_id, body) VALUES ('ivy', 'x')"})),
        )
        .await;
    problem(&non_ascii, 400, None);
    let twice = env
        .send(write(&env, "us", "ivy", "k3", "x").header("idempotency-key", "k4"))
        .await;
    problem(&twice, 400, None);
    assert_eq!(rows(&env, "eu", "ivy", "x").await, 0);
    assert!(
        env.send(write(&env, "us", "ivy", &"k".repeat(255), "max"))
            .await
            .status
            == 200
    );

    // The record: in the home primary, in homeport's own table.
    let direct = env.direct(env.primary_port("eu")).await;
    let row = direct
        .query_one(
            "SELECT state, status, response, expires_at > now() + interval '23 hours' \
             FROM homeport.idempotency_keys WHERE user_id = 'ivy' AND key = 'k1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(row.get::<_, i16>(1), 200);
    let stored: Value = serde_json::from_str(&row.get::<_, String>(2)).unwrap();
    assert_eq!(stored, first.body);
    assert!(row.get::<_, bool>(3), "expires after the configured 24 h");
    let version: i32 = direct
        .query_one(
            "SELECT max(version) FROM homeport.migrations WHERE component = 'idempotency'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, homeport::idempotency::store::LATEST);

    let m = metrics(&env, "us").await;
    for needle in [
        "homeport_idempotency_total{result=\"new\",frontend=\"http\"}",
        "homeport_idempotency_total{result=\"replayed\",frontend=\"http\"}",
        "homeport_idempotency_total{result=\"mismatch\",frontend=\"http\"}",
        "homeport_idempotency_cache_lookups_total{result=\"hit\"}",
        "homeport_idempotency_cache_lookups_total{result=\"miss\"}",
    ] {
        assert!(m.contains(needle), "{needle} in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_with_one_key_apply_once() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "cal", "eu").await.status, 201);
    let requests = (0..50).map(|i| {
        let region = if i % 2 == 0 { "us" } else { "eu" };
        env.send(write(&env, region, "cal", "same-key", "once"))
    });
    let responses = futures_util::future::join_all(requests).await;
    let applied = responses
        .iter()
        .filter(|r| r.status == 200 && !replayed(r))
        .count();
    assert_eq!(applied, 1, "exactly one request applied");
    for r in &responses {
        // 503: the sidecar's pool (16 connections, 1 s acquire timeout in the sandbox) was
        // saturated on a loaded machine; nothing was applied and the client may retry.
        assert!(
            r.status == 409
                || r.status == 503
                || (r.status == 200 && r.body == responses_body(&responses)),
            "{} {:?}",
            r.status,
            r.body
        );
        if r.status == 409 {
            problem(r, 409, Some("HP409"));
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        if r.status == 503 {
            problem(r, 503, None);
        }
    }
    assert_eq!(rows(&env, "eu", "cal", "once").await, 1);
}

/// The body of the request that applied.
fn responses_body(responses: &[Resp]) -> Value {
    responses
        .iter()
        .find(|r| r.status == 200 && !replayed(r))
        .map(|r| r.body.clone())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_or_stale_never_duplicates_or_loses_a_write() {
    let mut env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "dee", "eu").await.status, 201);
    let redis_port = env.sandbox.region("us").redis_port.expect("sandbox Redis");

    // A lock left behind by a holder that died: 409 until it expires, then one apply.
    let mut redis = tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
        .await
        .unwrap();
    let lock = "homeport:idem:{3:dee:stale}:lock";
    let cmd = format!(
        "*5\r\n$3\r\nSET\r\n${}\r\n{lock}\r\n$4\r\ndead\r\n$2\r\nPX\r\n$4\r\n1500\r\n",
        lock.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut redis, cmd.as_bytes())
        .await
        .unwrap();
    let mut ok = [0u8; 5];
    tokio::io::AsyncReadExt::read_exact(&mut redis, &mut ok)
        .await
        .unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    let blocked = env.send(write(&env, "us", "dee", "stale", "s")).await;
    problem(&blocked, 409, Some("HP409"));
    assert_eq!(rows(&env, "eu", "dee", "s").await, 0);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let applied = env.send(write(&env, "us", "dee", "stale", "s")).await;
    assert_eq!((applied.status, replayed(&applied)), (200, false));

    // Redis killed mid-run: the home primary alone decides, still exactly once.
    let before = env.send(write(&env, "us", "dee", "r1", "before")).await;
    assert_eq!(before.status, 200);
    env.sandbox.stop_redis("us");
    for _ in 0..3 {
        let r = env.send(write(&env, "us", "dee", "r1", "before")).await;
        assert_eq!(
            (r.status, replayed(&r), r.served_by()),
            (200, true, "eu/primary")
        );
        assert_eq!(r.body, before.body);
    }
    let fresh = env.send(write(&env, "us", "dee", "r2", "after")).await;
    assert_eq!((fresh.status, replayed(&fresh)), (200, false));
    let again = env.send(write(&env, "us", "dee", "r2", "after")).await;
    assert_eq!((again.status, replayed(&again)), (200, true));
    assert_eq!(rows(&env, "eu", "dee", "before").await, 1);
    assert_eq!(rows(&env, "eu", "dee", "after").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_leaves_every_key_applied_exactly_once() {
    let mut env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "eve", "eu").await.status, 201);
    let urls: Vec<String> = ["us", "eu"]
        .iter()
        .map(|r| env.url(r, "/v1/query"))
        .collect();
    const KEYS: usize = 40;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Each client retries its write with its key until it gets a 200, alternating regions.
    let clients: Vec<_> = (0..KEYS)
        .map(|i| {
            let (http, urls) = (http.clone(), urls.clone());
            tokio::spawn(async move {
                let body = format!("crash {i}");
                for attempt in 0..400 {
                    let url = &urls[(i + attempt) % 2];
                    let sent = http
                        .post(url)
                        .header("homeport-user", "eve")
                        .header("idempotency-key", format!("crash-{i}"))
                        .json(&json!({
                            "sql": "INSERT INTO notes (user_id, body) VALUES ('eve', $1) RETURNING body",
                            "params": [body],
                        }))
                        .send()
                        .await;
                    if let Ok(r) = sent
                        && r.status() == 200
                    {
                        let v: Value = r.json().await.unwrap();
                        return (i, v);
                    }
                    tokio::time::sleep(Duration::from_millis(50 + (i as u64 * 7) % 50)).await;
                }
                panic!("key crash-{i} never got an answer");
            })
        })
        .collect();
    // Meanwhile the us sidecar is killed with SIGKILL at varying moments and started again.
    for round in 0..4u64 {
        tokio::time::sleep(Duration::from_millis(150 + round * 110)).await;
        let pid = env.sandbox.sidecar_pid("us").unwrap();
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        tokio::task::block_in_place(|| env.sandbox.restart_sidecar("us")).unwrap();
    }
    for c in clients {
        let (i, v) = c.await.unwrap();
        assert_eq!(
            v["rows"][0][0],
            format!("crash {i}"),
            "the original response"
        );
    }
    let direct = env.direct(env.primary_port("eu")).await;
    let counts = direct
        .query(
            "SELECT body, count(*) FROM notes WHERE user_id = 'eve' GROUP BY body",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(counts.len(), KEYS, "every key applied");
    for row in counts {
        assert_eq!(
            row.get::<_, i64>(1),
            1,
            "{} applied more than once",
            row.get::<_, String>(0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_can_be_required() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "flo", "us").await.status, 201);
    let (config, http_port, _) = common::region_config_on_new_ports(&env, "us");
    let config = config.replace("require = false", "require = true");
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-strict", &config, http_port)
        .unwrap();
    let url = format!("http://127.0.0.1:{http_port}/v1/query");
    let post = |sql: &str| {
        env.http
            .post(&url)
            .header("homeport-user", "flo")
            .json(&json!({ "sql": sql }))
    };
    let refused = env
        .send(post(
            "INSERT INTO notes (user_id, body) VALUES ('flo', 'no key')",
        ))
        .await;
    problem(&refused, 400, None);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    assert_eq!(
        env.send(post("SELECT 1")).await.status,
        200,
        "reads need no key"
    );
    let keyed = env
        .send(
            post("INSERT INTO notes (user_id, body) VALUES ('flo', 'keyed')")
                .header("idempotency-key", "f1"),
        )
        .await;
    assert_eq!(keyed.status, 200);
}

async fn wire(env: &Env, region: &str, user: &str) -> tokio_postgres::Client {
    let url = format!(
        "postgresql://app@127.0.0.1:{}/app?options=-c%20homeport.user%3D{user}",
        env.sandbox.region(region).pg_port
    );
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

/// BEGIN, the key, one insert, COMMIT: each its own statement, as drivers send them.
async fn idempotent(
    c: &tokio_postgres::Client,
    key: &str,
    body: &str,
) -> Result<(), tokio_postgres::Error> {
    c.batch_execute("BEGIN").await?;
    c.batch_execute(&format!("SET LOCAL homeport.idempotency_key = '{key}'"))
        .await?;
    c.execute(
        "INSERT INTO notes (user_id, body) VALUES ('gus', $1)",
        &[&body],
    )
    .await?;
    c.batch_execute("COMMIT").await
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_idempotency_key_on_the_wire() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "gus", "eu").await.status, 201);
    let a = wire(&env, "us", "gus").await;
    // homeport settings go as statements of their own; stuffed into a longer query the server
    // would take them for placeholder settings, so homeport refuses that.
    let hidden = a
        .batch_execute("BEGIN; SET LOCAL homeport.idempotency_key = 'w0'; COMMIT")
        .await
        .unwrap_err();
    assert_eq!(code(&hidden), "0A000");
    idempotent(&a, "w1", "wire once").await.unwrap();
    let again = idempotent(&a, "w1", "wire once").await.unwrap_err();
    assert_eq!(code(&again), "HP200");
    assert!(
        again
            .as_db_error()
            .unwrap()
            .message()
            .contains("already used by a committed transaction")
    );
    a.batch_execute("ROLLBACK").await.unwrap();
    // The other region's sidecar sees the same record.
    let b = wire(&env, "eu", "gus").await;
    let there = idempotent(&b, "w1", "wire once").await.unwrap_err();
    assert_eq!(code(&there), "HP200");
    b.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(rows(&env, "eu", "gus", "wire once").await, 1);

    // A rolled-back transaction frees its key.
    for sql in [
        "BEGIN",
        "SET LOCAL homeport.idempotency_key = 'w2'",
        "INSERT INTO notes (user_id, body) VALUES ('gus', 'rolled back')",
        "ROLLBACK",
    ] {
        a.batch_execute(sql).await.unwrap();
    }
    idempotent(&a, "w2", "second try").await.unwrap();
    assert_eq!(rows(&env, "eu", "gus", "rolled back").await, 0);
    assert_eq!(rows(&env, "eu", "gus", "second try").await, 1);

    // In flight in one session: another session is told 409, then, after the commit, 200.
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET LOCAL homeport.idempotency_key = 'w3'")
        .await
        .unwrap();
    let holder_key = a
        .simple_query("SHOW homeport.idempotency_key")
        .await
        .unwrap();
    assert!(holder_key.iter().any(|m| matches!(
        m,
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("w3")
    )));
    let busy = idempotent(&b, "w3", "racing").await.unwrap_err();
    assert_eq!(code(&busy), "HP409");
    b.batch_execute("ROLLBACK").await.unwrap();
    a.batch_execute("INSERT INTO notes (user_id, body) VALUES ('gus', 'racing'); COMMIT")
        .await
        .unwrap();
    let late = idempotent(&b, "w3", "racing").await.unwrap_err();
    assert_eq!(code(&late), "HP200");
    b.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(rows(&env, "eu", "gus", "racing").await, 1);

    // Through the extended protocol (a driver's transaction object).
    let mut c = wire(&env, "us", "gus").await;
    for expect_ok in [true, false] {
        let tx = c.transaction().await.unwrap();
        let set = tx
            .execute("SET LOCAL homeport.idempotency_key = 'w4'", &[])
            .await;
        if expect_ok {
            set.unwrap();
            tx.execute(
                "INSERT INTO notes (user_id, body) VALUES ($1, 'extended')",
                &[&"gus"],
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
        } else {
            assert_eq!(code(&set.unwrap_err()), "HP200");
            tx.rollback().await.unwrap();
        }
    }
    assert_eq!(rows(&env, "eu", "gus", "extended").await, 1);

    // Misuse gets a clear error and the session goes on.
    let session_wide = a
        .batch_execute("SET homeport.idempotency_key = 'x'")
        .await
        .unwrap_err();
    assert_eq!(code(&session_wide), "0A000");
    let outside = a
        .batch_execute("SET LOCAL homeport.idempotency_key = 'x'")
        .await
        .unwrap_err();
    assert_eq!(code(&outside), "25P01");
    a.batch_execute("BEGIN").await.unwrap();
    let too_long = a
        .batch_execute(&format!(
            "SET LOCAL homeport.idempotency_key = '{}'",
            "k".repeat(256)
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&too_long), "22023");
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        a.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    let m = metrics(&env, "us").await;
    assert!(
        m.contains("homeport_idempotency_total{result=\"replayed\",frontend=\"pg\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_deleted_in_batches_and_free_again() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "hal", "eu").await.status, 201);
    // An eu sidecar (eu cleans the eu shard) with a one-second memory and quick cleanup.
    let (config, http_port, _) = common::region_config_on_new_ports(&env, "eu");
    let config = config.replace("ttl = \"24h\"", "ttl = \"1s\"").replace(
        "cleanup_interval = \"1m\"",
        "cleanup_interval = \"200ms\"\ncleanup_batch = 2",
    );
    let _sidecar = env
        .sandbox
        .spawn_sidecar("eu-forgetful", &config, http_port)
        .unwrap();
    let url = format!("http://127.0.0.1:{http_port}/v1/query");
    let post = |key: String| {
        env.http
            .post(&url)
            .header("homeport-user", "hal")
            .header("idempotency-key", key)
            .json(&json!({"sql": "INSERT INTO notes (user_id, body) VALUES ('hal', 'again')"}))
    };
    for i in 0..5 {
        assert_eq!(env.send(post(format!("e{i}"))).await.status, 200);
    }
    let replay = env.send(post("e0".into())).await;
    assert!(replayed(&replay), "within the ttl the key replays");
    let direct = env.direct(env.primary_port("eu")).await;
    let mut left = i64::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = direct
            .query_one(
                "SELECT count(*) FROM homeport.idempotency_keys WHERE user_id = 'hal'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
    }
    assert_eq!(left, 0, "expired records were deleted");
    let reused = env.send(post("e0".into())).await;
    assert_eq!((reused.status, replayed(&reused)), (200, false));
    assert_eq!(rows(&env, "eu", "hal", "again").await, 6);
}

/// The body bytes of `write` for `user` and `body`, and their fingerprint.
fn write_body(user: &str, body: &str) -> (Vec<u8>, Vec<u8>) {
    let bytes = serde_json::to_vec(&json!({
        "sql": "INSERT INTO notes (user_id, body) VALUES ($1, $2) RETURNING body",
        "params": [user, body],
    }))
    .unwrap();
    let fp = homeport::idempotency::fingerprint("POST", "/v1/query", &bytes);
    (bytes, fp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_previous_schema_upgrades_and_both_versions_exclude_each_other() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "old", "eu").await.status, 201);
    // The previous version's sidecar migrated the eu primary (schema version 1, as the sidecar's
    // own database user) and applied k1.
    let (mut direct, conn) =
        tokio_postgres::connect(&homeport::dev::pg_url(env.primary_port("eu"), "app"), NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    homeport::idempotency::store::migrate_to(&mut direct, 1)
        .await
        .unwrap();
    let stored = r#"{"columns":[{"name":"body","type":"text"}],"rows":[["v1"]],"command":"INSERT","row_count":1}"#;
    let (_, fp1) = write_body("old", "v1");
    let old_write = |key: &'static str, fp: Vec<u8>, commit: bool| {
        let direct = &direct;
        async move {
            direct.batch_execute("BEGIN").await.unwrap();
            direct
                .execute(
                    "SELECT homeport.idempotency_claim('old', $1, $2, 'completed', 3600)",
                    &[&key, &fp],
                )
                .await
                .unwrap();
            direct
                .execute(
                    "INSERT INTO notes (user_id, body) VALUES ('old', 'v1')",
                    &[],
                )
                .await
                .unwrap();
            if commit {
                direct
                    .execute(
                        "INSERT INTO homeport.idempotency_keys \
                         (user_id, key, fingerprint, state, status, response, expires_at) \
                         VALUES ('old', $1, $2, 'completed', 200, $3, now() + interval '1 hour')",
                        &[&key, &fp, &stored],
                    )
                    .await
                    .unwrap();
                direct.batch_execute("COMMIT").await.unwrap();
            }
        }
    };
    old_write("k1", fp1.clone(), true).await;

    // This version migrates to its schema on first use and replays the old record.
    let replay = env.send(write(&env, "eu", "old", "k1", "v1")).await;
    assert_eq!(
        (replay.status, replayed(&replay)),
        (200, true),
        "{:?}",
        replay.body
    );
    assert_eq!(replay.body, serde_json::from_str::<Value>(stored).unwrap());
    let version: i32 = direct
        .query_one(
            "SELECT max(version) FROM homeport.migrations WHERE component = 'idempotency'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, homeport::idempotency::store::LATEST);

    // A rollout: an old sidecar's request with k2 is still running; this version says 409.
    old_write("k2", fp1.clone(), false).await;
    let busy = env.send(write(&env, "eu", "old", "k2", "v1")).await;
    problem(&busy, 409, Some("HP409"));
    direct.batch_execute("ROLLBACK").await.unwrap();

    // A record this version wrote refuses the old claim function (no second apply).
    let (_, fp3) = write_body("old", "v3");
    let new = env.send(write(&env, "eu", "old", "k3", "v3")).await;
    assert_eq!((new.status, replayed(&new)), (200, false));
    direct.batch_execute("BEGIN").await.unwrap();
    let refused = direct
        .execute(
            "SELECT homeport.idempotency_claim('old', 'k3', $1, 'completed', 3600)",
            &[&fp3],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&refused), "HP200");
    direct.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(rows(&env, "eu", "old", "v3").await, 1);

    // An expired record the cleanup has not reached yet: the key is free again.
    direct
        .execute(
            "INSERT INTO homeport.idempotency_keys (user_id, key, fingerprint, state, status, \
             response, expires_at) VALUES ('old', 'k4', '\\x00', 'completed', 200, '{}', \
             now() - interval '1 minute')",
            &[],
        )
        .await
        .unwrap();
    let fresh = env.send(write(&env, "eu", "old", "k4", "v4")).await;
    assert_eq!(
        (fresh.status, replayed(&fresh)),
        (200, false),
        "{:?}",
        fresh.body
    );
    let again = env.send(write(&env, "eu", "old", "k4", "v4")).await;
    assert_eq!((again.status, replayed(&again)), (200, true));
    assert_eq!(again.body, fresh.body);
    assert_eq!(rows(&env, "eu", "old", "v4").await, 1);
}

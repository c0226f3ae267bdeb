//! homeport behind a central pooler: `homeport dev --upstream-pooler` puts a PgBouncer in
//! transaction mode in front of every server and marks the endpoints `pooler = "transaction"`.
//! Through it, HTTP statements under concurrency, wire clients' prepared statements (pgbench
//! `-M prepared`, psycopg), routing to the home primary, read-your-writes with a token and
//! idempotency keys work, and a session's settings never reach the pooler's other clients.

use crate::common;

use std::process::Command;

use crate::common::{Env, options, pg_bin, python, run, start};
use serde_json::{Value, json};

async fn pooled_sandbox() -> Env {
    let mut o = options(&["eu", "us"]);
    o.upstream_pooler = true;
    start(o).await
}

/// The PgBouncer in front of the server on `server_port`.
fn pooler_port(env: &Env, server_port: u16) -> u16 {
    *env.sandbox
        .pooler_ports
        .get(&server_port)
        .expect("a PgBouncer in front of every server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_a_transaction_pooler() {
    let env = pooled_sandbox().await;
    let config = std::fs::read_to_string(&env.sandbox.region("eu").config_path).unwrap();
    assert!(config.contains("pooler = \"transaction\""), "{config}");
    assert_eq!(env.place("eu", "pia", "us").await.status, 201);

    // Routing: a write through eu runs on the home primary (us), and a token read sees it.
    let w = env
        .query(
            "eu",
            "pia",
            "INSERT INTO notes (user_id, body) VALUES ($1, $2) RETURNING id",
            json!(["pia", "first"]),
        )
        .await;
    assert_eq!(w.status, 200, "{:?}", w.body);
    assert_eq!(w.served_by(), "us/primary");
    let token = w.header("consistency-token").expect("a token").to_string();
    let r = env
        .send(
            env.http
                .post(env.url("eu", "/v1/query"))
                .header("homeport-user", "pia")
                .header("consistency-token", &token)
                .json(
                    &json!({"sql": "SELECT body FROM notes WHERE user_id = $1", "params": ["pia"]}),
                ),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rows"], json!([["first"]]), "read-your-writes");

    // Idempotency: the same key twice applies once and replays the stored response.
    let keyed = || {
        env.http
            .post(env.url("eu", "/v1/query"))
            .header("homeport-user", "pia")
            .header("idempotency-key", "pooled-1")
            .json(&json!({"sql": "INSERT INTO notes (user_id, body) VALUES ($1, 'keyed') RETURNING body", "params": ["pia"]}))
    };
    let first = env.send(keyed()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let again = env.send(keyed()).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let us = env.direct(env.primary_port("us")).await;
    let keyed_rows: i64 = us
        .query_one(
            "SELECT count(*) FROM notes WHERE user_id = 'pia' AND body = 'keyed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keyed_rows, 1, "applied exactly once");

    // Concurrency: 16 clients, each cycling through different statements (and a transaction),
    // so PgBouncer hands every request whichever backend is free.
    let statements: Vec<(&str, Value)> = vec![
        ("SELECT $1::int + 1", json!([41])),
        (
            "SELECT count(*) FROM notes WHERE user_id = $1",
            json!(["pia"]),
        ),
        (
            "SELECT $1::jsonb -> 'a', $2::text[]",
            json!([{"a": 1}, ["x", "y"]]),
        ),
        (
            "INSERT INTO notes (user_id, body) VALUES ($1, $2)",
            json!(["pia", "load"]),
        ),
        (
            "SELECT decode($1, 'hex') = $2::bytea",
            json!(["0102", "AQI="]),
        ),
    ];
    let clients = (0..16).map(|c| {
        let env = &env;
        let statements = &statements;
        async move {
            let mut failures = Vec::new();
            for round in 0..10 {
                let (sql, params) = &statements[(c + round) % statements.len()];
                let r = env.query("eu", "pia", sql, params.clone()).await;
                if r.status != 200 {
                    failures.push(format!("{sql}: {} {:?}", r.status, r.body));
                }
                let t = env
                    .send(
                        env.http
                            .post(env.url("eu", "/v1/transaction"))
                            .header("homeport-user", "pia")
                            .json(&json!({"statements": [
                                {"sql": "INSERT INTO notes (user_id, body) VALUES ($1, $2)", "params": ["pia", format!("tx {c} {round}")]},
                                {"sql": "SELECT count(*) FROM notes WHERE user_id = $1 AND body = $2", "params": ["pia", format!("tx {c} {round}")]},
                            ]})),
                    )
                    .await;
                if t.status != 200 || t.body["results"][1]["rows"] != json!([[1]]) {
                    failures.push(format!("transaction: {} {:?}", t.status, t.body));
                }
            }
            failures
        }
    });
    let failures: Vec<String> = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 320 requests failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );

    // A type that is not built in cannot be looked up without named statements: a clear 400,
    // and the sidecar goes on serving.
    us.batch_execute("CREATE TYPE mood AS ENUM ('ok', 'meh')")
        .await
        .unwrap();
    common::wait_caught_up(&env, "us", "eu").await;
    let custom = env
        .query("eu", "pia", "SELECT 'ok'::mood AS m", json!([]))
        .await;
    assert_eq!(custom.status, 400, "{:?}", custom.body);
    assert_eq!(custom.body["sqlstate"], "0A000", "{:?}", custom.body);
    let cast = env
        .query("eu", "pia", "SELECT 'ok'::mood::text AS m", json!([]))
        .await;
    assert_eq!(cast.status, 200, "{:?}", cast.body);
    assert_eq!(cast.body["rows"], json!([["ok"]]));

    // The identity setting is set for the server session over HTTP, which behind a transaction
    // pooler would reach the pooler's next client: refused with a clear problem, not applied.
    let (config, http_port, _) = common::region_config_on_new_ports(&env, "eu");
    let config = config.replacen(
        "[postgres]\n",
        "[postgres]\nidentity_setting = \"app.user_id\"\n",
        1,
    );
    assert!(config.contains("identity_setting"), "{config}");
    let _sidecar = env
        .sandbox
        .spawn_sidecar("identity-pooled", &config, http_port)
        .expect("sidecar starts");
    let refused = env
        .send(
            env.http
                .post(format!("http://127.0.0.1:{http_port}/v1/query"))
                .header("homeport-user", "pia")
                .json(&json!({"sql": "SELECT 1", "params": []})),
        )
        .await;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(refused.body["sqlstate"], "0A000", "{:?}", refused.body);
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("identity_setting")),
        "{:?}",
        refused.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_prepared_statements_and_settings_through_a_transaction_pooler() {
    let env = pooled_sandbox().await;
    assert_eq!(env.place("eu", "pat", "eu").await.status, 201);
    let url = format!(
        "postgresql://app@127.0.0.1:{}/app",
        env.sandbox.region("eu").pg_port
    );

    // pgbench's tables straight on the eu primary; the runs go through homeport and PgBouncer.
    let direct = homeport::dev::pg_url(env.primary_port("eu"), "app");
    run(Command::new(pg_bin("pgbench")).args(["-i", "-q", "-s", "1", &direct]));
    common::wait_caught_up(&env, "eu", "us").await;
    let pgbench = |args: &[&str]| {
        run(Command::new(pg_bin("pgbench"))
            .args(args)
            .arg(&url)
            .env("PGOPTIONS", "-c homeport.user=pat"))
    };
    for mode in ["prepared", "extended", "simple"] {
        let out = pgbench(&["-n", "-M", mode, "-c", "8", "-j", "2", "-t", "50"]);
        assert!(
            out.contains("number of transactions actually processed: 400/400"),
            "TPC-B -M {mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
    }
    let eu = env.direct(env.primary_port("eu")).await;
    let history: i64 = eu
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        history, 1200,
        "every transaction committed once on the home primary"
    );

    // psycopg with server-side prepared statements (prepare_threshold=0), several connections.
    let script = r#"
import sys, psycopg
url = sys.argv[1]
conns = [psycopg.connect(url, options="-c homeport.user=pat", prepare_threshold=0, autocommit=True) for _ in range(4)]
ok = 0
for i in range(50):
    c = conns[i % 4]
    row = c.execute("SELECT aid + %s FROM pgbench_accounts WHERE aid = %s", (i, i % 10 + 1)).fetchone()
    assert row[0] == i + i % 10 + 1, row
    n = c.execute("SELECT count(*) FROM pgbench_branches WHERE bid = %s", (1,)).fetchone()
    assert n[0] == 1, n
    with c.transaction():
        c.execute("UPDATE pgbench_branches SET bbalance = bbalance + %s WHERE bid = %s", (1, 1))
    ok += 1
print("ok", ok)
"#;
    let out = run(Command::new(python()).args(["-c", script, &url]));
    assert!(out.contains("ok 50"), "{out}");

    // Settings: a session's startup settings apply inside its transactions only, so no backend
    // of the pooler keeps them for its next client.
    let app_url = format!(
        "{url}?application_name=leaky-app&options=-c%20homeport.user%3Dpat%20-c%20work_mem%3D7777kB"
    );
    let (c, conn) = tokio_postgres::connect(&app_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let inside = c
        .query_one(
            "SELECT current_setting('application_name'), current_setting('work_mem')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(inside.get::<_, String>(0), "leaky-app");
    assert_eq!(inside.get::<_, String>(1), "7777kB");
    c.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
    let in_tx = c
        .simple_query("BEGIN; SHOW work_mem; COMMIT")
        .await
        .unwrap();
    assert!(
        in_tx.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("7777kB"))),
        "a transaction opened by BEGIN keeps the session's settings"
    );
    let leaked: i64 = eu
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'leaky-app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "no backend kept the session's application_name");
    let bouncer = format!(
        "postgresql://app@127.0.0.1:{}/app",
        pooler_port(&env, env.primary_port("eu"))
    );
    let (other, conn) = tokio_postgres::connect(&bouncer, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..40 {
        let row = other.query_one("SHOW work_mem", &[]).await.unwrap();
        assert_ne!(
            row.get::<_, String>(0),
            "7777kB",
            "another PgBouncer client"
        );
    }
    // Session-level state cannot follow a session through the pooler: refused, not leaked.
    let err = c
        .batch_execute("SET work_mem = '9999kB'")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
        "{err}"
    );
    let err = c
        .batch_execute("CREATE TEMP TABLE scratch (a int)")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
        "{err}"
    );
    let local = c
        .simple_query("BEGIN; SET LOCAL work_mem = '9999kB'; SHOW work_mem; COMMIT")
        .await
        .unwrap();
    assert!(local.iter().any(
        |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("9999kB"))
    ));
}

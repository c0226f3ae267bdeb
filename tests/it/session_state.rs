//! The leak checker: no session state crosses from one client to another through homeport's
//! pooled server connections. A "setter" client leaves state in every way PostgreSQL allows
//! (settings by SET and by set_config over both protocols, session advisory locks, temporary
//! tables, SQL-level prepared statements, WITH HOLD cursors, LISTEN, roles), while "observer"
//! clients on the same pools, over both protocols and over HTTP, check after every step that they
//! see none of it; the setter still sees all of its own state afterwards.

use crate::common::{Env, options, start};
use serde_json::json;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Everything an observer looks at, in one read-only-looking statement (it runs on the home
/// primary: its functions are not provably read-only), so it lands on the pool the setter uses.
const LOOK: &str = "SELECT current_setting('search_path'), \
    coalesce(current_setting('app.tenant', true), ''), \
    coalesce(current_setting('app.other', true), ''), \
    current_setting('statement_timeout'), \
    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())::text, \
    (SELECT count(*) FROM pg_class WHERE relname = 'leak_tmp' AND relnamespace = pg_my_temp_schema())::text, \
    (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leak_stmt')::text, \
    (SELECT count(*) FROM pg_cursors WHERE name = 'leak_cursor')::text, \
    (SELECT count(*) FROM pg_listening_channels())::text, \
    current_user::text";

fn wire_url(env: &Env, user: &str) -> String {
    format!(
        "postgresql://app@127.0.0.1:{}/app?options=-c%20homeport.user%3D{user}",
        env.sandbox.region("us").pg_port
    )
}

async fn connect(env: &Env, user: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(&wire_url(env, user), NoTls)
        .await
        .expect("wire connection");
    tokio::spawn(conn);
    c
}

/// The LOOK values over the extended protocol.
async fn look_extended(c: &Client) -> Vec<String> {
    let row = c.query_one(LOOK, &[]).await.expect("look");
    (0..row.len()).map(|i| row.get::<_, String>(i)).collect()
}

/// The LOOK values over the simple protocol.
async fn look_simple(c: &Client) -> Vec<String> {
    let rows = c.simple_query(LOOK).await.expect("look");
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .expect("a row")
}

/// Observers on new connections, over both protocols, several times each (the pool lends the most
/// recently returned connection first, so they get the setter's old connections).
async fn observers_see_clean(env: &Env, clean: &[String], after: &str) {
    for i in 0..3 {
        let o = connect(env, "observer").await;
        for _ in 0..3 {
            assert_eq!(
                look_extended(&o).await,
                clean,
                "extended observer {i} after {after}"
            );
            assert_eq!(
                look_simple(&o).await,
                clean,
                "simple observer {i} after {after}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_never_crosses_clients() {
    let env = start(options(&["eu", "us"])).await;
    for user in ["setter", "observer", "leaver"] {
        assert_eq!(env.place("us", user, "eu").await.status, 201);
    }
    // A role the app may switch to, made directly on the eu primary.
    let admin = env.direct(env.primary_port("eu")).await;
    admin
        .batch_execute("CREATE ROLE leak_role; GRANT leak_role TO app")
        .await
        .unwrap();

    let first = connect(&env, "observer").await;
    let clean = look_extended(&first).await;
    assert_eq!(clean[4..9], ["0", "0", "0", "0", "0"], "{clean:?}");
    assert_eq!(clean[9], "app");
    drop(first);

    let setter = connect(&env, "setter").await;
    let steps: Vec<(&str, bool)> = vec![
        // (statement, over the simple protocol)
        ("SET search_path = leak_schema, public", true),
        ("SELECT set_config('app.tenant', 'tenant-a', false)", false),
        ("SELECT set_config('app.other', 'other-a', false)", true),
        ("SET statement_timeout = 4321", false),
        ("SELECT pg_advisory_lock(4242)", false),
        ("CREATE TEMP TABLE leak_tmp (a int)", true),
        ("PREPARE leak_stmt AS SELECT 1", true),
        (
            "BEGIN; DECLARE leak_cursor CURSOR WITH HOLD FOR SELECT 1; COMMIT",
            true,
        ),
        ("LISTEN leak_channel", true),
        ("SET ROLE leak_role", true),
    ];
    for (sql, simple) in &steps {
        if *simple {
            setter.batch_execute(sql).await.expect(sql);
        } else {
            setter.query(*sql, &[]).await.expect(sql);
        }
        observers_see_clean(&env, &clean, sql).await;
    }
    // A parameterised set_config over the extended protocol, as ORMs send it.
    let other = connect(&env, "setter").await;
    other
        .query("SELECT set_config('app.tenant', $1, false)", &[&"tenant-b"])
        .await
        .unwrap();
    observers_see_clean(&env, &clean, "set_config with a parameter").await;
    assert_eq!(look_extended(&other).await[1], "tenant-b");

    // The setter keeps all of its own state, over both protocols.
    for mine in [look_extended(&setter).await, look_simple(&setter).await] {
        assert_eq!(
            mine[..10],
            [
                "leak_schema, public",
                "tenant-a",
                "other-a",
                "4321ms",
                "1",
                "1",
                "1",
                "1",
                "1",
                "leak_role"
            ],
            "{mine:?}"
        );
    }

    // A client that vanishes inside a transaction leaves nothing open behind it (its
    // transaction-scoped lock and setting would show).
    let leaver = connect(&env, "leaver").await;
    leaver
        .batch_execute("BEGIN; SET LOCAL app.tenant = 'leaver'; SELECT pg_advisory_xact_lock(7)")
        .await
        .unwrap();
    drop(leaver);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    observers_see_clean(&env, &clean, "a client vanished mid-transaction").await;

    // One session pinned, counted by its first reason; settings pin nobody (they follow the
    // session from connection to connection).
    let metrics = env.metrics("us").await;
    let pins: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("homeport_wire_pins_total{"))
        .collect();
    assert_eq!(
        pins,
        ["homeport_wire_pins_total{reason=\"advisory_lock\"} 1"],
        "{metrics}"
    );
    drop(setter);
    drop(other);

    // The pinned session's connection went back after DISCARD ALL: still clean for everyone.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    observers_see_clean(&env, &clean, "the pinned session ended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refuses_session_state_and_other_requests_are_unharmed() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "web", "eu").await.status, 201);
    for sql in [
        "BEGIN",
        "SET statement_timeout = 1",
        "SET search_path = nowhere",
        "SELECT set_config('app.tenant', 'x', false)",
        "SELECT pg_advisory_lock(1)",
        "CREATE TEMP TABLE t (a int)",
        "PREPARE p AS SELECT 1",
        "LISTEN ch",
        "SET ROLE postgres",
        "DISCARD ALL",
        "SELECT undeclared_function()",
    ] {
        for intent in ["write", "read", "auto"] {
            let r = env
                .send(
                    env.http
                        .post(env.url("us", "/v1/query"))
                        .header("homeport-user", "web")
                        .json(&json!({"sql": sql, "intent": intent})),
                )
                .await;
            assert_eq!(r.status, 400, "{sql}: {:?}", r.body);
            assert_eq!(
                r.body["type"], "urn:homeport:problem:session-state",
                "{sql}"
            );
        }
    }
    // Session statements inside /v1/transaction are refused too; SET LOCAL is the way.
    let t = |statements: serde_json::Value| {
        env.http
            .post(env.url("us", "/v1/transaction"))
            .header("homeport-user", "web")
            .json(&json!({ "statements": statements }))
    };
    let r = env
        .send(t(
            json!([{"sql": "SELECT 1"}, {"sql": "SET app.tenant = 'x'"}]),
        ))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("statements[1]")
    );
    let r = env
        .send(t(json!([
            {"sql": "SET LOCAL app.tenant = 'mine'"},
            {"sql": "SELECT current_setting('app.tenant')"}
        ])))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["results"][1]["rows"][0][0], "mine");
    // Every other request still works and sees a clean connection.
    for i in 0..20 {
        let r = env
            .query(
                "us",
                "web",
                "INSERT INTO notes (user_id, body) VALUES ($1, $2) RETURNING id",
                json!(["web", format!("n{i}")]),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = env
            .query(
                "us",
                "web",
                "SELECT coalesce(current_setting('app.tenant', true), ''), current_setting('statement_timeout')",
                json!([]),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["rows"][0][0], "", "{:?}", r.body);
    }
}

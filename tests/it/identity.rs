//! `postgres.identity_setting`: every statement homeport runs for a user, over HTTP and over the
//! wire, sees that setting equal to the user, so row-level security can key on the verified
//! identity; server connections change hands between users without one user's identity reaching
//! another's statements; and no client can set it.

use crate::common;

use crate::common::Env;
use serde_json::{Value, json};
use tokio_postgres::NoTls;

const SETTING: &str = "app.user_id";
const USERS: [&str; 3] = ["alice", "bob", "carol"];

struct Sidecar {
    _process: homeport::dev::Managed,
    http: String,
    wire_port: u16,
}

/// A second sidecar of region `us` with the identity setting, and pools of two connections so
/// that every connection serves all the users in turn.
fn sidecar(env: &Env) -> Sidecar {
    let (config, http_port, wire_port) = common::region_config_on_new_ports(env, "us");
    let config = config
        .replacen(
            "[postgres]\n",
            &format!("[postgres]\nidentity_setting = \"{SETTING}\"\n"),
            1,
        )
        .replace("pool_size = 16", "pool_size = 2")
        // 60 requests queue for two connections: on a loaded machine that is more than the
        // sandbox's 1 s acquire timeout, and a 503 is not what this test is about.
        .replace("acquire_timeout = \"1s\"", "acquire_timeout = \"20s\"");
    assert!(config.contains("pool_size = 2"), "{config}");
    assert!(config.contains("acquire_timeout = \"20s\""), "{config}");
    let process = env
        .sandbox
        .spawn_sidecar("identity", &config, http_port)
        .expect("sidecar starts");
    Sidecar {
        _process: process,
        http: format!("http://127.0.0.1:{http_port}"),
        wire_port,
    }
}

async fn post(env: &Env, s: &Sidecar, path: &str, user: &str, body: Value) -> common::Resp {
    env.send(
        env.http
            .post(format!("{}{path}", s.http))
            .header("homeport-user", user)
            .json(&body),
    )
    .await
}

/// A table whose rows only their owner sees and writes, created by the superuser so that the
/// sidecars' role `app` is subject to its policy.
async fn rls_table(env: &Env) {
    let db = env.direct(env.primary_port("us")).await;
    db.batch_execute(
        "CREATE TABLE owned_notes (owner text NOT NULL, body text NOT NULL);
         GRANT SELECT, INSERT ON owned_notes TO app;
         ALTER TABLE owned_notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own ON owned_notes
             USING (owner = current_setting('app.user_id', true))
             WITH CHECK (owner = current_setting('app.user_id', true));",
    )
    .await
    .expect("table with a policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_statement_runs_as_its_user_and_no_client_sets_the_identity() {
    let env = common::start(common::options(&["us", "eu"])).await;
    for user in USERS {
        assert!(env.place("us", user, "us").await.status < 300, "{user}");
    }
    rls_table(&env).await;
    let s = sidecar(&env);

    // HTTP writes: each user writes their own row; writing another's is refused by the policy.
    for user in USERS {
        let r = post(
            &env,
            &s,
            "/v1/query",
            user,
            json!({"sql": "INSERT INTO owned_notes VALUES ($1, 'mine')", "params": [user]}),
        )
        .await;
        assert_eq!(r.status, 200, "{user}: {}", r.body);
    }
    let r = post(
        &env,
        &s,
        "/v1/query",
        "bob",
        json!({"sql": "INSERT INTO owned_notes VALUES ('alice', 'forged')"}),
    )
    .await;
    assert_eq!(r.body["sqlstate"], "42501", "{}", r.body);

    // Many requests at once over two connections per pool: each sees its own user, on the
    // primary (write intent, transactions) and on the replicas (reads).
    let mut tasks = Vec::new();
    for i in 0..60 {
        let user = USERS[i % USERS.len()];
        let (path, body) = match i % 3 {
            0 => (
                "/v1/query",
                json!({"sql": "SELECT current_setting('app.user_id') AS me, (SELECT count(*) FROM owned_notes) AS n"}),
            ),
            1 => (
                "/v1/query",
                json!({"sql": "SELECT current_setting('app.user_id') AS me, (SELECT count(*) FROM owned_notes) AS n", "intent": "write"}),
            ),
            _ => (
                "/v1/transaction",
                json!({"statements": [
                    {"sql": "SELECT 1"},
                    {"sql": "SELECT current_setting('app.user_id') AS me, (SELECT count(*) FROM owned_notes) AS n"}
                ], "intent": "write"}),
            ),
        };
        let r = post(&env, &s, path, user, body);
        tasks.push(async move { (user, r.await) });
    }
    for (user, r) in futures_util::future::join_all(tasks).await {
        assert_eq!(r.status, 200, "{user}: {}", r.body);
        let row = match r.body.get("results") {
            Some(results) => results[1]["rows"][0].clone(),
            None => r.body["rows"][0].clone(),
        };
        assert_eq!(row[0], user, "{}", r.body);
        // A replica may not have every row yet; it never shows another user's.
        let n = row[1]
            .as_str()
            .map_or_else(|| row[1].as_i64(), |s| s.parse().ok());
        assert!(n.is_some_and(|n| n <= 1), "{user} sees {row}");
    }

    // No statement over HTTP may set it, not even for one transaction.
    for sql in [
        "SET LOCAL app.user_id = 'alice'",
        "SELECT set_config('app.user_id', 'alice', true)",
        "SELECT set_config($1, 'alice', true)",
    ] {
        let params = if sql.contains("$1") {
            json!(["app.user_id"])
        } else {
            json!([])
        };
        let r = post(
            &env,
            &s,
            "/v1/transaction",
            "bob",
            json!({"statements": [{"sql": sql, "params": params}, {"sql": "SELECT count(*) FROM owned_notes"}], "intent": "write"}),
        )
        .await;
        assert_eq!(r.status, 403, "{sql}: {}", r.body);
        assert_eq!(r.body["type"], "urn:homeport:problem:identity-setting");
    }

    // Wire sessions of different users, interleaved, over the same two-connection pool.
    let mut clients = Vec::new();
    for user in USERS {
        let url = format!(
            "postgresql://app@127.0.0.1:{}/app?options=-c%20homeport.user%3D{user}",
            s.wire_port
        );
        let (c, conn) = tokio_postgres::connect(&url, NoTls)
            .await
            .expect("wire connection");
        tokio::spawn(conn);
        clients.push((user, c));
    }
    for _ in 0..5 {
        for (user, c) in &clients {
            let row = c
                .query_one(
                    "SELECT current_setting('app.user_id'), (SELECT count(*) FROM owned_notes WHERE owner <> current_setting('app.user_id'))",
                    &[],
                )
                .await
                .expect("look");
            assert_eq!(row.get::<_, String>(0), *user);
            assert_eq!(row.get::<_, i64>(1), 0, "{user} sees another's rows");
        }
    }
    let (_, alice) = &clients[0];
    for sql in [
        "SET app.user_id = 'bob'",
        "SELECT set_config('app.user_id', 'bob', false)",
    ] {
        let e = alice.simple_query(sql).await.expect_err(sql);
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{sql}: {e}");
    }
    let e = alice
        .query("SELECT set_config($1, 'bob', true)", &[&SETTING])
        .await
        .expect_err("dynamic set_config");
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
    let row = alice
        .query_one("SELECT current_setting('app.user_id')", &[])
        .await
        .expect("still alice");
    assert_eq!(row.get::<_, String>(0), "alice");
}

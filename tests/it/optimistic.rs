//! Optimistic transactions on the wire: ordinary `BEGIN` transactions of a user homed in eu, sent
//! through the us sidecar, read on the us replica; on their first write they move to the eu
//! primary with their reads replayed and compared. ORMs (psycopg with autocommit off,
//! SQLAlchemy) see local reads and their own writes; a read that changed on the primary before
//! the promotion fails the transaction with 40001 and writes nothing; concurrent
//! read-modify-write transactions lose no update.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crate::common::{Env, options, start, wait_caught_up};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

async fn connect(env: &Env, user: &str) -> Client {
    let url = format!(
        "postgresql://app@127.0.0.1:{}/app?options=-c%20homeport.user%3D{user}",
        env.sandbox.region("us").pg_port
    );
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.expect("wire");
    tokio::spawn(conn);
    c
}

async fn route(c: &Client) -> String {
    c.simple_query("SHOW homeport.route")
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
            _ => None,
        })
        .unwrap()
}

/// The body of note `id`, read through `c`.
async fn body_of(c: &Client, id: i64) -> String {
    c.query_one("SELECT body FROM notes WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

async fn metric(env: &Env, result: &str) -> u64 {
    let text = env.metrics("us").await;
    let line = format!("homeport_optimistic_transactions_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_changed_before_the_promotion_fails_with_40001_and_writes_nothing() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "olga", "eu").await.status, 201);
    let a = connect(&env, "olga").await;
    let id: i64 = a
        .query_one(
            "INSERT INTO notes (user_id, body) VALUES ('olga', 'v1') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_caught_up(&env, "eu", "us").await;
    let b = connect(&env, "olga").await;
    for begin_over_extended in [false, true] {
        // A reads the row inside a plain transaction: on the us replica (once it has A's
        // writes, which read-your-writes requires).
        // On a loaded machine the sidecar may still see the replica as behind (its probe
        // lags the server) and rightly read on the primary: begin again until the read is local.
        let mut tries = 0;
        let body: String = loop {
            wait_caught_up(&env, "eu", "us").await;
            if begin_over_extended {
                a.query("BEGIN", &[]).await.unwrap();
            } else {
                a.batch_execute("BEGIN").await.unwrap();
            }
            let body = body_of(&a, id).await;
            let served = route(&a).await;
            if served == "us/replica" {
                break body;
            }
            tries += 1;
            assert!(tries < 20, "the read never ran on us/replica: {served}");
            a.batch_execute("ROLLBACK").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        };
        // B changes the row on the primary meanwhile.
        let changed = format!("changed-{begin_over_extended}");
        b.execute("UPDATE notes SET body = $1 WHERE id = $2", &[&changed, &id])
            .await
            .unwrap();
        // A writes based on what it read: the replayed read differs on the primary.
        let e = a
            .execute(
                "UPDATE notes SET body = $1 WHERE id = $2",
                &[&format!("{body}+a"), &id],
            )
            .await
            .expect_err("the promotion must fail");
        assert_eq!(e.code(), Some(&SqlState::T_R_SERIALIZATION_FAILURE), "{e}");
        a.batch_execute("ROLLBACK").await.unwrap();
        let now: String = b
            .query_one(
                "SELECT body FROM notes WHERE id = $1 /*homeport_route='primary'*/",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(now, changed, "the failed transaction wrote nothing");
        // The retry reads the new value and commits on the primary.
        a.batch_execute("BEGIN").await.unwrap();
        let body = body_of(&a, id).await;
        a.execute(
            "UPDATE notes SET body = $1 WHERE id = $2",
            &[&format!("{body}+a"), &id],
        )
        .await
        .unwrap();
        assert_eq!(route(&a).await, "eu/primary");
        a.batch_execute("COMMIT").await.unwrap();
        let done = body_of(&a, id).await;
        assert_eq!(done, format!("{changed}+a"));
    }
    assert!(metric(&env, "conflict").await >= 2);
    assert!(metric(&env, "promoted").await >= 1);
    // Switched off for the session: a plain BEGIN goes to the primary.
    a.batch_execute("SET homeport.optimistic_transactions = off")
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.query("SELECT 1 FROM notes LIMIT 1", &[]).await.unwrap();
    assert_eq!(route(&a).await, "eu/primary");
    a.batch_execute("COMMIT").await.unwrap();
}

/// Concurrent read-modify-write transactions at REPEATABLE READ, each reading a counter on the
/// replica and writing it plus one: a write based on a read the primary would not have returned
/// would lose an update; every committed transaction counts exactly once (conflicts end in
/// 40001 and are retried, as they would be directly on PostgreSQL), and each client always reads
/// its own last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_modify_write_transactions_lose_no_update() {
    let env = Arc::new(start(options(&["eu", "us"])).await);
    let admin = env.direct(env.primary_port("eu")).await;
    admin
        .batch_execute(
            "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL); \
             INSERT INTO counters VALUES (1, 0); GRANT ALL ON counters TO app",
        )
        .await
        .unwrap();
    wait_caught_up(&env, "eu", "us").await;
    const CLIENTS: usize = 4;
    const COMMITS: usize = 15;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let user = format!("rmw{i}");
        assert_eq!(env.place("us", &user, "eu").await.status, 201);
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(&env, &user).await;
            let (mut committed, mut conflicts, mut last_seen) = (0, 0, -1);
            while committed < COMMITS {
                c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    .await
                    .unwrap();
                let n: i32 = c
                    .query_one("SELECT n FROM counters WHERE id = 1", &[])
                    .await
                    .unwrap()
                    .get(0);
                // Read-your-writes: never older than this client's own last committed value.
                assert!(n >= last_seen, "{user} read {n} after writing {last_seen}");
                match c
                    .execute("UPDATE counters SET n = $1 WHERE id = 1", &[&(n + 1)])
                    .await
                {
                    Ok(_) => match c.batch_execute("COMMIT").await {
                        Ok(()) => {
                            committed += 1;
                            last_seen = n + 1;
                        }
                        Err(e) => panic!("commit failed: {e}"),
                    },
                    Err(e) if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) => {
                        conflicts += 1;
                        c.batch_execute("ROLLBACK").await.unwrap();
                    }
                    Err(e) => panic!("{user}: {e}"),
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let n: i32 = admin
        .query_one("SELECT n FROM counters WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    println!(
        "{} commits, {conflicts} conflicts (40001), counter {n}",
        CLIENTS * COMMITS
    );
    assert_eq!(n as usize, CLIENTS * COMMITS, "no update may be lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_and_sqlalchemy_read_locally_inside_transactions() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "orm", "eu").await.status, 201);
    let python = crate::common::python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/orm_suite.py");
    let url = format!(
        "postgresql://app@127.0.0.1:{}/app",
        env.sandbox.region("us").pg_port
    );
    let out = Command::new(python)
        .arg(script)
        .args([&url, "orm", "us", "eu"])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(" 0 failed"),
        "{stdout}\n{stderr}"
    );
    assert!(metric(&env, "read_only").await >= 5);
    assert!(metric(&env, "promoted").await >= 3);
}

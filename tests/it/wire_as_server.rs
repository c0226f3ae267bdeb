//! The wire endpoint answers where drivers' own test suites (psycopg, node-postgres; see
//! scripts/peer-suites.sh) expect PostgreSQL's answers: unknown roles and databases are refused
//! as the server refuses them and configured database names map to the server's database;
//! libpq's `target_session_attrs` sees a session that can write, also through a region that reads
//! from a replica; and a read of an unlogged table, which a replica refuses, runs on the primary.

use crate::common;

use std::process::Command;

use crate::common::{options, pg_bin, start};
use tokio_postgres::NoTls;

fn url(port: u16, role: &str, db: &str, user: &str) -> String {
    format!("postgresql://{role}@127.0.0.1:{port}/{db}?options=-c%20homeport.user%3D{user}")
}

/// The SQLSTATE a connection attempt failed with.
async fn refused(url: &str) -> String {
    match tokio_postgres::connect(url, NoTls).await {
        Ok(_) => panic!("{url} must be refused"),
        Err(e) => e
            .as_db_error()
            .map(|d| format!("{} {}", d.code().code(), d.message()))
            .unwrap_or_else(|| format!("no server error: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_roles_and_databases_are_refused_and_configured_names_map() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "ria", "eu").await.status, 201);
    let port = env.sandbox.region("eu").pg_port;
    assert_eq!(
        refused(&url(port, "app", "nosuchdb", "ria")).await,
        "3D000 database \"nosuchdb\" does not exist"
    );
    assert_eq!(
        refused(&url(port, "no_such_role", "app", "ria")).await,
        "28000 role \"no_such_role\" does not exist"
    );

    // A session that names no application_name or statement_timeout sees the server's
    // defaults, not those of homeport's own connections.
    let (c, conn) = tokio_postgres::connect(&url(port, "app", "app", "ria"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for (name, server_default) in [("application_name", ""), ("statement_timeout", "0")] {
        let row = c.query_one(&format!("SHOW {name}"), &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), server_default, "{name}");
    }
    // A client that gives up before starting sends Terminate where its startup packet belongs:
    // the connection is closed without an error, as PostgreSQL closes it.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(&[b'X', 0, 0, 0, 4]).await.unwrap();
        // Closed with the Terminate's last byte unread, so the kernel may answer with a reset:
        // either way, no byte of an answer.
        let mut answer = Vec::new();
        let read = s.read_to_end(&mut answer).await;
        assert!(answer.is_empty(), "{answer:?}");
        if let Err(e) = read {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
    }

    // A sidecar whose [pg] also serves the server database as "shop" (PgBouncer's [databases]).
    let (config, http_port, pg_port) = common::region_config_on_new_ports(&env, "eu");
    let mapped = config.replace(
        "[pg]   # the PostgreSQL wire-protocol endpoint\n",
        "[pg]   # the PostgreSQL wire-protocol endpoint\ndatabases = { shop = \"app\" }\n",
    );
    assert_ne!(mapped, config);
    let _sidecar = env
        .sandbox
        .spawn_sidecar("eu-shop", &mapped, http_port)
        .unwrap();
    let (c, conn) = tokio_postgres::connect(&url(pg_port, "app", "shop", "ria"), NoTls)
        .await
        .expect("the mapped name connects");
    tokio::spawn(conn);
    let db: String = c
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, "app");
    // With a mapping, only the names it lists are served.
    assert_eq!(
        refused(&url(pg_port, "app", "app", "ria")).await,
        "3D000 database \"app\" does not exist"
    );

    // A mapping to a database the servers are not configured with is a config error.
    let dir = env.sandbox.dir.join("eu-bad-db");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = config.replace(
        "[pg]   # the PostgreSQL wire-protocol endpoint\n",
        "[pg]   # the PostgreSQL wire-protocol endpoint\ndatabases = { shop = \"other\" }\n",
    );
    std::fs::write(dir.join("homeport.toml"), &bad).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(["check", "--config"])
        .arg(dir.join("homeport.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("pg.databases.shop"), "{stderr}");
}

/// psql (libpq) with `target_session_attrs`: whether it connects, and what it said if not.
fn psql_tsa(port: u16, attrs: &str) -> Result<String, String> {
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-t", "-c", "SHOW homeport.route"])
        .arg(format!(
            "{}&target_session_attrs={attrs}",
            url(port, "app", "app", "tia")
        ))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_see_a_session_that_can_write_through_either_region() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "tia", "eu").await.status, 201);
    for region in ["eu", "us"] {
        let port = env.sandbox.region(region).pg_port;
        // libpq 14+ decides from in_hot_standby and default_transaction_read_only at startup.
        for attrs in ["read-write", "primary", "any"] {
            assert!(
                psql_tsa(port, attrs).is_ok(),
                "{region} {attrs}: {:?}",
                psql_tsa(port, attrs)
            );
        }
        for attrs in ["read-only", "standby"] {
            let e = psql_tsa(port, attrs).expect_err("refused as a primary refuses it");
            assert!(
                e.contains("read-only") || e.contains("hot standby"),
                "{region} {attrs}: {e}"
            );
        }
        // Older clients ask with queries (tokio-postgres sends SHOW transaction_read_only);
        // outside a transaction they are answered by a primary, as the session's writes are.
        let (c, conn) = tokio_postgres::connect(
            &format!(
                "{}&target_session_attrs=read-write",
                url(port, "app", "app", "tia")
            ),
            NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("{region}: read-write session: {e}"));
        tokio::spawn(conn);
        let rows = c.simple_query("SELECT pg_is_in_recovery()").await.unwrap();
        let in_recovery = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
            _ => None,
        });
        assert_eq!(in_recovery.as_deref(), Some("f"), "{region}");
        // Inside a read-only transaction the replica still answers for itself.
        if region == "us" {
            c.batch_execute("BEGIN READ ONLY").await.unwrap();
            let row = c
                .query_one("SHOW transaction_read_only", &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), "on");
            c.batch_execute("COMMIT").await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_an_unlogged_table_refused_by_a_replica_runs_on_the_primary() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "una", "eu").await.status, 201);
    // Through us, whose reads of eu's users go to the us replica of eu.
    let port = env.sandbox.region("us").pg_port;
    let (c, conn) = tokio_postgres::connect(&url(port, "app", "app", "una"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute("CREATE UNLOGGED TABLE scratch (v int); INSERT INTO scratch VALUES (7)")
        .await
        .unwrap();
    common::wait_caught_up(&env, "eu", "us").await;
    let route = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
                _ => None,
            })
            .unwrap()
    };
    // A provably read-only statement that is not about an unlogged table reads the replica.
    c.simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        route(c.simple_query("SHOW homeport.route").await.unwrap()),
        "us/replica"
    );
    // The replica refuses the unlogged table; the client gets the primary's answer, over both
    // protocols (the value can only come from the primary: the replica refuses the table).
    for _ in 0..2 {
        let v: i32 = c
            .query_one("SELECT v FROM scratch", &[])
            .await
            .expect("extended protocol")
            .get(0);
        assert_eq!(v, 7);
        let rows = c
            .simple_query("SELECT v FROM scratch")
            .await
            .expect("simple");
        assert_eq!(route(rows), "7");
        assert_eq!(
            route(c.simple_query("SHOW homeport.route").await.unwrap()),
            "eu/primary"
        );
    }
    // Only the first read was refused and run again: the statement was remembered, and went
    // straight to the primary the three other times.
    let metrics = env.metrics("us").await;
    let rerouted = metrics
        .lines()
        .find(|l| l.starts_with("homeport_wire_rerouted_total"))
        .unwrap_or_else(|| panic!("no reroute counted: {metrics}"));
    assert_eq!(rerouted.split_whitespace().last(), Some("1"), "{rerouted}");
    // Inside a read-only transaction, which started on the replica, the read cannot move to
    // another server: the client gets the replica's refusal, as from the replica itself.
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    let e = c
        .query_one("SELECT v FROM scratch", &[])
        .await
        .expect_err("the replica refuses");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
    );
    c.batch_execute("ROLLBACK").await.unwrap();
}

//! The PostgreSQL wire endpoint with clients nobody here wrote: psql, pgbench, psycopg 3, asyncpg
//! and node-postgres, against a real two-region sandbox. Each checks results, not just "no error".
//! The driver suites live in tests/clients; scripts/test.sh installs their packages.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::{Env, options, pg_bin, python, run, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn wire_url(env: &Env, region: &str) -> String {
    format!(
        "postgresql://app@127.0.0.1:{}/app",
        env.sandbox.region(region).pg_port
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_pgbench_through_homeport() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "pat", "eu").await.status, 201);
    let url = wire_url(&env, "us");
    let dir = env.sandbox.dir.join("psql");
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("in.csv");
    std::fs::write(&csv, "1,one\n2,two\n3,three\n").unwrap();
    let out_csv = dir.join("out.csv");
    let script = dir.join("script.sql");
    std::fs::write(
        &script,
        format!(
            "SET homeport.user = 'pat';\n\
             CREATE TABLE words (n int PRIMARY KEY, w text);\n\
             \\copy words FROM '{}' WITH (FORMAT csv)\n\
             SELECT count(*) AS loaded FROM words /*homeport_route='primary'*/ \\gset\n\
             \\echo loaded=:loaded\n\
             SHOW homeport.route;\n\
             INSERT INTO words VALUES (1, 'dup');\n\
             SELECT 'after error' AS still_here;\n\
             \\copy (SELECT w FROM words ORDER BY n /*homeport_route='primary'*/) TO '{}'\n\
             BEGIN;\n\
             INSERT INTO words VALUES (4, 'four');\n\
             ROLLBACK;\n\
             SELECT count(*) AS after_rollback FROM words /*homeport_route='primary'*/;\n\
             SHOW homeport.consistency_token;\n",
            csv.display(),
            out_csv.display()
        ),
    )
    .unwrap();
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-t", "-d", &url, "-f"])
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("loaded=3"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("eu/primary"),
        "the write path ran on the eu primary: {stdout}"
    );
    assert!(
        stderr.contains("duplicate key value violates unique constraint"),
        "{stderr}"
    );
    assert!(
        stdout.contains("after error"),
        "the session survived the error: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(&out_csv).unwrap(),
        "one\ntwo\nthree\n"
    );
    assert!(
        stdout.lines().any(|l| l.trim() == "3"),
        "rolled-back insert is gone: {stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("v1.")),
        "the session's consistency token after its writes: {stdout}"
    );

    // psql's SQLSTATE variable carries the server's code through homeport.
    let out = run(Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-t", "-d", &url])
        .args([
            "-c",
            "SET homeport.user = 'pat'",
            "-c",
            "SELECT 1/0",
            "-c",
            "\\echo :SQLSTATE",
        ]));
    assert!(out.contains("22012"), "{out}");

    // pgbench: initialise through homeport (DDL, COPY, VACUUM), then the standard runs.
    let pgbench = |args: &[&str]| {
        run(Command::new(pg_bin("pgbench"))
            .args(args)
            .arg(&url)
            .env("PGOPTIONS", "-c homeport.user=pat"))
    };
    pgbench(&["-i", "-q", "-s", "1"]);
    let eu = env.direct(env.primary_port("eu")).await;
    let accounts: i64 = eu
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        accounts, 100_000,
        "pgbench -i loaded the eu shard through homeport"
    );
    common::wait_caught_up(&env, "eu", "us").await;
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&["-S", "-M", mode, "-c", "4", "-j", "2", "-t", "300"]);
        assert!(
            out.contains("number of transactions actually processed: 1200/1200"),
            "{mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
    }
    for mode in ["simple", "prepared"] {
        let out = pgbench(&["-n", "-M", mode, "-c", "4", "-j", "2", "-t", "100"]);
        assert!(
            out.contains("number of transactions actually processed: 400/400"),
            "TPC-B {mode}: {out}"
        );
    }
    let history: i64 = eu
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        history, 800,
        "every TPC-B transaction committed exactly once on the home primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_suites_psycopg_asyncpg_node_postgres() {
    let env = start(options(&["eu", "us"])).await;
    let clients = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    for (user, home) in [("py", "eu"), ("apg", "eu"), ("node", "eu")] {
        assert_eq!(env.place("us", user, home).await.status, 201);
    }
    let url = wire_url(&env, "us");
    let suites: Vec<(&str, Command)> = vec![
        ("psycopg", {
            let mut c = Command::new(python());
            c.arg(clients.join("psycopg_suite.py"))
                .args([&url, "py", "us", "eu"]);
            c
        }),
        ("asyncpg", {
            let mut c = Command::new(python());
            c.arg(clients.join("asyncpg_suite.py"))
                .args([&url, "apg", "us", "eu"]);
            c
        }),
        ("node-postgres", {
            let mut c = Command::new("node");
            c.arg(clients.join("node_pg_suite.js"))
                .args([&url, "node", "us", "eu"]);
            c
        }),
    ];
    for (name, mut cmd) in suites {
        let out = run(&mut cmd);
        assert!(out.contains(" 0 failed"), "{name}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_wire_port_harms_nobody() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "gus", "eu").await.status, 201);
    let port = env.sandbox.region("eu").pg_port;
    let url = format!("{}?options=-c%20homeport.user%3Dgus", wire_url(&env, "eu"));
    let (good, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    good.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let attacks: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 64],
        vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0], // absurd startup length
        vec![
            0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f, b'Q', 0x7f, 0xff, 0xff, 0xff,
        ], // SSL request, then a huge message
        vec![0, 0, 0, 4],                         // truncated startup
    ];
    for bytes in attacks {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = s.write_all(&bytes).await;
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "homeport closed the connection after garbage"
        );
    }
    // A client that connects properly, then sends an unknown message type, gets an error.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut startup = Vec::new();
    let params = b"user\0app\0database\0app\0\0";
    startup.extend_from_slice(&((8 + params.len()) as i32).to_be_bytes());
    startup.extend_from_slice(&196_608i32.to_be_bytes());
    startup.extend_from_slice(params);
    s.write_all(&startup).await.unwrap();
    s.write_all(&[b'!', 0, 0, 0, 4]).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("08P01") && text.contains("unexpected message type"),
        "{text}"
    );

    // The session that was open all along still works, inside its transaction.
    let row = good.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    good.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_cross_shard_and_vanishing_clients() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "cai", "eu").await.status, 201);
    assert_eq!(env.place("eu", "uma", "us").await.status, 201);
    let url = format!("{}?options=-c%20homeport.user%3Dcai", wire_url(&env, "eu"));
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    };

    // A CancelRequest reaches the server that runs the session's statement.
    let client = connect().await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancelled in time")
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );

    // A transaction that reaches for a user of another shard fails clearly and is aborted.
    let c = connect().await;
    c.batch_execute("BEGIN; INSERT INTO notes (user_id, body) VALUES ('cai', 'tx')")
        .await
        .unwrap();
    let err = c
        .batch_execute("SELECT 1 /*homeport_user='uma'*/")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
        "{err}"
    );
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("wholly on one shard"),
        "{err}"
    );
    assert!(c.batch_execute("COMMIT").await.is_ok());
    let eu = env.direct(env.primary_port("eu")).await;
    let n: i64 = eu
        .query_one("SELECT count(*) FROM notes WHERE body = 'tx'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the aborted transaction did not commit");

    // A client that vanishes mid-transaction leaves nothing behind: its server connection is
    // closed (and its transaction rolled back by PostgreSQL), never handed to another client.
    for _ in 0..5 {
        let c = connect().await;
        c.batch_execute("BEGIN; INSERT INTO notes (user_id, body) VALUES ('cai', 'vanished')")
            .await
            .unwrap();
        drop(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = connect().await;
    for _ in 0..20 {
        let row = c
            .query_one(
                "SELECT count(*) FROM notes WHERE body = 'vanished' /*homeport_route='primary'*/",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 0);
        c.batch_execute("INSERT INTO notes (user_id, body) VALUES ('cai', 'ok')")
            .await
            .unwrap();
    }
    let idle_in_tx: i64 = eu
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND datname = 'app'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        idle_in_tx, 0,
        "no server connection was left inside a client's transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_client_authentication() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "sam", "us").await.status, 201);
    let ports = homeport::dev::pick_ports(3).unwrap();
    let (http_port, pg_port, ops_port) = (ports[0], ports[1], ports[2]);
    let secret = env.sandbox.dir.join("wire-password");
    std::fs::write(&secret, "correct horse battery staple\n").unwrap();
    let us = env.sandbox.region("us");
    let config = std::fs::read_to_string(&us.config_path)
        .unwrap()
        .replace(&format!("127.0.0.1:{}\"", us.http_port), &format!("127.0.0.1:{http_port}\""))
        .replace(&format!("127.0.0.1:{}\"", us.ops_port), &format!("127.0.0.1:{ops_port}\""))
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", us.pg_port),
            &format!(
                "listen = \"127.0.0.1:{pg_port}\"\nauth = \"scram-sha-256\"\nusers = [{{ name = \"app\", password_file = \"{}\" }}]",
                secret.display()
            ),
        );
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-scram", &config, http_port)
        .unwrap();
    let url = |user: &str, password: &str| {
        format!(
            "postgresql://{user}:{password}@127.0.0.1:{pg_port}/app?options=-c%20homeport.user%3Dsam"
        )
    };

    let (c, conn) = tokio_postgres::connect(
        &url("app", "correct%20horse%20battery%20staple"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("the right password logs in");
    tokio::spawn(conn);
    assert_eq!(
        c.query_one("SELECT 5", &[]).await.unwrap().get::<_, i32>(0),
        5
    );

    for (user, password) in [
        ("app", "wrong"),
        ("nobody", "correct%20horse%20battery%20staple"),
    ] {
        let err = tokio_postgres::connect(&url(user, password), tokio_postgres::NoTls)
            .await
            .err()
            .expect("refused");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
            "{user}: {err}"
        );
    }
    // psql too, with PGPASSWORD.
    let out = Command::new(pg_bin("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &pg_port.to_string(),
            "-U",
            "app",
            "-d",
            "app",
            "-c",
            "SHOW homeport.user",
        ])
        .env("PGPASSWORD", "correct horse battery staple")
        .env("PGOPTIONS", "-c homeport.user=sam")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sam",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_requests_are_counted_by_target() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "mia", "eu").await.status, 201);
    let url = format!("{}?options=-c%20homeport.user%3Dmia", wire_url(&env, "us"));
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    // The failing read comes first: after the session's own write a read may be served by the
    // primary until the replica has it (read-your-writes), which would move it to another target.
    assert!(c.simple_query("SELECT 1/0").await.is_err());
    c.simple_query("INSERT INTO notes (user_id, body) VALUES ('mia', 'm')")
        .await
        .unwrap();
    let text = env
        .send(env.http.get(env.ops_url("us", "/metrics")))
        .await
        .body
        .as_str()
        .unwrap()
        .to_string();
    for line in [
        "homeport_requests_total{frontend=\"pg\",intent=\"read\",target=\"local_replica\",outcome=\"ok\"} 3",
        "homeport_requests_total{frontend=\"pg\",intent=\"write\",target=\"primary\",outcome=\"ok\"} 1",
        "homeport_requests_total{frontend=\"pg\",intent=\"read\",target=\"local_replica\",outcome=\"client_error\"} 1",
        "homeport_cross_region_requests_total{from=\"us\",to=\"eu\"} 1",
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_the_session_and_notifications_arrive_while_idle() {
    use futures_util::StreamExt;
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "lin", "eu").await.status, 201);
    let url = format!("{}?options=-c%20homeport.user%3Dlin", wire_url(&env, "us"));
    let (listener, mut connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();

    let (notifier, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    notifier
        .batch_execute("NOTIFY jobs, 'first'")
        .await
        .unwrap();
    notifier
        .batch_execute("SELECT pg_notify('jobs', 'second')")
        .await
        .unwrap();

    // The listening session sends nothing; the notifications still arrive.
    for want in ["first", "second"] {
        let (channel, payload) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("notification in time")
            .unwrap();
        assert_eq!((channel.as_str(), payload.as_str()), ("jobs", want));
    }
    // And the pinned session still answers queries on its server.
    assert_eq!(
        listener
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_towards_clients_when_configured() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "tia", "us").await.status, 201);
    let dir = env.sandbox.dir.join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let ports = homeport::dev::pick_ports(3).unwrap();
    let (http_port, pg_port, ops_port) = (ports[0], ports[1], ports[2]);
    let us = env.sandbox.region("us");
    let config = std::fs::read_to_string(&us.config_path)
        .unwrap()
        .replace(&format!("127.0.0.1:{}\"", us.http_port), &format!("127.0.0.1:{http_port}\""))
        .replace(&format!("127.0.0.1:{}\"", us.ops_port), &format!("127.0.0.1:{ops_port}\""))
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", us.pg_port),
            &format!(
                "listen = \"127.0.0.1:{pg_port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_required = true",
                cert.display(),
                key.display()
            ),
        );
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-tls", &config, http_port)
        .unwrap();
    let psql = |sslmode: &str| {
        Command::new(pg_bin("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-c",
                "\\conninfo",
                "-c",
                "SELECT 'over tls' /*homeport_user='tia'*/",
            ])
            .arg(format!(
                "host=127.0.0.1 port={pg_port} user=app dbname=app sslmode={sslmode}"
            ))
            .output()
            .unwrap()
    };
    let out = psql("require");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("SSL connection") && stdout.contains("over tls"),
        "{stdout}"
    );
    let out = psql("disable");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requires TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn homeport_authenticates_to_servers_with_scram() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "sol", "eu").await.status, 201);
    // The eu primary now wants a SCRAM password from `app`.
    let eu = env.direct(env.primary_port("eu")).await;
    eu.batch_execute(
        "SET password_encryption = 'scram-sha-256'; ALTER ROLE app PASSWORD 'server-side secret'",
    )
    .await
    .unwrap();
    let hba = env.sandbox.dir.join("pg/eu-primary/pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all app 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    eu.batch_execute("SELECT pg_reload_conf()").await.unwrap();

    let secret = env.sandbox.dir.join("server-password");
    std::fs::write(&secret, "server-side secret\n").unwrap();
    let ports = homeport::dev::pick_ports(3).unwrap();
    let (http_port, pg_port, ops_port) = (ports[0], ports[1], ports[2]);
    let us = env.sandbox.region("us");
    let config = std::fs::read_to_string(&us.config_path)
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}\"", us.http_port),
            &format!("127.0.0.1:{http_port}\""),
        )
        .replace(
            &format!("127.0.0.1:{}\"", us.ops_port),
            &format!("127.0.0.1:{ops_port}\""),
        )
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", us.pg_port),
            &format!("listen = \"127.0.0.1:{pg_port}\""),
        )
        .replace(
            "[postgres]\n",
            &format!("[postgres]\npassword_file = \"{}\"\n", secret.display()),
        );
    // Debug logging: the most talkative level must not reveal a secret either.
    let _sidecar = env
        .sandbox
        .spawn_sidecar_with_env(
            "us-password",
            &config,
            http_port,
            &[("HOMEPORT_LOG", "debug")],
        )
        .unwrap();

    // The wire front end's own server connections authenticate with SCRAM...
    let url = format!("postgresql://app@127.0.0.1:{pg_port}/app?options=-c%20homeport.user%3Dsol");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute("INSERT INTO notes (user_id, body) VALUES ('sol', 'wire with scram')")
        .await
        .unwrap();
    // ...and so do the HTTP front end's pools.
    let w = env
        .send(
            env.http
                .post(format!("http://127.0.0.1:{http_port}/v1/query"))
                .header("homeport-user", "sol")
                .json(&serde_json::json!({"sql": "INSERT INTO notes (user_id, body) VALUES ('sol', 'http with scram')"})),
        )
        .await;
    assert_eq!(
        (w.status, w.served_by()),
        (200, "eu/primary"),
        "{:?}",
        w.body
    );
    let n: i64 = eu
        .query_one(
            "SELECT count(*) FROM notes WHERE body LIKE '% with scram'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    // Secrets never show: not in the log, the topology, the metrics or `homeport check`.
    let key = std::fs::read_to_string(env.sandbox.dir.join("consistency.key")).unwrap();
    let log = std::fs::read_to_string(env.sandbox.dir.join("us-password/homeport.log")).unwrap();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "debug logging was on: {log}"
    );
    let topology = env
        .send(
            env.http
                .get(format!("http://127.0.0.1:{http_port}/v1/topology")),
        )
        .await
        .body
        .to_string();
    let metrics = env
        .send(env.http.get(format!("http://127.0.0.1:{ops_port}/metrics")))
        .await
        .body
        .to_string();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(["check", "--config"])
        .arg(env.sandbox.dir.join("us-password/homeport.toml"))
        .output()
        .unwrap();
    let check = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    for (what, text) in [
        ("log", &log),
        ("topology", &topology),
        ("metrics", &metrics),
        ("check", &check),
    ] {
        assert!(
            !text.contains("server-side secret"),
            "password in the {what}"
        );
        assert!(!text.contains(key.trim()), "consistency key in the {what}");
    }
}

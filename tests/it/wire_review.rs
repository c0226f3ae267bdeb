//! Review findings on the wire front end, each reproduced with raw protocol messages or with a
//! server process killed under a session: a Close then a Bind of the same statement in one batch,
//! an extended-protocol batch that never ends, a server process terminated under a pinned
//! session, and pooled server connections that died while idle.

use crate::common;

use crate::common::{options, start};
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_i32(body.len() as i32 + 4);
    b.put_slice(body);
    b.to_vec()
}

fn cstrs(parts: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(p.as_bytes());
        b.push(0);
    }
    b
}

/// Logs in with the raw protocol and returns the stream at ReadyForQuery.
async fn raw_login(port: u16, user: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let params = cstrs(&["user", "app", "database", "app", "homeport.user", user, ""]);
    let mut startup = BytesMut::new();
    startup.put_i32(params.len() as i32 + 8);
    startup.put_i32(196_608);
    startup.put_slice(&params);
    s.write_all(&startup).await.unwrap();
    read_until_ready(&mut s).await;
    s
}

/// Reads messages up to a ReadyForQuery; returns their tags and the error codes seen.
async fn read_until_ready(s: &mut TcpStream) -> (Vec<u8>, Vec<String>) {
    let (mut tags, mut codes) = (Vec::new(), Vec::new());
    loop {
        let tag = s.read_u8().await.expect("the session is alive");
        let len = s.read_i32().await.unwrap() as usize - 4;
        let mut body = vec![0; len];
        s.read_exact(&mut body).await.unwrap();
        tags.push(tag);
        if tag == b'E' {
            let code = body
                .split(|b| *b == 0)
                .find(|f| f.first() == Some(&b'C'))
                .map(|f| String::from_utf8_lossy(&f[1..]).to_string())
                .unwrap_or_default();
            codes.push(code);
        }
        if tag == b'Z' {
            return (tags, codes);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_bind_in_one_batch_and_endless_batches_get_errors_not_crashes() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "raw", "us").await.status, 201);
    let (config, http_port, pg_port) = common::region_config_on_new_ports(&env, "us");
    let config = config.replace(
        "max_client_conn = 1000",
        "max_client_conn = 1000\nmax_batch_bytes = \"64KiB\"",
    );
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-small-batches", &config, http_port)
        .unwrap();
    let mut s = raw_login(pg_port, "raw").await;

    // Parse s1, Close s1, Bind s1, Execute, Sync: the Bind names a statement that is gone.
    let mut batch = Vec::new();
    batch.extend(msg(
        b'P',
        &cstrs(&["s1", "SELECT 1"])
            .into_iter()
            .chain([0, 0])
            .collect::<Vec<_>>(),
    ));
    batch.extend(msg(b'C', &[b"S".as_slice(), &cstrs(&["s1"])].concat()));
    batch.extend(msg(
        b'B',
        &[cstrs(&["", "s1"]), vec![0, 0, 0, 0, 0, 0]].concat(),
    ));
    batch.extend(msg(b'E', &[cstrs(&[""]), vec![0, 0, 0, 0]].concat()));
    batch.extend(msg(b'S', &[]));
    s.write_all(&batch).await.unwrap();
    let (_, codes) = read_until_ready(&mut s).await;
    assert_eq!(
        codes,
        ["26000"],
        "the Bind of a closed statement is refused"
    );

    // Messages past pg.max_batch_bytes before any Sync: 54000, the rest of the batch dropped.
    let big = "x".repeat(20_000);
    let sql = format!("SELECT '{big}'");
    let mut endless = Vec::new();
    for _ in 0..5 {
        endless.extend(msg(
            b'P',
            &cstrs(&["", &sql])
                .into_iter()
                .chain([0, 0])
                .collect::<Vec<_>>(),
        ));
    }
    endless.extend(msg(b'S', &[]));
    s.write_all(&endless).await.unwrap();
    let (tags, codes) = read_until_ready(&mut s).await;
    assert_eq!(codes, ["54000"], "{tags:?}");

    // A named statement whose first Bind fails (a malformed binary parameter) is still usable:
    // its Parse went through, so homeport must not prepare it a second time (42P05).
    let parse = msg(
        b'P',
        &[
            cstrs(&["s2", "SELECT $1::int4 + 1"]),
            vec![0, 1, 0, 0, 0, 23],
        ]
        .concat(),
    );
    let bind = |value: &[u8]| {
        let mut b = cstrs(&["", "s2"]);
        b.extend([0, 1, 0, 1]); // one parameter format: binary
        b.extend([0, 1]); // one parameter
        b.extend((value.len() as i32).to_be_bytes());
        b.extend(value);
        b.extend([0, 0]); // result formats: the default
        msg(b'B', &b)
    };
    let execute = msg(b'E', &[cstrs(&[""]), vec![0, 0, 0, 0]].concat());
    let sync = msg(b'S', &[]);
    s.write_all(&[parse, bind(&[0, 1]), execute.clone(), sync.clone()].concat())
        .await
        .unwrap();
    let (_, codes) = read_until_ready(&mut s).await;
    // The server refuses a two-byte int4 (08P01 "insufficient data left in message").
    assert_eq!(codes.len(), 1, "{codes:?}");
    s.write_all(&[bind(&41i32.to_be_bytes()), execute, sync].concat())
        .await
        .unwrap();
    let (tags, codes) = read_until_ready(&mut s).await;
    assert!(
        codes.is_empty() && tags.contains(&b'D'),
        "{tags:?} {codes:?}"
    );

    // The session goes on.
    s.write_all(&msg(b'Q', &cstrs(&["SELECT 1"])))
        .await
        .unwrap();
    let (tags, codes) = read_until_ready(&mut s).await;
    assert!(
        codes.is_empty() && tags.contains(&b'D'),
        "{tags:?} {codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_server_ends_its_session_and_dead_idle_connections_are_not_lent() {
    let (env, url) = sandbox_with_us_user("term").await;
    let admin = env.direct(env.primary_port("us")).await;

    // A pinned session whose server process is terminated sees the error, then a closed
    // connection, as it would with PostgreSQL.
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    let conn = tokio::spawn(conn);
    let pid: i32 = c
        .query_one("SELECT pg_advisory_lock(1), pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(1);
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the client's connection must end");
    assert!(c.is_closed());

    // Pooled connections that die while idle (every homeport backend terminated) are passed
    // over: the next clients' statements all succeed.
    for _ in 0..3 {
        let c = client(&url).await;
        for _ in 0..4 {
            c.query_one("SELECT count(*) FROM notes", &[])
                .await
                .unwrap();
        }
    }
    let pids = pids(
        &admin,
        "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE usename = 'app' AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
    )
    .await;
    // pg_terminate_backend only signals: wait until those backends have exited (on a loaded
    // machine that takes more than a moment), so the pooled connections really are dead.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let alive: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .await
            .unwrap()
            .get(0);
        if alive == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{alive} terminated backends still running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let c = client(&url).await;
    for i in 0..10 {
        c.query_one("SELECT count(*) FROM notes", &[])
            .await
            .unwrap_or_else(|e| panic!("statement {i} after the backends died: {e}"));
    }
}

/// A read lent an idle pooled connection whose server process was terminated while it sat idle
/// but had not exited when the pool looked at it (held here with SIGSTOP so that moment lasts)
/// runs again on another connection: the client gets its rows, not the FATAL meant for the dead
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_lent_a_connection_whose_server_is_going_away_runs_again() {
    let (env, url) = sandbox_with_us_user("gone").await;
    let c = client(&url).await;
    // Reads one after the other leave one idle wire-pool connection, marked by its last query.
    for _ in 0..3 {
        c.query_one("SELECT count(*) FROM notes /*gone-marker*/", &[])
            .await
            .unwrap();
    }
    let admin = env.direct(env.primary_port("us")).await;
    let pids = pids(
        &admin,
        "SELECT pid FROM pg_stat_activity WHERE state = 'idle' \
         AND query LIKE '%gone-marker%' AND pid <> pg_backend_pid()",
    )
    .await;
    assert_eq!(pids.len(), 1, "one idle wire-pool connection: {pids:?}");
    let pid = pids[0].to_string();
    let signal = |s: &str| {
        let ok = std::process::Command::new("kill")
            .args([s, &pid])
            .status()
            .is_ok_and(|st| st.success());
        assert!(ok, "kill {s} {pid}");
    };
    signal("-STOP");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pids[0]])
        .await
        .unwrap();
    let before = env.metrics("us").await;
    let read = tokio::spawn(async move {
        c.query_one("SELECT count(*) FROM notes", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    signal("-CONT");
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), read)
        .await
        .expect("the read finishes")
        .unwrap();
    assert!(n.is_ok(), "the read ran again elsewhere: {n:?}");
    let after = env.metrics("us").await;
    let gone = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("homeport_wire_rerouted_total{reason=\"server_gone\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(gone(&after), gone(&before) + 1, "{after}");
}

/// A sandbox with `user` homed in us, and the us wire endpoint's URL for that user.
async fn sandbox_with_us_user(user: &str) -> (common::Env, String) {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", user, "us").await.status, 201);
    let url = format!(
        "postgresql://app@127.0.0.1:{}/app?options=-c%20homeport.user%3D{user}",
        env.sandbox.region("us").pg_port
    );
    (env, url)
}

/// A client of the wire endpoint at `url`, its connection driven in the background.
/// The first column of every row of `sql`: backend process ids.
async fn pids(admin: &tokio_postgres::Client, sql: &str) -> Vec<i32> {
    admin
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn client(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

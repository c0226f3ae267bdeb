//! Read-your-writes, tokens and bounded staleness on the PostgreSQL wire endpoint, against a real
//! two-region sandbox whose replicas lag for real (`recovery_min_apply_delay`), and the proof that
//! capturing a write's commit position costs no extra round trip: a relay on the cross-region link
//! counts the turns.

use crate::common;

use std::time::Duration;

use crate::common::{Env, keep_primary_busy, options, start, token_keys, wait_caught_up};
use homeport::consistency::token::Token;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A session on `region`'s wire endpoint as `user`, the way an app connects (no homeport SQL).
async fn session(env: &Env, region: &str, user: &str) -> Client {
    session_on(env.sandbox.region(region).pg_port, user).await
}

async fn session_on(port: u16, user: &str) -> Client {
    let url = format!("postgresql://app@127.0.0.1:{port}/app?options=-c%20homeport.user%3D{user}");
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

async fn show(c: &Client, name: &str) -> String {
    c.simple_query(&format!("SHOW homeport.{name}"))
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
            _ => None,
        })
        .unwrap()
}

async fn count(c: &Client, user: &str) -> i64 {
    c.query_one("SELECT count(*) FROM notes WHERE user_id = $1", &[&user])
        .await
        .unwrap()
        .get(0)
}

fn eu() -> homeport::types::ShardId {
    homeport::types::ShardId::parse("eu").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sees_its_own_writes_and_tokens_carry_them_to_other_sessions() {
    let mut opts = options(&["eu", "us"]);
    opts.replica_delay = Duration::from_millis(1500);
    let env = start(opts).await;
    assert_eq!(env.place("us", "ada", "eu").await.status, 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = session(&env, "us", "ada").await;
    let b = session(&env, "us", "ada").await;

    // Autocommit write (simple protocol), then a read (extended protocol) in the same session.
    a.simple_query("INSERT INTO notes (user_id, body) VALUES ('ada', 'one')")
        .await
        .unwrap();
    assert_eq!(count(&a, "ada").await, 1, "the session sees its own write");
    assert_eq!(
        show(&a, "route").await,
        "eu/primary",
        "the local replica is 1.5 s behind, so the primary answered"
    );
    // Another session without the token reads the lagging local replica: the write is not there.
    assert_eq!(count(&b, "ada").await, 0);
    assert_eq!(show(&b, "route").await, "us/replica");

    // An explicit transaction through the extended protocol.
    let mut a = a;
    let tx = a.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO notes (user_id, body) VALUES ($1, 'two')",
        &[&"ada"],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&a, "ada").await, 2);

    // The token travels: SHOW in one session, SET in another.
    let token = show(&a, "consistency_token").await;
    let decoded = Token::decode(&token, &token_keys(&env)).expect("a signed token");
    assert!(decoded.shards.contains_key(&eu()), "{decoded:?}");
    b.simple_query(&format!("SET homeport.consistency_token = '{token}'"))
        .await
        .unwrap();
    assert_eq!(
        count(&b, "ada").await,
        2,
        "the token brought the writes along"
    );

    // A token from the HTTP API works on the wire too.
    let w = env
        .query(
            "us",
            "ada",
            "INSERT INTO notes (user_id, body) VALUES ('ada', 'three')",
            json!([]),
        )
        .await;
    let http_token = w.header("consistency-token").unwrap().to_string();
    let c = session(&env, "us", "ada").await;
    assert!(count(&c, "ada").await < 3, "no token: the stale replica");
    c.simple_query(&format!("SET homeport.consistency_token TO '{http_token}'"))
        .await
        .unwrap();
    assert_eq!(count(&c, "ada").await, 3);

    // A forged token is refused with 22023 and the session goes on.
    let mut forged = http_token.clone().into_bytes();
    forged[5] = if forged[5] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let err = c
        .simple_query(&format!("SET homeport.consistency_token = '{forged}'"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE)
    );
    let message = err.as_db_error().unwrap().message();
    assert!(message.contains("signature"), "{message}");
    assert_eq!(count(&c, "ada").await, 3);

    // Once the local replica has the writes, the session's reads stay local.
    wait_caught_up(&env, "eu", "us").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&a, "ada").await, 3);
    assert_eq!(show(&a, "route").await, "us/replica");

    // RESET forgets the token; an empty SHOW before any write.
    c.simple_query("RESET homeport.consistency_token")
        .await
        .unwrap();
    assert_eq!(show(&c, "consistency_token").await, "");
}

/// Reads one backend message from a raw connection: (tag, body).
async fn recv(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    let tag = s.read_u8().await.unwrap();
    let len = s.read_i32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (tag, body)
}

/// A session on the wire endpoint at `port` as `user`, spoken to byte by byte, logged in.
async fn raw_session(port: u16, user: &[u8]) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut params = b"user\0app\0database\0app\0options\0-c homeport.user=".to_vec();
    params.extend_from_slice(user);
    params.extend_from_slice(b"\0\0");
    let mut startup = ((params.len() + 8) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&196608i32.to_be_bytes());
    startup.extend_from_slice(&params);
    s.write_all(&startup).await.unwrap();
    while recv(&mut s).await.0 != b'Z' {}
    s
}

/// Sends a simple query and collects the messages up to ReadyForQuery.
async fn simple(s: &mut tokio::net::TcpStream, sql: &str) -> Vec<(u8, Vec<u8>)> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    s.write_all(&m).await.unwrap();
    let mut out = Vec::new();
    loop {
        let msg = recv(s).await;
        let done = msg.0 == b'Z';
        out.push(msg);
        if done {
            return out;
        }
    }
}

fn token_status(messages: &[(u8, Vec<u8>)]) -> Option<String> {
    messages.iter().find_map(|(tag, body)| {
        let mut parts = body.split(|b| *b == 0);
        let name = parts.next()?;
        (*tag == b'S' && name == b"homeport.consistency_token")
            .then(|| String::from_utf8_lossy(parts.next().unwrap_or_default()).to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_writes_report_the_token_as_a_parameter_status() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "pat", "eu").await.status, 201);
    let mut s = raw_session(env.sandbox.region("us").pg_port, b"pat").await;

    let keys = token_keys(&env);
    let first = simple(
        &mut s,
        "INSERT INTO notes (user_id, body) VALUES ('pat', 'a')",
    )
    .await;
    let t1 = token_status(&first).expect("a ParameterStatus after the committed write");
    let ready_at = first.iter().position(|m| m.0 == b'Z').unwrap();
    let status_at = first.iter().position(|m| m.0 == b'S').unwrap();
    assert!(
        status_at < ready_at,
        "the token arrives before ReadyForQuery"
    );
    assert!(
        first.iter().all(|m| m.0 != b'T'),
        "homeport's position query is invisible to the client: {first:?}"
    );

    assert!(
        token_status(&simple(&mut s, "SELECT 1").await).is_none(),
        "reads do not change the token"
    );
    assert!(token_status(&simple(&mut s, "BEGIN").await).is_none());
    assert!(
        token_status(
            &simple(
                &mut s,
                "INSERT INTO notes (user_id, body) VALUES ('pat', 'b')"
            )
            .await
        )
        .is_none(),
        "nothing is committed inside a transaction"
    );
    let commit = simple(&mut s, "COMMIT").await;
    let t2 = token_status(&commit).expect("a ParameterStatus after COMMIT");
    let (p1, p2) = (
        Token::decode(&t1, &keys).unwrap().shards[&eu()],
        Token::decode(&t2, &keys).unwrap().shards[&eu()],
    );
    assert!(p2.lsn > p1.lsn, "{p1:?} then {p2:?}");

    // A failed write in autocommit leaves the session and its server healthy.
    let failed = simple(&mut s, "INSERT INTO no_such_table VALUES (1)").await;
    assert!(failed.iter().any(|m| m.0 == b'E'));
    assert_eq!(failed.last().unwrap().1, b"I");
    let again = simple(
        &mut s,
        "INSERT INTO notes (user_id, body) VALUES ('pat', 'c')",
    )
    .await;
    assert!(token_status(&again).is_some());
    let direct = env.direct(env.primary_port("eu")).await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM notes WHERE user_id = 'pat'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_staleness_bounds_replica_reads() {
    let mut opts = options(&["eu", "us"]);
    opts.replica_delay = Duration::from_millis(1500);
    let env = start(opts).await;
    assert_eq!(env.place("us", "bea", "eu").await.status, 201);
    // Keep the eu primary busy so the delayed replica really is ~1.5 s behind.
    let writer = keep_primary_busy(&env, "eu");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let c = session(&env, "us", "bea").await;
    assert_eq!(show(&c, "max_staleness").await, "off");
    c.simple_query("SET homeport.max_staleness = '500ms'")
        .await
        .unwrap();
    assert_eq!(show(&c, "max_staleness").await, "500ms");
    c.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(
        show(&c, "route").await,
        "eu/primary",
        "a 500 ms bound rules out a replica 1.5 s behind"
    );
    c.simple_query("SET homeport.max_staleness = 10000")
        .await
        .unwrap();
    c.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(show(&c, "route").await, "us/replica");
    let err = c
        .simple_query("SET homeport.max_staleness = 'soon'")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE)
    );
    c.simple_query("RESET homeport.max_staleness")
        .await
        .unwrap();
    assert_eq!(show(&c, "max_staleness").await, "off");
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capturing_the_commit_position_costs_no_extra_round_trip() {
    let mut opts = options(&["eu", "us"]);
    opts.link_delay = Some(Duration::from_millis(25));
    let env = start(opts).await;
    assert_eq!(env.place("us", "cy", "eu").await.status, 201);
    // A second us sidecar with a link of its own to the eu primary, that probes only at start,
    // so the link carries nothing but the writes under test.
    let shared = env
        .sandbox
        .link_to("us", env.primary_port("eu"))
        .expect("us reaches the eu primary through a link")
        .port;
    let links = homeport::dev::link::Links::new().unwrap();
    let link = links
        .start(env.primary_port("eu"), Duration::from_millis(25))
        .unwrap();
    let (config, http_port, pg_port) = common::region_config_on_new_ports(&env, "us");
    let config = config
        .replace(&format!(":{shared}/"), &format!(":{}/", link.port))
        .replace("interval = \"100ms\"", "interval = \"1h\"");
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-quiet", &config, http_port)
        .unwrap();
    let c = session_on(pg_port, "cy").await;
    let http = reqwest::Client::new();
    let http_write = || {
        http.post(format!("http://127.0.0.1:{}/v1/query", http_port))
            .header("homeport-user", "cy")
            .json(&json!({"sql": "INSERT INTO notes (user_id, body) VALUES ('cy', $1)", "params": ["h"]}))
            .send()
    };
    let insert = c
        .prepare("INSERT INTO notes (user_id, body) VALUES ($1, 'x')")
        .await
        .unwrap();
    // Warm up: connections made, statements prepared.
    c.execute(&insert, &[&"cy"]).await.unwrap();
    c.simple_query("INSERT INTO notes (user_id, body) VALUES ('cy', 's')")
        .await
        .unwrap();
    assert_eq!(http_write().await.unwrap().status(), 200);

    const N: u64 = 10;
    let count_turns = |before: u64| link.turns() - before;
    let before = link.turns();
    for _ in 0..N {
        c.simple_query("INSERT INTO notes (user_id, body) VALUES ('cy', 's')")
            .await
            .unwrap();
    }
    let simple_turns = count_turns(before);
    let before = link.turns();
    for _ in 0..N {
        c.execute(&insert, &[&"cy"]).await.unwrap();
    }
    let extended_turns = count_turns(before);
    let before = link.turns();
    for _ in 0..N {
        let r = http_write().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("consistency-token"));
    }
    let http_turns = count_turns(before);
    let before = link.turns();
    for _ in 0..N {
        c.batch_execute("BEGIN; INSERT INTO notes (user_id, body) VALUES ('cy', 't'); COMMIT")
            .await
            .unwrap();
    }
    let txn_turns = count_turns(before);
    // One link round trip per write; a separate position query would make it two.
    for (what, turns) in [
        ("simple", simple_turns),
        ("extended", extended_turns),
        ("http", http_turns),
        ("transaction in one query", txn_turns),
    ] {
        assert_eq!(turns, N, "{what}: {turns} round trips for {N} writes");
    }
    let token = show(&c, "consistency_token").await;
    assert!(!token.is_empty());
}

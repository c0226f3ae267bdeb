//! Hostile input beyond malformed requests (tests/it/http_errors.rs covers those): deeply nested
//! JSON, tokens from another cluster, for another shard, or replayed, and slowloris clients on
//! both ports. Each gets a clear answer or loses its connection, and nobody else notices.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{options, start, token_keys};
use homeport::consistency::token::Token;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_json_and_tokens_get_clear_errors() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "mal", "eu").await.status, 201);
    let url = env.url("us", "/v1/query");
    let raw = |body: String, token: Option<String>| {
        let mut r = env
            .http
            .post(&url)
            .header("homeport-user", "mal")
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.header("consistency-token", t);
        }
        env.send(r)
    };
    // 5,000 levels of nesting: refused by the JSON parser's depth limit, not by a stack overflow.
    let deep = format!(
        "{{\"sql\":\"select $1::jsonb\",\"params\":[{}{}]}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let r = raw(deep, None).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("recursion"));

    // A write gives a real token; variants of it probe the token handling.
    let w = env
        .query(
            "us",
            "mal",
            "INSERT INTO notes (user_id, body) VALUES ('mal', 'x')",
            json!([]),
        )
        .await;
    let token = w.header("consistency-token").unwrap().to_string();
    let keys = token_keys(&env);
    let decoded = Token::decode(&token, &keys).unwrap();
    let eu = homeport::types::RegionName::parse("eu").unwrap();
    let read = || r#"{"sql":"SELECT count(*) FROM notes WHERE user_id = 'mal'"}"#.to_string();

    // Replayed (an old, valid token): served, and sees its write.
    let r = raw(read(), Some(token.clone())).await;
    assert_eq!((r.status, &r.body["rows"][0][0]), (200, &json!(1)));
    // From another cluster with the same key: refused clearly, nothing is read.
    let mut foreign = decoded.clone();
    foreign.shards.get_mut(&eu).unwrap().system_id ^= 1;
    let r = raw(read(), Some(foreign.encode(&keys))).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["sqlstate"], "22023");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("another database cluster")
    );
    // For another shard only: nothing to wait for on this user's shard; served normally.
    let mut other_shard = Token::default();
    let us = homeport::types::RegionName::parse("us").unwrap();
    other_shard.record(us, decoded.shards[&eu], decoded.issued_at_ms);
    let r = raw(read(), Some(other_shard.encode(&keys))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // The same foreign token on the wire.
    let wire = format!(
        "postgresql://app@127.0.0.1:{}/app?options=-c%20homeport.user%3Dmal",
        env.sandbox.region("us").pg_port
    );
    let (c, conn) = tokio_postgres::connect(&wire, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(&format!(
        "SET homeport.consistency_token = '{}'",
        foreign.encode(&keys)
    ))
    .await
    .unwrap();
    let err = c
        .query_one("SELECT count(*) FROM notes WHERE user_id = 'mal'", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err:?}");
    // The sidecar is fine.
    assert_eq!(
        env.query("us", "mal", "SELECT 1", json!([])).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_lose_their_connection_and_others_go_on() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "sly", "us").await.status, 201);
    let (config, http_port, pg_port) = common::region_config_on_new_ports(&env, "us");
    let config = config
        .replace("[http]\n", "[http]\nheader_timeout = \"1s\"\n")
        .replace(
            "max_client_conn = 1000",
            "max_client_conn = 20\nlogin_timeout = \"1s\"",
        );
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-patient", &config, http_port)
        .unwrap();

    // HTTP: headers that never finish, and a body that never finishes.
    let mut headers = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
        .await
        .unwrap();
    headers
        .write_all(b"POST /v1/query HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut body = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
        .await
        .unwrap();
    body.write_all(
        b"POST /v1/query HTTP/1.1\r\nHost: x\r\nHomeport-User: sly\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"sql\"",
    )
    .await
    .unwrap();
    // Wire: 25 connections that never send a startup packet, more than max_client_conn.
    let mut silent = Vec::new();
    for _ in 0..25 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", pg_port))
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    // Meanwhile a well-behaved HTTP client is served.
    let ok = env
        .send(
            env.http
                .post(format!("http://127.0.0.1:{http_port}/v1/query"))
                .header("homeport-user", "sly")
                .json(&json!({"sql": "SELECT 1"})),
        )
        .await;
    assert_eq!(ok.status, 200);

    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .map(|_| String::from_utf8_lossy(&buf).to_string())
    };
    let h = closed(headers)
        .await
        .expect("the header trickler was cut off");
    let b = closed(body).await.expect("the body trickler was cut off");
    assert!(
        b.is_empty() || b.contains("408"),
        "a body that never arrives: {b}"
    );
    let _ = h;
    for s in silent {
        closed(s).await.expect("a silent wire client was cut off");
    }
    println!("slow clients cut off within {:?}", started.elapsed());
    // Their slots are free again: a real wire client logs in.
    let url = format!("postgresql://app@127.0.0.1:{pg_port}/app?options=-c%20homeport.user%3Dsly");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

//! Cells: two shards per region (`homeport dev --shards-per-region 2`), against a real sandbox.
//! Users placed in a region spread over its cells; each user's writes land on their own cell's
//! primary and reads on that cell's nearest replica, over HTTP and the wire; tokens and
//! idempotency keys work per cell; cutting one cell's primary fails only that cell's writes;
//! lag metrics carry the shard; a closed cell takes no new users but keeps serving its own.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{self, Env, options, start, token_keys};
use homeport::consistency::token::Token;
use homeport::dev::ShardInfo;
use homeport::types::ShardId;
use serde_json::json;
use tokio_postgres::{NoTls, SimpleQueryMessage};

async fn cells_sandbox() -> Env {
    let mut opts = options(&["eu", "us"]);
    opts.shards_per_region = 2;
    // Every cross-region server is reached through a relay that a test can cut.
    opts.link_delay = Some(Duration::ZERO);
    start(opts).await
}

fn shard<'a>(env: &'a Env, name: &str) -> &'a ShardInfo {
    env.sandbox
        .shards
        .iter()
        .find(|s| s.name.as_str() == name)
        .unwrap_or_else(|| panic!("no shard {name}"))
}

/// Places `user` in `region` through `via`; returns the shard homeport picked.
async fn place_in(env: &Env, via: &str, user: &str, region: &str) -> String {
    let r = env.place(via, user, region).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["home_region"], region);
    r.body["shard"].as_str().expect("a shard").to_string()
}

/// Notes rows of `user` straight on a server.
async fn rows_on(env: &Env, port: u16, user: &str) -> i64 {
    env.direct(port)
        .await
        .query_one("SELECT count(*) FROM notes WHERE user_id = $1", &[&user])
        .await
        .unwrap()
        .get(0)
}

/// Idempotency records of key `cells-k1` straight on a server (none if it never had the table).
async fn key_records(env: &Env, port: u16) -> i64 {
    env.direct(port)
        .await
        .query_one(
            "SELECT count(*) FROM homeport.idempotency_keys WHERE key = 'cells-k1'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

async fn write_after_cut(env: &Env, user: &str) -> common::Resp {
    env.query(
        "us",
        user,
        "INSERT INTO notes (user_id, body) VALUES ($1, 'after cut')",
        json!([user]),
    )
    .await
}

/// One user per eu cell, found by placing users until both cells have one.
async fn one_user_per_eu_cell(env: &Env) -> BTreeMap<String, String> {
    let mut by_shard = BTreeMap::new();
    for i in 0..40 {
        let user = format!("cell-user-{i}");
        let shard = place_in(env, "us", &user, "eu").await;
        by_shard.entry(shard).or_insert(user);
    }
    by_shard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_is_served_by_their_own_cell() {
    let env = cells_sandbox().await;
    let names: Vec<&str> = env.sandbox.shards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["eu-1", "eu-2", "us-1", "us-2"]);
    let endpoints: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.sandbox.dir.join("endpoints.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(endpoints["shards"][1]["name"], "eu-2");
    assert_eq!(endpoints["shards"][1]["region"], "eu");
    assert!(endpoints["shards"][1]["replicas"]["us"].is_string());

    // Placement by region spreads users over both eu cells.
    let users = one_user_per_eu_cell(&env).await;
    assert_eq!(users.keys().collect::<Vec<_>>(), ["eu-1", "eu-2"]);
    let (u1, u2) = (&users["eu-1"], &users["eu-2"]);
    let home = env
        .send(env.http.get(env.url("eu", &format!("/v1/users/{u2}/home"))))
        .await;
    assert_eq!(
        (&home.body["shard"], &home.body["home_region"]),
        (&json!("eu-2"), &json!("eu"))
    );
    // Explicit placement names the cell; a cell of another region is refused.
    assert_eq!(
        env.send(
            env.http
                .put(env.url("eu", "/v1/users/explicit/home"))
                .json(&json!({"shard": "us-2"}))
        )
        .await
        .body["shard"],
        "us-2"
    );
    let bad = env
        .send(
            env.http
                .put(env.url("eu", "/v1/users/confused/home"))
                .json(&json!({"shard": "us-2", "home_region": "eu"})),
        )
        .await;
    assert_eq!(bad.status, 422, "{:?}", bad.body);

    // Writes over HTTP land on the user's own cell's primary, never on the other cell's.
    let mut token = Token::default();
    let keys = token_keys(&env);
    for (cell, user) in [("eu-1", u1), ("eu-2", u2)] {
        let w = env
            .query(
                "us",
                user,
                "INSERT INTO notes (user_id, body) VALUES ($1, 'http')",
                json!([user]),
            )
            .await;
        assert_eq!(
            (w.status, w.served_by()),
            (200, "eu/primary"),
            "{:?}",
            w.body
        );
        let t = Token::decode(w.header("consistency-token").unwrap(), &keys).unwrap();
        assert!(
            t.shards.contains_key(&ShardId::parse(cell).unwrap()),
            "{t:?}"
        );
        token = token.merge(&t);
    }
    assert_eq!(token.shards.len(), 2, "a token carries a position per cell");
    let (eu1, eu2) = (shard(&env, "eu-1").clone(), shard(&env, "eu-2").clone());
    assert_eq!(
        (
            rows_on(&env, eu1.primary_port, u1).await,
            rows_on(&env, eu2.primary_port, u1).await
        ),
        (1, 0)
    );
    assert_eq!(
        (
            rows_on(&env, eu2.primary_port, u2).await,
            rows_on(&env, eu1.primary_port, u2).await
        ),
        (1, 0)
    );

    // Reads with the merged token run on each cell's replica in us and see the write.
    for user in [u1, u2] {
        let r = env
            .send(
                env.http
                    .post(env.url("us", "/v1/query"))
                    .header("homeport-user", user.as_str())
                    .header("consistency-token", token.encode(&keys))
                    .json(&json!({"sql": "SELECT count(*) FROM notes WHERE user_id = $1", "params": [user]})),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["rows"][0][0], 1, "{user} sees its write");
        assert!(r.served_by().starts_with("us/") || r.served_by() == "eu/primary");
    }

    // Over the wire: a write goes to the cell's primary, a plain read to the cell's us replica.
    let pg = env.sandbox.region("us").pg_port;
    let url = format!("postgresql://app@127.0.0.1:{pg}/app?options=-c%20homeport.user%3D{u2}");
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c.simple_query(&format!(
        "INSERT INTO notes (user_id, body) VALUES ('{u2}', 'wire')"
    ))
    .await
    .unwrap();
    assert_eq!(rows_on(&env, eu2.primary_port, u2).await, 2);
    assert_eq!(rows_on(&env, eu1.primary_port, u2).await, 0);
    let us = homeport::types::RegionName::parse("us").unwrap();
    common::wait_caught_up_port(eu2.primary_port, eu2.replica_ports[&us]).await;
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM notes WHERE user_id = $1",
            &[&u2.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let route = c
        .simple_query("SHOW homeport.route")
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap();
    assert_eq!(route, "us/replica");

    // Idempotency keys: the record lives in the user's own cell's primary.
    let keyed = || {
        env.http
            .post(env.url("us", "/v1/query"))
            .header("homeport-user", u1.as_str())
            .header("idempotency-key", "cells-k1")
            .json(&json!({"sql": "INSERT INTO notes (user_id, body) VALUES ($1, 'once')", "params": [u1]}))
    };
    assert_eq!(env.send(keyed()).await.status, 200);
    let again = env.send(keyed()).await;
    assert_eq!(
        again.header("idempotent-replayed"),
        Some("true"),
        "{:?}",
        again.body
    );
    assert_eq!(
        (
            key_records(&env, eu1.primary_port).await,
            key_records(&env, eu2.primary_port).await
        ),
        (1, 0)
    );

    // Lag metrics carry each cell's name.
    let metrics = env.metrics("us").await;
    for cell in ["eu-1", "eu-2", "us-1", "us-2"] {
        assert!(
            metrics.contains(&format!(
                "homeport_replication_lag_seconds{{shard=\"{cell}\""
            )),
            "no lag for {cell}"
        );
    }

    // Cutting eu-1's primary off from us fails only eu-1's writes through us.
    env.sandbox
        .link_to("us", eu1.primary_port)
        .expect("us reaches eu-1's primary through a relay")
        .cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut = write_after_cut(&env, u1).await;
    assert_eq!(cut.status, 503, "{:?}", cut.body);
    let other = write_after_cut(&env, u2).await;
    assert_eq!(
        (other.status, other.served_by()),
        (200, "eu/primary"),
        "{:?}",
        other.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_cell_takes_no_new_users_but_serves_its_own() {
    let env = cells_sandbox().await;
    let users = one_user_per_eu_cell(&env).await;
    // A sidecar whose config closes eu-1.
    let (config, http_port, _) = common::region_config_on_new_ports(&env, "eu");
    let config = config.replace("[shards.eu-1]\n", "[shards.eu-1]\naccepting = false\n");
    assert!(config.contains("accepting = false"));
    let _sidecar = env
        .sandbox
        .spawn_sidecar("eu-closed", &config, http_port)
        .unwrap();
    let base = format!("http://127.0.0.1:{http_port}");
    for i in 0..20 {
        let r = env
            .send(
                env.http
                    .put(format!("{base}/v1/users/late-{i}/home"))
                    .json(&json!({"home_region": "eu"})),
            )
            .await;
        assert_eq!(
            (r.status, &r.body["shard"]),
            (201, &json!("eu-2")),
            "{:?}",
            r.body
        );
    }
    let closed = env
        .send(
            env.http
                .put(format!("{base}/v1/users/late-x/home"))
                .json(&json!({"shard": "eu-1"})),
        )
        .await;
    assert_eq!(closed.status, 409, "{:?}", closed.body);
    // The user already in eu-1 is still served there.
    let u1 = &users["eu-1"];
    let w = env
        .send(
            env.http
                .post(format!("{base}/v1/query"))
                .header("homeport-user", u1.as_str())
                .json(&json!({"sql": "INSERT INTO notes (user_id, body) VALUES ($1, 'closed')", "params": [u1]})),
        )
        .await;
    assert_eq!(w.status, 200, "{:?}", w.body);
    assert_eq!(rows_on(&env, shard(&env, "eu-1").primary_port, u1).await, 1);
}

//! Home-region routing over HTTP against a real two-region sandbox: writes land on the home
//! primary, reads on the nearest replica of the home shard, and a delayed replica proves the read
//! really was served there.

use std::time::Duration;

use crate::common::{options, start, wait_caught_up};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_for_remote_user_runs_on_home_primary_and_reads_stay_local() {
    let env = start(options(&["eu", "us"])).await;

    let placed = env.place("us", "alice", "eu").await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    assert_eq!(
        env.place("us", "alice", "eu").await.status,
        200,
        "placing again is idempotent"
    );

    let w = env
        .query(
            "us",
            "alice",
            "INSERT INTO notes (user_id, body) VALUES ($1, $2) RETURNING id",
            json!(["alice", "written via us"]),
        )
        .await;
    assert_eq!(w.status, 200, "{:?}", w.body);
    assert_eq!(w.served_by(), "eu/primary");
    assert_eq!(w.body["command"], "INSERT");
    assert_eq!(w.body["row_count"], 1);
    let id = w.body["rows"][0][0].as_i64().expect("id");

    // The row is on the eu primary, and was never written to the us primary.
    let eu = env.direct(env.primary_port("eu")).await;
    let us = env.direct(env.primary_port("us")).await;
    let on_eu: i64 = eu
        .query_one(
            "SELECT count(*) FROM notes WHERE id = $1 AND body = 'written via us'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    let on_us: i64 = us
        .query_one(
            "SELECT count(*) FROM notes WHERE body = 'written via us'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((on_eu, on_us), (1, 0));

    // An auto read through us runs on the replica of the eu shard located in us.
    wait_caught_up(&env, "eu", "us").await;
    let r = env
        .query(
            "us",
            "alice",
            "SELECT body FROM notes WHERE id = $1",
            json!([id]),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.served_by(), "us/replica");
    assert_eq!(r.body["rows"], json!([["written via us"]]));

    // Through eu, a user homed in eu reads from eu's primary: there is no eu replica of eu.
    let r = env
        .query(
            "eu",
            "alice",
            "SELECT body FROM notes WHERE id = $1",
            json!([id]),
        )
        .await;
    assert_eq!(r.served_by(), "eu/primary");

    // A user homed in us writes to the us primary from either sidecar.
    assert_eq!(env.place("eu", "bob", "us").await.status, 201);
    let w = env
        .query(
            "eu",
            "bob",
            "INSERT INTO notes (user_id, body) VALUES ($1, 'bob') RETURNING id",
            json!(["bob"]),
        )
        .await;
    assert_eq!(w.served_by(), "us/primary", "{:?}", w.body);
    let r = env
        .query(
            "eu",
            "bob",
            "SELECT count(*) FROM notes WHERE user_id = $1",
            json!(["bob"]),
        )
        .await;
    assert_eq!(r.served_by(), "eu/replica");

    // The directory answers the same in both regions.
    for region in ["eu", "us"] {
        let h = env
            .send(env.http.get(env.url(region, "/v1/users/alice/home")))
            .await;
        assert_eq!(
            (h.status, h.body["home_region"].as_str()),
            (200, Some("eu")),
            "{region}: {:?}",
            h.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_delayed_replica_does_not_see_the_write_yet() {
    let mut opts = options(&["eu", "us"]);
    opts.replica_delay = Duration::from_millis(500);
    let env = start(opts).await;
    assert_eq!(env.place("us", "carol", "eu").await.status, 201);

    let w = env
        .query(
            "us",
            "carol",
            "INSERT INTO notes (user_id, body) VALUES ($1, 'fresh') RETURNING id",
            json!(["carol"]),
        )
        .await;
    assert_eq!(w.served_by(), "eu/primary", "{:?}", w.body);
    let r = env
        .query(
            "us",
            "carol",
            "SELECT count(*) FROM notes WHERE user_id = $1",
            json!(["carol"]),
        )
        .await;
    assert_eq!(r.served_by(), "us/replica");
    assert_eq!(
        r.body["rows"][0][0], 0,
        "the replica applies commits 500 ms late, so the row is not there yet"
    );

    // Once the delay has passed, the same read sees the row: it was the replica all along.
    let mut seen = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = env
            .query(
                "us",
                "carol",
                "SELECT count(*) FROM notes WHERE user_id = $1",
                json!(["carol"]),
            )
            .await;
        assert_eq!(r.served_by(), "us/replica");
        if r.body["rows"][0][0] == 1 {
            seen = true;
            break;
        }
    }
    assert!(seen, "the delayed replica never showed the row");

    // A primary hint reads the fresh row at once.
    let w = env
        .query(
            "us",
            "carol",
            "INSERT INTO notes (user_id, body) VALUES ($1, 'again') RETURNING id",
            json!(["carol"]),
        )
        .await;
    assert_eq!(w.status, 200);
    let r = env
        .query(
            "us",
            "carol",
            "SELECT count(*) FROM notes WHERE user_id = $1 /*homeport_route='primary'*/",
            json!(["carol"]),
        )
        .await;
    assert_eq!(r.served_by(), "eu/primary");
    assert_eq!(r.body["rows"][0][0], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_atomic_on_one_shard() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "dave", "us").await.status, 201);
    let url = env.url("eu", "/v1/transaction");
    let ok = env
        .send(env.http.post(&url).header("homeport-user", "dave").json(&json!({"statements": [
            {"sql": "INSERT INTO accounts (user_id, balance) VALUES ($1, 100)", "params": ["dave"]},
            {"sql": "UPDATE accounts SET balance = balance - $1 WHERE user_id = $2 RETURNING balance", "params": [30, "dave"]},
        ]})))
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.served_by(), "us/primary");
    assert_eq!(ok.body["results"][1]["rows"], json!([["70.00"]]));

    // The second statement fails: the first one must not stay applied.
    let bad = env
        .send(env.http.post(&url).header("homeport-user", "dave").json(&json!({"statements": [
            {"sql": "UPDATE accounts SET balance = 0 WHERE user_id = $1", "params": ["dave"]},
            {"sql": "INSERT INTO accounts (user_id) VALUES ($1)", "params": ["dave"]},
        ]})))
        .await;
    assert_eq!(bad.status, 409, "{:?}", bad.body);
    assert_eq!(bad.body["sqlstate"], "23505");
    let us = env.direct(env.primary_port("us")).await;
    let balance: String = us
        .query_one(
            "SELECT balance::text FROM accounts WHERE user_id = 'dave'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, "70.00", "the failed transaction was rolled back");

    // A read-only transaction runs on the local replica.
    wait_caught_up(&env, "us", "eu").await;
    let r = env
        .send(
            env.http
                .post(&url)
                .header("homeport-user", "dave")
                .json(&json!({"statements": [
                    {"sql": "SELECT balance FROM accounts WHERE user_id = $1", "params": ["dave"]},
                    {"sql": "SELECT count(*) FROM notes"},
                ]})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.served_by(), "eu/replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_as_json() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("eu", "erin", "eu").await.status, 201);
    let sql = "SELECT $1::int8 AS i, $2::float8 AS f, $3::numeric AS n, $4::text AS t, $5::bool AS b, \
               $6::jsonb AS j, $7::uuid AS u, $8::date AS d, $9::timestamptz AS ts, $10::bytea AS by, \
               $11::int4[] AS arr, $12::text AS nul, '1 day 2 hours'::interval AS iv, '10.1.2.3'::inet AS ip";
    let r = env
        .query(
            "eu",
            "erin",
            sql,
            json!([
                9007199254740993i64, 1.5, "12345678901234567890.123456789", "héllo", true,
                {"a": [1, null]}, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "2026-11-25",
                "2026-11-25T10:00:00+01:00", "AQID", [[1, 2], [3, null]], null
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["rows"][0],
        json!([
            9007199254740993i64, 1.5, "12345678901234567890.123456789", "héllo", true,
            {"a": [1, null]}, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "2026-11-25",
            "2026-11-25T09:00:00Z", "AQID", [[1, 2], [3, null]], null, "P1DT2H", "10.1.2.3"
        ])
    );
    let types: Vec<&str> = r.body["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "int8",
            "float8",
            "numeric",
            "text",
            "bool",
            "jsonb",
            "uuid",
            "date",
            "timestamptz",
            "bytea",
            "_int4",
            "text",
            "interval",
            "inet"
        ]
    );
}

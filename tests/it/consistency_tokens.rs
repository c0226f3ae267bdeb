//! Consistency tokens over HTTP: a write returns a signed token whose position covers the write
//! (any copy that has replayed it shows the row), captured in the write's own round trip; reads
//! echo the token; forged and malformed tokens are refused with 400 / SQLSTATE 22023.

use std::time::Duration;

use crate::common::{keep_primary_busy, options, start, token_keys};
use homeport::consistency::token::{Keys, Token};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_return_a_token_that_covers_the_write() {
    let mut opts = options(&["eu", "us"]);
    opts.replica_delay = Duration::from_millis(300);
    let env = start(opts).await;
    let keys = token_keys(&env);
    assert_eq!(env.place("us", "tom", "eu").await.status, 201);
    // Let the probes learn the servers' system identifiers first.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let w = env
        .query(
            "us",
            "tom",
            "INSERT INTO notes (user_id, body) VALUES ('tom', 'tokened') RETURNING id",
            json!([]),
        )
        .await;
    assert_eq!(w.status, 200, "{:?}", w.body);
    let text = w
        .header("consistency-token")
        .expect("a write returns a token")
        .to_string();
    let token = Token::decode(&text, &keys).expect("the token verifies with the sandbox key");
    let eu = homeport::types::RegionName::parse("eu").unwrap();
    let position = token.shards[&eu];

    // The position covers the write: once the delayed replica has replayed it, the row is there.
    let replica = env.direct(env.replica_port("eu", "us")).await;
    let mut replayed = false;
    for _ in 0..200 {
        let row = replica
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&position.lsn.to_string()],
            )
            .await
            .unwrap();
        if row.get::<_, Option<bool>>(0) == Some(true) {
            replayed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(replayed, "the replica reached the token's position");
    let n: i64 = replica
        .query_one("SELECT count(*) FROM notes WHERE body = 'tokened'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "a copy at the token's position has the write");
    let primary = env.direct(env.primary_port("eu")).await;
    let system: String = primary
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(position.system_id.to_string(), system);

    // Reads echo the token they were given.
    let r = env
        .send(
            env.http
                .post(env.url("us", "/v1/query"))
                .header("homeport-user", "tom")
                .header("consistency-token", &text)
                .json(&json!({"sql": "SELECT 1"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        Token::decode(r.header("consistency-token").unwrap(), &keys).unwrap(),
        token
    );

    // A second write merges into the token it was given: the position only moves forward.
    let w2 = env
        .send(
            env.http
                .post(env.url("eu", "/v1/query"))
                .header("homeport-user", "tom")
                .header("consistency-token", &text)
                .json(&json!({"sql": "INSERT INTO notes (user_id, body) VALUES ('tom', 'again')"})),
        )
        .await;
    let merged = Token::decode(w2.header("consistency-token").unwrap(), &keys).unwrap();
    assert!(merged.shards[&eu].lsn > position.lsn);

    // Forged, damaged and foreign tokens are refused, not ignored.
    let mut flipped = text.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let foreign = token.encode(&Keys {
        current: b"some-other-deployment-key-0123456789".to_vec(),
        previous: None,
    });
    for bad in [
        String::from_utf8(flipped).unwrap(),
        "v1.garbage".into(),
        "not a token".into(),
        foreign,
    ] {
        let r = env
            .send(
                env.http
                    .post(env.url("us", "/v1/query"))
                    .header("homeport-user", "tom")
                    .header("consistency-token", &bad)
                    .json(&json!({"sql": "SELECT 1"})),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
        assert_eq!(r.body["sqlstate"], "22023", "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_the_token_sees_the_write_and_stays_local_when_it_can() {
    let mut opts = options(&["eu", "us"]);
    opts.replica_delay = Duration::from_millis(1500);
    let env = start(opts).await;
    assert_eq!(env.place("us", "ada", "eu").await.status, 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = |token: Option<String>| {
        let mut r = env
            .http
            .post(env.url("us", "/v1/query"))
            .header("homeport-user", "ada");
        if let Some(t) = token {
            r = r.header("consistency-token", t);
        }
        env.send(r.json(&json!({"sql": "SELECT count(*) FROM notes WHERE user_id = 'ada'"})))
    };

    let w = env
        .query(
            "us",
            "ada",
            "INSERT INTO notes (user_id, body) VALUES ('ada', 'mine')",
            json!([]),
        )
        .await;
    let token = w.header("consistency-token").unwrap().to_string();

    // Without the token the local replica answers, 1.5 s behind: the write is not there yet.
    let stale = read(None).await;
    assert_eq!(
        (stale.served_by(), &stale.body["rows"][0][0]),
        ("us/replica", &json!(0))
    );
    // With it, the lagging replica is passed over after max_wait and the primary answers.
    let fresh = read(Some(token.clone())).await;
    assert_eq!(
        (fresh.served_by(), &fresh.body["rows"][0][0]),
        ("eu/primary", &json!(1)),
        "{:?}",
        fresh.body
    );

    // A read-only transaction with the token is held to the same rule.
    let txn = env
        .send(
            env.http
                .post(env.url("us", "/v1/transaction"))
                .header("homeport-user", "ada")
                .header("consistency-token", &token)
                .json(&json!({"intent": "read", "statements": [
                    {"sql": "SELECT count(*) FROM notes WHERE user_id = 'ada'"},
                    {"sql": "SELECT 1"}
                ]})),
        )
        .await;
    assert_eq!(
        (txn.served_by(), &txn.body["results"][0]["rows"][0][0]),
        ("eu/primary", &json!(1)),
        "{:?}",
        txn.body
    );

    // Once the replica has replayed the write, the same token is served locally.
    let mut local = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = read(Some(token.clone())).await;
        assert_eq!(
            r.body["rows"][0][0], 1,
            "a read with the token never misses the write"
        );
        if r.served_by() == "us/replica" {
            local = true;
            break;
        }
    }
    assert!(
        local,
        "the caught-up local replica served the token's reads"
    );
    let metrics = env
        .send(env.http.get(env.ops_url("us", "/metrics")))
        .await
        .body
        .as_str()
        .unwrap()
        .to_string();
    // Each read that left the nearest copy is counted once, with why and where it ran instead.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("homeport_ryw_fallbacks_total{")
                && (l.contains("reason=\"timeout\"") || l.contains("reason=\"lagging\""))
                && (l.contains("target=\"primary\"") || l.contains("target=\"replica\""))),
        "{metrics}"
    );
    assert!(
        !metrics.contains("reason=\"primary\"") && !metrics.contains("reason=\"replica\""),
        "where a read ran is the target label, not a reason: {metrics}"
    );
    assert!(
        metrics.contains("homeport_ryw_wait_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_staleness_reads() {
    let mut opts = options(&["eu", "us"]);
    opts.replica_delay = Duration::from_millis(1500);
    let env = start(opts).await;
    assert_eq!(env.place("us", "bea", "eu").await.status, 201);
    // Keep writing on the eu primary so the delayed replica really is ~1.5 s behind.
    let writer = keep_primary_busy(&env, "eu");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let read = |max: &str| {
        env.send(
            env.http
                .post(env.url("us", "/v1/query"))
                .header("homeport-user", "bea")
                .header("homeport-max-staleness-ms", max)
                .json(&json!({"sql": "SELECT 1"})),
        )
    };
    let tight = read("500").await;
    assert_eq!(
        tight.served_by(),
        "eu/primary",
        "a 500 ms bound rules out a replica 1.5 s behind"
    );
    assert!(
        tight.header("homeport-staleness-ms").is_none(),
        "primary reads are not stale"
    );
    let loose = read("10000").await;
    assert_eq!(loose.served_by(), "us/replica");
    let bound: u64 = loose
        .header("homeport-staleness-ms")
        .expect("replica reads carry a staleness bound")
        .parse()
        .unwrap();
    assert!(
        (1000..=10_000).contains(&bound),
        "bound {bound} ms for a replica 1.5 s behind"
    );
    let bad = read("soon").await;
    assert_eq!(bad.status, 400);
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_transactions_return_a_token_covering_every_statement() {
    let mut opts = options(&["eu", "us"]);
    opts.replica_delay = Duration::from_millis(300);
    let env = start(opts).await;
    let keys = token_keys(&env);
    assert_eq!(env.place("us", "ivo", "eu").await.status, 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = env
        .send(
            env.http
                .post(env.url("us", "/v1/transaction"))
                .header("homeport-user", "ivo")
                .json(&json!({"statements": [
                    {"sql": "INSERT INTO notes (user_id, body) VALUES ('ivo', 'one')"},
                    {"sql": "INSERT INTO notes (user_id, body) VALUES ('ivo', 'two')"},
                ]})),
        )
        .await;
    assert_eq!(t.status, 200, "{:?}", t.body);
    let token = t
        .header("consistency-token")
        .expect("a write transaction returns a token")
        .to_string();
    assert!(Token::decode(&token, &keys).is_ok());
    // Read through us right away with the token: both rows, although the replica lags 300 ms.
    let r = env
        .send(
            env.http
                .post(env.url("us", "/v1/query"))
                .header("homeport-user", "ivo")
                .header("consistency-token", &token)
                .json(&json!({"sql": "SELECT count(*) FROM notes WHERE user_id = 'ivo'"})),
        )
        .await;
    assert_eq!(r.body["rows"][0][0], 2, "{:?}", r.body);
    // A failing transaction still rolls back completely and leaves no connection inside it.
    for _ in 0..3 {
        let bad = env
            .send(
                env.http
                    .post(env.url("us", "/v1/transaction"))
                    .header("homeport-user", "ivo")
                    .json(&json!({"statements": [
                        {"sql": "INSERT INTO notes (user_id, body) VALUES ('ivo', 'three')"},
                        {"sql": "SELECT 1/0"},
                    ]})),
            )
            .await;
        assert_eq!(bad.status, 422);
    }
    let eu = env.direct(env.primary_port("eu")).await;
    let n: i64 = eu
        .query_one("SELECT count(*) FROM notes WHERE user_id = 'ivo'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let stuck: i64 = eu
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND datname = 'app'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stuck, 0);
}

//! The consistency checker: concurrent clients in two regions, users homed in both, each writing
//! through its home region's sidecar and reading through the other region's (whose copy of its
//! shard is a replica), with the token of its last write. Zero reads may miss the reader's own
//! write. The same reads without the token do miss writes on lagging replicas, so the check can
//! fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{Env, options, start};
use serde_json::json;

const CLIENTS: usize = 8;
const ROUNDS: usize = 120;

#[derive(Default)]
struct Counts {
    token_reads: AtomicUsize,
    token_misses: AtomicUsize,
    plain_reads: AtomicUsize,
    plain_stale: AtomicUsize,
}

async fn run_checker(env: Arc<Env>) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (home, other) = if i % 2 == 0 {
            ("eu", "us")
        } else {
            ("us", "eu")
        };
        let user = format!("checker-{i}");
        assert_eq!(env.place(home, &user, home).await.status, 201);
        let (env, counts) = (env.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let count_sql =
                json!({"sql": "SELECT count(*) FROM notes WHERE user_id = $1", "params": [user]});
            for round in 1..=ROUNDS {
                let w = env
                    .query(
                        home,
                        &user,
                        "INSERT INTO notes (user_id, body) VALUES ($1, 'checker')",
                        json!([user]),
                    )
                    .await;
                assert_eq!(w.status, 200, "{:?}", w.body);
                let token = w.header("consistency-token").expect("token").to_string();
                let with_token = env
                    .send(
                        env.http
                            .post(env.url(other, "/v1/query"))
                            .header("homeport-user", &user)
                            .header("consistency-token", &token)
                            .json(&count_sql),
                    )
                    .await;
                assert_eq!(with_token.status, 200, "{:?}", with_token.body);
                counts.token_reads.fetch_add(1, Ordering::Relaxed);
                if with_token.body["rows"][0][0].as_i64().unwrap() < round as i64 {
                    counts.token_misses.fetch_add(1, Ordering::Relaxed);
                }
                let plain = env
                    .send(
                        env.http
                            .post(env.url(other, "/v1/query"))
                            .header("homeport-user", &user)
                            .json(&count_sql),
                    )
                    .await;
                counts.plain_reads.fetch_add(1, Ordering::Relaxed);
                if plain.body["rows"][0][0].as_i64().unwrap() < round as i64 {
                    counts.plain_stale.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    counts
}

fn report(name: &str, c: &Arc<Counts>) -> (usize, usize) {
    let (tr, tm, pr, ps) = (
        c.token_reads.load(Ordering::Relaxed),
        c.token_misses.load(Ordering::Relaxed),
        c.plain_reads.load(Ordering::Relaxed),
        c.plain_stale.load(Ordering::Relaxed),
    );
    eprintln!(
        "checker {name}: {tr} reads with token, {tm} missed their own write; {pr} reads without, {ps} stale"
    );
    (tm, ps)
}

async fn sandbox(delay_ms: u64) -> Arc<Env> {
    let mut opts = options(&["eu", "us"]);
    opts.replica_delay = Duration::from_millis(delay_ms);
    let env = start(opts).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Arc::new(env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_missed_writes_with_caught_up_replicas() {
    let env = sandbox(0).await;
    let (misses, _) = report("0ms", &run_checker(env).await);
    assert_eq!(misses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_missed_writes_with_200ms_replica_delay() {
    let env = sandbox(200).await;
    let (misses, stale) = report("200ms", &run_checker(env).await);
    assert_eq!(misses, 0);
    assert!(
        stale > 0,
        "without tokens a 200 ms replica must show stale reads, or the check proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_missed_writes_with_paused_replay() {
    let env = sandbox(0).await;
    for (shard, located) in [("eu", "us"), ("us", "eu")] {
        env.direct(env.replica_port(shard, located))
            .await
            .batch_execute("SELECT pg_wal_replay_pause()")
            .await
            .unwrap();
    }
    let (misses, stale) = report("paused", &run_checker(env).await);
    assert_eq!(misses, 0);
    assert!(
        stale > 0,
        "paused replicas must show stale reads without tokens"
    );
}

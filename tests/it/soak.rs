//! Soak: mixed HTTP and wire traffic through both regions' sidecars while faults come on a
//! schedule (a region cut off, replay paused, a primary restarted, Redis restarted). At the end:
//! every acknowledged write is there exactly once, no read with a token missed its write, and the
//! sidecar's memory stayed bounded. `HOMEPORT_SOAK_SECS` sets the length (default 60 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{options, start};
use serde_json::{Value, json};

#[derive(Default)]
struct Tally {
    http_writes: AtomicU64,
    http_write_retries: AtomicU64,
    token_reads: AtomicU64,
    ryw_violations: AtomicU64,
    wire_writes: AtomicU64,
    wire_errors: AtomicU64,
    wire_ryw_violations: AtomicU64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_under_scheduled_faults() {
    let secs: u64 = std::env::var("HOMEPORT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let total = Duration::from_secs(secs);
    let mut opts = options(&["eu", "us"]);
    opts.link_delay = Some(Duration::from_millis(2));
    let mut env = start(opts).await;
    assert_eq!(env.place("eu", "soak-eu", "eu").await.status, 201);
    assert_eq!(env.place("us", "soak-us", "us").await.status, 201);
    let urls = [env.url("eu", "/v1/query"), env.url("us", "/v1/query")];
    let wire_url = format!(
        "postgresql://app@127.0.0.1:{}/app?options=-c%20homeport.user%3Dsoak-us",
        env.sandbox.region("us").pg_port
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    // HTTP workers: idempotent writes retried with their key until acknowledged, each followed
    // by a read with the write's token through the other region's sidecar.
    let mut workers = Vec::new();
    for w in 0..3usize {
        let (http, urls, tally, done) = (http.clone(), urls.clone(), tally.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0usize;
            while !done.load(Ordering::Relaxed) {
                n += 1;
                let user = ["soak-eu", "soak-us"][(w + n) % 2];
                let body = format!("soak-{w}-{n}");
                let mut attempt = 0;
                let (token, wrote_via) = loop {
                    let via = (n + attempt) % 2;
                    attempt += 1;
                    let sent = http
                        .post(&urls[via])
                        .header("homeport-user", user)
                        .header("idempotency-key", &body)
                        .json(&json!({
                            "sql": "INSERT INTO notes (user_id, body) VALUES ($1, $2)",
                            "params": [user, body],
                        }))
                        .send()
                        .await;
                    if let Ok(r) = sent
                        && r.status() == 200
                    {
                        let token = r
                            .headers()
                            .get("consistency-token")
                            .and_then(|v| v.to_str().ok())
                            .map(String::from);
                        break (token, via);
                    }
                    tally.http_write_retries.fetch_add(1, Ordering::Relaxed);
                    assert!(attempt < 600, "{body} never acknowledged");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                tally.http_writes.fetch_add(1, Ordering::Relaxed);
                acknowledged.push((user, body.clone()));
                let Some(token) = token else { continue };
                for _ in 0..200 {
                    let read = http
                        .post(&urls[1 - wrote_via])
                        .header("homeport-user", user)
                        .header("consistency-token", &token)
                        .json(&json!({
                            "sql": "SELECT count(*) FROM notes WHERE body = $1",
                            "params": [body],
                        }))
                        .send()
                        .await;
                    if let Ok(r) = read
                        && r.status() == 200
                    {
                        let v: Value = r.json().await.unwrap();
                        tally.token_reads.fetch_add(1, Ordering::Relaxed);
                        if v["rows"][0][0] != 1 {
                            tally.ryw_violations.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            acknowledged
        }));
    }

    // A wire worker: a session that writes and at once reads its write back; on a broken
    // connection it reconnects. Writes whose outcome is unknown are remembered as such.
    let wire = {
        let (tally, done) = (tally.clone(), done.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut uncertain = Vec::new();
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                let Ok((c, conn)) = tokio_postgres::connect(&wire_url, tokio_postgres::NoTls).await
                else {
                    tally.wire_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                tokio::spawn(conn);
                while !done.load(Ordering::Relaxed) {
                    n += 1;
                    let body = format!("wire-{n}");
                    match c
                        .execute(
                            "INSERT INTO notes (user_id, body) VALUES ('soak-us', $1)",
                            &[&body],
                        )
                        .await
                    {
                        Ok(_) => {
                            tally.wire_writes.fetch_add(1, Ordering::Relaxed);
                            acknowledged.push(body.clone());
                        }
                        Err(_) => {
                            tally.wire_errors.fetch_add(1, Ordering::Relaxed);
                            uncertain.push(body);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            break;
                        }
                    }
                    match c
                        .query_one("SELECT count(*) FROM notes WHERE body = $1", &[&body])
                        .await
                    {
                        Ok(row) if row.get::<_, i64>(0) != 1 => {
                            tally.wire_ryw_violations.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            tally.wire_errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
            (acknowledged, uncertain)
        })
    };

    // The fault schedule, as fractions of the run.
    let at = |f: f64| started + total.mul_f64(f);
    let sleep_until = |t: Instant| tokio::time::sleep_until(t.into());
    let us_pid = env.sandbox.sidecar_pid("us").unwrap();
    sleep_until(at(0.1)).await;
    let rss_start = rss_kib(us_pid);
    env.sandbox.partition("us", true);
    sleep_until(at(0.25)).await;
    env.sandbox.partition("us", false);
    sleep_until(at(0.35)).await;
    let replica = env.direct(env.replica_port("eu", "us")).await;
    replica
        .execute("SELECT pg_wal_replay_pause()", &[])
        .await
        .unwrap();
    sleep_until(at(0.45)).await;
    replica
        .execute("SELECT pg_wal_replay_resume()", &[])
        .await
        .unwrap();
    sleep_until(at(0.55)).await;
    tokio::task::block_in_place(|| {
        env.sandbox.stop_server("us-primary");
        std::thread::sleep(Duration::from_secs(2));
        env.sandbox.start_server("us-primary").unwrap();
    });
    sleep_until(at(0.7)).await;
    env.sandbox.stop_redis("us");
    sleep_until(at(0.8)).await;
    tokio::task::block_in_place(|| env.sandbox.restart_redis("us")).unwrap();
    sleep_until(at(1.0)).await;
    done.store(true, Ordering::Relaxed);
    let rss_end = rss_kib(us_pid);

    let mut acknowledged = Vec::new();
    for w in workers {
        acknowledged.extend(w.await.unwrap());
    }
    let (wire_acknowledged, wire_uncertain) = wire.await.unwrap();
    let primaries = [
        ("soak-eu", env.direct(env.primary_port("eu")).await),
        ("soak-us", env.direct(env.primary_port("us")).await),
    ];
    let count = |user: &str, body: String| {
        let c = &primaries.iter().find(|(u, _)| *u == user).unwrap().1;
        async move {
            c.query_one("SELECT count(*) FROM notes WHERE body = $1", &[&body])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let mut lost = 0;
    let mut duplicated = 0;
    for (user, body) in &acknowledged {
        match count(user, body.clone()).await {
            1 => {}
            0 => lost += 1,
            _ => duplicated += 1,
        }
    }
    for body in &wire_acknowledged {
        match count("soak-us", body.clone()).await {
            1 => {}
            0 => lost += 1,
            _ => duplicated += 1,
        }
    }
    for body in &wire_uncertain {
        assert!(
            count("soak-us", body.clone()).await <= 1,
            "{body} applied twice"
        );
    }
    let t = &tally;
    println!(
        "soak {secs}s: {} HTTP writes acknowledged ({} retries), {} token reads, {} RYW violations; \
         {} wire writes ({} wire errors, {} uncertain), {} wire RYW violations; lost {lost}, duplicated {duplicated}; \
         us sidecar RSS {} KiB -> {} KiB",
        t.http_writes.load(Ordering::Relaxed),
        t.http_write_retries.load(Ordering::Relaxed),
        t.token_reads.load(Ordering::Relaxed),
        t.ryw_violations.load(Ordering::Relaxed),
        t.wire_writes.load(Ordering::Relaxed),
        t.wire_errors.load(Ordering::Relaxed),
        wire_uncertain.len(),
        t.wire_ryw_violations.load(Ordering::Relaxed),
        rss_start,
        rss_end,
    );
    assert_eq!((lost, duplicated), (0, 0), "no write lost or applied twice");
    assert_eq!(t.ryw_violations.load(Ordering::Relaxed), 0);
    assert_eq!(t.wire_ryw_violations.load(Ordering::Relaxed), 0);
    assert!(t.http_writes.load(Ordering::Relaxed) > 0 && t.wire_writes.load(Ordering::Relaxed) > 0);
    assert!(
        rss_end < rss_start * 2 + 32 * 1024,
        "sidecar memory grew from {rss_start} KiB to {rss_end} KiB"
    );
}

//! Large results over HTTP (docs/http.md): a result larger than a small buffer is streamed and
//! arrives complete; a result past `http.max_result_rows` / `http.max_result_bytes` ends with a
//! clear error and its statement stops on the server; `max_rows` cuts a result and says so; a
//! statement error after the first rows is detectable in the body; `http.result_budget` turns
//! away what would not fit with 503 + Retry-After. The sidecar's peak RSS (VmHWM) under 1 and 20
//! clients of a 3,000,000-row query is printed and held to a generous bound far below the chart's
//! memory limit.

use crate::common;

use std::time::Duration;

use serde_json::{Value, json};

const BIG: &str = "SELECT g, md5(g::text) FROM generate_series(1, 3000000) g";
/// The sidecars started here use these limits, smaller than the defaults so the tests are quick.
const LIMITS: &str = "max_result_rows = 50000\nmax_result_bytes = \"8MiB\"\n";
/// A bound on the sidecar's peak RSS far below the chart's limit (docs/http.md), generous
/// enough for a debug build.
const PEAK_RSS_BOUND_KIB: u64 = 160 * 1024;

struct Sidecar {
    process: homeport::dev::Managed,
    url: String,
}

/// Another sidecar of region `us` with `http` settings added, room for 20 clients at once, and a
/// statement timeout and probe timeout long enough for 20 of the 3,000,000-row queries at once
/// on a 2-core machine (the server is then busy for seconds; this is about memory, not probes).
fn sidecar(env: &common::Env, name: &str, http: &str) -> Sidecar {
    let (config, http_port, _) = common::region_config_on_new_ports(env, "us");
    let config = config
        .replacen("[http]\n", &format!("[http]\n{http}"), 1)
        .replace("pool_size = 16", "pool_size = 32")
        .replace("statement_timeout = \"5s\"", "statement_timeout = \"120s\"")
        .replace(
            "timeout = \"500ms\"\nfall = 2",
            "timeout = \"10s\"\nfall = 10",
        );
    let process = env
        .sandbox
        .spawn_sidecar(name, &config, http_port)
        .expect("sidecar starts");
    Sidecar {
        process,
        url: format!("http://127.0.0.1:{http_port}"),
    }
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn streamed(&self) -> bool {
        self.header("transfer-encoding") == Some("chunked")
            && self.header("content-length").is_none()
    }
}

/// A client patient enough for 20 of the 3,000,000-row queries on a busy 2-core machine (each
/// makes the server generate its whole series before the first row); this is about memory. One
/// per request: a client's connections belong to the runtime of the test that made them.
fn patient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("http client")
}

async fn post(_env: &common::Env, url: &str, path: &str, body: Value) -> Answer {
    let resp = patient_client()
        .post(format!("{url}{path}"))
        .header("homeport-user", "ana")
        .json(&body)
        .send()
        .await
        .expect("request reached homeport");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("whole body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "body is not one JSON value ({e}): ...{}",
            String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(300)..])
        )
    });
    Answer {
        status,
        headers,
        body,
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field present")
}

/// The error member of a streamed body cut short by the row limit.
fn assert_cut_by_row_limit(a: &Answer) {
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.streamed(), "a large result is streamed");
    assert_eq!(
        a.body["error"]["type"], "urn:homeport:problem:result-too-large",
        "{}",
        a.body["error"]
    );
    assert!(a.body.get("row_count").is_none(), "no row_count: cut short");
    assert_eq!(a.body["rows"].as_array().map(Vec::len), Some(50_000));
}

async fn start() -> common::Env {
    let env = common::start(common::options(&["us"])).await;
    assert_eq!(env.place("us", "ana", "us").await.status, 201);
    env
}

#[tokio::test]
async fn results_under_the_limits_arrive_complete_streamed_or_not() {
    let env = start().await;
    let s = sidecar(&env, "us-streaming", LIMITS);

    let small = post(&env, &s.url, "/v1/query", json!({"sql": "SELECT 1 AS one"})).await;
    assert_eq!(small.status, 200);
    assert!(!small.streamed(), "a small result is sent in one piece");
    assert_eq!(
        small.body,
        json!({"columns": [{"name": "one", "type": "int4"}], "rows": [[1]], "command": "SELECT", "row_count": 1})
    );

    let sql = "SELECT g, md5(g::text) FROM generate_series(1, 40000) g";
    let a = post(&env, &s.url, "/v1/query", json!({ "sql": sql })).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.streamed(), "a result of about 1.8 MB is streamed");
    assert_eq!(a.body["command"], "SELECT");
    assert_eq!(a.body["row_count"], 40_000);
    assert_eq!(a.body["columns"][1], json!({"name": "md5", "type": "text"}));
    let rows = a.body["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 40_000);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], json!(i + 1), "rows in order, none lost");
    }
    let db = env.direct(env.primary_port("us")).await;
    for g in [1i64, 20_000, 40_000] {
        let md5: String = db
            .query_one("SELECT md5($1::text)", &[&g.to_string()])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows[g as usize - 1], json!([g, md5]));
    }

    // The same rows in a transaction are collected, within the same limits.
    let t = post(
        &env,
        &s.url,
        "/v1/transaction",
        json!({"statements": [{ "sql": sql }, {"sql": "SELECT 2 AS two"}]}),
    )
    .await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["results"][0]["row_count"], 40_000);
    assert_eq!(t.body["results"][1]["rows"], json!([[2]]));
    drop(s);
}

#[tokio::test]
async fn a_statement_error_after_the_first_rows_ends_the_stream_with_an_error_member() {
    let env = start().await;
    let s = sidecar(&env, "us-midstream", LIMITS);
    let sql = "SELECT g, md5(g::text), 1 / (40000 - g) AS boom FROM generate_series(1, 40000) g";
    let a = post(&env, &s.url, "/v1/query", json!({ "sql": sql })).await;
    assert_eq!(a.status, 200, "the status was sent with the first rows");
    assert!(a.streamed());
    assert_eq!(a.body["error"]["sqlstate"], "22012", "{}", a.body["error"]);
    assert_eq!(
        a.body["error"]["type"],
        "urn:homeport:problem:statement-error"
    );
    assert!(a.body.get("row_count").is_none());
    assert!(a.body.get("command").is_none());
    assert!(!a.body["rows"].as_array().unwrap().is_empty());

    // Before the first rows went out, the same error is a plain problem+json.
    let early = post(&env, &s.url, "/v1/query", json!({"sql": "SELECT 1 / 0"})).await;
    assert_eq!(early.status, 422);
    assert_eq!(
        early.header("content-type"),
        Some("application/problem+json")
    );
}

#[tokio::test]
async fn results_past_the_limits_fail_clearly_and_max_rows_truncates() {
    let env = start().await;
    let s = sidecar(&env, "us-limits", LIMITS);

    // Past the row limit: the stream ends with the limit's error, the statement stops.
    let a = post(&env, &s.url, "/v1/query", json!({ "sql": BIG })).await;
    assert_cut_by_row_limit(&a);
    let db = env.direct(env.primary_port("us")).await;
    let mut running = 1;
    for _ in 0..200 {
        running = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                 AND query LIKE '%generate_series(1, 3000000)%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running, 0, "the cut statement no longer runs on the server");

    // Past the byte limit with few rows.
    // `repeat` is not known to be read-only, so this runs as a write: collected, not streamed,
    // and the limit is a problem+json.
    let wide = "SELECT repeat('x', 100000) FROM generate_series(1, 200)";
    let a = post(&env, &s.url, "/v1/query", json!({ "sql": wide })).await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(a.body["type"], "urn:homeport:problem:result-too-large");
    assert!(
        a.body["detail"]
            .as_str()
            .unwrap()
            .contains("http.max_result_bytes")
    );

    // A collected result (a transaction) past a limit: problem+json, nothing sent before it.
    let t = post(
        &env,
        &s.url,
        "/v1/transaction",
        json!({"statements": [{ "sql": BIG }]}),
    )
    .await;
    assert_eq!(t.status, 422, "{}", t.body);
    assert_eq!(t.body["type"], "urn:homeport:problem:result-too-large");
    assert!(
        t.body["detail"]
            .as_str()
            .unwrap()
            .contains("http.max_result_rows")
    );

    // max_rows cuts a result and says so, whether it is streamed or collected.
    for (sql, max) in [(BIG, 10u64), (BIG, 20_000)] {
        let a = post(
            &env,
            &s.url,
            "/v1/query",
            json!({ "sql": sql, "max_rows": max }),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["truncated"], true);
        assert_eq!(a.body["row_count"], max);
        assert_eq!(a.body["rows"].as_array().unwrap().len() as u64, max);
    }
    let whole = post(
        &env,
        &s.url,
        "/v1/query",
        json!({"sql": "SELECT g FROM generate_series(1, 5) g", "max_rows": 5}),
    )
    .await;
    assert_eq!(whole.body["row_count"], 5);
    assert!(whole.body.get("truncated").is_none(), "nothing was cut");

    // The sidecar still serves after all of that.
    let ok = post(&env, &s.url, "/v1/query", json!({"sql": "SELECT 1"})).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn the_result_budget_refuses_what_would_not_fit_with_503() {
    let env = start().await;
    let s = sidecar(
        &env,
        "us-budget",
        "max_result_bytes = \"4MiB\"\nresult_budget = \"1MiB\"\n",
    );
    let part = json!({"sql": "SELECT repeat('x', 1000) FROM generate_series(1, 600)"});
    let t = post(
        &env,
        &s.url,
        "/v1/transaction",
        json!({"statements": [part, part]}),
    )
    .await;
    assert_eq!(t.status, 503, "{}", t.body);
    assert_eq!(t.body["type"], "urn:homeport:problem:result-budget");
    assert_eq!(t.header("retry-after"), Some("1"));
    // The refused request gave its share back: one half fits.
    let t = post(
        &env,
        &s.url,
        "/v1/transaction",
        json!({"statements": [part]}),
    )
    .await;
    assert_eq!(t.status, 200, "{}", t.body);
}

#[tokio::test]
async fn oversized_results_from_1_and_20_clients_keep_memory_bounded_and_others_served() {
    let env = start().await;
    let s = sidecar(&env, "us-memory", LIMITS);
    let pid = s.process.pid();
    let start_kib = status_kib(pid, "VmRSS");

    let a = post(&env, &s.url, "/v1/query", json!({ "sql": BIG })).await;
    assert_cut_by_row_limit(&a);
    let one_kib = status_kib(pid, "VmHWM");

    // 20 clients at once, while one more client keeps sending point reads.
    let big: Vec<_> = (0..20)
        .map(|_| {
            let (env, url) = (&env, s.url.clone());
            async move { post(env, &url, "/v1/query", json!({ "sql": BIG })).await }
        })
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let point_reads = async {
        let mut served = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || served == 0 {
            let a = post(&env, &s.url, "/v1/query", json!({"sql": "SELECT 1"})).await;
            assert_eq!(a.status, 200, "point reads keep being served: {}", a.body);
            served += 1;
        }
        served
    };
    let big_all = async {
        let answers = futures_util::future::join_all(big).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        answers
    };
    let (answers, served) = tokio::join!(big_all, point_reads);
    for a in &answers {
        assert_cut_by_row_limit(a);
    }
    let twenty_kib = status_kib(pid, "VmHWM");
    println!(
        "sidecar RSS: {} MiB at start; peak {} MiB after 1 client, {} MiB after 20 clients \
         of a 3,000,000-row query (each cut at 50,000 rows); {served} point reads served meanwhile",
        start_kib / 1024,
        one_kib / 1024,
        twenty_kib / 1024
    );
    assert!(
        twenty_kib < PEAK_RSS_BOUND_KIB,
        "peak RSS {twenty_kib} KiB is past the bound"
    );
}

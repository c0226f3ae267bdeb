//! Data residency and home-region redirects against `homeport dev --resident eu`: the eu shard
//! has no copy outside eu, and a sidecar in us applies the residency policy to eu users
//! (forward, redirect, deny) over HTTP and the wire; us users and non-resident shards are
//! unaffected. Placement by country, and the config check of a resident shard's replicas.

use crate::common;

use std::time::Duration;

use crate::common::{Env, Resp};
use homeport::residency::Policy;
use homeport::types::RegionName;
use serde_json::{Value, json};
use tokio_postgres::NoTls;

async fn resident_eu(policy: Policy, link: bool) -> Env {
    let mut options = common::options(&["eu", "us"]);
    options.resident = vec![RegionName::parse("eu").unwrap()];
    options.residency_policy = Some(policy);
    if link {
        // Links with no delay, so a test can cut a region off.
        options.link_delay = Some(Duration::ZERO);
    }
    common::start(options).await
}

async fn wire(port: u16, user: &str) -> tokio_postgres::Client {
    let url = format!("postgresql://app@127.0.0.1:{port}/app?options=-c%20homeport.user%3D{user}");
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

/// Every key in a sandbox Redis.
fn redis_keys(port: u16) -> Vec<String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw", "KEYS", "*"])
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

async fn keyed_insert(env: &Env, region: &str, user: &str, key: &str, body: &str) -> Resp {
    env.send(
        env.http
            .post(env.url(region, "/v1/query"))
            .header("homeport-user", user)
            .header("idempotency-key", key)
            .json(&json!({
                "sql": "INSERT INTO notes (user_id, body) VALUES ($1, $2)",
                "params": [user, body],
            })),
    )
    .await
}

async fn read_notes(env: &Env, region: &str, user: &str) -> Resp {
    env.query(
        region,
        user,
        "SELECT body FROM notes WHERE user_id = $1 ORDER BY id",
        json!([user]),
    )
    .await
}

fn wire_code(e: &tokio_postgres::Error) -> (String, String) {
    let db = e.as_db_error().expect("a server-side error");
    (
        db.code().code().to_string(),
        db.detail().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_serves_an_eu_user_through_us_from_eu_and_us_stores_nothing_of_it() {
    let env = resident_eu(Policy::Forward, true).await;
    let eu_url = env.sandbox.region("eu").http_url();

    // No us replica of the resident shard, and the directory lives in a cluster of its own.
    let endpoints = env.sandbox.endpoints_json();
    let eu = &endpoints["regions"][0];
    assert_eq!(eu["name"], "eu");
    assert_eq!(eu["replicas"], json!({}), "{endpoints}");
    assert!(endpoints["regions"][1]["replicas"]["eu"].is_string());
    assert_eq!(endpoints["directory"]["own_cluster"], true);
    assert!(endpoints["directory"]["replicas"]["us"].is_string());

    // Placing an eu user through us: the directory is global.
    let placed = env.place("us", "ann", "eu").await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    assert_eq!(placed.header("homeport-home-region"), Some("eu"));
    assert_eq!(placed.header("homeport-home-url"), Some(eu_url.as_str()));
    assert_eq!(placed.body["home_url"], eu_url.as_str());

    // A write and a read through us run in eu, and say they were forwarded.
    let w = keyed_insert(&env, "us", "ann", "k-ann-1", "bonjour").await;
    assert_eq!(w.status, 200, "{:?}", w.body);
    assert_eq!(w.served_by(), "eu/primary");
    assert_eq!(w.header("homeport-residency"), Some("forwarded"));
    let r = read_notes(&env, "us", "ann").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.served_by(), "eu/primary");
    assert_eq!(r.body["rows"], json!([["bonjour"]]));
    assert_eq!(r.header("homeport-residency"), Some("forwarded"));
    assert_eq!(r.header("homeport-home-region"), Some("eu"));
    assert_eq!(r.header("homeport-home-url"), Some(eu_url.as_str()));
    // A retry of the keyed write through us replays from the eu record, still applies once.
    let again = keyed_insert(&env, "us", "ann", "k-ann-1", "bonjour").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        read_notes(&env, "us", "ann").await.body["rows"],
        json!([["bonjour"]])
    );

    // The us Redis holds no response of ann (only the global user -> region mapping). A sidecar
    // does cache the responses of users whose home primary is in another region (cal, homed in
    // us, written through eu: the eu Redis), so the check could have failed.
    let us_keys = redis_keys(env.sandbox.region("us").redis_port.expect("Redis"));
    assert!(
        us_keys.iter().all(|k| !k.contains("homeport:idem:")),
        "us Redis: {us_keys:?}"
    );
    let w = keyed_insert(&env, "eu", "ann", "k-ann-2", "hallo").await;
    assert_eq!(w.status, 200);
    assert_eq!(env.place("eu", "cal", "us").await.status, 201);
    let w = keyed_insert(&env, "eu", "cal", "k-cal-1", "hi").await;
    assert_eq!(w.status, 200, "{:?}", w.body);
    assert_eq!(w.served_by(), "us/primary");
    let eu_keys = redis_keys(env.sandbox.region("eu").redis_port.expect("Redis"));
    assert!(
        eu_keys
            .iter()
            .any(|k| k.contains("homeport:idem:") && k.contains("cal")),
        "eu Redis: {eu_keys:?}"
    );

    // Over the wire through us as well.
    let c = wire(env.sandbox.region("us").pg_port, "ann").await;
    let rows = c
        .query(
            "SELECT body FROM notes WHERE user_id = 'ann' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let route: String = c
        .query_one("SHOW homeport.route", &[])
        .await
        .unwrap()
        .get(0);
    assert!(route.contains("eu"), "{route}");

    // A us user in us is unaffected: no residency mark, no home headers.
    assert_eq!(env.place("us", "bob", "us").await.status, 201);
    let w = keyed_insert(&env, "us", "bob", "k-bob", "howdy").await;
    assert_eq!(w.status, 200);
    assert_eq!(w.served_by(), "us/primary");
    assert_eq!(w.header("homeport-residency"), None);
    assert_eq!(w.header("homeport-home-region"), None);

    let metrics = env.metrics("us").await;
    let forwarded = metrics
        .lines()
        .find(|l| {
            l.starts_with("homeport_residency_requests_total")
                && l.contains("outcome=\"forwarded\"")
                && l.contains("shard=\"eu\"")
        })
        .unwrap_or_else(|| panic!("no forwarded counter in {metrics}"));
    let count: f64 = forwarded.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 4.0, "{forwarded}");

    // Static stability of the non-resident shard: with eu cut off, us keeps serving us users,
    // and eu keeps serving us users from its local replica of us.
    common::wait_caught_up(&env, "us", "eu").await;
    env.sandbox.partition("eu", true);
    let r = read_notes(&env, "us", "bob").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.served_by(), "us/primary");
    let r = read_notes(&env, "eu", "bob").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.served_by(), "eu/replica");
    assert_eq!(r.body["rows"], json!([["howdy"]]));
    // The resident eu user cannot be forwarded while eu is unreachable: a fast 503, no hang.
    let r = read_notes(&env, "us", "ann").await;
    assert!(matches!(r.status, 502 | 503), "{} {:?}", r.status, r.body);
    env.sandbox.partition("eu", false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_answers_421_and_hp421_and_deny_answers_403_and_42501() {
    let env = resident_eu(Policy::Redirect, false).await;
    let eu_url = env.sandbox.region("eu").http_url();
    assert_eq!(env.place("eu", "cyd", "eu").await.status, 201);
    assert_eq!(env.place("us", "dan", "us").await.status, 201);

    // HTTP: 421 problem+json naming the home region and its URL, in headers and body.
    let r = read_notes(&env, "us", "cyd").await;
    assert_eq!(r.status, 421, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("homeport-home-region"), Some("eu"));
    assert_eq!(r.header("homeport-home-url"), Some(eu_url.as_str()));
    assert_eq!(r.body["type"], "urn:homeport:problem:residency-redirect");
    assert_eq!(r.body["home_url"], eu_url.as_str());
    let w = keyed_insert(&env, "us", "cyd", "k-cyd", "nope").await;
    assert_eq!(w.status, 421);
    // Nothing ran: the eu primary has no row of cyd.
    let direct = env.direct(env.primary_port("eu")).await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM notes WHERE user_id = 'cyd'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // The directory answers everywhere, with the home URL.
    let home = env
        .send(env.http.get(env.url("us", "/v1/users/cyd/home")))
        .await;
    assert_eq!(home.status, 200);
    assert_eq!(home.body["home_region"], "eu");
    assert_eq!(home.body["home_url"], eu_url.as_str());
    assert_eq!(home.header("homeport-home-region"), Some("eu"));

    // Wire: SQLSTATE HP421 with the region and URL in the detail.
    let c = wire(env.sandbox.region("us").pg_port, "cyd").await;
    let e = c.query("SELECT 1", &[]).await.unwrap_err();
    let (code, detail) = wire_code(&e);
    assert_eq!(code, "HP421");
    assert!(detail.contains("home region: eu"), "{detail}");
    assert!(detail.contains(&eu_url), "{detail}");
    // The session goes on: a us user in the same session is served.
    c.batch_execute("SET homeport.user = 'dan'").await.unwrap();
    c.query("SELECT 1", &[]).await.unwrap();

    // In eu, cyd is served; in us, dan is unaffected.
    let r = keyed_insert(&env, "eu", "cyd", "k-cyd-eu", "hej").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.served_by(), "eu/primary");
    assert_eq!(r.header("homeport-home-region"), None);
    let r = read_notes(&env, "us", "dan").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("homeport-home-region"), None);

    // Deny, as a per-shard override in a us sidecar's config.
    let (config, http_port, pg_port) = common::region_config_on_new_ports(&env, "us");
    let config = config.replace(
        "residency = [\"eu\"]",
        "residency = [\"eu\"]\nresidency_policy = \"deny\"",
    );
    assert!(config.contains("residency_policy = \"deny\""));
    let _deny = env
        .sandbox
        .spawn_sidecar("us-deny", &config, http_port)
        .unwrap();
    let base = format!("http://127.0.0.1:{http_port}");
    let r = env
        .send(
            env.http
                .post(format!("{base}/v1/query"))
                .header("homeport-user", "cyd")
                .json(&json!({"sql": "SELECT 1"})),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body["sqlstate"], "42501");
    assert_eq!(r.header("homeport-home-region"), Some("eu"));
    let c = wire(pg_port, "cyd").await;
    let e = c.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(wire_code(&e).0, "42501");
    let c = wire(pg_port, "dan").await;
    c.query("SELECT 1", &[]).await.unwrap();
}

async fn place_by(env: &Env, base: &str, user: &str, body: Value) -> Resp {
    env.send(
        env.http
            .put(format!("{base}/v1/users/{user}/home"))
            .json(&body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_by_country_allows_refuses_and_hashes_only_over_allowed_regions() {
    let env = common::start(common::options(&["eu", "us"])).await;
    let (config, http_port, _) = common::region_config_on_new_ports(&env, "us");
    let config = config.replace("placement = \"reject\"", "placement = \"hash\"")
        + "\n[placement.countries]\nDE = [\"eu\"]\nUS = [\"us\", \"eu\"]\n";
    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-countries", &config, http_port)
        .unwrap();
    let base = format!("http://127.0.0.1:{http_port}");

    // Allowed: a region the country allows.
    let r = place_by(
        &env,
        &base,
        "de-1",
        json!({"home_region": "eu", "country": "DE"}),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["home_region"], "eu");
    // Refused: a region it does not allow, with the allowed regions.
    let r = place_by(
        &env,
        &base,
        "de-2",
        json!({"home_region": "us", "country": "de"}),
    )
    .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(r.body["type"], "urn:homeport:problem:region-not-allowed");
    assert_eq!(r.body["allowed_regions"], json!(["eu"]));
    // (asked through a sidecar with placement "reject", which answers 404 for unknown users)
    let home = env
        .send(env.http.get(env.url("eu", "/v1/users/de-2/home")))
        .await;
    assert_eq!(home.status, 404, "a refused placement places nothing");

    // Country only, policy hash: only over the country's regions.
    let mut us_homes = std::collections::BTreeSet::new();
    for i in 0..30 {
        let r = place_by(&env, &base, &format!("de-h{i}"), json!({"country": "DE"})).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert_eq!(r.body["home_region"], "eu");
        let r = place_by(&env, &base, &format!("us-h{i}"), json!({"country": "US"})).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        us_homes.insert(r.body["home_region"].as_str().unwrap().to_string());
    }
    assert_eq!(
        us_homes.into_iter().collect::<Vec<_>>(),
        ["eu", "us"],
        "US users spread over both allowed regions"
    );
    // The placement is the directory's: the sandbox's own eu sidecar sees it.
    let home = env
        .send(env.http.get(env.url("eu", "/v1/users/de-h0/home")))
        .await;
    assert_eq!(home.body["home_region"], "eu");
    // Neither region nor country: 400.
    let r = place_by(&env, &base, "x", json!({})).await;
    assert_eq!(r.status, 400);
}

#[test]
fn check_reports_a_replica_of_a_resident_shard_outside_its_residency() {
    let example = include_str!("../../config/eu.toml")
        .replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "")
        .replace(
            "  { url = \"postgresql://pg-eu-replica.us.internal:5432\", region = \"us\" },\n]\n",
            "  { url = \"postgresql://pg-eu-replica.us.internal:5432\", region = \"us\" },\n]\nresidency = [\"eu\"]\n",
        );
    assert!(example.contains("residency = [\"eu\"]"));
    let dir = std::env::temp_dir().join(format!("homeport-residency-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, &example).unwrap();
    for cmd in ["check", "serve"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_homeport"))
            .args([cmd, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
        assert!(
            stderr.contains("shards.eu.replicas[1].region"),
            "{cmd}: {stderr}"
        );
        assert!(stderr.contains("outside the residency"), "{cmd}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

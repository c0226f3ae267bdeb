//! JWT mode against real servers: a verified token names the user (and may carry the home
//! region); missing, forged, expired and algorithm-confused tokens are refused with 401.

use crate::common;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::{options, start};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &str = "test-secret-test-secret-test-secret!";

fn token(claims: Value, alg: Algorithm, secret: &str) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn exp(offset: i64) -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_mode_verifies_tokens() {
    let env = start(options(&["eu", "us"])).await;
    let secret_file = env.sandbox.dir.join("jwt-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    // us's config on fresh data, wire and ops ports, next to the sandbox's own us sidecar.
    let (base, port, _) = common::region_config_on_new_ports(&env, "us");
    let config = base.replace("auth = \"trusted-header\"", "auth = \"jwt\"")
        + &format!(
            "\n[jwt]\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n",
            secret_file.display()
        );
    let _sidecar = env.sandbox.spawn_sidecar("us-jwt", &config, port).unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/query");
    let ask = |auth: Option<String>| {
        let mut r = env.http.post(&url).json(&json!({"sql": "SELECT 1"}));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r
    };

    // A token with a region claim needs no directory entry.
    let good = token(
        json!({"sub": "ivy", "region": "eu", "exp": exp(60)}),
        Algorithm::HS256,
        SECRET,
    );
    let r = env.send(ask(Some(format!("Bearer {good}")))).await;
    assert_eq!(
        (r.status, r.served_by()),
        (200, "us/replica"),
        "{:?}",
        r.body
    );

    for (name, auth) in [
        ("no token", None),
        ("not bearer", Some(format!("Basic {good}"))),
        (
            "forged",
            Some(format!(
                "Bearer {}",
                token(
                    json!({"sub": "ivy", "exp": exp(60)}),
                    Algorithm::HS256,
                    "another-secret-another-secret-xx!"
                )
            )),
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                token(
                    json!({"sub": "ivy", "exp": exp(-3600)}),
                    Algorithm::HS256,
                    SECRET
                )
            )),
        ),
        (
            "other algorithm",
            Some(format!(
                "Bearer {}",
                token(
                    json!({"sub": "ivy", "exp": exp(60)}),
                    Algorithm::HS512,
                    SECRET
                )
            )),
        ),
        (
            "alg none",
            Some("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJpdnkiLCJyZWdpb24iOiJldSJ9.".into()),
        ),
        ("garbage", Some("Bearer not.a-token".into())),
    ] {
        let r = env.send(ask(auth)).await;
        assert_eq!(r.status, 401, "{name}: {:?}", r.body);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }

    // A region claim naming no region of the deployment is refused, not guessed.
    let bad_region = token(
        json!({"sub": "ivy", "region": "mars", "exp": exp(60)}),
        Algorithm::HS256,
        SECRET,
    );
    assert_eq!(
        env.send(ask(Some(format!("Bearer {bad_region}"))))
            .await
            .status,
        422
    );

    // A token may only read or place its own user.
    let home = |user: &str| format!("http://127.0.0.1:{port}/v1/users/{user}/home");
    let r = env
        .send(
            env.http
                .get(home("someone-else"))
                .header("authorization", format!("Bearer {good}")),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = env
        .send(
            env.http
                .get(home("ivy"))
                .header("authorization", format!("Bearer {good}")),
        )
        .await;
    assert_eq!(
        (r.status, r.body["home_region"].as_str()),
        (200, Some("eu"))
    );
}

//! TLS from homeport to the PostgreSQL servers with `sslmode = "verify-full"`: every server of a
//! real sandbox gets a certificate from a test CA and refuses plain-text logins; a sidecar that
//! trusts the CA works over both front ends, on TLS connections (seen in `pg_stat_ssl`); one
//! that trusts another CA connects to nothing.

use crate::common;

use std::path::Path;
use std::process::Command;

use crate::common::{options, start};
use serde_json::json;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and, if `server` is set, a certificate it signs for 127.0.0.1 / localhost.
fn make_ca(dir: &Path, name: &str, server: bool) {
    let ca_key = format!("{name}.key");
    let ca_pem = format!("{name}.pem");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca_pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    if server {
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_tls_to_every_server() {
    let env = start(options(&["eu", "us"])).await;
    assert_eq!(env.place("us", "tia", "eu").await.status, 201);
    let certs = env.sandbox.dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_ca(&certs, "test-ca", true);
    make_ca(&certs, "other-ca", false);
    let key = certs.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if homeport::dev::is_root() {
        // The servers run as `postgres`: the key must be theirs.
        for f in ["server.key", "server.crt"] {
            assert!(
                Command::new("chown")
                    .arg("postgres")
                    .arg(certs.join(f))
                    .status()
                    .unwrap()
                    .success()
            );
        }
    }
    // Every server: TLS on with the test certificate, and `app` may log in only over TLS.
    let servers = [
        ("eu-primary", env.primary_port("eu")),
        ("us-primary", env.primary_port("us")),
        ("eu-replica-us", env.replica_port("eu", "us")),
        ("us-replica-eu", env.replica_port("us", "eu")),
    ];
    for (name, port) in servers {
        let data = env.sandbox.dir.join("pg").join(name);
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(&format!(
            "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            certs.join("server.crt").display(),
            key.display()
        ));
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("hostnossl all app all reject\n{hba}"),
        )
        .unwrap();
        env.direct(port)
            .await
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let plain = tokio_postgres::connect(
        &format!("postgresql://app@127.0.0.1:{}/app", env.primary_port("eu")),
        tokio_postgres::NoTls,
    )
    .await;
    assert!(plain.is_err(), "the servers refuse plain-text logins now");

    let (config, http_port, pg_port) = common::region_config_on_new_ports(&env, "us");
    let tls_config = |ca: &str| {
        config.replace(
            "[postgres]\n",
            &format!(
                "[postgres]\nsslmode = \"verify-full\"\nsslrootcert = \"{}\"\n",
                certs.join(ca).display()
            ),
        )
    };
    // A sidecar that trusts another CA reaches no server.
    let wrong = env.sandbox.dir.join("wrong-ca.toml");
    std::fs::write(&wrong, tls_config("other-ca.pem")).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(["check", "--config"])
        .arg(&wrong)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{report}");
    assert!(
        report.to_lowercase().contains("certificate"),
        "the reason names the certificate: {report}"
    );

    let _sidecar = env
        .sandbox
        .spawn_sidecar("us-tls", &tls_config("test-ca.pem"), http_port)
        .unwrap();
    let w = env
        .send(
            env.http
                .post(format!("http://127.0.0.1:{http_port}/v1/query"))
                .header("homeport-user", "tia")
                .json(
                    &json!({"sql": "INSERT INTO notes (user_id, body) VALUES ('tia', 'over tls')"}),
                ),
        )
        .await;
    assert_eq!(
        (w.status, w.served_by()),
        (200, "eu/primary"),
        "{:?}",
        w.body
    );
    let url = format!("postgresql://app@127.0.0.1:{pg_port}/app?options=-c%20homeport.user%3Dtia");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute("INSERT INTO notes (user_id, body) VALUES ('tia', 'wire over tls')")
        .await
        .unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM notes WHERE user_id = 'tia' /*homeport_route='primary'*/",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let encrypted: i64 = env
        .direct(env.primary_port("eu"))
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = 'app' AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        encrypted >= 2,
        "homeport's connections use TLS ({encrypted})"
    );
}

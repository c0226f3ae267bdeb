//! The regional Redis with a password: against a real `redis-server --requirepass`, homeport's
//! Redis client authenticates with the configured password (`redis.password_file`), and without
//! it gets nothing (Redis is best effort, so "nothing" is a miss, never an error to the caller).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use homeport::config::{Config, RedisConfig};
use homeport::kv::Kv;

const PASSWORD: &str = "redis pass phrase 0123456789";

/// A `redis-server` that requires a password, stopped when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_with_password() -> Redis {
    let bin = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("redis-server"))
        .chain([std::path::PathBuf::from("/usr/bin/redis-server")])
        .find(|p| p.exists())
        .expect("redis-server is installed");
    let port = homeport::dev::pick_ports(1).unwrap()[0];
    let child = Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            PASSWORD,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let redis = Redis { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    redis
}

/// The `[redis]` section of a real config file, with the password in a file.
fn config_with_password_file(port: u16, dir: &std::path::Path) -> RedisConfig {
    let file = dir.join("redis-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let text = include_str!("../../config/eu.toml")
        .replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "")
        .replace(
            "url = \"redis://redis.eu.internal:6379\"",
            &format!(
                "url = \"redis://127.0.0.1:{port}\"\npassword_file = \"{}\"",
                file.display()
            ),
        )
        .replace("timeout = \"100ms\"", "timeout = \"2s\"");
    Config::parse(&text)
        .unwrap()
        .redis
        .expect("[redis] is configured")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_password_from_the_config_is_used() {
    let redis = redis_with_password();
    let dir = std::env::temp_dir().join(format!("homeport-redis-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = config_with_password_file(redis.port, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(config.password.as_deref(), Some(PASSWORD));

    let kv = Kv::new(&config);
    kv.set_ex("homeport-test", "stored", Duration::from_secs(60))
        .await;
    assert_eq!(
        kv.get("homeport-test").await.as_deref(),
        Some("stored"),
        "with the configured password the value is written and read back"
    );

    // The password in the URL works the same way.
    let in_url = RedisConfig {
        url: format!(
            "redis://:{}@127.0.0.1:{}",
            "redis%20pass%20phrase%200123456789", redis.port
        ),
        password: None,
        timeout: Duration::from_secs(2),
    };
    assert_eq!(
        Kv::new(&in_url).get("homeport-test").await.as_deref(),
        Some("stored")
    );

    // Without it Redis refuses every command: nothing is read, nothing is written.
    let without = RedisConfig {
        password: None,
        ..config.clone()
    };
    let anonymous = Kv::new(&without);
    assert_eq!(anonymous.get("homeport-test").await, None);
    anonymous
        .set_ex("homeport-anonymous", "x", Duration::from_secs(60))
        .await;
    assert_eq!(kv.get("homeport-anonymous").await, None);

    // A wrong password is no better.
    let wrong = RedisConfig {
        password: Some("wrong".into()),
        ..config
    };
    assert_eq!(Kv::new(&wrong).get("homeport-test").await, None);
}

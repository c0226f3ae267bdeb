//! The wire endpoint before a client has logged in, against a real `homeport serve` with
//! SCRAM-SHA-256 client authentication (no database is needed: everything here happens before
//! homeport first talks to a server). Raw TCP clients check that an unauthenticated client can
//! neither make homeport buffer a huge message nor tell which users exist.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use homeport::pgwire::codec::{self, Message};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A `homeport serve` process, killed when dropped (also when the test fails).
struct Sidecar {
    child: Child,
    pg_port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a sidecar whose only wire user is `app`; its databases are closed ports.
async fn sidecar(name: &str) -> Sidecar {
    let ports = homeport::dev::pick_ports(4).unwrap();
    let (http_port, pg_port, dead_port, ops_port) = (ports[0], ports[1], ports[2], ports[3]);
    let dir = std::env::temp_dir().join(format!("homeport-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password = dir.join("password");
    std::fs::write(&password, "correct horse\n").unwrap();
    let db = format!("postgresql://127.0.0.1:{dead_port}");
    let config = format!(
        r#"region = "eu"
[http]
listen = "127.0.0.1:{http_port}"
auth = "trusted-header"
[ops]
listen = "127.0.0.1:{ops_port}"
[pg]
listen = "127.0.0.1:{pg_port}"
auth = "scram-sha-256"
users = [{{ name = "app", password_file = "{}" }}]
[postgres]
user = "app"
[shards.eu]
primary = ["{db}/app"]
[directory]
primary = [{{ url = "{db}/dir", region = "eu" }}]
"#,
        password.display()
    );
    let path = dir.join("homeport.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_homeport"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sidecar = Sidecar {
        child,
        pg_port,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", pg_port)).await.is_err() {
        assert!(Instant::now() < deadline, "homeport serve did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sidecar
}

fn startup(user: &str) -> Vec<u8> {
    let mut body = codec::PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "app")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The next message from homeport, within a few seconds.
async fn next(s: &mut TcpStream) -> Message {
    tokio::time::timeout(Duration::from_secs(5), codec::read_message(s))
        .await
        .expect("homeport answers within 5 s")
        .expect("a message")
}

/// The SQLSTATE and message of an ErrorResponse.
fn error_fields(m: &Message) -> (String, String) {
    assert_eq!(m.tag, b'E', "expected an ErrorResponse, got {m:?}");
    let field = |code: u8| {
        m.body
            .split(|b| *b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
            .unwrap_or_default()
    };
    (field(b'C'), field(b'M'))
}

/// Connects as `user`, sends its client-first message and returns the server-first message.
async fn server_first(port: u16, user: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&startup(user)).await.unwrap();
    let sasl = next(&mut s).await;
    assert_eq!(
        (sasl.tag, &sasl.body[..4]),
        (b'R', &10i32.to_be_bytes()[..])
    );
    let client_first = b"n,,n=,r=clientnonce0123456789";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
    body.extend_from_slice(client_first);
    s.write_all(&tagged(b'p', &body)).await.unwrap();
    let continued = next(&mut s).await;
    assert_eq!(
        (continued.tag, &continued.body[..4]),
        (b'R', &11i32.to_be_bytes()[..]),
        "{continued:?}"
    );
    let text = String::from_utf8(continued.body[4..].to_vec()).unwrap();
    (s, text)
}

fn attribute(server_first: &str, key: &str) -> String {
    server_first
        .split(',')
        .find_map(|a| a.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {server_first}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_before_login_get_fatal_08p01_without_being_read() {
    let sidecar = sidecar("prelogin-limits").await;
    let port = sidecar.pg_port;

    // A startup packet claiming 2 GiB: refused from its length alone.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .await
        .unwrap();
    let (code, message) = error_fields(&next(&mut s).await);
    assert_eq!(code, "08P01", "{message}");
    assert!(message.contains("startup packet"), "{message}");

    // A SASL message claiming 64 MiB, for a known and for an unknown user: refused as soon as
    // its header arrives (the client sends only the header, so a server that waited for the
    // body would time out here).
    for user in ["app", "nobody"] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&startup(user)).await.unwrap();
        assert_eq!(next(&mut s).await.tag, b'R');
        let mut header = vec![b'p'];
        header.extend_from_slice(&(64i32 << 20).to_be_bytes());
        header.extend_from_slice(b"SCRAM-SHA-256\0");
        s.write_all(&header).await.unwrap();
        let (code, message) = error_fields(&next(&mut s).await);
        assert_eq!(code, "08P01", "{user}: {message}");
        assert!(message.contains("at most 4096 bytes"), "{user}: {message}");
    }

    // The same limit for the client-final message, after a well-formed client-first.
    let (mut s, _) = server_first(port, "app").await;
    let mut header = vec![b'p'];
    header.extend_from_slice(&(1i32 << 20).to_be_bytes());
    s.write_all(&header).await.unwrap();
    let (code, message) = error_fields(&next(&mut s).await);
    assert_eq!(code, "08P01", "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_does_not_tell_which_users_exist() {
    let sidecar = sidecar("scram-enumeration").await;
    let port = sidecar.pg_port;
    let mut seen = Vec::new();
    for user in ["app", "nobody", "app", "nobody"] {
        let (mut s, first) = server_first(port, user).await;
        seen.push((attribute(&first, "s="), attribute(&first, "i=")));
        // Finishing with a made-up proof fails the same way for both.
        let client_final = format!(
            "c=biws,r={},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            attribute(&first, "r=")
        );
        s.write_all(&tagged(b'p', client_final.as_bytes()))
            .await
            .unwrap();
        let (code, _) = error_fields(&next(&mut s).await);
        assert_eq!(code, "28P01", "{user}");
    }
    let (app, nobody) = (&seen[0], &seen[1]);
    // A user that exists keeps its salt; one that does not keeps its (mock) salt too.
    assert_eq!(&seen[2], app, "a known user's salt is stable");
    assert_eq!(&seen[3], nobody, "an unknown user's salt is stable");
    // The same cost and the same salt length for both.
    assert_eq!(app.1, nobody.1, "iteration counts differ");
    assert_eq!(app.0.len(), nobody.0.len(), "salt lengths differ");
    assert_ne!(app.0, nobody.0);
}

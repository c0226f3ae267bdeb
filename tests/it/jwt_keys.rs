//! JWT verification with asymmetric keys, as a config file sets them up: RS256 and ES256 tokens
//! verify against PEM public keys and JWKS files; tokens signed with another key, another
//! algorithm, or an HMAC over the public key are refused; RSA keys under 2048 bits are refused
//! when the config loads, naming the key's config path. Keys are made with `openssl`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use homeport::auth::{AuthError, verify};
use homeport::config::{AuthConfig, Config, JwtConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

/// A scratch directory for one test's keys, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("homeport-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A private key (PKCS#8 PEM) and its public key (SPKI PEM).
fn keypair(dir: &Dir, name: &str, genpkey: &[&str]) -> (Vec<u8>, PathBuf) {
    let private = dir.path(&format!("{name}.key"));
    let public = dir.path(&format!("{name}.pub"));
    let mut args = vec!["genpkey", "-out", private.to_str().unwrap()];
    args.extend_from_slice(genpkey);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (std::fs::read(private).unwrap(), public)
}

fn rsa(dir: &Dir, name: &str, bits: u32) -> (Vec<u8>, PathBuf) {
    let bits = format!("rsa_keygen_bits:{bits}");
    keypair(dir, name, &["-algorithm", "RSA", "-pkeyopt", &bits])
}

fn p256(dir: &Dir, name: &str) -> (Vec<u8>, PathBuf) {
    keypair(
        dir,
        name,
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    )
}

/// A JWKS file with the RSA public key `public` under `kid`.
fn rsa_jwks(dir: &Dir, public: &Path, kid: &str) -> PathBuf {
    let out = openssl(&[
        "rsa",
        "-pubin",
        "-in",
        public.to_str().unwrap(),
        "-modulus",
        "-noout",
    ]);
    let hex = String::from_utf8(out).unwrap();
    let hex = hex.trim().strip_prefix("Modulus=").unwrap();
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let jwks = json!({"keys": [{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
        "n": B64URL.encode(n), "e": "AQAB"}]});
    let path = dir.path(&format!("{kid}.jwks.json"));
    std::fs::write(&path, jwks.to_string()).unwrap();
    path
}

/// A config whose `[jwt]` section is `jwt` (the shipped example otherwise).
fn load(jwt: &str) -> Result<JwtConfig, homeport::config::ConfigError> {
    let text = include_str!("../../config/eu.toml")
        .replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "")
        .replace("auth = \"trusted-header\"", "auth = \"jwt\"")
        + "\n[jwt]\n"
        + jwt;
    match Config::parse(&text)?.http.auth {
        AuthConfig::Jwt(j) => Ok(*j),
        AuthConfig::TrustedHeader => panic!("auth is jwt"),
    }
}

fn claims() -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({"sub": "ivy", "region": "eu", "exp": now + 60})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, &claims(), key).unwrap()
}

fn accepted(jwt: &JwtConfig, token: &str) -> bool {
    match verify(jwt, token) {
        Ok(id) => {
            assert_eq!(id.user.as_str(), "ivy");
            true
        }
        Err(AuthError::InvalidToken(_)) => false,
        Err(e) => panic!("unexpected {e}"),
    }
}

#[test]
fn rs256_tokens_verify_with_a_pem_key_and_a_jwks_file() {
    let dir = Dir::new("jwt-rs256");
    let (private, public) = rsa(&dir, "signer", 2048);
    let (other_private, _) = rsa(&dir, "other", 2048);
    let signer = EncodingKey::from_rsa_pem(&private).unwrap();
    let other = EncodingKey::from_rsa_pem(&other_private).unwrap();

    let pem = load(&format!(
        "algorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
        public.display()
    ))
    .unwrap();
    assert!(accepted(&pem, &sign(Algorithm::RS256, None, &signer)));
    assert!(
        !accepted(&pem, &sign(Algorithm::RS256, None, &other)),
        "another key"
    );
    assert!(
        !accepted(&pem, &sign(Algorithm::RS512, None, &signer)),
        "another algorithm"
    );
    // The classic confusion: an HS256 token whose HMAC key is the public key's PEM text.
    let confused = EncodingKey::from_secret(&std::fs::read(&public).unwrap());
    assert!(
        !accepted(&pem, &sign(Algorithm::HS256, None, &confused)),
        "HS256 with the public key"
    );

    let jwks = load(&format!(
        "algorithm = \"RS256\"\njwks_file = \"{}\"\n",
        rsa_jwks(&dir, &public, "k1").display()
    ))
    .unwrap();
    assert!(accepted(
        &jwks,
        &sign(Algorithm::RS256, Some("k1"), &signer)
    ));
    assert!(
        !accepted(&jwks, &sign(Algorithm::RS256, Some("k2"), &signer)),
        "unknown kid"
    );
    assert!(
        !accepted(&jwks, &sign(Algorithm::RS256, Some("k1"), &other)),
        "another key"
    );
}

#[test]
fn es256_tokens_verify_with_a_pem_key() {
    let dir = Dir::new("jwt-es256");
    let (private, public) = p256(&dir, "signer");
    let (other_private, _) = p256(&dir, "other");
    let jwt = load(&format!(
        "algorithm = \"ES256\"\npublic_key_file = \"{}\"\n",
        public.display()
    ))
    .unwrap();
    let signer = EncodingKey::from_ec_pem(&private).unwrap();
    assert!(accepted(&jwt, &sign(Algorithm::ES256, None, &signer)));
    let other = EncodingKey::from_ec_pem(&other_private).unwrap();
    assert!(
        !accepted(&jwt, &sign(Algorithm::ES256, None, &other)),
        "another key"
    );
    let confused = EncodingKey::from_secret(&std::fs::read(&public).unwrap());
    assert!(
        !accepted(&jwt, &sign(Algorithm::HS256, None, &confused)),
        "HS256 with the public key"
    );
}

#[test]
fn rsa_keys_under_2048_bits_are_refused_at_config_load() {
    let dir = Dir::new("jwt-rsa-size");
    let (_, short) = rsa(&dir, "short", 1024);
    let e = load(&format!(
        "algorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
        short.display()
    ))
    .expect_err("a 1024-bit key is refused");
    assert_eq!(e.path, "jwt.public_key_file");
    assert!(e.message.contains("1024 bits"), "{e}");
    // The PKCS#1 form of the same key too.
    let pkcs1 = dir.path("short.pkcs1.pub");
    openssl(&[
        "rsa",
        "-pubin",
        "-in",
        short.to_str().unwrap(),
        "-RSAPublicKey_out",
        "-out",
        pkcs1.to_str().unwrap(),
    ]);
    let e = load(&format!(
        "algorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
        pkcs1.display()
    ))
    .expect_err("a 1024-bit PKCS#1 key is refused");
    assert!(e.message.contains("1024 bits"), "{e}");

    let e = load(&format!(
        "algorithm = \"RS256\"\njwks_file = \"{}\"\n",
        rsa_jwks(&dir, &short, "weak").display()
    ))
    .expect_err("a 1024-bit JWK is refused");
    assert_eq!(e.path, "jwt.jwks_file");
    assert!(
        e.message.contains("weak") && e.message.contains("1024 bits"),
        "{e}"
    );

    // 2048 bits is the minimum and passes.
    let (_, ok) = rsa(&dir, "ok", 2048);
    load(&format!(
        "algorithm = \"RS256\"\npublic_key_file = \"{}\"\n",
        ok.display()
    ))
    .unwrap();
}

/// `homeport check` prints, and `homeport serve` logs, that `aud` (and `iss`) go unchecked when
/// the config does not name them. The databases are closed local ports: check reports them
/// unreachable (exit code 1), which is beside the point here.
#[test]
fn check_and_serve_say_when_the_audience_is_not_checked() {
    let dir = Dir::new("jwt-notes");
    let secret = dir.path("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
    let ports = homeport::dev::pick_ports(3).unwrap();
    let db = format!("postgresql://127.0.0.1:{}", ports[2]);
    let config = |audience: &str| {
        let path = dir.path(&format!("homeport{}.toml", audience.len()));
        std::fs::write(
            &path,
            format!(
                "region = \"eu\"\n[http]\nlisten = \"127.0.0.1:{}\"\nauth = \"jwt\"\n\
                 [jwt]\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n{audience}\n\
                 [postgres]\nuser = \"app\"\nconnect_timeout = \"1s\"\n\
                 [shards.eu]\nprimary = [\"{db}/app\"]\n\
                 [directory]\nprimary = [{{ url = \"{db}/dir\", region = \"eu\" }}]\n",
                ports[0],
                secret.display()
            ),
        )
        .unwrap();
        path
    };
    let check = |path: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_homeport"))
            .arg("check")
            .arg("--config")
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let unchecked = config("");
    let report = check(&unchecked);
    assert!(
        report.contains("note: jwt.audience is not set: the aud claim is not checked"),
        "{report}"
    );
    let report = check(&config(
        "audience = \"homeport\"\nissuer = \"https://issuer.example\"",
    ));
    assert!(!report.contains("note:"), "{report}");

    // serve logs the same at startup.
    let mut serve = Command::new(env!("CARGO_BIN_EXE_homeport"))
        .arg("serve")
        .arg("--config")
        .arg(&unchecked)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = serve.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("jwt.audience is not set") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(found, "no startup warning; stderr: {seen:?}");
}

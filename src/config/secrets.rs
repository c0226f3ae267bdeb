//! Secrets and key material: database and Redis passwords from files or environment variables,
//! JWT verification keys from a secret, a PEM file or a JWKS file. Nothing here is ever logged;
//! `Debug` of the types that hold secrets redacts them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};

use super::raw::{RawJwt, RawPostgres, RawRedis};
use super::{ConfigError, PostgresConfig, RedisConfig};

/// Connection defaults applied to every endpoint URL that does not set them itself.
pub struct PgDefaults {
    pub settings: PostgresConfig,
    user: String,
    dbname: Option<String>,
    application_name: String,
}

pub fn pg_defaults(raw: &RawPostgres) -> Result<PgDefaults, ConfigError> {
    let password = secret(
        "postgres",
        raw.password_file.as_deref(),
        raw.password_env.as_deref(),
    )?;
    let pool_size = raw.pool_size.unwrap_or(16);
    if pool_size == 0 || pool_size > 10_000 {
        return Err(ConfigError::new(
            "postgres.pool_size",
            "must be between 1 and 10000",
        ));
    }
    let tls_roots = match (
        raw.sslmode.as_deref().unwrap_or("disable"),
        &raw.sslrootcert,
    ) {
        ("disable", _) => None,
        ("verify-full", Some(path)) => Some(std::sync::Arc::new(root_store(path)?)),
        ("verify-full", None) => {
            return Err(ConfigError::new(
                "postgres.sslrootcert",
                "sslmode = \"verify-full\" needs the CA certificates that sign the servers' certificates",
            ));
        }
        (other, _) => {
            return Err(ConfigError::new(
                "postgres.sslmode",
                format!("unknown value {other:?}; use \"disable\" or \"verify-full\""),
            ));
        }
    };
    Ok(PgDefaults {
        settings: PostgresConfig {
            password,
            tls_roots,
            connect_timeout: raw
                .connect_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(2)),
            statement_timeout: raw
                .statement_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(5)),
            acquire_timeout: raw
                .acquire_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(1)),
            pool_size,
            idle_timeout: raw
                .idle_timeout
                .map_or(super::DEFAULT_IDLE_TIMEOUT, |d| d.0),
            max_lifetime: raw
                .max_lifetime
                .map_or(super::DEFAULT_MAX_LIFETIME, |d| d.0),
            stateless_functions: raw
                .stateless_functions
                .iter()
                .map(|f| f.to_ascii_lowercase())
                .collect(),
            identity_setting: identity_setting(raw.identity_setting.as_deref())?,
        },
        user: raw.user.clone().unwrap_or_else(|| "postgres".into()),
        dbname: raw.dbname.clone(),
        application_name: raw
            .application_name
            .clone()
            .unwrap_or_else(|| "homeport".into()),
    })
}

/// `postgres.identity_setting`: a custom setting name (`prefix.name`), as PostgreSQL requires
/// for settings it does not know, and never one of homeport's own.
fn identity_setting(name: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(name) = name else { return Ok(None) };
    let lower = name.to_ascii_lowercase();
    let valid = lower.split('.').count() == 2
        && lower.split('.').all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !p.starts_with(|c: char| c.is_ascii_digit())
        });
    if !valid {
        return Err(ConfigError::new(
            "postgres.identity_setting",
            format!("{name:?} is not a custom setting name like \"app.user_id\""),
        ));
    }
    if lower.starts_with("homeport.") && lower != "homeport.user_id" {
        return Err(ConfigError::new(
            "postgres.identity_setting",
            "homeport.* names other than homeport.user_id are homeport's own settings",
        ));
    }
    Ok(Some(lower))
}

impl PgDefaults {
    /// Parses an endpoint URL and fills in what it leaves out.
    pub fn connection(&self, url: &str) -> Result<tokio_postgres::Config, String> {
        if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
            return Err(format!(
                "{:?} is not a postgresql:// URL",
                url.split('@').next_back().unwrap_or("")
            ));
        }
        let mut pg = tokio_postgres::Config::from_str(url)
            .map_err(|e| format!("invalid connection URL: {e}"))?;
        if pg.get_user().is_none() {
            pg.user(&self.user);
        }
        if pg.get_dbname().is_none()
            && let Some(db) = &self.dbname
        {
            pg.dbname(db);
        }
        if pg.get_password().is_none()
            && let Some(p) = &self.settings.password
        {
            pg.password(p);
        }
        if pg.get_application_name().is_none() {
            pg.application_name(&self.application_name);
        }
        pg.connect_timeout(self.settings.connect_timeout);
        if self.settings.tls_roots.is_some() {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let ms = self.settings.statement_timeout.as_millis();
        if ms > 0 {
            pg.options(format!("-c statement_timeout={ms}"));
        }
        Ok(pg)
    }
}

/// The certificate authorities in a PEM file.
fn root_store(path: &str) -> Result<rustls::RootCertStore, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |m: String| ConfigError::new("postgres.sslrootcert", format!("{path}: {m}"));
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        store
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(store)
}

/// Reads a secret from a file (trailing newline removed) or an environment variable.
pub(super) fn secret(
    table: &str,
    file: Option<&str>,
    env: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    match (file, env) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            format!("{table}.password_file"),
            "set either password_file or password_env, not both",
        )),
        (Some(path), None) => std::fs::read_to_string(path)
            .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| {
                ConfigError::new(
                    format!("{table}.password_file"),
                    format!("cannot read {path}: {e}"),
                )
            }),
        (None, Some(var)) => std::env::var(var).map(Some).map_err(|_| {
            ConfigError::new(
                format!("{table}.password_env"),
                format!("environment variable {var} is not set"),
            )
        }),
        (None, None) => Ok(None),
    }
}

/// The Redis URL and password. `rediss://` is refused: homeport's Redis client is built without
/// TLS (see docs/security.md), and silently running without the cache it was asked to use is
/// worse than a clear error. A password may come from the URL or from `password_file` /
/// `password_env`, not both; it is sent with AUTH on every new connection.
pub fn redis_config(raw: RawRedis) -> Result<RedisConfig, ConfigError> {
    if raw.url.starts_with("rediss://") {
        return Err(ConfigError::new(
            "redis.url",
            "rediss:// (Redis over TLS) is not supported; use redis:// to a Redis in the pod or on a trusted network",
        ));
    }
    if !raw.url.starts_with("redis://") {
        return Err(ConfigError::new("redis.url", "must be a redis:// URL"));
    }
    let info = redis::IntoConnectionInfo::into_connection_info(raw.url.as_str())
        .map_err(|e| ConfigError::new("redis.url", format!("not a valid Redis URL: {e}")))?;
    let password = secret(
        "redis",
        raw.password_file.as_deref(),
        raw.password_env.as_deref(),
    )?;
    if password.is_some() && info.redis_settings().password().is_some() {
        return Err(ConfigError::new(
            if raw.password_file.is_some() {
                "redis.password_file"
            } else {
                "redis.password_env"
            },
            "redis.url already carries a password; set it in one place",
        ));
    }
    Ok(RedisConfig {
        url: raw.url,
        password,
        timeout: raw
            .timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_millis(100)),
    })
}

/// JWT verification settings. The algorithm is pinned: a token signed with any other algorithm
/// is rejected, which closes the classic `alg` confusion attacks.
#[derive(Clone)]
pub struct JwtConfig {
    pub algorithm: Algorithm,
    /// Verification keys, with their `kid` when they came from a JWKS file.
    pub keys: Vec<(Option<String>, DecodingKey)>,
    pub user_claim: String,
    pub region_claim: String,
    pub shard_claim: String,
    /// The claim carrying the user's country, when placement by country reads it from tokens.
    pub country_claim: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field(
                "keys",
                &format_args!("{} key(s), redacted", self.keys.len()),
            )
            .field("user_claim", &self.user_claim)
            .field("region_claim", &self.region_claim)
            .field("shard_claim", &self.shard_claim)
            .finish()
    }
}

pub fn jwt_config(raw: &RawJwt) -> Result<JwtConfig, ConfigError> {
    let algorithm = match raw.algorithm.as_str() {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        other => {
            return Err(ConfigError::new(
                "jwt.algorithm",
                format!("unsupported algorithm {other:?}; use HS256, RS256 or ES256"),
            ));
        }
    };
    let keys = match algorithm {
        Algorithm::HS256 => {
            let path = if raw.secret_file.is_some() {
                "jwt.secret_file"
            } else {
                "jwt.secret_env"
            };
            let secret = secret("jwt", raw.secret_file.as_deref(), raw.secret_env.as_deref())
                .map_err(|e| ConfigError::new(path, e.message))?
                .ok_or_else(|| ConfigError::new("jwt", "HS256 needs secret_file or secret_env"))?;
            if secret.len() < 32 {
                return Err(ConfigError::new(
                    path,
                    "HS256 secret must be at least 32 bytes",
                ));
            }
            vec![(None, DecodingKey::from_secret(secret.as_bytes()))]
        }
        _ => asymmetric_keys(algorithm, raw)?,
    };
    Ok(JwtConfig {
        algorithm,
        keys,
        user_claim: raw.user_claim.clone().unwrap_or_else(|| "sub".into()),
        region_claim: raw.region_claim.clone().unwrap_or_else(|| "region".into()),
        shard_claim: raw.shard_claim.clone().unwrap_or_else(|| "shard".into()),
        country_claim: raw.country_claim.clone(),
        issuer: raw.issuer.clone(),
        audience: raw.audience.clone(),
        leeway: raw.leeway.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
    })
}

fn asymmetric_keys(
    algorithm: Algorithm,
    raw: &RawJwt,
) -> Result<Vec<(Option<String>, DecodingKey)>, ConfigError> {
    if let Some(path) = &raw.public_key_file {
        let pem = std::fs::read(path).map_err(|e| {
            ConfigError::new("jwt.public_key_file", format!("cannot read {path}: {e}"))
        })?;
        let key = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
            _ => DecodingKey::from_ec_pem(&pem),
        }
        .map_err(|e| {
            ConfigError::new(
                "jwt.public_key_file",
                format!("not a usable PEM public key: {e}"),
            )
        })?;
        check_rsa_size(&key).map_err(|m| ConfigError::new("jwt.public_key_file", m))?;
        return Ok(vec![(None, key)]);
    }
    let path = raw
        .jwks_file
        .as_ref()
        .ok_or_else(|| ConfigError::new("jwt", "RS256/ES256 need public_key_file or jwks_file"))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("jwt.jwks_file", format!("cannot read {path}: {e}")))?;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
        .map_err(|e| ConfigError::new("jwt.jwks_file", format!("not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        check_rsa_size(&key).map_err(|m| {
            let kid = jwk.common.key_id.as_deref().unwrap_or("(no kid)");
            ConfigError::new("jwt.jwks_file", format!("key {kid}: {m}"))
        })?;
        keys.push((jwk.common.key_id.clone(), key));
    }
    if keys.is_empty() {
        return Err(ConfigError::new(
            "jwt.jwks_file",
            "no usable keys in the JWKS document",
        ));
    }
    Ok(keys)
}

/// Smallest RSA modulus accepted for JWT verification keys (NIST SP 800-131A, RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;

/// Refuses an RSA key shorter than [`MIN_RSA_BITS`]; other key types pass. A key whose size
/// cannot be read is refused too, rather than trusted.
fn check_rsa_size(key: &DecodingKey) -> Result<(), String> {
    use jsonwebtoken::DecodingKeyKind;
    use pkcs1::der::Decode;
    if key.family() != jsonwebtoken::AlgorithmFamily::Rsa {
        return Ok(());
    }
    let bits = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, .. } => bit_length(n),
        DecodingKeyKind::SecretOrDer(der) => match pkcs1::RsaPublicKey::from_der(der) {
            Ok(k) => bit_length(k.modulus.as_bytes()),
            Err(e) => return Err(format!("cannot read the RSA key's size: {e}")),
        },
    };
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key of {bits} bits is too short; at least {MIN_RSA_BITS} bits are required"
        ));
    }
    Ok(())
}

/// Bits of a big-endian unsigned integer.
fn bit_length(be: &[u8]) -> usize {
    let digits = be.iter().skip_while(|b| **b == 0).collect::<Vec<_>>();
    match digits.first() {
        Some(first) => (digits.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}

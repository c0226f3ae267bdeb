//! Configuration: the TOML schema (`raw`), units (`units`), secrets and JWT keys (`secrets`), and
//! validation into the runtime model below. Every error names the key's path, so
//! `homeport serve` can exit with one clear line on a bad file.

mod raw;
mod residency;
mod secrets;
pub mod units;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use secrets::JwtConfig;

use crate::types::RegionName;
use raw::{RawConfig, RawEndpoint};

/// A configuration mistake, with the path of the offending key.
#[derive(Debug, thiserror::Error)]
#[error("config error at `{path}`: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `pg.max_prepared_statements` when not set.
pub const DEFAULT_MAX_PREPARED: usize = 200;
/// `pg.max_batch_bytes` when not set.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 64 << 20;
/// `pg.optimistic_replay_bytes` when not set.
pub const DEFAULT_OPTIMISTIC_REPLAY_BYTES: usize = 1 << 20;
/// `postgres.idle_timeout` when not set.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// `postgres.max_lifetime` when not set.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// The validated configuration of one sidecar.
#[derive(Debug, Clone)]
pub struct Config {
    pub region: RegionName,
    pub http: HttpConfig,
    /// The operations listener: `/healthz`, `/readyz`, `/metrics` only.
    pub ops: OpsConfig,
    /// The PostgreSQL wire-protocol listener; absent when `[pg]` is not configured.
    pub pg: Option<PgConfig>,
    pub postgres: PostgresConfig,
    pub probe: ProbeConfig,
    pub routing: RoutingConfig,
    pub shards: Vec<ShardConfig>,
    pub directory: DirectoryConfig,
    pub redis: Option<RedisConfig>,
    /// Consistency tokens; absent when `[consistency]` is not configured.
    pub consistency: Option<ConsistencyConfig>,
    pub idempotency: IdempotencyConfig,
    pub shutdown_grace: Duration,
    /// Resident shards, their policies, and every region's public URL.
    pub residency: crate::residency::Residency,
}

#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// A write without an `Idempotency-Key` is refused (400).
    pub require: bool,
    /// How long a completed key is remembered.
    pub ttl: Duration,
    /// How long the regional in-flight lock in Redis lives if its holder never releases it.
    pub lock_ttl: Duration,
    pub cleanup_interval: Duration,
    /// Expired records deleted per statement, so cleanup never holds many row locks.
    pub cleanup_batch: u32,
}

#[derive(Debug, Clone)]
pub struct ConsistencyConfig {
    pub keys: crate::consistency::token::Keys,
    /// How long a read with a token waits for a replica to catch up before falling back.
    pub max_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub max_body: usize,
    pub auth: AuthConfig,
    pub public_url: Option<String>,
    pub header_timeout: Duration,
    /// Rows one statement's result may have over HTTP; past it the request fails (422).
    pub max_result_rows: u64,
    /// Bytes of JSON one response may have; past it the request fails (422).
    pub max_result_bytes: usize,
    /// Bytes of results all HTTP requests together may hold in memory; past it, 503.
    pub result_budget: usize,
}

/// The operations listener. It serves no data and knows no identity, so it is the one listener
/// that may face the pod network (kubelet probes, Prometheus).
#[derive(Debug, Clone)]
pub struct OpsConfig {
    pub listen: SocketAddr,
}

/// Defaults of the HTTP result limits; docs/http.md derives the chart's memory from them.
pub const DEFAULT_MAX_RESULT_ROWS: u64 = 100_000;
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 16 << 20;
pub const DEFAULT_RESULT_BUDGET: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct PgConfig {
    pub listen: SocketAddr,
    /// Client sessions accepted at once; more are refused with SQLSTATE 53300.
    pub max_client_conn: usize,
    /// A client must finish startup, TLS and authentication within this, or it is closed.
    pub login_timeout: Duration,
    /// Server connections per endpoint for the wire front end.
    pub pool_size: usize,
    /// Prepared statements homeport keeps per server connection; the least recently used one
    /// is closed past this.
    pub max_prepared_statements: usize,
    /// Bytes of extended-protocol messages a client may send before a Sync (54000 past it).
    pub max_batch_bytes: usize,
    /// Plain `BEGIN` transactions start on the nearest read copy and move to the primary on
    /// their first write (`pg.optimistic_transactions = "on"`).
    pub optimistic_transactions: bool,
    /// Bytes of client messages an optimistic transaction keeps for its replay; past them it
    /// is promoted at once.
    pub optimistic_replay_bytes: usize,
    pub auth: PgAuth,
    pub tls: Option<PgTlsConfig>,
    /// Database names a client may give at startup -> the server database (all shards use it);
    /// any other name gets `3D000`, as from PostgreSQL.
    pub databases: BTreeMap<String, String>,
    /// Role names a client may log in as: the users homeport logs in to the servers as (trust),
    /// or `pg.users` (SCRAM); any other gets `28000`.
    pub roles: BTreeSet<String>,
}

/// TLS towards wire clients.
#[derive(Debug, Clone)]
pub struct PgTlsConfig {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    /// Refuse clients that do not ask for TLS.
    pub required: bool,
}

/// How wire clients authenticate to homeport.
#[derive(Clone)]
pub enum PgAuth {
    /// Any client that reaches the (loopback) listener is let in.
    Trust,
    /// SCRAM-SHA-256 against these users' passwords (from files or the environment).
    ScramSha256(Vec<(String, String)>),
}

impl std::fmt::Debug for PgAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgAuth::Trust => f.write_str("Trust"),
            PgAuth::ScramSha256(users) => write!(
                f,
                "ScramSha256({} user(s), passwords redacted)",
                users.len()
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// Identity from the `Homeport-User` header: only the pod's own containers reach localhost.
    TrustedHeader,
    Jwt(Box<JwtConfig>),
}

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub password: Option<String>,
    /// With `sslmode = "verify-full"`: the trusted authorities; every server connection then
    /// uses TLS, and the server's certificate must chain to one of them and name its host.
    pub tls_roots: Option<std::sync::Arc<rustls::RootCertStore>>,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    pub acquire_timeout: Duration,
    pub pool_size: usize,
    /// Server connections idle longer than this are closed (both front ends' pools).
    pub idle_timeout: Duration,
    /// Server connections older than this are closed when they next come back idle.
    pub max_lifetime: Duration,
    /// Functions declared free of session state (`name` or `schema.name`, lowercased): calling
    /// them does not pin a wire session.
    pub stateless_functions: std::collections::HashSet<String>,
    /// `SET LOCAL <identity_setting> = <user>` opens every transaction homeport runs for a user.
    pub identity_setting: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes before an endpoint is marked down.
    pub fall: u32,
    /// Consecutive good probes before a down endpoint is marked up again.
    pub rise: u32,
    /// One sidecar per region probes and publishes through Redis; the others read
    /// (`topology::share`). Off without `[redis]`.
    pub shared: bool,
    /// A published snapshot older than this is gone (its Redis TTL), and readers probe on their
    /// own again; also the publisher's lease.
    pub stale_after: Duration,
    /// How often a reader measures its own round trip to each endpoint.
    pub rtt_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryReads {
    /// The primary is a normal read candidate in the design's nearest-copy order.
    Nearest,
    /// Reads go to the primary only when no replica can serve them.
    LastResort,
}

#[derive(Debug, Clone)]
pub struct RoutingConfig {
    pub primary_reads: PrimaryReads,
    /// Replicas whose smoothed probe RTT is above this are tried after every other copy.
    pub slow_rtt: Duration,
    /// Replicas whose measured lag is above this are tried after every other copy.
    pub max_lag: Duration,
}

/// One PostgreSQL server as configured.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// `host:port/dbname`, used in metrics and messages. Never contains a password.
    pub name: String,
    pub region: RegionName,
    pub pg: tokio_postgres::Config,
    /// `probe_url`: where the probe reaches the server itself when `url` (the data path) goes
    /// through a pooler, whose backends could be any server's. `None`: the probe uses `url`.
    pub probe_pg: Option<tokio_postgres::Config>,
    /// What sits between homeport and the server on `url`.
    pub pooler: Pooler,
}

/// `pooler` on an endpoint: whether a server connection homeport opens on `url` stays one
/// server session, or is a pooler's client whose transactions may each run on another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// `url` is the server (or a session-mode pooler): server state lasts as long as the
    /// connection, so homeport keeps prepared statements and settings on it.
    #[default]
    None,
    /// `url` is a pooler in transaction mode: nothing homeport leaves on a server may outlive
    /// the server transaction (docs/fleet.md, "Behind a central pooler").
    Transaction,
}

impl Pooler {
    fn parse(s: &str) -> Result<Pooler, String> {
        match s {
            "none" => Ok(Pooler::None),
            "transaction" => Ok(Pooler::Transaction),
            "session" => Err(
                "a session-mode pooler keeps one server per connection: write \"none\" (the default); \"transaction\" is for transaction mode"
                    .into(),
            ),
            "statement" => Err(
                "statement mode allows no transactions; homeport needs \"transaction\" mode at least"
                    .into(),
            ),
            other => Err(format!(
                "unknown pooler mode {other:?}: expected \"none\" or \"transaction\""
            )),
        }
    }

    pub fn is_transaction(self) -> bool {
        self == Pooler::Transaction
    }
}

#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub name: RegionName,
    pub primaries: Vec<EndpointConfig>,
    pub replicas: Vec<EndpointConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Reject,
    Hash,
    Local,
}

#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// The directory's copies, routed like a shard's.
    pub shard: ShardConfig,
    /// Fully qualified table name, validated as `schema.table` identifiers.
    pub table: String,
    pub cache_ttl: Duration,
    pub cache_capacity: usize,
    pub placement: Placement,
    /// `[placement.countries]`: the home regions a country allows; an unlisted country allows
    /// every region.
    pub countries: std::collections::BTreeMap<String, Vec<RegionName>>,
}

#[derive(Clone)]
pub struct RedisConfig {
    pub url: String,
    pub password: Option<String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    /// Redacts the password, also one written into the URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match self.url.split_once('@') {
            Some((_, host)) => format!("redis://(credentials redacted)@{host}"),
            None => self.url.clone(),
        };
        f.debug_struct("RedisConfig")
            .field("url", &url)
            .field("password", &self.password.as_ref().map(|_| "(redacted)"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read file: {e}"))
        })?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::new("(file)", one_line(&e.to_string())))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(
                if path == "." { "(root)".into() } else { path },
                one_line(&e.inner().to_string()),
            )
        })?;
        validate(raw)
    }

    /// Every region named anywhere in the topology.
    pub fn regions(&self) -> BTreeSet<RegionName> {
        let mut out = BTreeSet::new();
        for shard in self
            .shards
            .iter()
            .chain(std::iter::once(&self.directory.shard))
        {
            for e in shard.primaries.iter().chain(&shard.replicas) {
                out.insert(e.region.clone());
            }
        }
        out.extend(self.shards.iter().map(|s| s.name.clone()));
        out
    }

    pub fn shard(&self, name: &RegionName) -> Option<&ShardConfig> {
        self.shards.iter().find(|s| &s.name == name)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let region = RegionName::parse(&raw.region).map_err(|m| ConfigError::new("region", m))?;
    let pg_defaults = secrets::pg_defaults(&raw.postgres)?;

    let mut shards = Vec::new();
    let mut shard_residency = Vec::new();
    for (name, shard) in raw.shards {
        let path = format!("shards.{name}");
        let shard_name = RegionName::parse(&name).map_err(|m| ConfigError::new(&path, m))?;
        shard_residency.push(residency::ShardSettings {
            name: shard_name.clone(),
            residency: shard.residency,
            policy: shard.residency_policy,
        });
        let primaries = endpoints(
            &path,
            "primary",
            shard.primary.into_vec(),
            Some(&shard_name),
            &pg_defaults,
        )?;
        let replicas = endpoints(&path, "replicas", shard.replicas, None, &pg_defaults)?;
        shards.push(ShardConfig {
            name: shard_name,
            primaries,
            replicas,
        });
    }
    if shards.is_empty() {
        return Err(ConfigError::new("shards", "at least one shard is required"));
    }

    let dir = raw.directory;
    let dir_primaries = endpoints(
        "directory",
        "primary",
        dir.primary.into_vec(),
        None,
        &pg_defaults,
    )?;
    let dir_replicas = endpoints("directory", "replicas", dir.replicas, None, &pg_defaults)?;
    let table = dir.table.unwrap_or_else(|| "homeport.directory".into());
    if !is_qualified_identifier(&table) {
        return Err(ConfigError::new(
            "directory.table",
            format!(
                "{table:?} is not a plain `schema.table` name (lowercase letters, digits, '_')"
            ),
        ));
    }
    let placement = match dir.placement.as_deref().unwrap_or("reject") {
        "reject" => Placement::Reject,
        "hash" => Placement::Hash,
        "local" => Placement::Local,
        other => {
            return Err(ConfigError::new(
                "directory.placement",
                format!("unknown policy {other:?}; use \"reject\", \"hash\" or \"local\""),
            ));
        }
    };
    let shard_names: Vec<RegionName> = shards.iter().map(|s| s.name.clone()).collect();
    let countries = residency::countries(raw.placement, &shard_names)?;
    let residency = residency::build(
        raw.residency,
        shard_residency,
        raw.regions,
        &region,
        raw.http.public_url.as_deref(),
    )?;
    let directory = DirectoryConfig {
        shard: ShardConfig {
            name: RegionName::parse("directory").expect("valid name"),
            primaries: dir_primaries,
            replicas: dir_replicas,
        },
        table,
        cache_ttl: dir
            .cache_ttl
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(300)),
        cache_capacity: dir.cache_capacity.unwrap_or(100_000),
        placement,
        countries,
    };

    let http = raw.http;
    let listen_text = http.listen.unwrap_or_else(|| "127.0.0.1:7400".into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError::new(
            "http.listen",
            format!("{listen_text:?} is not an address like \"127.0.0.1:7400\""),
        )
    })?;
    let max_body = http.max_body.map(|b| b.0).unwrap_or(1 << 20);
    let max_body = usize::try_from(max_body)
        .ok()
        .filter(|b| *b > 0)
        .ok_or_else(|| {
            ConfigError::new(
                "http.max_body",
                "must be between 1 byte and the address space",
            )
        })?;
    let max_result_rows = http.max_result_rows.unwrap_or(DEFAULT_MAX_RESULT_ROWS);
    if max_result_rows == 0 {
        return Err(ConfigError::new(
            "http.max_result_rows",
            "must be at least 1",
        ));
    }
    let max_result_bytes = positive_size(
        "http.max_result_bytes",
        http.max_result_bytes,
        DEFAULT_MAX_RESULT_BYTES,
    )?;
    let result_budget = positive_size(
        "http.result_budget",
        http.result_budget,
        DEFAULT_RESULT_BUDGET,
    )?;
    let auth = match http.auth.as_deref().unwrap_or("trusted-header") {
        "trusted-header" => AuthConfig::TrustedHeader,
        "jwt" => {
            let jwt = raw.jwt.as_ref().ok_or_else(|| {
                ConfigError::new("jwt", "http.auth = \"jwt\" needs a [jwt] table")
            })?;
            AuthConfig::Jwt(Box::new(secrets::jwt_config(jwt)?))
        }
        other => {
            return Err(ConfigError::new(
                "http.auth",
                format!("unknown mode {other:?}; use \"trusted-header\" or \"jwt\""),
            ));
        }
    };

    let allow_network = http.allow_trusted_header_on_network.unwrap_or(false);
    if matches!(auth, AuthConfig::TrustedHeader) && !listen.ip().is_loopback() && !allow_network {
        return Err(ConfigError::new(
            "http.listen",
            format!(
                "http.listen = \"{listen}\" is not loopback and http.auth = \"trusted-header\" lets \
                 anyone who reaches it act as any user; listen on 127.0.0.1, use http.auth = \"jwt\", \
                 or set http.allow_trusted_header_on_network = true"
            ),
        ));
    }
    let ops = ops_config(raw.ops, listen)?;

    let probe = ProbeConfig {
        interval: raw
            .probe
            .interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_millis(500)),
        timeout: raw
            .probe
            .timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(1)),
        fall: raw.probe.fall.unwrap_or(2).max(1),
        rise: raw.probe.rise.unwrap_or(1).max(1),
        shared: raw.probe.shared.unwrap_or(true) && raw.redis.is_some(),
        stale_after: Duration::ZERO,
        rtt_interval: raw
            .probe
            .rtt_interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30)),
    };
    let probe = ProbeConfig {
        // Several missed publications, and never under 2 s: a publisher's GC-free hiccup or a
        // slow Redis round trip must not send the whole fleet back to probing.
        stale_after: raw
            .probe
            .stale_after
            .map(|d| d.0)
            .unwrap_or((probe.interval * 5).max(Duration::from_secs(2))),
        ..probe
    };
    if probe.stale_after < probe.interval * 2 {
        return Err(ConfigError::new(
            "probe.stale_after",
            "must be at least twice probe.interval (a publisher publishes once per interval)",
        ));
    }
    if probe.interval < Duration::from_millis(1) {
        return Err(ConfigError::new("probe.interval", "must be at least 1ms"));
    }
    let primary_reads = match raw.routing.primary_reads.as_deref().unwrap_or("nearest") {
        "nearest" => PrimaryReads::Nearest,
        "last-resort" => PrimaryReads::LastResort,
        other => {
            return Err(ConfigError::new(
                "routing.primary_reads",
                format!("unknown value {other:?}; use \"nearest\" or \"last-resort\""),
            ));
        }
    };
    let redis = match raw.redis {
        None => None,
        Some(r) => Some(secrets::redis_config(r)?),
    };

    let pg = match raw.pg {
        None => None,
        Some(p) => {
            let text = p.listen.unwrap_or_else(|| "127.0.0.1:7401".into());
            let listen: SocketAddr = text.parse().map_err(|_| {
                ConfigError::new(
                    "pg.listen",
                    format!("{text:?} is not an address like \"127.0.0.1:7401\""),
                )
            })?;
            let max_client_conn = p.max_client_conn.unwrap_or(1000);
            if max_client_conn == 0 {
                return Err(ConfigError::new("pg.max_client_conn", "must be at least 1"));
            }
            let pool_size = p.pool_size.unwrap_or(20);
            if pool_size == 0 || pool_size > 10_000 {
                return Err(ConfigError::new(
                    "pg.pool_size",
                    "must be between 1 and 10000",
                ));
            }
            let auth = match p.auth.as_deref().unwrap_or("trust") {
                "trust" => PgAuth::Trust,
                "scram-sha-256" => {
                    if p.users.is_empty() {
                        return Err(ConfigError::new(
                            "pg.users",
                            "scram-sha-256 needs at least one [[pg.users]] entry",
                        ));
                    }
                    let mut users = Vec::new();
                    for (i, u) in p.users.iter().enumerate() {
                        let path = format!("pg.users[{i}]");
                        let password = secrets::secret(
                            &path,
                            u.password_file.as_deref(),
                            u.password_env.as_deref(),
                        )?
                        .ok_or_else(|| {
                            ConfigError::new(&path, "needs password_file or password_env")
                        })?;
                        users.push((u.name.clone(), password));
                    }
                    PgAuth::ScramSha256(users)
                }
                other => {
                    return Err(ConfigError::new(
                        "pg.auth",
                        format!("unknown method {other:?}; use \"trust\" or \"scram-sha-256\""),
                    ));
                }
            };
            let tls = match (p.tls_cert_file, p.tls_key_file) {
                (Some(cert), Some(key)) => Some(PgTlsConfig {
                    cert_file: cert.into(),
                    key_file: key.into(),
                    required: p.tls_required.unwrap_or(false),
                }),
                (None, None) if p.tls_required == Some(true) => {
                    return Err(ConfigError::new(
                        "pg.tls_required",
                        "needs pg.tls_cert_file and pg.tls_key_file",
                    ));
                }
                (None, None) => None,
                _ => {
                    return Err(ConfigError::new(
                        "pg.tls_cert_file",
                        "set both tls_cert_file and tls_key_file, or neither",
                    ));
                }
            };
            Some(PgConfig {
                listen,
                max_client_conn,
                login_timeout: p.login_timeout.map_or(Duration::from_secs(10), |d| d.0),
                pool_size,
                max_prepared_statements: match p
                    .max_prepared_statements
                    .unwrap_or(DEFAULT_MAX_PREPARED)
                {
                    0 => {
                        return Err(ConfigError::new(
                            "pg.max_prepared_statements",
                            "must be at least 1",
                        ));
                    }
                    n => n,
                },
                max_batch_bytes: p
                    .max_batch_bytes
                    .map_or(DEFAULT_MAX_BATCH_BYTES, |b| b.0 as usize),
                optimistic_transactions: match p.optimistic_transactions.as_deref() {
                    None | Some("on") => true,
                    Some("off") => false,
                    Some(other) => {
                        return Err(ConfigError::new(
                            "pg.optimistic_transactions",
                            format!("{other:?} is not \"on\" or \"off\""),
                        ));
                    }
                },
                optimistic_replay_bytes: p
                    .optimistic_replay_bytes
                    .map_or(DEFAULT_OPTIMISTIC_REPLAY_BYTES, |b| b.0 as usize),
                databases: client_databases(p.databases, &shards)?,
                roles: login_roles(&auth, &shards),
                auth,
                tls,
            })
        }
    };
    let consistency = match raw.consistency {
        None => None,
        Some(c) => {
            let key = |file: Option<&str>,
                       env: Option<&str>,
                       path: &str|
             -> Result<Option<Vec<u8>>, ConfigError> {
                let k = secrets::secret(path, file, env)?.map(String::into_bytes);
                if k.as_ref().is_some_and(|k| k.len() < 32) {
                    return Err(ConfigError::new(path, "the key must be at least 32 bytes"));
                }
                Ok(k)
            };
            let current = key(
                c.key_file.as_deref(),
                c.key_env.as_deref(),
                "consistency.key",
            )?
            .ok_or_else(|| ConfigError::new("consistency", "needs key_file or key_env"))?;
            let previous = key(
                c.previous_key_file.as_deref(),
                c.previous_key_env.as_deref(),
                "consistency.previous_key",
            )?;
            Some(ConsistencyConfig {
                keys: crate::consistency::token::Keys { current, previous },
                max_wait: c.max_wait.map(|d| d.0).unwrap_or(Duration::from_millis(50)),
            })
        }
    };
    let idem = raw.idempotency;
    let idempotency = IdempotencyConfig {
        require: idem.require.unwrap_or(false),
        ttl: idem.ttl.map_or(Duration::from_secs(24 * 3600), |d| d.0),
        lock_ttl: idem.lock_ttl.map_or(Duration::from_secs(30), |d| d.0),
        cleanup_interval: idem
            .cleanup_interval
            .map_or(Duration::from_secs(60), |d| d.0),
        cleanup_batch: idem.cleanup_batch.unwrap_or(1000),
    };
    if idempotency.ttl < Duration::from_secs(1) {
        return Err(ConfigError::new("idempotency.ttl", "must be at least 1s"));
    }
    if idempotency.lock_ttl < Duration::from_millis(100) {
        return Err(ConfigError::new(
            "idempotency.lock_ttl",
            "must be at least 100ms",
        ));
    }
    if idempotency.cleanup_batch == 0 {
        return Err(ConfigError::new(
            "idempotency.cleanup_batch",
            "must be at least 1",
        ));
    }
    let config = Config {
        region,
        consistency,
        idempotency,
        pg,
        ops,
        http: HttpConfig {
            listen,
            max_body,
            auth,
            public_url: http.public_url,
            header_timeout: http
                .header_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(10)),
            max_result_rows,
            max_result_bytes,
            result_budget,
        },
        postgres: pg_defaults.settings,
        probe,
        routing: RoutingConfig {
            primary_reads,
            slow_rtt: raw
                .routing
                .slow_rtt
                .map_or(Duration::from_millis(250), |d| d.0),
            max_lag: raw.routing.max_lag.map_or(Duration::from_secs(30), |d| d.0),
        },
        shards,
        directory,
        redis,
        shutdown_grace: raw
            .shutdown_grace
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(20)),
        residency,
    };
    check_regions(&config)?;
    residency::check(&config)?;
    check_listeners(&config)?;
    Ok(config)
}

/// `[ops] listen`, by default loopback port 7402: next to the data API's 7400 and the wire
/// endpoint's 7401. The chart sets it to the pod IP.
fn ops_config(raw: raw::RawOps, http: SocketAddr) -> Result<OpsConfig, ConfigError> {
    let text = raw.listen.unwrap_or_else(|| "127.0.0.1:7402".into());
    let listen: SocketAddr = text.parse().map_err(|_| {
        ConfigError::new(
            "ops.listen",
            format!("{text:?} is not an address like \"0.0.0.0:7402\""),
        )
    })?;
    if listen == http && listen.port() != 0 {
        return Err(ConfigError::new(
            "ops.listen",
            format!("{listen} is also http.listen; the two listeners need different ports"),
        ));
    }
    Ok(OpsConfig { listen })
}

/// No two listeners on the same address (port 0 picks a free port each time, so it never clashes).
fn check_listeners(config: &Config) -> Result<(), ConfigError> {
    if let Some(pg) = &config.pg
        && pg.listen.port() != 0
    {
        for (other, path) in [
            (config.http.listen, "http.listen"),
            (config.ops.listen, "ops.listen"),
        ] {
            if other == pg.listen {
                return Err(ConfigError::new(
                    "pg.listen",
                    format!("{other} is also {path}; every listener needs its own port"),
                ));
            }
        }
    }
    Ok(())
}

/// The sidecar's own region and every shard must be known regions; a shard's primary
/// candidates default to the shard's region.
fn check_regions(config: &Config) -> Result<(), ConfigError> {
    let shard_names: BTreeSet<&RegionName> = config.shards.iter().map(|s| &s.name).collect();
    let regions = config.regions();
    if !regions.contains(&config.region) {
        return Err(ConfigError::new(
            "region",
            format!("{} is not a region of any shard or replica", config.region),
        ));
    }
    for shard in &config.shards {
        for (i, r) in shard.replicas.iter().enumerate() {
            if !shard_names.contains(&r.region) && r.region != config.region {
                return Err(ConfigError::new(
                    format!("shards.{}.replicas[{i}].region", shard.name),
                    format!(
                        "{} is not a known region (shards: {})",
                        r.region,
                        join(&shard_names)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn join(names: &BTreeSet<&RegionName>) -> String {
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn endpoints(
    parent: &str,
    key: &str,
    raw: Vec<RawEndpoint>,
    default_region: Option<&RegionName>,
    defaults: &secrets::PgDefaults,
) -> Result<Vec<EndpointConfig>, ConfigError> {
    if key == "primary" && raw.is_empty() {
        return Err(ConfigError::new(
            format!("{parent}.{key}"),
            "at least one primary candidate is required",
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, e)| {
            let path = format!("{parent}.{key}[{i}]");
            let (url, region, probe_url, pooler) = match e {
                RawEndpoint::Url(url) => (url, None, None, None),
                RawEndpoint::Full(t) => (t.url, t.region, t.probe_url, t.pooler),
            };
            let pooler = pooler
                .as_deref()
                .map(Pooler::parse)
                .transpose()
                .map_err(|m| ConfigError::new(format!("{path}.pooler"), m))?
                .unwrap_or_default();
            let region = match (region, default_region) {
                (Some(r), _) => RegionName::parse(&r)
                    .map_err(|m| ConfigError::new(format!("{path}.region"), m))?,
                (None, Some(d)) => d.clone(),
                (None, None) => {
                    return Err(ConfigError::new(
                        &path,
                        "needs a region: write { url = \"postgresql://...\", region = \"eu\" }",
                    ));
                }
            };
            let pg = defaults
                .connection(&url)
                .map_err(|m| ConfigError::new(&path, m))?;
            let probe_pg = probe_url
                .map(|u| defaults.connection(&u))
                .transpose()
                .map_err(|m| ConfigError::new(format!("{path}.probe_url"), m))?;
            Ok(EndpointConfig {
                name: endpoint_name(&pg),
                region,
                pg,
                probe_pg,
                pooler,
            })
        })
        .collect()
}

/// `pg.databases`, checked against the database the shards' servers serve; by default that
/// database under its own name.
fn client_databases(
    raw: BTreeMap<String, String>,
    shards: &[ShardConfig],
) -> Result<BTreeMap<String, String>, ConfigError> {
    let served: BTreeSet<String> = shard_endpoints(shards)
        .map(|e| e.pg.get_dbname().unwrap_or("postgres").to_string())
        .collect();
    if raw.is_empty() {
        return Ok(served.into_iter().map(|d| (d.clone(), d)).collect());
    }
    for (name, server) in &raw {
        if !served.contains(server) {
            let list: Vec<&str> = served.iter().map(String::as_str).collect();
            return Err(ConfigError::new(
                format!("pg.databases.{name}"),
                format!(
                    "{server:?} is not a database homeport's servers are configured with ({})",
                    list.join(", ")
                ),
            ));
        }
    }
    Ok(raw)
}

/// The role names a wire client may log in as (see [`PgConfig::roles`]).
fn login_roles(auth: &PgAuth, shards: &[ShardConfig]) -> BTreeSet<String> {
    match auth {
        PgAuth::ScramSha256(users) => users.iter().map(|(u, _)| u.clone()).collect(),
        PgAuth::Trust => shard_endpoints(shards)
            .map(|e| e.pg.get_user().unwrap_or("postgres").to_string())
            .collect(),
    }
}

fn shard_endpoints(shards: &[ShardConfig]) -> impl Iterator<Item = &EndpointConfig> {
    shards
        .iter()
        .flat_map(|s| s.primaries.iter().chain(s.replicas.iter()))
}

/// `host:port/dbname` of a connection config, for labels and messages.
pub fn endpoint_name(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", pg.get_dbname().unwrap_or("postgres"))
}

fn is_qualified_identifier(s: &str) -> bool {
    let ident = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    matches!(s.split_once('.'), Some((schema, table)) if ident(schema) && ident(table))
}

/// A size setting that must be at least one byte and fit in memory.
fn positive_size(
    path: &str,
    value: Option<units::ByteSize>,
    default: u64,
) -> Result<usize, ConfigError> {
    usize::try_from(value.map_or(default, |b| b.0))
        .ok()
        .filter(|b| *b > 0)
        .ok_or_else(|| ConfigError::new(path, "must be between 1 byte and the address space"))
}

#[cfg(test)]
mod tests;

//! Configuration: the TOML schema (`raw`), units (`units`), secrets and JWT keys (`secrets`), and
//! validation into the runtime model below. Every error names the key's path, so
//! `homeport serve` can exit with one clear line on a bad file.

mod raw;
mod residency;
mod secrets;
pub mod units;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use secrets::JwtConfig;

use crate::types::{RegionName, ShardId};
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
/// `pg.login_timeout` when not set; also the bound on a refused client's startup.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// `consistency.max_wait` when not set (also when no `[consistency]` section is configured).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(50);

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
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
    pub name: ShardId,
    /// Where the shard's primary is located: its users' home region.
    pub region: RegionName,
    /// Whether placement may put new users here; a closed shard keeps serving its users.
    pub accepting: bool,
    /// Relative share of its region's new users under hash placement.
    pub weight: u32,
    pub primaries: Vec<EndpointConfig>,
    pub replicas: Vec<EndpointConfig>,
}

/// How placement picks one of a region's shards for a new user (`placement.within_region`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WithinRegion {
    /// Weighted rendezvous hashing of the user id: stable, no coordination.
    #[default]
    Hash,
    /// The accepting shard with the fewest users in the directory (fills a new cell).
    LeastUsers,
}

/// `directory.placement`: where an unknown user's home is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
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
    /// `[placement] within_region`: how a shard of the chosen region is picked.
    pub within_region: WithinRegion,
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
        validate::validate(raw)
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
        out.extend(self.shards.iter().map(|s| s.region.clone()));
        out
    }

    /// The regions that own at least one shard: where users can be homed.
    pub fn home_regions(&self) -> Vec<RegionName> {
        let set: BTreeSet<RegionName> = self.shards.iter().map(|s| s.region.clone()).collect();
        set.into_iter().collect()
    }

    pub fn shard(&self, name: &ShardId) -> Option<&ShardConfig> {
        self.shards.iter().find(|s| &s.name == name)
    }
}

/// The name the directory's copies carry in the topology (`shard="directory"` in metrics).
pub fn directory_shard() -> ShardId {
    ShardId::parse("directory").expect("valid name")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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
    let shard_names: BTreeSet<&RegionName> = config.shards.iter().map(|s| &s.region).collect();
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

//! The TOML schema exactly as users write it. Every table denies unknown keys, so a typo is an
//! error with the key's path rather than a silently ignored setting. Values are checked and turned
//! into the runtime model in `config::validate`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::units::{ByteSize, Dur};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub region: String,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub ops: RawOps,
    pub jwt: Option<RawJwt>,
    pub pg: Option<RawPg>,
    #[serde(default)]
    pub postgres: RawPostgres,
    #[serde(default)]
    pub probe: RawProbe,
    #[serde(default)]
    pub routing: RawRouting,
    pub shards: BTreeMap<String, RawShard>,
    pub directory: RawDirectory,
    pub redis: Option<RawRedis>,
    pub consistency: Option<RawConsistency>,
    #[serde(default)]
    pub idempotency: RawIdempotency,
    pub shutdown_grace: Option<Dur>,
    /// `[residency] policy`: what a sidecar outside a resident shard's regions does.
    pub residency: Option<RawResidency>,
    /// `[regions.<name>]`: facts about every region, such as its public URL.
    #[serde(default)]
    pub regions: BTreeMap<String, RawRegion>,
    /// `[placement.countries]`: the home regions each country allows.
    #[serde(default)]
    pub placement: RawPlacement,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResidency {
    pub policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub public_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlacement {
    #[serde(default)]
    pub countries: BTreeMap<String, Vec<String>>,
    /// How a region's shard is picked for a new user: `hash` (default) or `least-users`.
    pub within_region: Option<super::WithinRegion>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotency {
    pub require: Option<bool>,
    pub ttl: Option<Dur>,
    pub lock_ttl: Option<Dur>,
    pub cleanup_interval: Option<Dur>,
    pub cleanup_batch: Option<u32>,
}

/// `http.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawHttpAuth {
    TrustedHeader,
    Jwt,
}

/// `pg.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RawPgAuth {
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

/// A setting that is `"on"` or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn on(self) -> bool {
        self == OnOff::On
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
    pub max_body: Option<ByteSize>,
    pub auth: Option<RawHttpAuth>,
    pub public_url: Option<String>,
    pub header_timeout: Option<Dur>,
    pub allow_trusted_header_on_network: Option<bool>,
    pub max_result_rows: Option<u64>,
    pub max_result_bytes: Option<ByteSize>,
    pub result_budget: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOps {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPg {
    pub listen: Option<String>,
    pub auth: Option<RawPgAuth>,
    #[serde(default)]
    pub users: Vec<RawPgUser>,
    pub max_client_conn: Option<usize>,
    pub login_timeout: Option<Dur>,
    pub pool_size: Option<usize>,
    pub max_prepared_statements: Option<usize>,
    pub optimistic_transactions: Option<OnOff>,
    pub optimistic_replay_bytes: Option<super::units::ByteSize>,
    pub max_batch_bytes: Option<super::units::ByteSize>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub tls_required: Option<bool>,
    /// Database names clients may connect to -> the server database they mean (PgBouncer's
    /// `[databases]`); default: the servers' own database name.
    #[serde(default)]
    pub databases: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPgUser {
    pub name: String,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub algorithm: String,
    pub secret_file: Option<String>,
    pub secret_env: Option<String>,
    pub public_key_file: Option<String>,
    pub jwks_file: Option<String>,
    pub user_claim: Option<String>,
    pub region_claim: Option<String>,
    /// A claim naming the user's shard (cell), beside or instead of the region claim.
    pub shard_claim: Option<String>,
    /// A claim holding the user's country (ISO 3166-1 alpha-2), for placement by country.
    pub country_claim: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    pub user: Option<String>,
    pub dbname: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub application_name: Option<String>,
    pub connect_timeout: Option<Dur>,
    pub statement_timeout: Option<Dur>,
    pub acquire_timeout: Option<Dur>,
    pub pool_size: Option<usize>,
    pub idle_timeout: Option<Dur>,
    pub max_lifetime: Option<Dur>,
    #[serde(default)]
    pub stateless_functions: Vec<String>,
    pub identity_setting: Option<String>,
    /// `disable` (default) or `verify-full`.
    pub sslmode: Option<String>,
    /// PEM file of the certificate authorities that sign the servers' certificates.
    pub sslrootcert: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub fall: Option<u32>,
    pub rise: Option<u32>,
    /// Share probe results through the regional Redis (default: on when `[redis]` is set).
    pub shared: Option<bool>,
    pub stale_after: Option<Dur>,
    pub rtt_interval: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub primary_reads: Option<super::PrimaryReads>,
    pub slow_rtt: Option<Dur>,
    pub max_lag: Option<Dur>,
}

/// An endpoint is a connection URL, or a table when it needs more than a URL.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawEndpoint {
    Url(String),
    Full(RawEndpointTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpointTable {
    pub url: String,
    pub region: Option<String>,
    /// The server itself, for the probe, when `url` goes through a pooler.
    pub probe_url: Option<String>,
    /// `"transaction"`: `url` is a pooler in transaction mode (PgBouncer, RDS Proxy); `"none"`.
    pub pooler: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShard {
    /// The region the shard's primary is located in (default: the shard's own name).
    pub region: Option<String>,
    /// Whether placement may put new users here (default true); a closed shard keeps its users.
    pub accepting: Option<bool>,
    /// Relative share of its region's new users under hash placement (default 1).
    pub weight: Option<u32>,
    /// Primary candidates in order; the one whose probe says "not in recovery" takes writes.
    pub primary: OneOrMany,
    #[serde(default)]
    pub replicas: Vec<RawEndpoint>,
    /// The regions where this shard's data may be stored (default: every region).
    pub residency: Option<Vec<String>>,
    /// Overrides `[residency] policy` for this shard.
    pub residency_policy: Option<String>,
}

/// A list is tried first: serde would also read `["url1", "url2"]` as one endpoint table
/// (`url`, `region` from a sequence).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    Many(Vec<RawEndpoint>),
    One(RawEndpoint),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<RawEndpoint> {
        match self {
            OneOrMany::One(e) => vec![e],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectory {
    pub primary: OneOrMany,
    #[serde(default)]
    pub replicas: Vec<RawEndpoint>,
    pub table: Option<String>,
    pub cache_ttl: Option<Dur>,
    pub cache_capacity: Option<usize>,
    pub placement: Option<super::Placement>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsistency {
    pub key_file: Option<String>,
    pub key_env: Option<String>,
    pub previous_key_file: Option<String>,
    pub previous_key_env: Option<String>,
    pub max_wait: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: String,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    pub timeout: Option<Dur>,
}

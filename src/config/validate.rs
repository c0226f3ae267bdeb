//! Validation of the parsed TOML (`raw`) into the runtime model, one function per section. Every
//! default is a named `DEFAULT_*` constant (in `config/mod.rs` when code outside `config` uses it
//! too), and every error names the key's path.

use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{self, RawConfig, RawHttpAuth, RawPgAuth};
use super::*;

/// `directory.table` when not set.
const DEFAULT_DIRECTORY_TABLE: &str = "homeport.directory";
/// `directory.cache_ttl` when not set.
const DEFAULT_DIRECTORY_CACHE_TTL: Duration = Duration::from_secs(300);
/// `directory.cache_capacity` when not set.
const DEFAULT_DIRECTORY_CACHE_CAPACITY: usize = 100_000;
/// `http.listen` when not set.
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7400";
/// `http.max_body` when not set.
const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// `http.header_timeout` when not set.
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `probe.interval`, `probe.timeout`, `probe.fall`, `probe.rise`, `probe.rtt_interval`.
const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(500);
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_PROBE_FALL: u32 = 2;
const DEFAULT_PROBE_RISE: u32 = 1;
const DEFAULT_RTT_INTERVAL: Duration = Duration::from_secs(30);
/// `probe.stale_after` is never under this by default.
const MIN_DEFAULT_STALE_AFTER: Duration = Duration::from_secs(2);
/// `routing.slow_rtt`, `routing.max_lag` when not set.
const DEFAULT_SLOW_RTT: Duration = Duration::from_millis(250);
const DEFAULT_MAX_LAG: Duration = Duration::from_secs(30);
/// `pg.listen`, `pg.max_client_conn`, `pg.pool_size` when not set.
const DEFAULT_PG_LISTEN: &str = "127.0.0.1:7401";
const DEFAULT_MAX_CLIENT_CONN: usize = 1000;
const DEFAULT_PG_POOL_SIZE: usize = 20;
/// `idempotency.*` when not set.
const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);
const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_CLEANUP_BATCH: u32 = 1000;
/// `shutdown_grace` when not set.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let region = RegionName::parse(&raw.region).map_err(|m| ConfigError::new("region", m))?;
    let pg_defaults = secrets::pg_defaults(&raw.postgres)?;
    let (shards, shard_residency) = shards_config(raw.shards, &pg_defaults)?;
    let home_regions: Vec<RegionName> = shards
        .iter()
        .map(|s| s.region.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let within_region = raw.placement.within_region.unwrap_or_default();
    let countries = residency::countries(raw.placement, &home_regions)?;
    let directory = directory_config(raw.directory, countries, within_region, &pg_defaults)?;
    let residency = residency::build(
        raw.residency,
        shard_residency,
        raw.regions,
        &region,
        raw.http.public_url.as_deref(),
    )?;
    let http = http_config(raw.http, raw.jwt.as_ref())?;
    let ops = ops_config(raw.ops, http.listen)?;
    let probe = probe_config(&raw.probe, raw.redis.is_some())?;
    let redis = raw.redis.map(secrets::redis_config).transpose()?;
    let pg = raw.pg.map(|p| pg_config(p, &shards)).transpose()?;
    let consistency = raw.consistency.map(consistency_config).transpose()?;
    let config = Config {
        region,
        consistency,
        idempotency: idempotency_config(raw.idempotency)?,
        pg,
        ops,
        http,
        postgres: pg_defaults.settings,
        probe,
        routing: routing_config(raw.routing),
        shards,
        directory,
        redis,
        shutdown_grace: raw.shutdown_grace.map_or(DEFAULT_SHUTDOWN_GRACE, |d| d.0),
        residency,
    };
    check_regions(&config)?;
    residency::check(&config)?;
    check_listeners(&config)?;
    Ok(config)
}

/// `[shards.<name>]`: each shard's primary (candidates) and replicas, and its residency settings.
fn shards_config(
    raw: std::collections::BTreeMap<String, raw::RawShard>,
    pg_defaults: &secrets::PgDefaults,
) -> Result<(Vec<ShardConfig>, Vec<residency::ShardSettings>), ConfigError> {
    let mut shards = Vec::new();
    let mut shard_residency = Vec::new();
    for (name, shard) in raw {
        let path = format!("shards.{name}");
        let shard_name = ShardId::parse(&name).map_err(|m| ConfigError::new(&path, m))?;
        if shard_name == directory_shard() {
            return Err(ConfigError::new(
                &path,
                "\"directory\" names the directory's copies; choose another shard name",
            ));
        }
        let shard_region = RegionName::parse(shard.region.as_deref().unwrap_or(&name))
            .map_err(|m| ConfigError::new(format!("{path}.region"), m))?;
        if shard.weight == Some(0) {
            return Err(ConfigError::new(
                format!("{path}.weight"),
                "must be at least 1; close a shard to new users with accepting = false",
            ));
        }
        shard_residency.push(residency::ShardSettings {
            name: shard_name.clone(),
            region: shard_region.clone(),
            residency: shard.residency,
            policy: shard.residency_policy,
        });
        let primaries = endpoints(
            &path,
            "primary",
            shard.primary.into_vec(),
            Some(&shard_region),
            pg_defaults,
        )?;
        let replicas = endpoints(&path, "replicas", shard.replicas, None, pg_defaults)?;
        shards.push(ShardConfig {
            name: shard_name,
            region: shard_region,
            accepting: shard.accepting.unwrap_or(true),
            weight: shard.weight.unwrap_or(1),
            primaries,
            replicas,
        });
    }
    if shards.is_empty() {
        return Err(ConfigError::new("shards", "at least one shard is required"));
    }
    Ok((shards, shard_residency))
}

/// `[directory]`: its copies, table, cache and placement policy.
fn directory_config(
    dir: raw::RawDirectory,
    countries: BTreeMap<String, Vec<RegionName>>,
    within_region: WithinRegion,
    pg_defaults: &secrets::PgDefaults,
) -> Result<DirectoryConfig, ConfigError> {
    let primaries = endpoints(
        "directory",
        "primary",
        dir.primary.into_vec(),
        None,
        pg_defaults,
    )?;
    let replicas = endpoints("directory", "replicas", dir.replicas, None, pg_defaults)?;
    let table = dir.table.unwrap_or_else(|| DEFAULT_DIRECTORY_TABLE.into());
    if !is_qualified_identifier(&table) {
        return Err(ConfigError::new(
            "directory.table",
            format!(
                "{table:?} is not a plain `schema.table` name (lowercase letters, digits, '_')"
            ),
        ));
    }
    Ok(DirectoryConfig {
        shard: ShardConfig {
            name: directory_shard(),
            region: primaries[0].region.clone(),
            accepting: false,
            weight: 1,
            primaries,
            replicas,
        },
        table,
        cache_ttl: dir.cache_ttl.map_or(DEFAULT_DIRECTORY_CACHE_TTL, |d| d.0),
        cache_capacity: dir
            .cache_capacity
            .unwrap_or(DEFAULT_DIRECTORY_CACHE_CAPACITY),
        placement: dir.placement.unwrap_or(Placement::Reject),
        countries,
        within_region,
    })
}

/// `[http]` (with `[jwt]` when `http.auth = "jwt"`): the data listener, its limits and identity.
fn http_config(http: raw::RawHttp, jwt: Option<&raw::RawJwt>) -> Result<HttpConfig, ConfigError> {
    let listen_text = http.listen.unwrap_or_else(|| DEFAULT_HTTP_LISTEN.into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError::new(
            "http.listen",
            format!("{listen_text:?} is not an address like \"{DEFAULT_HTTP_LISTEN}\""),
        )
    })?;
    let max_body = http.max_body.map_or(DEFAULT_MAX_BODY, |b| b.0);
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
    let auth = match http.auth.unwrap_or(RawHttpAuth::TrustedHeader) {
        RawHttpAuth::TrustedHeader => AuthConfig::TrustedHeader,
        RawHttpAuth::Jwt => {
            let jwt = jwt.ok_or_else(|| {
                ConfigError::new("jwt", "http.auth = \"jwt\" needs a [jwt] table")
            })?;
            AuthConfig::Jwt(Box::new(secrets::jwt_config(jwt)?))
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
    Ok(HttpConfig {
        listen,
        max_body,
        auth,
        public_url: http.public_url,
        header_timeout: http.header_timeout.map_or(DEFAULT_HEADER_TIMEOUT, |d| d.0),
        max_result_rows,
        max_result_bytes,
        result_budget,
    })
}

/// `[probe]`: how often and how patiently endpoints are probed, and whether a region shares one
/// publisher's results (only with Redis).
fn probe_config(probe: &raw::RawProbe, redis: bool) -> Result<ProbeConfig, ConfigError> {
    let interval = probe.interval.map_or(DEFAULT_PROBE_INTERVAL, |d| d.0);
    if interval < Duration::from_millis(1) {
        return Err(ConfigError::new("probe.interval", "must be at least 1ms"));
    }
    // Several missed publications, and never under 2 s: a publisher's GC-free hiccup or a slow
    // Redis round trip must not send the whole fleet back to probing.
    let stale_after = probe
        .stale_after
        .map_or((interval * 5).max(MIN_DEFAULT_STALE_AFTER), |d| d.0);
    if stale_after < interval * 2 {
        return Err(ConfigError::new(
            "probe.stale_after",
            "must be at least twice probe.interval (a publisher publishes once per interval)",
        ));
    }
    Ok(ProbeConfig {
        interval,
        timeout: probe.timeout.map_or(DEFAULT_PROBE_TIMEOUT, |d| d.0),
        fall: probe.fall.unwrap_or(DEFAULT_PROBE_FALL).max(1),
        rise: probe.rise.unwrap_or(DEFAULT_PROBE_RISE).max(1),
        shared: probe.shared.unwrap_or(true) && redis,
        stale_after,
        rtt_interval: probe.rtt_interval.map_or(DEFAULT_RTT_INTERVAL, |d| d.0),
    })
}

/// `[routing]`: where the primary sits among read candidates, and which replicas are demoted.
fn routing_config(routing: raw::RawRouting) -> RoutingConfig {
    RoutingConfig {
        primary_reads: routing.primary_reads.unwrap_or(PrimaryReads::Nearest),
        slow_rtt: routing.slow_rtt.map_or(DEFAULT_SLOW_RTT, |d| d.0),
        max_lag: routing.max_lag.map_or(DEFAULT_MAX_LAG, |d| d.0),
    }
}

/// `[pg]`: the wire listener, client authentication, pools and limits.
fn pg_config(p: raw::RawPg, shards: &[ShardConfig]) -> Result<PgConfig, ConfigError> {
    let text = p.listen.unwrap_or_else(|| DEFAULT_PG_LISTEN.into());
    let listen: SocketAddr = text.parse().map_err(|_| {
        ConfigError::new(
            "pg.listen",
            format!("{text:?} is not an address like \"{DEFAULT_PG_LISTEN}\""),
        )
    })?;
    let max_client_conn = p.max_client_conn.unwrap_or(DEFAULT_MAX_CLIENT_CONN);
    if max_client_conn == 0 {
        return Err(ConfigError::new("pg.max_client_conn", "must be at least 1"));
    }
    let pool_size = p.pool_size.unwrap_or(DEFAULT_PG_POOL_SIZE);
    if pool_size == 0 || pool_size > 10_000 {
        return Err(ConfigError::new(
            "pg.pool_size",
            "must be between 1 and 10000",
        ));
    }
    let max_prepared_statements = p.max_prepared_statements.unwrap_or(DEFAULT_MAX_PREPARED);
    if max_prepared_statements == 0 {
        return Err(ConfigError::new(
            "pg.max_prepared_statements",
            "must be at least 1",
        ));
    }
    let auth = pg_auth(p.auth.unwrap_or(RawPgAuth::Trust), &p.users)?;
    Ok(PgConfig {
        listen,
        max_client_conn,
        login_timeout: p.login_timeout.map_or(DEFAULT_LOGIN_TIMEOUT, |d| d.0),
        pool_size,
        max_prepared_statements,
        max_batch_bytes: p
            .max_batch_bytes
            .map_or(DEFAULT_MAX_BATCH_BYTES, |b| b.0 as usize),
        optimistic_transactions: p.optimistic_transactions.is_none_or(raw::OnOff::on),
        optimistic_replay_bytes: p
            .optimistic_replay_bytes
            .map_or(DEFAULT_OPTIMISTIC_REPLAY_BYTES, |b| b.0 as usize),
        databases: client_databases(p.databases, shards)?,
        roles: login_roles(&auth, shards),
        auth,
        tls: pg_tls(p.tls_cert_file, p.tls_key_file, p.tls_required)?,
    })
}

/// `pg.auth` with `[[pg.users]]`.
fn pg_auth(auth: RawPgAuth, users: &[raw::RawPgUser]) -> Result<PgAuth, ConfigError> {
    match auth {
        RawPgAuth::Trust => Ok(PgAuth::Trust),
        RawPgAuth::ScramSha256 => {
            if users.is_empty() {
                return Err(ConfigError::new(
                    "pg.users",
                    "scram-sha-256 needs at least one [[pg.users]] entry",
                ));
            }
            let mut out = Vec::new();
            for (i, u) in users.iter().enumerate() {
                let path = format!("pg.users[{i}]");
                let password =
                    secrets::secret(&path, u.password_file.as_deref(), u.password_env.as_deref())?
                        .ok_or_else(|| {
                            ConfigError::new(&path, "needs password_file or password_env")
                        })?;
                out.push((u.name.clone(), password));
            }
            Ok(PgAuth::ScramSha256(out))
        }
    }
}

/// `pg.tls_cert_file`, `pg.tls_key_file`, `pg.tls_required`: both files or neither.
fn pg_tls(
    cert: Option<String>,
    key: Option<String>,
    required: Option<bool>,
) -> Result<Option<PgTlsConfig>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(PgTlsConfig {
            cert_file: cert.into(),
            key_file: key.into(),
            required: required.unwrap_or(false),
        })),
        (None, None) if required == Some(true) => Err(ConfigError::new(
            "pg.tls_required",
            "needs pg.tls_cert_file and pg.tls_key_file",
        )),
        (None, None) => Ok(None),
        _ => Err(ConfigError::new(
            "pg.tls_cert_file",
            "set both tls_cert_file and tls_key_file, or neither",
        )),
    }
}

/// `[consistency]`: the token keys (current and previous) and the read-your-writes wait.
fn consistency_config(c: raw::RawConsistency) -> Result<ConsistencyConfig, ConfigError> {
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
    Ok(ConsistencyConfig {
        keys: crate::consistency::token::Keys { current, previous },
        max_wait: c.max_wait.map_or(DEFAULT_MAX_WAIT, |d| d.0),
    })
}

/// `[idempotency]`: whether keys are required, how long records live, cleanup.
fn idempotency_config(idem: raw::RawIdempotency) -> Result<IdempotencyConfig, ConfigError> {
    let idempotency = IdempotencyConfig {
        require: idem.require.unwrap_or(false),
        ttl: idem.ttl.map_or(DEFAULT_IDEMPOTENCY_TTL, |d| d.0),
        lock_ttl: idem.lock_ttl.map_or(DEFAULT_LOCK_TTL, |d| d.0),
        cleanup_interval: idem
            .cleanup_interval
            .map_or(DEFAULT_CLEANUP_INTERVAL, |d| d.0),
        cleanup_batch: idem.cleanup_batch.unwrap_or(DEFAULT_CLEANUP_BATCH),
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
    Ok(idempotency)
}

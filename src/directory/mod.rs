//! The directory: user -> home region. Sources in order: a verified JWT claim, the in-process
//! cache, the regional Redis cache, the directory table on the nearest healthy copy, the
//! directory primary (only for users the nearest copy does not know yet, and only if it is
//! healthy, so a partition never adds a hang), and last the placement policy for unknown users.

mod cache;
mod placement;

use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, Placement, PrimaryReads};
use crate::db::{DbError, Pools};
use crate::metrics::DirectoryMetrics;
use crate::routing;
use crate::topology::Topology;
use crate::types::{RegionName, UserId};

pub use cache::TtlCache;
pub use placement::{allowed_regions, country_code, rendezvous};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(
        "user {0} has no home region (placement policy is reject); place the user with PUT /v1/users/{0}/home"
    )]
    UnknownUser(UserId),
    #[error("region {0} is not a region of this deployment")]
    UnknownRegion(String),
    #[error(
        "user {user} already lives in {existing}; moving a user between regions is not supported"
    )]
    AlreadyPlaced { user: UserId, existing: RegionName },
    #[error(
        "country {country} does not allow home region {region}; allowed: {}",
        allowed.iter().map(RegionName::as_str).collect::<Vec<_>>().join(", ")
    )]
    NotAllowed {
        country: String,
        region: RegionName,
        allowed: Vec<RegionName>,
    },
    #[error("{0}")]
    BadCountry(String),
    #[error("give home_region, country, or both")]
    NothingToPlaceBy,
    #[error("the directory is unreachable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Where an answer came from, for metrics and debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Claim,
    Cache,
    Redis,
    Table,
    Placement,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Claim => "claim",
            Source::Cache => "cache",
            Source::Redis => "redis",
            Source::Table => "table",
            Source::Placement => "placement",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceOutcome {
    Created,
    Unchanged,
}

pub struct Directory {
    local: RegionName,
    shards: Vec<RegionName>,
    placement: Placement,
    countries: std::collections::BTreeMap<String, Vec<RegionName>>,
    select_sql: String,
    insert_sql: String,
    cache: TtlCache,
    redis: Option<std::sync::Arc<crate::kv::Kv>>,
    redis_ttl: std::time::Duration,
    topology: Arc<Topology>,
    pools: Arc<Pools>,
    metrics: DirectoryMetrics,
}

impl Directory {
    pub fn new(
        config: &Config,
        topology: Arc<Topology>,
        pools: Arc<Pools>,
        kv: Option<Arc<crate::kv::Kv>>,
    ) -> Directory {
        let table = &config.directory.table;
        Directory {
            local: config.region.clone(),
            shards: config.shards.iter().map(|s| s.name.clone()).collect(),
            placement: config.directory.placement,
            countries: config.directory.countries.clone(),
            select_sql: format!("SELECT home_region FROM {table} WHERE user_id = $1"),
            insert_sql: format!(
                "WITH ins AS (INSERT INTO {table} (user_id, home_region) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO NOTHING RETURNING home_region) \
                 SELECT home_region, true FROM ins UNION ALL \
                 SELECT home_region, false FROM {table} WHERE user_id = $1 AND NOT EXISTS (SELECT 1 FROM ins)"
            ),
            cache: TtlCache::new(config.directory.cache_ttl, config.directory.cache_capacity),
            redis: kv,
            redis_ttl: config.directory.cache_ttl,
            topology,
            pools,
            metrics: DirectoryMetrics::new(),
        }
    }

    pub fn is_known_region(&self, region: &str) -> Option<RegionName> {
        self.shards.iter().find(|s| s.as_str() == region).cloned()
    }

    /// The user's home region. `claim` is the verified JWT region claim, if any.
    pub async fn home_of(
        &self,
        user: &UserId,
        claim: Option<&str>,
    ) -> Result<(RegionName, Source), DirectoryError> {
        self.home_of_from(user, claim, None).await
    }

    /// [`Directory::home_of`] for a user whose country is known (a verified token's country
    /// claim): placement of an unknown user then picks only among the country's regions.
    pub async fn home_of_from(
        &self,
        user: &UserId,
        claim: Option<&str>,
        country: Option<&str>,
    ) -> Result<(RegionName, Source), DirectoryError> {
        let (region, source) = self.lookup(user, claim, country).await?;
        self.metrics.lookup(source.label());
        Ok((region, source))
    }

    /// The home region a placement request asks for: `region` if the country (when given)
    /// allows it, else a region the country allows, picked by the placement policy (`hash`:
    /// rendezvous over them; otherwise this region if allowed, else rendezvous).
    pub fn choose_home(
        &self,
        user: &UserId,
        region: Option<&str>,
        country: Option<&str>,
    ) -> Result<RegionName, DirectoryError> {
        let country = country
            .map(country_code)
            .transpose()
            .map_err(DirectoryError::BadCountry)?;
        let allowed = allowed_regions(&self.countries, country.as_deref(), &self.shards);
        match (region, country) {
            (None, None) => Err(DirectoryError::NothingToPlaceBy),
            (Some(r), country) => {
                let region = self.known(r)?;
                match country {
                    Some(country) if !allowed.contains(&region) => {
                        Err(DirectoryError::NotAllowed {
                            country,
                            region,
                            allowed: allowed.to_vec(),
                        })
                    }
                    _ => Ok(region),
                }
            }
            (None, Some(_)) => {
                let policy = match self.placement {
                    Placement::Hash => Placement::Hash,
                    _ => Placement::Local,
                };
                Ok(
                    placement::choose(policy, user.as_str(), &self.local, allowed)
                        .expect("hash and local always choose"),
                )
            }
        }
    }

    async fn lookup(
        &self,
        user: &UserId,
        claim: Option<&str>,
        country: Option<&str>,
    ) -> Result<(RegionName, Source), DirectoryError> {
        if let Some(claim) = claim {
            let region = self
                .is_known_region(claim)
                .ok_or_else(|| DirectoryError::UnknownRegion(claim.to_string()))?;
            return Ok((region, Source::Claim));
        }
        let now = Instant::now();
        if let Some(region) = self.cache.get(user, now) {
            return Ok((region, Source::Cache));
        }
        if let Some(redis) = &self.redis
            && let Some(region) = redis
                .get(&redis_key(user))
                .await
                .and_then(|r| self.is_known_region(&r))
        {
            self.cache.insert(user.clone(), region.clone(), now);
            return Ok((region, Source::Redis));
        }
        match self.read_table(user).await? {
            Some(region) => {
                self.remember(user, &region).await;
                Ok((region, Source::Table))
            }
            None => self
                .place_unknown(user, country)
                .map(|r| (r, Source::Placement)),
        }
    }

    /// The placement policy for a user the directory does not know, among the regions the
    /// user's country allows.
    fn place_unknown(
        &self,
        user: &UserId,
        country: Option<&str>,
    ) -> Result<RegionName, DirectoryError> {
        let country = country.and_then(|c| country_code(c).ok());
        let allowed = allowed_regions(&self.countries, country.as_deref(), &self.shards);
        placement::choose(self.placement, user.as_str(), &self.local, allowed)
            .ok_or_else(|| DirectoryError::UnknownUser(user.clone()))
    }

    async fn remember(&self, user: &UserId, region: &RegionName) {
        self.cache
            .insert(user.clone(), region.clone(), Instant::now());
        if let Some(redis) = &self.redis {
            redis
                .set_ex(&redis_key(user), region.as_str(), self.redis_ttl)
                .await;
        }
    }

    /// Reads the table from the nearest healthy copy; on "not found" there, asks the primary too
    /// (a placement made moments ago in another region may not have replicated yet).
    async fn read_table(&self, user: &UserId) -> Result<Option<RegionName>, DirectoryError> {
        let snapshot = self.topology.snapshot();
        let shard = RegionName::parse("directory").expect("valid name");
        let candidates =
            routing::read_candidates(&snapshot, &shard, &self.local, PrimaryReads::LastResort)
                .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
        let mut last_error = None;
        for c in &candidates {
            match self
                .while_up(
                    c.index,
                    self.pools
                        .query_opt_text(c.index, &self.select_sql, &[user.as_str()]),
                )
                .await
            {
                Ok(Some(region)) => return self.known(&region).map(Some),
                Ok(None) if c.target == routing::Target::Primary => return Ok(None),
                Ok(None) => break,
                Err(e) => last_error = Some(e),
            }
        }
        if let Ok(primary) = routing::write_candidate(&snapshot, &shard) {
            match self
                .while_up(
                    primary.index,
                    self.pools
                        .query_opt_text(primary.index, &self.select_sql, &[user.as_str()]),
                )
                .await
            {
                Ok(found) => return found.map(|r| self.known(&r)).transpose(),
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) => Err(DirectoryError::Db(e)),
            None => Ok(None),
        }
    }

    /// Runs a directory read on endpoint `index` unless the probes declare it down first: a
    /// read already waiting on a copy behind a cut link moves on to the next copy instead of
    /// hanging until TCP gives up (the same rule as `App::while_up` for data requests).
    async fn while_up<T>(
        &self,
        index: usize,
        work: impl std::future::Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        tokio::select! {
            biased;
            r = work => r,
            () = self.topology.down(index, std::time::Duration::from_millis(50)) => {
                Err(DbError::Unavailable {
                    endpoint: self.pools.endpoint_name(index).to_string(),
                    reason: "the probes found the directory copy unreachable".into(),
                })
            }
        }
    }

    fn known(&self, region: &str) -> Result<RegionName, DirectoryError> {
        self.is_known_region(region)
            .ok_or_else(|| DirectoryError::UnknownRegion(region.to_string()))
    }

    /// Places (signs up) a user. Idempotent for the same region; a different region is refused,
    /// because moving a user means moving their data.
    pub async fn place(
        &self,
        user: &UserId,
        region: &RegionName,
    ) -> Result<PlaceOutcome, DirectoryError> {
        let snapshot = self.topology.snapshot();
        let shard = RegionName::parse("directory").expect("valid name");
        let primary = routing::write_candidate(&snapshot, &shard)
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
        let row = self
            .pools
            .query_one_text_bool(
                primary.index,
                &self.insert_sql,
                &[user.as_str(), region.as_str()],
            )
            .await?;
        let (existing, created) = row;
        let existing = self.known(&existing)?;
        if &existing != region {
            return Err(DirectoryError::AlreadyPlaced {
                user: user.clone(),
                existing,
            });
        }
        self.remember(user, region).await;
        Ok(if created {
            PlaceOutcome::Created
        } else {
            PlaceOutcome::Unchanged
        })
    }
}

/// The directory table, for operators and for `homeport dev`.
pub fn table_ddl(table: &str) -> String {
    let schema = table.split('.').next().unwrap_or("homeport");
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};\n\
         CREATE TABLE IF NOT EXISTS {table} (\n  \
           user_id text PRIMARY KEY,\n  \
           home_region text NOT NULL,\n  \
           created_at timestamptz NOT NULL DEFAULT now()\n);\n"
    )
}

/// The regional Redis key caching a user's home region.
fn redis_key(user: &UserId) -> String {
    format!("homeport:dir:{}", user.as_str())
}

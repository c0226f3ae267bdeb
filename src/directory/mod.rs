//! The directory: user -> home shard, and so home region (the shard's region). Sources in
//! order: a verified JWT claim (shard, or a region with a single shard), the in-process cache,
//! the regional Redis cache, the directory table on the nearest healthy copy, the directory
//! primary (only for users the nearest copy does not know yet, and only if it is healthy, so a
//! partition never adds a hang), and last the placement policy for unknown users.

mod cache;
mod place;
mod placement;
mod table;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OnceCell;

use crate::config::{Config, Placement, PrimaryReads, WithinRegion, directory_shard};
use crate::db::{DbError, Pools};
use crate::metrics::DirectoryMetrics;
use crate::routing;
use crate::topology::Topology;
use crate::types::{RegionName, ShardId, UserId};

pub use cache::TtlCache;
pub use placement::{Cell, allowed_regions, country_code, rendezvous};
pub use table::ddl as table_ddl;

/// Where a user lives: their shard (cell) and the region its primary is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub shard: ShardId,
    pub region: RegionName,
}

impl std::fmt::Display for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} (region {})", self.shard, self.region)
    }
}

/// What a verified token says about its user's home and country.
#[derive(Debug, Clone, Copy, Default)]
pub struct HomeClaims<'a> {
    pub region: Option<&'a str>,
    pub shard: Option<&'a str>,
    pub country: Option<&'a str>,
}

/// What `PUT /v1/users/{id}/home` asks for: a region, a shard, a country, or a combination.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlaceRequest<'a> {
    pub region: Option<&'a str>,
    pub shard: Option<&'a str>,
    pub country: Option<&'a str>,
}

/// A placement decided up to the region (a shard of it is picked by `within_region`) or to
/// the shard.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Region(RegionName),
    Shard(Home),
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(
        "user {0} has no home region (placement policy is reject); place the user with PUT /v1/users/{0}/home"
    )]
    UnknownUser(UserId),
    #[error("region {0} is not a region of this deployment")]
    UnknownRegion(String),
    #[error("shard {0} is not a shard of this deployment")]
    UnknownShard(String),
    #[error(
        "user {user} already lives in {existing}; moving a user between shards is not supported"
    )]
    AlreadyPlaced { user: UserId, existing: Home },
    #[error("shard {0} is closed to new users (accepting = false)")]
    ShardClosed(ShardId),
    #[error("no shard of region {0} accepts new users")]
    RegionClosed(RegionName),
    #[error("shard {shard} is in region {actual}, not in {named}")]
    ShardOutsideRegion {
        shard: ShardId,
        actual: RegionName,
        named: String,
    },
    #[error(
        "the directory row of user {0} names no shard and its region has several; fill in its shard column"
    )]
    AmbiguousRow(UserId),
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
    #[error("give home_region, shard or country")]
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
    cells: Vec<Cell>,
    /// The regions that own a shard, sorted: where users can be homed.
    regions: Vec<RegionName>,
    placement: Placement,
    within_region: WithinRegion,
    countries: std::collections::BTreeMap<String, Vec<RegionName>>,
    sql: table::Statements,
    migrations: Vec<(i32, String)>,
    /// Set once this sidecar has migrated the directory primary (before its first placement).
    migrated: OnceCell<()>,
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
            cells: config
                .shards
                .iter()
                .map(|s| Cell {
                    name: s.name.clone(),
                    region: s.region.clone(),
                    accepting: s.accepting,
                    weight: s.weight,
                })
                .collect(),
            regions: config.home_regions(),
            placement: config.directory.placement,
            within_region: config.directory.within_region,
            countries: config.directory.countries.clone(),
            sql: table::Statements::new(table),
            migrations: table::migrations(table),
            migrated: OnceCell::new(),
            cache: TtlCache::new(config.directory.cache_ttl, config.directory.cache_capacity),
            redis: kv,
            redis_ttl: config.directory.cache_ttl,
            topology,
            pools,
            metrics: DirectoryMetrics::new(),
        }
    }

    /// The home of a user of shard `name`, if it is a configured shard.
    pub fn home(&self, name: &str) -> Option<Home> {
        self.cells
            .iter()
            .find(|c| c.name.as_str() == name)
            .map(|c| Home {
                shard: c.name.clone(),
                region: c.region.clone(),
            })
    }

    fn known_shard(&self, name: &str) -> Result<Home, DirectoryError> {
        self.home(name)
            .ok_or_else(|| DirectoryError::UnknownShard(name.to_string()))
    }

    fn known_region(&self, region: &str) -> Result<RegionName, DirectoryError> {
        self.regions
            .iter()
            .find(|r| r.as_str() == region)
            .cloned()
            .ok_or_else(|| DirectoryError::UnknownRegion(region.to_string()))
    }

    /// The user's home: from the token's claims, else looked up, else placed by policy.
    pub async fn home_of(
        &self,
        user: &UserId,
        claims: &HomeClaims<'_>,
    ) -> Result<(Home, Source), DirectoryError> {
        let (home, source) = self.lookup(user, claims).await?;
        self.metrics.lookup(source.label());
        Ok((home, source))
    }

    /// The home the claims settle on their own: a shard claim (whose region must match a region
    /// claim given with it), or a region claim for a region with a single shard. A region with
    /// several shards needs the directory to say which.
    fn home_in_claims(&self, claims: &HomeClaims<'_>) -> Result<Option<Home>, DirectoryError> {
        match (claims.shard, claims.region) {
            (Some(shard), region) => {
                let home = self.known_shard(shard)?;
                match region {
                    Some(r) if r != home.region.as_str() => {
                        Err(DirectoryError::ShardOutsideRegion {
                            shard: home.shard,
                            actual: home.region,
                            named: r.to_string(),
                        })
                    }
                    _ => Ok(Some(home)),
                }
            }
            (None, Some(region)) => {
                let region = self.known_region(region)?;
                let mut cells = self.cells.iter().filter(|c| c.region == region);
                Ok(match (cells.next(), cells.next()) {
                    (Some(only), None) => self.home(only.name.as_str()),
                    _ => None,
                })
            }
            (None, None) => Ok(None),
        }
    }

    async fn lookup(
        &self,
        user: &UserId,
        claims: &HomeClaims<'_>,
    ) -> Result<(Home, Source), DirectoryError> {
        if let Some(home) = self.home_in_claims(claims)? {
            return Ok((home, Source::Claim));
        }
        let now = Instant::now();
        if let Some(home) = self
            .cache
            .get(user, now)
            .and_then(|s| self.home(s.as_str()))
        {
            return Ok((home, Source::Cache));
        }
        if let Some(redis) = &self.redis
            && let Some(home) = redis
                .get(&redis_key(user))
                .await
                .and_then(|s| self.home(&s))
        {
            self.cache.insert(user.clone(), home.shard.clone(), now);
            return Ok((home, Source::Redis));
        }
        match self.read_table(user).await? {
            Some(home) => {
                self.remember(user, &home).await;
                Ok((home, Source::Table))
            }
            None => {
                let claimed = claims.region.map(|r| self.known_region(r)).transpose()?;
                self.place_unknown(user, claims.country, claimed.as_ref())
                    .map(|h| (h, Source::Placement))
            }
        }
    }

    async fn remember(&self, user: &UserId, home: &Home) {
        self.cache
            .insert(user.clone(), home.shard.clone(), Instant::now());
        if let Some(redis) = &self.redis {
            redis
                .set_ex(&redis_key(user), home.shard.as_str(), self.redis_ttl)
                .await;
        }
    }

    /// Reads the table from the nearest healthy copy; on "not found" there, asks the primary too
    /// (a placement made moments ago in another region may not have replicated yet).
    async fn read_table(&self, user: &UserId) -> Result<Option<Home>, DirectoryError> {
        let snapshot = self.topology.snapshot();
        let shard = directory_shard();
        let candidates =
            routing::read_candidates(&snapshot, &shard, &self.local, PrimaryReads::LastResort)
                .map_err(|e| DirectoryError::Unavailable(e.to_string()))?;
        let mut last_error = None;
        for c in &candidates {
            match self.select(c.index, user).await {
                Ok(Some(home)) => return Ok(Some(home)),
                Ok(None) if c.target == routing::Target::Primary => return Ok(None),
                Ok(None) => break,
                Err(DirectoryError::Db(e)) => last_error = Some(e),
                Err(other) => return Err(other),
            }
        }
        if let Ok(primary) = routing::write_candidate(&snapshot, &shard) {
            match self.select(primary.index, user).await {
                Err(DirectoryError::Db(e)) => last_error = Some(e),
                found => return found,
            }
        }
        match last_error {
            Some(e) => Err(DirectoryError::Db(e)),
            None => Ok(None),
        }
    }

    /// The user's row on endpoint `index`. A copy whose table predates the `shard` column (the
    /// migration runs on the primary with the first placement, and replicates from there) is
    /// read without it.
    async fn select(&self, index: usize, user: &UserId) -> Result<Option<Home>, DirectoryError> {
        let params = [user.as_str()];
        let row = match self
            .while_up(
                index,
                self.pools.query_row(index, &self.sql.select, &params),
            )
            .await
        {
            Err(e) if e.sqlstate() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) => {
                self.while_up(
                    index,
                    self.pools
                        .query_row(index, &self.sql.select_legacy, &params),
                )
                .await?
            }
            other => other?,
        };
        row.map(|r| self.home_from_row(user, r.get(0), r.get(1)))
            .transpose()
    }

    /// A directory row's home: its shard, or for a row written before cells, the region's
    /// default shard.
    fn home_from_row(
        &self,
        user: &UserId,
        region: String,
        shard: Option<String>,
    ) -> Result<Home, DirectoryError> {
        match shard {
            Some(shard) => self.known_shard(&shard),
            None => {
                let region = self.known_region(&region)?;
                placement::legacy_shard(&region, &self.cells)
                    .and_then(|c| self.home(c.name.as_str()))
                    .ok_or_else(|| DirectoryError::AmbiguousRow(user.clone()))
            }
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
}

/// The regional Redis key caching a user's home shard.
fn redis_key(user: &UserId) -> String {
    format!("homeport:dir:{}", user.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory over the example config with a second eu cell (`eu-2`) and a closed third
    /// (`eu-3`); nothing here connects to a server.
    fn directory() -> Directory {
        let text = include_str!("../../config/eu.toml")
            .replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "")
            .replace(
                "[shards.us]\n",
                "[shards.eu-2]\nregion = \"eu\"\nprimary = [\"postgresql://eu2.internal:5432\"]\n\n\
                 [shards.eu-3]\nregion = \"eu\"\naccepting = false\nprimary = [\"postgresql://eu3.internal:5432\"]\n\n\
                 [shards.us]\n",
            );
        let config = Config::parse(&text).unwrap();
        let topology = Arc::new(Topology::from_config(&config));
        let pools = Arc::new(Pools::new(
            &topology.snapshot(),
            &config.postgres,
            &topology.tls,
        ));
        Directory::new(&config, topology, pools, None)
    }

    fn home(shard: &str, region: &str) -> Home {
        Home {
            shard: ShardId::parse(shard).unwrap(),
            region: RegionName::parse(region).unwrap(),
        }
    }

    #[tokio::test]
    async fn claims_settle_the_home_only_when_they_name_one_shard() {
        let d = directory();
        let claims = |region, shard| HomeClaims {
            region,
            shard,
            country: None,
        };
        let got = |c| d.home_in_claims(&c).map_err(|e| e.to_string());
        assert_eq!(
            got(claims(None, Some("eu-2"))),
            Ok(Some(home("eu-2", "eu")))
        );
        assert_eq!(
            got(claims(Some("eu"), Some("eu-2"))),
            Ok(Some(home("eu-2", "eu")))
        );
        assert!(
            got(claims(Some("us"), Some("eu-2"))).is_err(),
            "claims disagree"
        );
        assert!(got(claims(None, Some("eu-9"))).is_err(), "unknown shard");
        // us has one shard: its region claim is enough; eu has three: the directory decides.
        assert_eq!(got(claims(Some("us"), None)), Ok(Some(home("us", "us"))));
        assert_eq!(got(claims(Some("eu"), None)), Ok(None));
        assert!(got(claims(Some("ap"), None)).is_err(), "unknown region");
    }

    #[tokio::test]
    async fn placement_targets_a_region_or_an_open_shard_of_it() {
        let d = directory();
        let user = UserId::parse("u1").unwrap();
        let target = |region, shard| {
            d.target(
                &user,
                &PlaceRequest {
                    region,
                    shard,
                    country: None,
                },
            )
        };
        assert_eq!(
            target(Some("eu"), None).unwrap(),
            Target::Region(RegionName::parse("eu").unwrap())
        );
        assert_eq!(
            target(None, Some("eu-2")).unwrap(),
            Target::Shard(home("eu-2", "eu"))
        );
        assert!(matches!(
            target(None, Some("eu-3")),
            Err(DirectoryError::ShardClosed(_))
        ));
        assert!(matches!(
            target(Some("us"), Some("eu-2")),
            Err(DirectoryError::ShardOutsideRegion { .. })
        ));
        assert!(matches!(
            target(None, None),
            Err(DirectoryError::NothingToPlaceBy)
        ));
    }

    #[tokio::test]
    async fn rows_map_to_shards_and_old_rows_to_the_regions_default_shard() {
        let d = directory();
        let user = UserId::parse("u1").unwrap();
        let row = |region: &str, shard: Option<&str>| {
            d.home_from_row(&user, region.into(), shard.map(str::to_string))
                .map_err(|e| e.to_string())
        };
        assert_eq!(row("eu", Some("eu-2")), Ok(home("eu-2", "eu")));
        assert_eq!(
            row("eu", None),
            Ok(home("eu", "eu")),
            "the shard named after eu"
        );
        assert_eq!(row("us", None), Ok(home("us", "us")));
        assert!(row("eu", Some("gone")).is_err());
    }
}

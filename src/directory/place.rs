//! Placing (signing up) a user: which region and shard a `PUT /v1/users/{id}/home` asks for,
//! the shard of a region picked by `[placement] within_region`, the directory row written on the
//! directory primary (after migrating its table, once per sidecar).

use super::placement::{self, allowed_regions, country_code};
use super::{Directory, DirectoryError, Home, PlaceOutcome, PlaceRequest, Target};
use crate::config::{Placement, WithinRegion, directory_shard};
use crate::db::DbError;
use crate::routing;
use crate::types::{RegionName, UserId};

impl Directory {
    /// The placement policy for a user the directory does not know, among the regions the
    /// user's country allows (or the region a token claims), then a shard of the region by
    /// rendezvous hashing. Nothing is stored, so the answer must be the same every time.
    pub(super) fn place_unknown(
        &self,
        user: &UserId,
        country: Option<&str>,
        claimed: Option<&RegionName>,
    ) -> Result<Home, DirectoryError> {
        let country = country.and_then(|c| country_code(c).ok());
        let open = self.open_regions(country.as_deref(), claimed);
        placement::choose(self.placement, user.as_str(), &self.local, &open)
            .and_then(|region| {
                placement::pick_by_hash(user.as_str(), &placement::open_cells(&self.cells, &region))
                    .and_then(|c| self.home(c.name.as_str()))
            })
            .ok_or_else(|| DirectoryError::UnknownUser(user.clone()))
    }

    /// The regions a placement may choose among: those the country allows (or only the
    /// claimed region), that have a shard accepting new users.
    pub(super) fn open_regions(
        &self,
        country: Option<&str>,
        claimed: Option<&RegionName>,
    ) -> Vec<RegionName> {
        let allowed = match claimed {
            Some(r) => std::slice::from_ref(r),
            None => allowed_regions(&self.countries, country, &self.regions),
        };
        allowed
            .iter()
            .filter(|r| !placement::open_cells(&self.cells, r).is_empty())
            .cloned()
            .collect()
    }

    /// Where a placement request goes: a shard named explicitly (open, and in the region and
    /// country given with it), or a region: the one named if the country (when given) allows
    /// it, else one the country allows, picked by the placement policy (`hash`: rendezvous over
    /// them; otherwise this region if allowed, else rendezvous).
    pub(super) fn target(
        &self,
        user: &UserId,
        req: &PlaceRequest<'_>,
    ) -> Result<Target, DirectoryError> {
        let country = req
            .country
            .map(country_code)
            .transpose()
            .map_err(DirectoryError::BadCountry)?;
        let allowed = allowed_regions(&self.countries, country.as_deref(), &self.regions);
        let check_country = |region: RegionName| match &country {
            Some(country) if !allowed.contains(&region) => Err(DirectoryError::NotAllowed {
                country: country.clone(),
                region,
                allowed: allowed.to_vec(),
            }),
            _ => Ok(region),
        };
        if let Some(shard) = req.shard {
            let home = self.known_shard(shard)?;
            if let Some(named) = req.region.filter(|r| *r != home.region.as_str()) {
                return Err(DirectoryError::ShardOutsideRegion {
                    shard: home.shard,
                    actual: home.region,
                    named: named.to_string(),
                });
            }
            check_country(home.region.clone())?;
            if !self
                .cells
                .iter()
                .any(|c| c.name == home.shard && c.accepting)
            {
                return Err(DirectoryError::ShardClosed(home.shard));
            }
            return Ok(Target::Shard(home));
        }
        match (req.region, &country) {
            (None, None) => Err(DirectoryError::NothingToPlaceBy),
            (Some(r), _) => Ok(Target::Region(check_country(self.known_region(r)?)?)),
            (None, Some(country)) => {
                let policy = match self.placement {
                    Placement::Hash => Placement::Hash,
                    _ => Placement::Local,
                };
                let open = self.open_regions(Some(country), None);
                placement::choose(policy, user.as_str(), &self.local, &open)
                    .map(Target::Region)
                    .ok_or_else(|| DirectoryError::NotAllowed {
                        country: country.clone(),
                        region: self.local.clone(),
                        allowed: allowed.to_vec(),
                    })
            }
        }
    }

    /// Places (signs up) a user. Idempotent for the same shard, or for the same region when the
    /// request names only a region; anything else is refused, because moving a user means
    /// moving their data.
    pub async fn place(
        &self,
        user: &UserId,
        req: &PlaceRequest<'_>,
    ) -> Result<(Home, PlaceOutcome), DirectoryError> {
        let target = self.target(user, req)?;
        let snapshot = self.topology.snapshot();
        let primary = routing::write_candidate(&snapshot, &directory_shard())
            .map_err(|e| DirectoryError::Unavailable(e.to_string()))?
            .index;
        self.migrate(primary).await?;
        let chosen = match &target {
            Target::Shard(home) => home.clone(),
            Target::Region(region) => self.pick_cell(user, region, primary).await?,
        };
        let row = self
            .pools
            .query_row(
                primary,
                &self.sql.insert,
                &[user.as_str(), chosen.region.as_str(), chosen.shard.as_str()],
            )
            .await?
            .ok_or_else(|| DbError::Lost {
                endpoint: self.pools.endpoint_name(primary).to_string(),
                reason: "the placement returned no row".into(),
            })?;
        let existing = self.home_from_row(user, row.get(0), row.get(1))?;
        let created: bool = row.get(2);
        let same = match &target {
            Target::Shard(home) => existing == *home,
            Target::Region(region) => existing.region == *region,
        };
        if !same {
            return Err(DirectoryError::AlreadyPlaced {
                user: user.clone(),
                existing,
            });
        }
        self.remember(user, &existing).await;
        let outcome = if created {
            PlaceOutcome::Created
        } else {
            PlaceOutcome::Unchanged
        };
        Ok((existing, outcome))
    }

    /// One of `region`'s open shards by the `within_region` rule; `least-users` counts each
    /// open shard's users on the directory primary.
    async fn pick_cell(
        &self,
        user: &UserId,
        region: &RegionName,
        primary: usize,
    ) -> Result<Home, DirectoryError> {
        let open = placement::open_cells(&self.cells, region);
        let cell = match self.within_region {
            WithinRegion::Hash => placement::pick_by_hash(user.as_str(), &open),
            WithinRegion::LeastUsers => {
                let legacy = placement::legacy_shard(region, &self.cells);
                let mut counts = std::collections::BTreeMap::new();
                for c in &open {
                    let legacy_region = if legacy == Some(*c) {
                        region.as_str()
                    } else {
                        ""
                    };
                    let n = self
                        .pools
                        .query_row(primary, &self.sql.count, &[c.name.as_str(), legacy_region])
                        .await?
                        .and_then(|r| r.get::<_, String>(0).parse::<u64>().ok())
                        .unwrap_or(0);
                    counts.insert(c.name.clone(), n);
                }
                placement::pick_least_users(&open, &counts)
            }
        };
        cell.and_then(|c| self.home(c.name.as_str()))
            .ok_or_else(|| DirectoryError::RegionClosed(region.clone()))
    }

    /// Brings the directory table up to date on the primary, once per sidecar.
    async fn migrate(&self, primary: usize) -> Result<(), DirectoryError> {
        self.migrated
            .get_or_try_init(|| async {
                let endpoint = self.pools.endpoint_name(primary);
                let mut client = self.pools.get(primary).await?;
                crate::db::migrate::migrate(&mut client, "directory", &self.migrations)
                    .await
                    .map_err(|e| DbError::from_pg(endpoint, e))
            })
            .await?;
        Ok(())
    }
}

//! Validation of the residency settings: `shards.<name>.residency` and `residency_policy`,
//! `[residency] policy`, `regions.<name>.public_url` and `[placement.countries]`. The rule that
//! matters most is checked last, on the whole config: no copy of a resident shard is located
//! outside its residency, and the directory (replicated to every region) does not live in a
//! resident shard's cluster. Errors name the offending key.

use std::collections::BTreeMap;

use super::raw::{RawPlacement, RawRegion, RawResidency};
use super::{Config, ConfigError, EndpointConfig};
use crate::residency::{Policy, Residency, ShardResidency};
use crate::types::{RegionName, ShardId};

/// A shard's residency settings as written, before the regions are known.
pub(super) struct ShardSettings {
    pub name: ShardId,
    /// The shard's own region, where its primary lives.
    pub region: RegionName,
    pub residency: Option<Vec<String>>,
    pub policy: Option<String>,
}

fn policy(text: &str, path: &str) -> Result<Policy, ConfigError> {
    Policy::parse(text).ok_or_else(|| {
        ConfigError::new(
            path,
            format!("unknown policy {text:?}; use \"forward\", \"redirect\" or \"deny\""),
        )
    })
}

fn public_url(text: &str, path: &str) -> Result<String, ConfigError> {
    let ok = (text.starts_with("https://") || text.starts_with("http://"))
        && !text.contains(char::is_whitespace);
    if !ok {
        return Err(ConfigError::new(
            path,
            format!("{text:?} is not an http:// or https:// URL"),
        ));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// The residency model, from the raw settings. Region names are checked against the whole
/// config afterwards, in [`check`].
pub(super) fn build(
    raw: Option<RawResidency>,
    shards: Vec<ShardSettings>,
    regions: BTreeMap<String, RawRegion>,
    own: &RegionName,
    own_public_url: Option<&str>,
) -> Result<Residency, ConfigError> {
    let default_policy = match raw.and_then(|r| r.policy) {
        Some(p) => policy(&p, "residency.policy")?,
        None => Policy::Forward,
    };
    let mut out = Residency::default();
    for s in shards {
        let path = format!("shards.{}", s.name);
        let Some(list) = s.residency else {
            if s.policy.is_some() {
                return Err(ConfigError::new(
                    format!("{path}.residency_policy"),
                    "has no effect without shards.<name>.residency; set the residency too",
                ));
            }
            continue;
        };
        if list.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.residency"),
                "needs at least one region (leave it out to allow every region)",
            ));
        }
        let regions = list
            .iter()
            .enumerate()
            .map(|(i, r)| {
                RegionName::parse(r)
                    .map_err(|m| ConfigError::new(format!("{path}.residency[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !regions.contains(&s.region) {
            return Err(ConfigError::new(
                format!("{path}.residency"),
                format!(
                    "must include the shard's own region {}: its primary lives there",
                    s.region
                ),
            ));
        }
        let policy = match s.policy {
            Some(p) => policy(&p, &format!("{path}.residency_policy"))?,
            None => default_policy,
        };
        out.shards.insert(
            s.name,
            ShardResidency {
                home: s.region,
                regions,
                policy,
            },
        );
    }
    for (name, region) in regions {
        let path = format!("regions.{name}");
        let region_name = RegionName::parse(&name).map_err(|m| ConfigError::new(&path, m))?;
        if let Some(url) = region.public_url {
            let url = public_url(&url, &format!("{path}.public_url"))?;
            out.public_urls.insert(region_name, url);
        }
    }
    if let Some(url) = own_public_url {
        let url = public_url(url, "http.public_url")?;
        match out.public_urls.get(own) {
            Some(other) if *other != url => {
                return Err(ConfigError::new(
                    format!("regions.{own}.public_url"),
                    format!("{other:?} differs from http.public_url {url:?}; set one of them"),
                ));
            }
            _ => {
                out.public_urls.insert(own.clone(), url);
            }
        }
    }
    Ok(out)
}

/// `[placement.countries]`: country code -> the home regions it allows.
pub(super) fn countries(
    raw: RawPlacement,
    shards: &[RegionName],
) -> Result<BTreeMap<String, Vec<RegionName>>, ConfigError> {
    let mut out = BTreeMap::new();
    for (country, list) in raw.countries {
        let path = format!("placement.countries.{country}");
        if crate::directory::country_code(&country).as_deref() != Ok(country.as_str()) {
            return Err(ConfigError::new(
                &path,
                "a country is an ISO 3166-1 alpha-2 code in capitals, like DE or US",
            ));
        }
        if list.is_empty() {
            return Err(ConfigError::new(&path, "needs at least one home region"));
        }
        let mut regions = Vec::new();
        for (i, r) in list.iter().enumerate() {
            match shards.iter().find(|s| s.as_str() == r) {
                Some(s) => regions.push(s.clone()),
                None => {
                    return Err(ConfigError::new(
                        format!("{path}[{i}]"),
                        format!("{r:?} is not the home region of any shard"),
                    ));
                }
            }
        }
        out.insert(country, regions);
    }
    Ok(out)
}

/// Residency against the whole topology: known region names, every copy of a resident shard
/// inside its residency, and the directory outside every resident shard's cluster.
pub(super) fn check(config: &Config) -> Result<(), ConfigError> {
    let known = config.regions();
    for (shard, r) in &config.residency.shards {
        for (i, region) in r.regions.iter().enumerate() {
            if !known.contains(region) {
                return Err(ConfigError::new(
                    format!("shards.{shard}.residency[{i}]"),
                    format!("{region} is not a region of this deployment"),
                ));
            }
        }
    }
    for region in config.residency.public_urls.keys() {
        if !known.contains(region) {
            return Err(ConfigError::new(
                format!("regions.{region}"),
                format!("{region} is not a region of this deployment"),
            ));
        }
    }
    for shard in &config.shards {
        let Some(r) = config.residency.shards.get(&shard.name) else {
            continue;
        };
        let outside = |key: &str, list: &[EndpointConfig]| {
            list.iter()
                .position(|e| !r.regions.contains(&e.region))
                .map(|i| {
                    ConfigError::new(
                        format!("shards.{}.{key}[{i}].region", shard.name),
                        format!(
                            "{} is outside the residency of shard {} ({}): a copy there would store its data outside its regions",
                            list[i].region,
                            shard.name,
                            join(&r.regions)
                        ),
                    )
                })
        };
        if let Some(e) = outside("primary", &shard.primaries) {
            return Err(e);
        }
        if let Some(e) = outside("replicas", &shard.replicas) {
            return Err(e);
        }
        let dir = &config.directory.shard;
        for (key, list) in [("primary", &dir.primaries), ("replicas", &dir.replicas)] {
            for (i, d) in list.iter().enumerate() {
                let shared = shard
                    .primaries
                    .iter()
                    .chain(&shard.replicas)
                    .any(|e| same_server(e, d));
                if shared {
                    return Err(ConfigError::new(
                        format!("directory.{key}[{i}]"),
                        format!(
                            "{} is a server of resident shard {}: streaming replication would copy that shard's data wherever the directory is replicated; give the directory its own cluster",
                            d.name, shard.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Two endpoints on the same server (host and port; the database name does not matter to
/// physical replication, which copies the whole cluster).
fn same_server(a: &EndpointConfig, b: &EndpointConfig) -> bool {
    a.pg.get_hosts() == b.pg.get_hosts() && a.pg.get_ports() == b.pg.get_ports()
}

fn join(regions: &[RegionName]) -> String {
    regions
        .iter()
        .map(RegionName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

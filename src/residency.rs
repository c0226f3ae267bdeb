//! Data residency as pure decisions. A shard may be *resident* in a set of regions
//! (`shards.<name>.residency`): its data is stored only there. A sidecar outside that set that gets
//! a request for one of the shard's users applies the shard's policy: `forward` (run it on the
//! shard's copies inside the residency; the data only transits), `redirect` (421 / `HP421` naming
//! the home region's public URL) or `deny` (403 / `42501`). Both front ends call [`decide`]; no
//! I/O happens here.
//!
//! What stays global: the directory (user -> home region) and the regions' public URLs. What a
//! sidecar outside the residency must not keep: anything of the shard's data, so
//! [`Residency::stores_here`] gates the regional caches (Redis) for such a shard.

use std::collections::BTreeMap;

use crate::types::{RegionName, ShardId};

/// What a sidecar outside a shard's residency does with a request for one of its users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Forward,
    Redirect,
    Deny,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "forward" => Some(Policy::Forward),
            "redirect" => Some(Policy::Redirect),
            "deny" => Some(Policy::Deny),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Forward => "forward",
            Policy::Redirect => "redirect",
            Policy::Deny => "deny",
        }
    }
}

/// The residency of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardResidency {
    /// The shard's own region, where its primary lives: its users' home region.
    pub home: RegionName,
    /// Where the shard's data may be stored (and is served without a policy).
    pub regions: Vec<RegionName>,
    pub policy: Policy,
}

/// Every resident shard and every region's public URL, from the config.
#[derive(Debug, Clone, Default)]
pub struct Residency {
    /// Only shards with a `residency` list; every other shard may be stored anywhere.
    pub shards: BTreeMap<ShardId, ShardResidency>,
    /// `regions.<name>.public_url` (and `http.public_url` for the sidecar's own region).
    pub public_urls: BTreeMap<RegionName, String>,
}

/// What to do with a request for a user of `shard` arriving at a sidecar of `local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The shard is not resident anywhere in particular: route as usual.
    Unrestricted,
    /// The shard is resident and this sidecar is inside its residency: route as usual.
    Inside,
    /// Outside the residency, policy `forward`: run on the shard's copies inside it.
    Forward,
    /// Outside the residency, policy `redirect`: send the client to its home region.
    Redirect {
        home: RegionName,
        url: Option<String>,
    },
    /// Outside the residency, policy `deny`.
    Deny { home: RegionName },
}

impl Decision {
    /// The `outcome` label of `homeport_residency_requests_total`; `None` for unrestricted shards,
    /// which are not counted.
    pub fn outcome(&self) -> Option<&'static str> {
        match self {
            Decision::Unrestricted => None,
            Decision::Inside => Some("local"),
            Decision::Forward => Some("forwarded"),
            Decision::Redirect { .. } => Some("redirected"),
            Decision::Deny { .. } => Some("denied"),
        }
    }

    /// The sentence both front ends put in their error for a redirect or a denial.
    pub fn detail(&self, shard: &ShardId) -> Option<String> {
        match self {
            Decision::Redirect { home, url } => Some(match url {
                Some(url) => format!(
                    "the data of shard {shard} is resident outside this region; the user's home region is {home}, reachable at {url}"
                ),
                None => format!(
                    "the data of shard {shard} is resident outside this region; the user's home region is {home} (no public_url is configured for it)"
                ),
            }),
            Decision::Deny { home } => Some(format!(
                "the data of shard {shard} is resident outside this region and its residency policy is deny; the user's home region is {home}"
            )),
            _ => None,
        }
    }
}

/// How the wire front end refuses a request outside a residency: SQLSTATE, message, detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRefusal {
    /// `HP421` for redirect (homeport's own class `HP`, after HTTP 421), `42501` for deny.
    pub code: &'static str,
    pub message: String,
    /// Names the home region and, for a redirect, its public URL.
    pub detail: String,
}

/// The wire error for a decision that refuses, `None` for one that serves.
pub fn wire_refusal(decision: &Decision, shard: &ShardId) -> Option<WireRefusal> {
    let detail = decision.detail(shard)?;
    Some(match decision {
        Decision::Redirect { home, url } => WireRefusal {
            code: "HP421",
            message: format!(
                "homeport: this user is served in home region {home} only; connect there{}",
                url.as_deref()
                    .map(|u| format!(" ({u})"))
                    .unwrap_or_default()
            ),
            detail: match url {
                Some(url) => format!("home region: {home}; home URL: {url}; {detail}"),
                None => format!("home region: {home}; {detail}"),
            },
        },
        _ => WireRefusal {
            code: "42501",
            message: format!(
                "homeport: the data of shard {shard} is not served outside its residency"
            ),
            detail,
        },
    })
}

impl Residency {
    /// The decision for a request for a user of `shard` at a sidecar of `local`.
    pub fn decide(&self, shard: &ShardId, local: &RegionName) -> Decision {
        let Some(r) = self.shards.get(shard) else {
            return Decision::Unrestricted;
        };
        if r.regions.contains(local) {
            return Decision::Inside;
        }
        match r.policy {
            Policy::Forward => Decision::Forward,
            Policy::Redirect => Decision::Redirect {
                home: r.home.clone(),
                url: self.public_urls.get(&r.home).cloned(),
            },
            Policy::Deny => Decision::Deny {
                home: r.home.clone(),
            },
        }
    }

    /// Whether a sidecar of `local` may keep anything of `shard`'s data (cached responses) in
    /// its regional stores.
    pub fn stores_here(&self, shard: &ShardId, local: &RegionName) -> bool {
        self.shards
            .get(shard)
            .is_none_or(|r| r.regions.contains(local))
    }

    /// The policy label of a resident shard, for metrics.
    pub fn policy_of(&self, shard: &ShardId) -> Option<Policy> {
        self.shards.get(shard).map(|r| r.policy)
    }

    pub fn public_url(&self, region: &RegionName) -> Option<&str> {
        self.public_urls.get(region).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegionName {
        RegionName::parse(s).unwrap()
    }

    fn s(name: &str) -> ShardId {
        ShardId::parse(name).unwrap()
    }

    fn eu_resident(policy: Policy) -> Residency {
        Residency {
            shards: BTreeMap::from([(
                s("eu"),
                ShardResidency {
                    home: r("eu"),
                    regions: vec![r("eu")],
                    policy,
                },
            )]),
            public_urls: BTreeMap::from([(r("eu"), "https://eu.example.com".to_string())]),
        }
    }

    #[test]
    fn decisions_by_policy_and_place() {
        let cases = [
            (Policy::Forward, "eu", "eu", Decision::Inside),
            (Policy::Forward, "us", "eu", Decision::Forward),
            (
                Policy::Redirect,
                "us",
                "eu",
                Decision::Redirect {
                    home: r("eu"),
                    url: Some("https://eu.example.com".into()),
                },
            ),
            (Policy::Deny, "us", "eu", Decision::Deny { home: r("eu") }),
            (Policy::Deny, "eu", "us", Decision::Unrestricted),
            (Policy::Deny, "us", "us", Decision::Unrestricted),
        ];
        for (policy, local, shard, want) in cases {
            let got = eu_resident(policy).decide(&s(shard), &r(local));
            assert_eq!(got, want, "{policy:?} at {local} for {shard}");
        }
    }

    #[test]
    fn redirect_without_a_public_url_still_names_the_region() {
        let mut res = eu_resident(Policy::Redirect);
        res.public_urls.clear();
        let d = res.decide(&s("eu"), &r("us"));
        assert_eq!(
            d,
            Decision::Redirect {
                home: r("eu"),
                url: None
            }
        );
        assert!(d.detail(&s("eu")).unwrap().contains("home region is eu"));
    }

    #[test]
    fn a_cell_redirects_to_its_region_not_to_its_name() {
        let mut res = eu_resident(Policy::Redirect);
        let eu = res.shards.remove(&s("eu")).unwrap();
        res.shards.insert(s("eu-2"), eu);
        assert_eq!(
            res.decide(&s("eu-2"), &r("us")),
            Decision::Redirect {
                home: r("eu"),
                url: Some("https://eu.example.com".into()),
            }
        );
        assert_eq!(res.decide(&s("eu-2"), &r("eu")), Decision::Inside);
    }

    #[test]
    fn only_regions_inside_the_residency_store_a_resident_shard() {
        let res = eu_resident(Policy::Forward);
        assert!(res.stores_here(&s("eu"), &r("eu")));
        assert!(!res.stores_here(&s("eu"), &r("us")));
        assert!(res.stores_here(&s("us"), &r("eu")));
        assert!(res.stores_here(&s("us"), &r("us")));
    }

    #[test]
    fn wire_refusals_name_the_home_region_and_url() {
        let redirect = eu_resident(Policy::Redirect).decide(&s("eu"), &r("us"));
        let w = wire_refusal(&redirect, &s("eu")).unwrap();
        assert_eq!(w.code, "HP421");
        assert!(w.detail.contains("home region: eu"), "{}", w.detail);
        assert!(w.detail.contains("https://eu.example.com"), "{}", w.detail);
        let deny = eu_resident(Policy::Deny).decide(&s("eu"), &r("us"));
        assert_eq!(wire_refusal(&deny, &s("eu")).unwrap().code, "42501");
        assert_eq!(wire_refusal(&Decision::Forward, &s("eu")), None);
        assert_eq!(wire_refusal(&Decision::Inside, &s("eu")), None);
    }

    #[test]
    fn outcome_labels() {
        assert_eq!(Decision::Unrestricted.outcome(), None);
        assert_eq!(Decision::Inside.outcome(), Some("local"));
        assert_eq!(Decision::Forward.outcome(), Some("forwarded"));
        assert_eq!(Decision::Deny { home: r("eu") }.outcome(), Some("denied"));
    }
}

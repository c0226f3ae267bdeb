//! Placement of unknown users by consistent hashing: rendezvous (highest random weight) hashing
//! over the shards. Every sidecar computes the same answer with no coordination, and adding a
//! region moves only the users that the new region wins. Placement by country narrows the
//! regions first: `[placement.countries]` lists the home regions a country allows, and every
//! policy picks only among those.

use std::collections::BTreeMap;

use crate::config::Placement;
use crate::types::RegionName;

/// A country as homeport keeps it: an ISO 3166-1 alpha-2 code, upper-cased (`de` -> `DE`).
pub fn country_code(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(format!(
            "{s:?} is not a country code; use ISO 3166-1 alpha-2, like \"DE\""
        ))
    }
}

/// The home regions a user from `country` may have: the country's `[placement.countries]`
/// entry, or `all` when the country is unknown or not listed.
pub fn allowed_regions<'a>(
    countries: &'a BTreeMap<String, Vec<RegionName>>,
    country: Option<&str>,
    all: &'a [RegionName],
) -> &'a [RegionName] {
    country
        .and_then(|c| countries.get(c))
        .map_or(all, Vec::as_slice)
}

/// Where `policy` places `user` when only `allowed` regions may be home: `hash` by rendezvous
/// over them; `local` here if this region is allowed, else by rendezvous over them; `reject`
/// nowhere. `allowed` must not be empty.
pub fn choose(
    policy: Placement,
    user: &str,
    local: &RegionName,
    allowed: &[RegionName],
) -> Option<RegionName> {
    match policy {
        Placement::Reject => None,
        Placement::Local if allowed.contains(local) => Some(local.clone()),
        Placement::Local | Placement::Hash => Some(rendezvous(user, allowed).clone()),
    }
}

/// FNV-1a, 64-bit: stable across processes, versions and platforms (unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix so that similar keys spread well.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The shard with the highest weight for `user`. `shards` must not be empty.
pub fn rendezvous<'a>(user: &str, shards: &'a [RegionName]) -> &'a RegionName {
    shards
        .iter()
        .max_by_key(|s| (fnv1a(&[user.as_bytes(), s.as_str().as_bytes()]), s.as_str()))
        .expect("config guarantees at least one shard")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(names: &[&str]) -> Vec<RegionName> {
        names
            .iter()
            .map(|n| RegionName::parse(n).unwrap())
            .collect()
    }

    #[test]
    fn stable_and_spread() {
        let two = regions(&["eu", "us"]);
        let mut eu = 0;
        for i in 0..1000 {
            let user = format!("user-{i}");
            let a = rendezvous(&user, &two);
            assert_eq!(a, rendezvous(&user, &two));
            if a.as_str() == "eu" {
                eu += 1;
            }
        }
        assert!((400..600).contains(&eu), "eu got {eu} of 1000");
    }

    #[test]
    fn countries_narrow_the_regions() {
        let all = regions(&["eu", "us", "ap"]);
        let countries = BTreeMap::from([
            ("DE".to_string(), regions(&["eu"])),
            ("US".to_string(), regions(&["us", "eu"])),
        ]);
        assert_eq!(
            allowed_regions(&countries, Some("DE"), &all),
            &regions(&["eu"])[..]
        );
        assert_eq!(allowed_regions(&countries, Some("FR"), &all), &all[..]);
        assert_eq!(allowed_regions(&countries, None, &all), &all[..]);
    }

    #[test]
    fn hash_and_local_pick_only_allowed_regions() {
        let eu_us = regions(&["eu", "us"]);
        let ap = RegionName::parse("ap").unwrap();
        let eu = RegionName::parse("eu").unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            let user = format!("user-{i}");
            let h = choose(Placement::Hash, &user, &ap, &eu_us).unwrap();
            assert!(eu_us.contains(&h));
            seen.insert(h);
            // `local` outside the allowed regions falls back to hashing over them.
            let l = choose(Placement::Local, &user, &ap, &eu_us).unwrap();
            assert!(eu_us.contains(&l));
            assert_eq!(
                choose(Placement::Local, &user, &eu, &eu_us),
                Some(eu.clone())
            );
            assert_eq!(choose(Placement::Reject, &user, &eu, &eu_us), None);
        }
        assert_eq!(seen.len(), 2, "hash spreads over every allowed region");
    }

    #[test]
    fn country_codes_are_two_letters_upper_cased() {
        assert_eq!(country_code("de").unwrap(), "DE");
        assert_eq!(country_code(" US ").unwrap(), "US");
        assert!(country_code("DEU").is_err());
        assert!(country_code("D1").is_err());
        assert!(country_code("").is_err());
    }

    #[test]
    fn adding_a_region_only_moves_users_to_it() {
        let two = regions(&["eu", "us"]);
        let three = regions(&["eu", "us", "ap"]);
        for i in 0..1000 {
            let user = format!("user-{i}");
            let after = rendezvous(&user, &three);
            if after.as_str() != "ap" {
                assert_eq!(after, rendezvous(&user, &two));
            }
        }
    }
}

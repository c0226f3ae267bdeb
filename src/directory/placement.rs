//! Placement of unknown users by consistent hashing: rendezvous (highest random weight) hashing
//! over the shards. Every sidecar computes the same answer with no coordination, and adding a
//! region moves only the users that the new region wins. Placement by country narrows the
//! regions first: `[placement.countries]` lists the home regions a country allows, and every
//! policy picks only among those. Inside the chosen region, one of its accepting shards (cells)
//! is picked by weighted rendezvous hashing or by the fewest users.

use std::collections::BTreeMap;

use crate::config::Placement;
use crate::types::{RegionName, ShardId};

/// A shard as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub name: ShardId,
    pub region: RegionName,
    /// Closed shards (`accepting = false`) keep their users but get no new ones.
    pub accepting: bool,
    pub weight: u32,
}

/// The shards of `region` that take new users, in config order.
pub fn open_cells<'a>(cells: &'a [Cell], region: &RegionName) -> Vec<&'a Cell> {
    cells
        .iter()
        .filter(|c| &c.region == region && c.accepting)
        .collect()
}

/// The cell `user` goes to by weighted rendezvous hashing: each cell scores
/// `-weight / ln(u)` with `u` in (0, 1) from the hash of (user, cell), the highest wins. Equal
/// weights give plain rendezvous order; a cell wins about `weight / sum of weights` of the users,
/// and adding a cell moves only users to it. `None` when `open` is empty.
pub fn pick_by_hash<'a>(user: &str, open: &[&'a Cell]) -> Option<&'a Cell> {
    let score = |c: &Cell| {
        let h = fnv1a(&[user.as_bytes(), c.name.as_str().as_bytes()]);
        // 53 bits into (0, 1): never 0 (ln 0) and never 1 (division by ln 1 = 0).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -f64::from(c.weight) / u.ln()
    };
    open.iter()
        .copied()
        .max_by(|a, b| score(a).total_cmp(&score(b)).then(b.name.cmp(&a.name)))
}

/// The cell with the fewest users (`counts`, missing = 0); ties go to the first in config order.
pub fn pick_least_users<'a>(
    open: &[&'a Cell],
    counts: &BTreeMap<ShardId, u64>,
) -> Option<&'a Cell> {
    open.iter()
        .copied()
        .min_by_key(|c| counts.get(&c.name).copied().unwrap_or(0))
}

/// The shard of a directory row written before the directory had a shard column: the region's
/// shard named after it, else the region's only shard. `None` when neither exists (the region
/// was split into cells without filling in the column of its old rows).
pub fn legacy_shard<'a>(region: &RegionName, cells: &'a [Cell]) -> Option<&'a Cell> {
    let mut in_region = cells.iter().filter(|c| &c.region == region);
    let named = cells
        .iter()
        .find(|c| &c.region == region && c.name.as_str() == region.as_str());
    match (named, in_region.next(), in_region.next()) {
        (Some(c), _, _) => Some(c),
        (None, Some(only), None) => Some(only),
        _ => None,
    }
}

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

    fn cell(name: &str, region: &str, weight: u32) -> Cell {
        Cell {
            name: ShardId::parse(name).unwrap(),
            region: RegionName::parse(region).unwrap(),
            accepting: true,
            weight,
        }
    }

    fn share_of_first(cells: &[Cell], users: usize) -> usize {
        let open: Vec<&Cell> = cells.iter().collect();
        (0..users)
            .filter(|i| pick_by_hash(&format!("user-{i}"), &open).unwrap() == &cells[0])
            .count()
    }

    #[test]
    fn cells_by_hash_are_stable_and_spread() {
        let cells = [cell("eu-1", "eu", 1), cell("eu-2", "eu", 1)];
        let open: Vec<&Cell> = cells.iter().collect();
        for i in 0..100 {
            let user = format!("user-{i}");
            assert_eq!(pick_by_hash(&user, &open), pick_by_hash(&user, &open));
        }
        let first = share_of_first(&cells, 2000);
        assert!((850..1150).contains(&first), "eu-1 got {first} of 2000");
        assert_eq!(pick_by_hash("u", &[]), None);
    }

    #[test]
    fn weights_set_each_cells_share() {
        let cells = [cell("eu-1", "eu", 1), cell("eu-2", "eu", 3)];
        let first = share_of_first(&cells, 4000);
        assert!(
            (800..1200).contains(&first),
            "eu-1 (weight 1 of 4) got {first} of 4000"
        );
    }

    #[test]
    fn adding_a_cell_only_moves_users_to_it() {
        let two = [cell("eu-1", "eu", 1), cell("eu-2", "eu", 1)];
        let three = [
            cell("eu-1", "eu", 1),
            cell("eu-2", "eu", 1),
            cell("eu-3", "eu", 1),
        ];
        let (open2, open3): (Vec<&Cell>, Vec<&Cell>) =
            (two.iter().collect(), three.iter().collect());
        for i in 0..1000 {
            let user = format!("user-{i}");
            let after = pick_by_hash(&user, &open3).unwrap();
            if after.name.as_str() != "eu-3" {
                assert_eq!(after.name, pick_by_hash(&user, &open2).unwrap().name);
            }
        }
    }

    #[test]
    fn closed_cells_and_other_regions_take_no_new_users() {
        let mut cells = vec![
            cell("eu-1", "eu", 1),
            cell("eu-2", "eu", 1),
            cell("us", "us", 1),
        ];
        cells[0].accepting = false;
        let eu = RegionName::parse("eu").unwrap();
        let open = open_cells(&cells, &eu);
        assert_eq!(open, vec![&cells[1]]);
        for i in 0..50 {
            assert_eq!(pick_by_hash(&format!("user-{i}"), &open), Some(&cells[1]));
        }
        cells[1].accepting = false;
        assert!(open_cells(&cells, &eu).is_empty());
    }

    #[test]
    fn least_users_fills_the_emptiest_cell() {
        let cells = [
            cell("eu-1", "eu", 1),
            cell("eu-2", "eu", 1),
            cell("eu-3", "eu", 1),
        ];
        let open: Vec<&Cell> = cells.iter().collect();
        let counts = BTreeMap::from([(cells[0].name.clone(), 10), (cells[1].name.clone(), 3)]);
        assert_eq!(pick_least_users(&open, &counts), Some(&cells[2]));
        let counts = BTreeMap::from([
            (cells[0].name.clone(), 10),
            (cells[1].name.clone(), 3),
            (cells[2].name.clone(), 3),
        ]);
        assert_eq!(pick_least_users(&open, &counts), Some(&cells[1]));
    }

    #[test]
    fn rows_without_a_shard_belong_to_the_regions_default_shard() {
        let eu = RegionName::parse("eu").unwrap();
        let single = [cell("eu", "eu", 1), cell("us", "us", 1)];
        assert_eq!(legacy_shard(&eu, &single), Some(&single[0]));
        let renamed = [cell("eu-main", "eu", 1)];
        assert_eq!(legacy_shard(&eu, &renamed), Some(&renamed[0]));
        let split = [cell("eu", "eu", 1), cell("eu-2", "eu", 1)];
        assert_eq!(legacy_shard(&eu, &split), Some(&split[0]));
        let ambiguous = [cell("eu-1", "eu", 1), cell("eu-2", "eu", 1)];
        assert_eq!(legacy_shard(&eu, &ambiguous), None);
        assert_eq!(
            legacy_shard(&RegionName::parse("ap").unwrap(), &single),
            None
        );
    }

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

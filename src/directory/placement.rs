//! Placement of unknown users by consistent hashing: rendezvous (highest random weight) hashing
//! over the shards. Every sidecar computes the same answer with no coordination, and adding a
//! region moves only the users that the new region wins.

use crate::types::RegionName;

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

//! Small value types that carry meaning through the code: region, shard and user names, WAL positions,
//! request intents. Keeping them as newtypes stops a user id from being passed where a region
//! name is expected, and keeps parsing of LSN text in one place.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A region name such as `eu` or `us-east-1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegionName(String);

/// A shard (cell): the data of a set of users, owned by one primary located in the shard's
/// region. By default a region has one shard named after it, so a shard id often reads like a
/// region name, but the two are different things: `eu-1` and `eu-2` both live in `eu`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(String);

/// Region and shard names are DNS-label-like: lowercase letters, digits and `-`, 1 to 63
/// characters, not starting or ending with `-`.
fn label(kind: &str, s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid {kind} name {s:?}: use 1-63 lowercase letters, digits and '-'"
        ))
    }
}

impl RegionName {
    pub fn parse(s: &str) -> Result<Self, String> {
        label("region", s).map(RegionName)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ShardId {
    pub fn parse(s: &str) -> Result<Self, String> {
        label("shard", s).map(ShardId)
    }

    /// The default shard of a region: the one named after it.
    pub fn of_region(region: &RegionName) -> ShardId {
        ShardId(region.0.clone())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a user (or tenant) as the application names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

/// Longest user id accepted; longer ids are client mistakes, not users.
pub const MAX_USER_ID_LEN: usize = 255;

impl UserId {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("user id is empty".into());
        }
        if s.len() > MAX_USER_ID_LEN {
            return Err(format!(
                "user id is {} bytes long, the limit is {MAX_USER_ID_LEN}",
                s.len()
            ));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err("user id contains control characters".into());
        }
        Ok(UserId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A PostgreSQL WAL position (`pg_lsn`), e.g. `16/B374D848`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes of WAL from `older` to `self`, zero if `older` is ahead.
    pub fn bytes_since(self, older: Lsn) -> u64 {
        self.0.saturating_sub(older.0)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid LSN {s:?}: expected HI/LO in hex"))?;
        let parse = |part: &str| {
            if part.is_empty() || part.len() > 8 {
                return Err(format!("invalid LSN {s:?}"));
            }
            u32::from_str_radix(part, 16).map_err(|_| format!("invalid LSN {s:?}"))
        };
        Ok(Lsn((u64::from(parse(hi)?) << 32) | u64::from(parse(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// What a request means to do, as far as routing cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Intent {
    Read,
    Write,
}

impl Intent {
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Read => "read",
            Intent::Write => "write",
        }
    }
}

/// The role an endpoint plays, as probed with `pg_is_in_recovery()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// Decodes `%XX` escapes (as in URL paths and sqlcommenter values); `None` if malformed or not
/// UTF-8. `+` is left alone: it is not a space outside form bodies.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap().0, 1 << 32);
    }

    #[test]
    fn lsn_rejects_garbage() {
        for text in ["", "/", "1/", "/1", "x/1", "123456789/0", "1/2/3", "1"] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?} should not parse");
        }
    }

    #[test]
    fn bytes_since_saturates() {
        assert_eq!(Lsn(10).bytes_since(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_since(Lsn(10)), 0);
    }

    #[test]
    fn region_and_shard_names_are_label_like() {
        assert!(RegionName::parse("us-east-1").is_ok());
        assert!(ShardId::parse("eu-2").is_ok());
        for bad in ["", "EU", "eu west", "-eu", "eu-", &"a".repeat(64)] {
            assert!(RegionName::parse(bad).is_err(), "{bad:?}");
            assert!(ShardId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ShardId::parse("EU").unwrap_err().contains("shard name"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%40b%2Fc").as_deref(), Some("a@b/c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn user_ids_are_bounded() {
        assert!(UserId::parse("alice@example.com").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"u".repeat(256)).is_err());
        assert!(UserId::parse("a\nb").is_err());
    }
}

//! The SQL homeport itself sends for read-your-writes, written once for both front ends: the
//! commit position query pipelined behind a write, and the replay check a lagging replica is
//! asked before a read that must see a position.

use crate::types::Lsn;

/// The commit position query, sent right behind a write in the same round trip: on the primary
/// it answers a position at or past the write's commit record.
pub const POSITION_SQL: &str = "SELECT pg_current_wal_lsn()::text";

/// The position query's answer (`0/16B3748`), if it is one.
pub fn parse_position(answer: Option<&str>) -> Option<Lsn> {
    answer?.parse().ok()
}

/// The replay check: has this replica replayed `lsn`? The position is a literal (an `Lsn`
/// prints as two hexadecimal numbers, nothing to quote), so both front ends send the same text
/// with the simple protocol, pipelined in front of the read or on its own.
pub fn replay_check_sql(lsn: Lsn) -> String {
    format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")
}

/// Whether the replay check's text answer says "replayed". NULL (not a replica, or nothing
/// replayed yet) is not.
pub fn replayed(answer: Option<&str>) -> bool {
    answer == Some("t")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_names_the_position_as_a_pg_lsn_literal() {
        assert_eq!(
            replay_check_sql(Lsn((1 << 32) | 0x16B3748)),
            "SELECT pg_last_wal_replay_lsn() >= '1/16B3748'::pg_lsn"
        );
    }

    #[test]
    fn answers_are_read_strictly() {
        assert!(replayed(Some("t")));
        assert!(!replayed(Some("f")));
        assert!(!replayed(None));
        assert_eq!(parse_position(Some("0/10")), Some(Lsn(16)));
        assert_eq!(parse_position(Some("nonsense")), None);
        assert_eq!(parse_position(None), None);
    }
}

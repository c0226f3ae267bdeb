//! What a statement says about the transaction around it, for optimistic transactions: how a
//! `BEGIN` opens one, and whether a read would return the same result if it ran again a moment
//! later in another transaction (no `now()`, `random()`, ...). Pure functions over tokens.

use super::lexer::Token;

/// A `BEGIN` / `START TRANSACTION` and the characteristics it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Begin {
    pub read_only: bool,
    pub read_write: bool,
    /// `ISOLATION LEVEL SERIALIZABLE` (a replica can run it only `READ ONLY DEFERRABLE`).
    pub serializable: bool,
}

fn word<'t>(t: &'t Token) -> Option<&'t str> {
    match t {
        Token::Word(w) => Some(w.as_str()),
        _ => None,
    }
}

/// The `BEGIN` of a text holding exactly that one statement.
pub fn begin(code: &[&Token]) -> Option<Begin> {
    let statements: Vec<&[&Token]> = code
        .split(|t| matches!(t, Token::Semicolon))
        .filter(|s| !s.is_empty())
        .collect();
    let [s] = statements.as_slice() else {
        return None;
    };
    let words: Vec<&str> = s.iter().filter_map(|t| word(t)).collect();
    match words.as_slice() {
        ["begin", ..] | ["start", "transaction", ..] => {}
        _ => return None,
    }
    let pair = |a: &str, b: &str| words.windows(2).any(|w| w == [a, b]);
    Some(Begin {
        read_only: pair("read", "only"),
        read_write: pair("read", "write"),
        serializable: pair("level", "serializable"),
    })
}

/// Whether the text may return something else when run again: it reads the clock, a random
/// number, a sequence or the session's backend.
pub fn is_volatile(code: &[&Token]) -> bool {
    code.iter()
        .filter_map(|t| word(t))
        .any(|w| VOLATILE.binary_search(&w).is_ok())
}

/// Sorted, for binary search.
const VOLATILE: &[&str] = &[
    "clock_timestamp",
    "current_date",
    "current_time",
    "current_timestamp",
    "currval",
    "gen_random_uuid",
    "inet_client_port",
    "lastval",
    "localtime",
    "localtimestamp",
    "nextval",
    "now",
    "pg_backend_pid",
    "pg_current_wal_lsn",
    "pg_last_wal_replay_lsn",
    "random",
    "statement_timestamp",
    "timeofday",
    "transaction_timestamp",
    "txid_current",
    "uuid_generate_v4",
];

#[cfg(test)]
mod tests {
    use super::super::lexer::tokenize;
    use super::*;

    fn code(sql: &str) -> Vec<Token<'_>> {
        tokenize(sql)
    }

    #[test]
    fn begins() {
        let b = |sql: &str| {
            let t = code(sql);
            begin(&t.iter().collect::<Vec<_>>())
        };
        assert_eq!(b("BEGIN"), Some(Begin::default()));
        assert_eq!(b("begin transaction;"), Some(Begin::default()));
        assert_eq!(
            b("START TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Some(Begin {
                serializable: true,
                ..Begin::default()
            })
        );
        assert_eq!(
            b("BEGIN ISOLATION LEVEL REPEATABLE READ, READ WRITE"),
            Some(Begin {
                read_write: true,
                ..Begin::default()
            })
        );
        assert!(b("BEGIN READ ONLY").unwrap().read_only);
        assert_eq!(b("BEGIN; SELECT 1"), None);
        assert_eq!(b("SELECT 'begin'"), None);
        assert_eq!(b("COMMIT"), None);
    }

    #[test]
    fn volatile_reads() {
        let v = |sql: &str| {
            let t = code(sql);
            is_volatile(&t.iter().collect::<Vec<_>>())
        };
        assert!(VOLATILE.windows(2).all(|w| w[0] < w[1]));
        for sql in [
            "SELECT now()",
            "select current_timestamp",
            "SELECT random() FROM t",
            "SELECT nextval('s')",
        ] {
            assert!(v(sql), "{sql}");
        }
        for sql in [
            "SELECT * FROM notes WHERE id = $1",
            "SELECT 'now()'",
            "SELECT count(*) FROM t",
        ] {
            assert!(!v(sql), "{sql}");
        }
    }
}

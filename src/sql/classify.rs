//! Statement classification: is a statement *provably* read-only, what is its command tag, and
//! which sqlcommenter hints does it carry. Pure functions over text.
//!
//! The rule is conservative: a statement is read-only only if it is one SELECT-like statement
//! with no data-modifying clause, no row locks, no `INTO`, and no call to a function outside a
//! list of built-ins known not to write. Anything else, including SQL this lexer cannot make
//! sense of, is a write and goes to the primary.

use super::lexer::{Token, tokenize};
use super::session::{
    SessionState, SettingNames, is_transaction_control, session_state, setting_names,
};
use super::transaction::{Begin, begin, is_volatile};

/// Where a `/*homeport_route='...'*/` hint asks a statement to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteHint {
    Primary,
    Replica,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// True only when the statement provably does not write.
    pub read_only: bool,
    /// The command tag PostgreSQL will report (`SELECT`, `INSERT`, `CREATE TABLE`, ...).
    pub command: String,
    /// Number of statements in the text (0 for empty input).
    pub statements: usize,
    pub route: Option<RouteHint>,
    pub user: Option<String>,
    /// What the text's keywords may do to the transaction it runs in.
    pub effect: TxnEffect,
    /// State the text may leave on its server connection beyond its transaction.
    pub session: Option<SessionState>,
    /// The text starts, ends or prepares a transaction (`BEGIN`, `COMMIT`, ...).
    pub transaction_control: bool,
    /// Custom settings the text sets or resets.
    pub setting_names: Option<SettingNames>,
    /// The text is one `BEGIN` / `START TRANSACTION`.
    pub begin: Option<Begin>,
    /// Run again, the text may return something else (clock, random, sequence).
    pub volatile: bool,
}

/// What a statement may do to its transaction, judged from its keywords (never from literals,
/// quoted identifiers or comments): cheap, and erring on the side of "may".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxnEffect {
    pub may_end: bool,
    pub may_begin: bool,
    pub may_copy: bool,
}

impl TxnEffect {
    fn of(code: &[&Token]) -> TxnEffect {
        let mut effect = TxnEffect::default();
        for w in code.iter().filter_map(|t| word(t)) {
            effect.may_end |= matches!(w, "commit" | "end" | "rollback" | "abort");
            effect.may_begin |= matches!(w, "begin" | "start");
            effect.may_copy |= w == "copy";
        }
        effect
    }

    /// The effect of several statements sent together.
    pub fn and(self, other: TxnEffect) -> TxnEffect {
        TxnEffect {
            may_end: self.may_end || other.may_end,
            may_begin: self.may_begin || other.may_begin,
            may_copy: self.may_copy || other.may_copy,
        }
    }
}

pub fn classify(sql: &str) -> Classification {
    classify_with(sql, &|_| false)
}

/// [`classify`], with the functions the operator declared free of session state.
pub fn classify_with(sql: &str, stateless: &dyn Fn(&str) -> bool) -> Classification {
    let tokens = tokenize(sql);
    let (route, user) = hints(&tokens);
    let code: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::BlockComment(_)))
        .collect();
    let statements = count_statements(&code);
    let command = command_tag(&code);
    let complete = !code.iter().any(|t| matches!(t, Token::Unterminated));
    let read_only = complete && statements == 1 && is_read_only(&code);
    Classification {
        read_only,
        command,
        statements,
        // libpq's target_session_attrs checks ask whether the session can write: a homeport
        // session can (its writes go to a primary), so the question goes to a primary too.
        route: route.or(asks_server_role(&code).then_some(RouteHint::Primary)),
        user,
        effect: TxnEffect::of(&code),
        session: session_state(&code, stateless),
        transaction_control: is_transaction_control(&code),
        setting_names: setting_names(&code),
        begin: begin(&code),
        volatile: is_volatile(&code),
    }
}

fn count_statements(code: &[&Token]) -> usize {
    code.split(|t| matches!(t, Token::Semicolon))
        .filter(|s| !s.is_empty())
        .count()
}

/// `SHOW transaction_read_only` and `SELECT pg_is_in_recovery()`: the statements libpq (before
/// PostgreSQL 14's `in_hot_standby`) and other drivers send to learn whether a server takes writes.
fn asks_server_role(code: &[&Token]) -> bool {
    let shape: Vec<&Token> = code
        .iter()
        .filter(|t| !matches!(t, Token::Semicolon))
        .take(5)
        .copied()
        .collect();
    match shape.as_slice() {
        [a, b] => word(a) == Some("show") && word(b) == Some("transaction_read_only"),
        [a, b, Token::LParen, Token::RParen] => {
            word(a) == Some("select") && word(b) == Some("pg_is_in_recovery")
        }
        _ => false,
    }
}

fn word<'t>(t: &'t Token) -> Option<&'t str> {
    match t {
        Token::Word(w) => Some(w.as_str()),
        _ => None,
    }
}

/// Tags as PostgreSQL reports them in CommandComplete, for the statement kinds users send.
fn command_tag(code: &[&Token]) -> String {
    let words: Vec<&str> = code.iter().take(4).filter_map(|t| word(t)).collect();
    let Some(first) = words.first().copied() else {
        return "EMPTY".into();
    };
    match first {
        "with" => main_verb_after_with(code)
            .unwrap_or("SELECT")
            .to_ascii_uppercase(),
        "create" | "alter" | "drop" => {
            let mut tag = vec![first];
            for w in &words[1..] {
                if matches!(
                    *w,
                    "or" | "replace"
                        | "unique"
                        | "temporary"
                        | "temp"
                        | "unlogged"
                        | "materialized"
                        | "if"
                ) {
                    if *w == "materialized" {
                        tag.push(w);
                    }
                    continue;
                }
                tag.push(w);
                break;
            }
            tag.join(" ").to_ascii_uppercase()
        }
        "values" | "table" => "SELECT".into(),
        "begin" | "start" => "BEGIN".into(),
        "end" => "COMMIT".into(),
        other => other.to_ascii_uppercase(),
    }
}

/// The verb of the main statement after a `WITH` list: the first statement keyword at
/// parenthesis depth zero after the CTE definitions.
fn main_verb_after_with<'t>(code: &'t [&Token]) -> Option<&'t str> {
    let mut depth = 0i32;
    for t in code.iter().skip(1) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(w)
                if depth == 0
                    && matches!(
                        w.as_str(),
                        "select" | "insert" | "update" | "delete" | "merge" | "values" | "table"
                    ) =>
            {
                return Some(if matches!(w.as_str(), "values" | "table") {
                    "select"
                } else {
                    w.as_str()
                });
            }
            _ => {}
        }
    }
    None
}

fn is_read_only(code: &[&Token]) -> bool {
    let mut start = 0;
    // EXPLAIN without ANALYZE only plans; EXPLAIN ANALYZE runs the statement, so the statement
    // after the options decides: `EXPLAIN [ANALYZE] [VERBOSE] [( option, ... )] statement`.
    if code.first().and_then(|t| word(t)) == Some("explain") {
        let mut i = 1;
        let mut analyze = false;
        loop {
            match code.get(i) {
                Some(Token::LParen) => {
                    let mut depth = 0usize;
                    while let Some(t) = code.get(i) {
                        match t {
                            Token::LParen => depth += 1,
                            Token::RParen => depth -= 1,
                            t if matches!(word(t), Some("analyze" | "analyse")) => analyze = true,
                            _ => {}
                        }
                        i += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                }
                Some(t) if matches!(word(t), Some("analyze" | "analyse")) => {
                    analyze = true;
                    i += 1;
                }
                Some(t) if word(t) == Some("verbose") => i += 1,
                _ => break,
            }
        }
        // What follows the options must be the explained statement; anything else is a syntax
        // error the primary may as well report.
        if code.get(i).is_none_or(|t| word(t).is_none()) {
            return false;
        }
        if !analyze {
            return true;
        }
        start = i;
    }
    let code = &code[start..];
    match code.first().and_then(|t| word(t)) {
        Some("select" | "with" | "values" | "table") => {}
        Some("show") => return true,
        _ => return false,
    }
    for (i, t) in code.iter().enumerate() {
        let next = code.get(i + 1);
        match t {
            Token::Word(w) => {
                if WRITE_WORDS.contains(&w.as_str()) {
                    return false;
                }
                // Row-locking clauses need the primary: FOR UPDATE / SHARE / NO KEY UPDATE / KEY SHARE.
                if w == "for"
                    && next
                        .and_then(|n| word(n))
                        .is_some_and(|n| matches!(n, "update" | "share" | "no" | "key"))
                {
                    return false;
                }
                if matches!(next, Some(Token::LParen))
                    && !callable_is_safe(w, code.get(i.wrapping_sub(1)).copied())
                {
                    return false;
                }
            }
            Token::QuotedIdent if matches!(next, Some(Token::LParen)) => return false,
            _ => {}
        }
    }
    true
}

/// Words that make a statement write (or lock, or run arbitrary code) wherever they appear.
const WRITE_WORDS: &[&str] = &[
    "insert", "update", "delete", "merge", "into", "copy", "lock", "call", "do", "execute",
    "truncate", "nextval", "setval", "refresh", "notify", "listen",
];

/// Whether `word(` is a keyword construct or a built-in that cannot write. A schema-qualified
/// name (`s.f(`) is never safe: user functions can do anything.
fn callable_is_safe(w: &str, prev: Option<&Token>) -> bool {
    if matches!(prev, Some(Token::Dot)) {
        return false;
    }
    is_safe_callable(w)
}

/// Keywords taking a parenthesis and built-ins that only compute.
pub(super) fn is_safe_callable(name: &str) -> bool {
    SAFE_CALLABLES.binary_search(&name).is_ok()
}

/// Sorted, for binary search. Keywords that take a parenthesis plus built-in functions that only
/// compute (no `pg_*` functions: several of them lock, signal or change server state).
const SAFE_CALLABLES: &[&str] = &[
    "abs",
    "age",
    "all",
    "and",
    "any",
    "array",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "as",
    "avg",
    "between",
    "bit",
    "bool_and",
    "bool_or",
    "btrim",
    "by",
    "cardinality",
    "case",
    "cast",
    "ceil",
    "ceiling",
    "char",
    "char_length",
    "character",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "cross",
    "date_part",
    "date_trunc",
    "decimal",
    "decode",
    "dense_rank",
    "distinct",
    "else",
    "encode",
    "every",
    "exists",
    "extract",
    "filter",
    "first_value",
    "float",
    "floor",
    "format",
    "from",
    "gen_random_uuid",
    "generate_series",
    "greatest",
    "group",
    "having",
    "ilike",
    "in",
    "initcap",
    "interval",
    "is",
    "join",
    "json_agg",
    "json_array_elements",
    "json_build_array",
    "json_build_object",
    "json_extract_path_text",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "lag",
    "last_value",
    "lateral",
    "lead",
    "least",
    "left",
    "length",
    "like",
    "limit",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "max",
    "md5",
    "min",
    "mod",
    "not",
    "now",
    "nullif",
    "numeric",
    "offset",
    "on",
    "or",
    "order",
    "over",
    "partition",
    "position",
    "power",
    "random",
    "rank",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "replace",
    "reverse",
    "right",
    "round",
    "row",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "select",
    "some",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "sum",
    "then",
    "time",
    "timestamp",
    "timestamptz",
    "timezone",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_timestamp",
    "transaction_timestamp",
    "trim",
    "union",
    "unnest",
    "upper",
    "using",
    "values",
    "varchar",
    "when",
    "where",
    "with",
    "within",
];

/// sqlcommenter-style hints: `/*homeport_route='primary',homeport_user='u1'*/`.
/// Values are URL-encoded per the sqlcommenter spec; homeport's own keys only need `%XX` decoding.
fn hints(tokens: &[Token]) -> (Option<RouteHint>, Option<String>) {
    let mut route = None;
    let mut user = None;
    for t in tokens {
        let Token::BlockComment(text) = t else {
            continue;
        };
        for pair in text.split(',') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            let v = v.trim();
            let Some(v) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) else {
                continue;
            };
            match k.trim() {
                "homeport_route" => {
                    route = match v {
                        "primary" => Some(RouteHint::Primary),
                        "replica" => Some(RouteHint::Replica),
                        _ => route,
                    }
                }
                "homeport_user" => user = crate::types::percent_decode(v),
                _ => {}
            }
        }
    }
    (route, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_role_checks_go_to_a_primary() {
        for sql in [
            "SHOW transaction_read_only",
            "show transaction_read_only;",
            "SELECT pg_is_in_recovery()",
            "select pg_is_in_recovery ( ) ;",
        ] {
            assert_eq!(classify(sql).route, Some(RouteHint::Primary), "{sql}");
        }
        for sql in [
            "SHOW default_transaction_read_only",
            "SELECT pg_is_in_recovery(), 1",
            "SELECT 1",
            "SHOW transaction_read_only /*homeport_route='replica'*/",
        ] {
            assert_ne!(classify(sql).route, Some(RouteHint::Primary), "{sql}");
        }
    }

    #[test]
    fn safe_callables_are_sorted() {
        assert!(
            SAFE_CALLABLES.windows(2).all(|w| w[0] < w[1]),
            "SAFE_CALLABLES must stay sorted"
        );
    }

    #[test]
    fn read_only_statements() {
        for sql in [
            "SELECT 1",
            "select * from notes where user_id = $1",
            "SELECT count(*), max(id) FROM t GROUP BY a HAVING count(*) > 1;",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "select a from t where b in (select c from u) and exists (select 1)",
            "VALUES (1), (2)",
            "TABLE notes",
            "SHOW server_version",
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN ANALYZE SELECT 1",
            "select 'delete from t', $$insert$$ from t",
            "select coalesce(a, 'x')::varchar(10), now() from t order by id limit 5",
            "select x from t /* for update */",
            "select jsonb_build_object('a', 1)",
        ] {
            let c = classify(sql);
            assert!(c.read_only, "{sql:?} should be read-only");
            assert_eq!(c.statements, 1, "{sql:?}");
        }
    }

    #[test]
    fn writes_and_unprovable_statements() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "update t set a = 1",
            "DELETE FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT * INTO newtable FROM t",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "select * from t for share",
            "SELECT nextval('s')",
            "SELECT my_function(1)",
            "SELECT public.f()",
            "SELECT \"f\"(1)",
            "SELECT pg_advisory_lock(1)",
            "SELECT 1; SELECT 2",
            "SELECT 1; DELETE FROM t",
            "EXPLAIN ANALYZE DELETE FROM t",
            "CREATE TABLE t (a int)",
            "BEGIN",
            "SET x = 1",
            "",
            "garbage ( ) ;;",
            "select 'unterminated",
        ] {
            assert!(!classify(sql).read_only, "{sql:?} must not be read-only");
        }
    }

    #[test]
    fn command_tags() {
        for (sql, tag) in [
            ("select 1", "SELECT"),
            ("INSERT INTO t VALUES (1)", "INSERT"),
            ("with x as (select 1) update t set a = 1", "UPDATE"),
            ("with x as (select 1) select * from x", "SELECT"),
            ("create table t (a int)", "CREATE TABLE"),
            ("CREATE UNIQUE INDEX i ON t (a)", "CREATE INDEX"),
            ("drop table if exists t", "DROP TABLE"),
            ("/* c */ delete from t", "DELETE"),
            ("", "EMPTY"),
        ] {
            assert_eq!(classify(sql).command, tag, "{sql:?}");
        }
    }

    #[test]
    fn sqlcommenter_hints() {
        let c =
            classify("SELECT 1 /*homeport_route='primary',homeport_user='alice%40example.com'*/");
        assert_eq!(c.route, Some(RouteHint::Primary));
        assert_eq!(c.user.as_deref(), Some("alice@example.com"));
        assert!(c.read_only);
        assert_eq!(
            classify("select 1 /*homeport_route='nowhere'*/").route,
            None
        );
        assert_eq!(classify("select 1 /*homeport_user='%zz'*/").user, None);
    }

    #[test]
    fn explain_analyze_is_as_read_only_as_what_it_runs() {
        for sql in [
            "EXPLAIN ANALYZE INSERT INTO t SELECT 1",
            "explain '' analyze insert into t values (1)",
            "explain (analyze, buffers) delete from t",
            "EXPLAIN ANALYZE VERBOSE UPDATE t SET a = (SELECT 1)",
        ] {
            assert!(!classify(sql).read_only, "{sql}");
        }
        for sql in [
            "EXPLAIN INSERT INTO t SELECT 1",
            "EXPLAIN ANALYZE SELECT * FROM t",
            "explain (analyze true, costs off) select 1",
        ] {
            assert!(classify(sql).read_only, "{sql}");
        }
    }

    #[test]
    fn transaction_effects_come_from_keywords() {
        let e = |sql| classify(sql).effect;
        for sql in ["COMMIT", "end;", "ROLLBACK", "abort", "commit prepared 'x'"] {
            assert!(e(sql).may_end, "{sql}");
        }
        for sql in [
            "INSERT INTO t VALUES ('commit')",
            "BEGIN",
            "SELECT pending, appended FROM t /* end */",
        ] {
            assert!(!e(sql).may_end, "{sql}");
        }
        assert!(e("BEGIN ISOLATION LEVEL REPEATABLE READ").may_begin);
        assert!(e("start transaction").may_begin);
        assert!(!e("INSERT INTO t VALUES (1)").may_begin);
        assert!(e("COPY t FROM STDIN").may_copy);
        assert!(!e("INSERT INTO copyright VALUES (1)").may_copy);
        let all = e("BEGIN")
            .and(e("INSERT INTO t VALUES (1)"))
            .and(e("COMMIT"));
        assert!(all.may_begin && all.may_end && !all.may_copy);
    }
}

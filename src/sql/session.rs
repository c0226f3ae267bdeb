//! Session state: does a statement leave state on its server connection that outlives its
//! transaction (a setting, a lock, a temporary table, a prepared statement, a cursor, a LISTEN, a
//! role), and is it transaction control? Pure functions over the lexer's tokens.
//!
//! Both front ends share server connections between clients, so a statement that leaves session
//! state must never run on a connection another client will get: the wire endpoint pins the
//! session to its server connection, the HTTP API refuses the statement. The rule is conservative:
//! a call of a function homeport does not know to be free of session state counts as session
//! state (`SessionState::UnknownFunction`), unless the operator lists it in
//! `postgres.stateless_functions`. Known are PostgreSQL 15's own functions (the names in
//! `pg_catalog_functions.txt`, taken from `pg_proc`) except the few that keep session state, and
//! some extension functions.

use super::lexer::Token;

/// Why a statement leaves state on its server connection beyond its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// `SET` (not `SET LOCAL`), `RESET`, `SET SESSION CHARACTERISTICS`, `set_config(.., false)`.
    Setting,
    /// `SET ROLE`, `SET SESSION AUTHORIZATION`, `RESET ROLE`.
    Role,
    /// `pg_advisory_lock*`, `pg_try_advisory_lock*`, `pg_advisory_unlock*` (not the `_xact_` ones).
    AdvisoryLock,
    /// `CREATE TEMP ...`, `SELECT ... INTO TEMP ...`.
    TempObject,
    /// SQL-level `PREPARE`, `EXECUTE`, `DEALLOCATE`.
    Prepared,
    /// `DECLARE ... WITH HOLD`.
    HoldCursor,
    /// `LISTEN`, `UNLISTEN`.
    Listen,
    /// `LOAD 'library'`.
    Load,
    /// A call of a function homeport cannot prove leaves no session state (`DO`, `CALL`, a
    /// function outside its lists).
    UnknownFunction,
}

impl SessionState {
    /// Label value for `homeport_wire_pins_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Setting => "setting",
            SessionState::Role => "role",
            SessionState::AdvisoryLock => "advisory_lock",
            SessionState::TempObject => "temp_object",
            SessionState::Prepared => "prepared_statement",
            SessionState::HoldCursor => "hold_cursor",
            SessionState::Listen => "listen",
            SessionState::Load => "load",
            SessionState::UnknownFunction => "unknown_function",
        }
    }

    /// What the state is, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            SessionState::Setting => "a session-level setting",
            SessionState::Role => "a session role",
            SessionState::AdvisoryLock => "a session-level advisory lock",
            SessionState::TempObject => "a temporary object",
            SessionState::Prepared => "an SQL-level prepared statement",
            SessionState::HoldCursor => "a cursor WITH HOLD",
            SessionState::Listen => "a LISTEN registration",
            SessionState::Load => "a loaded library",
            SessionState::UnknownFunction => {
                "possibly anything (it calls code homeport does not know)"
            }
        }
    }
}

/// The custom settings (`prefix.name`, which `pg_settings` does not list) a text's statements
/// set or reset, lowercased; `Dynamic` when a `set_config` names its setting with an expression
/// homeport cannot read (a parameter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingNames {
    Names(Vec<String>),
    Dynamic,
}

impl SettingNames {
    /// Whether the statement may set `name` (lower case): it names it, or names a setting only
    /// through a parameter.
    pub fn may_set(&self, name: &str) -> bool {
        match self {
            SettingNames::Dynamic => true,
            SettingNames::Names(n) => n.iter().any(|n| n == name),
        }
    }
}

/// The settings named by `SET`, `SET LOCAL`, `RESET` and `set_config` in `code`, if any.
pub fn setting_names(code: &[&Token]) -> Option<SettingNames> {
    let mut names = Vec::new();
    for s in code.split(|t| matches!(t, Token::Semicolon)) {
        let w = |i: usize| s.get(i).and_then(|t| word(t));
        match w(0) {
            Some("set") | Some("reset") => {
                let mut i = 1;
                if matches!(w(1), Some("local" | "session")) {
                    i = 2;
                }
                if let (Some(a), Some(Token::Dot), Some(b)) = (w(i), s.get(i + 1), w(i + 2)) {
                    names.push(format!("{a}.{b}"));
                }
            }
            _ => {}
        }
        for (i, t) in s.iter().enumerate() {
            if word(t) != Some("set_config") || !matches!(s.get(i + 1), Some(Token::LParen)) {
                continue;
            }
            match argument(s, i + 1, 0).as_deref() {
                Some([Token::Str(name)]) => {
                    let name = name.to_ascii_lowercase();
                    if name.contains('.') {
                        names.push(name);
                    }
                }
                _ => return Some(SettingNames::Dynamic),
            }
        }
    }
    (!names.is_empty()).then_some(SettingNames::Names(names))
}

/// The session state the statements of `code` (comments removed) may leave, the first found.
/// `stateless` names functions the operator declared free of session state.
pub fn session_state(code: &[&Token], stateless: &dyn Fn(&str) -> bool) -> Option<SessionState> {
    code.split(|t| matches!(t, Token::Semicolon))
        .filter(|s| !s.is_empty())
        .find_map(|s| statement_state(s, stateless))
}

/// Whether the text starts, ends or changes a transaction: `BEGIN`, `START TRANSACTION`,
/// `COMMIT`, `END`, `ROLLBACK` (not `ROLLBACK TO`), `ABORT`, `PREPARE TRANSACTION`,
/// `COMMIT PREPARED`, `ROLLBACK PREPARED`, in any of its statements.
pub fn is_transaction_control(code: &[&Token]) -> bool {
    code.split(|t| matches!(t, Token::Semicolon)).any(|s| {
        let w = |i: usize| s.get(i).and_then(|t| word(t));
        match w(0) {
            Some("begin" | "start" | "commit" | "end" | "abort") => true,
            Some("rollback") => w(1) != Some("to") && w(2) != Some("to"),
            Some("prepare") => w(1) == Some("transaction"),
            _ => false,
        }
    })
}

fn word<'t>(t: &'t Token) -> Option<&'t str> {
    match t {
        Token::Word(w) => Some(w.as_str()),
        _ => None,
    }
}

fn statement_state(s: &[&Token], stateless: &dyn Fn(&str) -> bool) -> Option<SessionState> {
    let w = |i: usize| s.get(i).and_then(|t| word(t));
    match w(0)? {
        "set" => match w(1) {
            Some("local" | "transaction" | "constraints") => None,
            Some("role") => Some(SessionState::Role),
            Some("session") if w(2) == Some("authorization") => Some(SessionState::Role),
            Some("session") if w(2) == Some("role") => Some(SessionState::Role),
            _ => Some(SessionState::Setting),
        },
        "reset" => Some(if matches!(w(1), Some("role" | "session")) {
            SessionState::Role
        } else {
            SessionState::Setting
        }),
        "create" => {
            let temp = s
                .iter()
                .take(4)
                .filter_map(|t| word(t))
                .any(|x| matches!(x, "temp" | "temporary"));
            temp.then_some(SessionState::TempObject)
        }
        "prepare" if w(1) != Some("transaction") => Some(SessionState::Prepared),
        "execute" | "deallocate" => Some(SessionState::Prepared),
        "declare" => {
            let hold = s
                .windows(2)
                .any(|p| word(p[0]) == Some("with") && word(p[1]) == Some("hold"));
            hold.then_some(SessionState::HoldCursor)
        }
        "listen" | "unlisten" => Some(SessionState::Listen),
        // DISCARD clears settings (and more) that homeport tracks for the session.
        "discard" => Some(SessionState::Setting),
        "load" => Some(SessionState::Load),
        "do" | "call" => Some(SessionState::UnknownFunction),
        // DDL runs no function it names (CREATE FUNCTION defines one; column types take
        // parentheses), and the remaining utility statements call none.
        "alter" | "drop" | "comment" | "grant" | "revoke" | "truncate" | "vacuum" | "analyze"
        | "cluster" | "reindex" | "refresh" | "lock" | "savepoint" | "release" | "rollback"
        | "commit" | "begin" | "start" | "end" | "abort" | "show" | "checkpoint" | "notify"
        | "close" | "fetch" | "move" => None,
        _ => {
            if into_temp(s) {
                return Some(SessionState::TempObject);
            }
            calls_state(s, stateless)
        }
    }
}

/// `SELECT ... INTO TEMP[ORARY] t`.
fn into_temp(s: &[&Token]) -> bool {
    s.windows(2)
        .any(|p| word(p[0]) == Some("into") && matches!(word(p[1]), Some("temp" | "temporary")))
}

/// The session state left by the functions a statement calls.
fn calls_state(s: &[&Token], stateless: &dyn Fn(&str) -> bool) -> Option<SessionState> {
    let mut found: Option<SessionState> = None;
    for i in 0..s.len() {
        if !matches!(s.get(i + 1), Some(Token::LParen)) {
            continue;
        }
        let prev = i.checked_sub(1).and_then(|p| s.get(p)).copied();
        // What stands before the whole qualified name (`into` in `INSERT INTO s.t (a)`).
        let mut start = i;
        while start >= 2
            && matches!(s[start - 1], Token::Dot)
            && matches!(s[start - 2], Token::Word(_) | Token::QuotedIdent)
        {
            start -= 2;
        }
        let before = start.checked_sub(1).and_then(|p| s.get(p)).copied();
        if !is_call(s, i, before) {
            continue;
        }
        let state = match s[i] {
            Token::QuotedIdent => Some(SessionState::UnknownFunction),
            Token::Word(name) => {
                // `schema.f(`: only pg_catalog's functions are known by name.
                let qualified = matches!(prev, Some(Token::Dot));
                let schema = qualified
                    .then(|| {
                        i.checked_sub(2)
                            .and_then(|p| s.get(p))
                            .and_then(|t| word(t))
                    })
                    .flatten();
                if qualified && schema != Some("pg_catalog") {
                    let full = schema.map(|sc| format!("{sc}.{name}"));
                    if full.as_deref().is_some_and(stateless) {
                        None
                    } else {
                        Some(SessionState::UnknownFunction)
                    }
                } else {
                    function_state(name, s, i + 1, stateless)
                }
            }
            _ => None,
        };
        // An advisory lock or a setting is more telling than "unknown".
        match (found, state) {
            (_, None) => {}
            (None, s) | (Some(SessionState::UnknownFunction), s) => found = s,
            _ => {}
        }
    }
    found
}

/// Whether `s[i]` followed by `(` is a function call rather than a table's column list, an
/// alias's column list, a type modifier or a keyword construct.
fn is_call(s: &[&Token], i: usize, prev: Option<&Token>) -> bool {
    // `COPY t FROM STDIN (FORMAT csv)`, `... WITH (fillfactor = 70)`: option lists.
    if matches!(word(s[i]), Some("stdin" | "stdout" | "with")) {
        return false;
    }
    match prev {
        // `x::varchar(10)`, `f(x) AS t(a, b)`, `INSERT INTO t (a)`, `FROM f(x) g(a)`,
        // `COPY t (a) FROM STDIN`.
        Some(Token::Punct(':')) | Some(Token::RParen) => return false,
        Some(t)
            if matches!(
                word(t),
                Some("into" | "as" | "table" | "only" | "update" | "copy")
            ) =>
        {
            return false;
        }
        _ => {}
    }
    // `WITH c (a, b) AS (...)`: a CTE's column list.
    let close = matching_paren(s, i + 1);
    let after = close.and_then(|c| s.get(c + 1)).and_then(|t| word(t));
    let cte_header = after == Some("as")
        && (matches!(prev.and_then(|t| word(t)), Some("with" | "recursive"))
            || (matches!(prev, Some(Token::Comma)) && in_with_header(s, i)));
    !cte_header
}

/// Whether position `i` is in the list of a leading `WITH` (before the main statement's verb).
fn in_with_header(s: &[&Token], i: usize) -> bool {
    if s.first().and_then(|t| word(t)) != Some("with") {
        return false;
    }
    let mut depth = 0i32;
    for t in &s[..i] {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(w)
                if depth == 0
                    && matches!(
                        w.as_str(),
                        "select" | "insert" | "update" | "delete" | "merge"
                    ) =>
            {
                return false;
            }
            _ => {}
        }
    }
    true
}

fn matching_paren(s: &[&Token], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (j, t) in s.iter().enumerate().skip(open) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

/// The session state a call of the built-in or keyword `name` leaves; `open` is its `(`.
fn function_state(
    name: &str,
    s: &[&Token],
    open: usize,
    stateless: &dyn Fn(&str) -> bool,
) -> Option<SessionState> {
    match name {
        "set_config" => {
            // set_config(name, value, is_local): only a literal `true` keeps it in the transaction.
            let third = argument(s, open, 2);
            let local = matches!(third.as_deref(), Some([t]) if word(t) == Some("true"));
            (!local).then_some(SessionState::Setting)
        }
        n if n.starts_with("pg_advisory_") || n.starts_with("pg_try_advisory_") => {
            (!n.contains("_xact_")).then_some(SessionState::AdvisoryLock)
        }
        "setseed"
        | "pg_replication_origin_session_setup"
        | "pg_replication_origin_session_reset" => Some(SessionState::Setting),
        n if super::classify::is_safe_callable(n)
            || is_stateless_builtin(n)
            || is_catalog_function(n)
            || stateless(n) =>
        {
            None
        }
        _ => Some(SessionState::UnknownFunction),
    }
}

/// The tokens of argument `k` (0-based) of the call whose `(` is at `open`.
fn argument<'t>(s: &[&'t Token<'t>], open: usize, k: usize) -> Option<Vec<&'t Token<'t>>> {
    let close = matching_paren(s, open)?;
    let mut depth = 0i32;
    let mut index = 0;
    let mut out = Vec::new();
    for t in &s[open + 1..close] {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Comma if depth == 0 => {
                index += 1;
                continue;
            }
            _ => {}
        }
        if index == k {
            out.push(*t);
        }
    }
    (index >= k).then_some(out)
}

/// Sorted, for binary search: built-in functions (and keywords taking parentheses) that may
/// write or read server state but leave nothing on the session after the transaction ends.
/// Read-only computing functions are in the classifier's list already.
const STATELESS_BUILTINS: &[&str] = &[
    "analyse",
    "analyze",
    "array_append",
    "array_cat",
    "array_prepend",
    "array_remove",
    "array_to_json",
    "ascii",
    "cbrt",
    "chr",
    "conflict",
    "copy",
    "cube",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "currval",
    "date",
    "degrees",
    "div",
    "exp",
    "explain",
    "first",
    "format_type",
    "gen_random_bytes",
    "generate_subscripts",
    "has_table_privilege",
    "inet_client_addr",
    "int",
    "int2",
    "int4",
    "int8",
    "integer",
    "isfinite",
    "json_each",
    "json_object_agg",
    "json_populate_record",
    "json_typeof",
    "jsonb_insert",
    "jsonb_object_agg",
    "jsonb_path_query",
    "jsonb_populate_record",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_to_record",
    "jsonb_to_recordset",
    "jsonb_typeof",
    "lastval",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "next",
    "nextval",
    "ntile",
    "obj_description",
    "octet_length",
    "overlay",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_backend_pid",
    "pg_cancel_backend",
    "pg_column_size",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_lsn",
    "pg_current_xact_id",
    "pg_database_size",
    "pg_get_viewdef",
    "pg_is_in_recovery",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_notify",
    "pg_postmaster_start_time",
    "pg_relation_size",
    "pg_size_pretty",
    "pg_sleep",
    "pg_table_size",
    "pg_terminate_backend",
    "pg_total_relation_size",
    "pg_typeof",
    "pg_wal_lsn_diff",
    "pi",
    "plainto_tsquery",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "radians",
    "regexp_like",
    "regexp_substr",
    "repeat",
    "returning",
    "rollup",
    "set",
    "sets",
    "setseed",
    "setval",
    "sha256",
    "sign",
    "smallint",
    "stddev",
    "text",
    "to_number",
    "to_regclass",
    "to_tsquery",
    "to_tsvector",
    "translate",
    "trunc",
    "ts_rank",
    "txid_current",
    "unaccent",
    "uuid",
    "uuid_generate_v4",
    "variance",
    "version",
    "websearch_to_tsquery",
    "width_bucket",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
];

fn is_stateless_builtin(name: &str) -> bool {
    STATELESS_BUILTINS.binary_search(&name).is_ok()
}

/// The names of PostgreSQL 15's functions in `pg_catalog`, sorted: `SELECT DISTINCT proname FROM
/// pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace AND prokind IN ('f', 'a', 'w')`.
const CATALOG_FUNCTIONS: &str = include_str!("pg_catalog_functions.txt");

fn is_catalog_function(name: &str) -> bool {
    static NAMES: std::sync::LazyLock<Vec<&'static str>> =
        std::sync::LazyLock::new(|| CATALOG_FUNCTIONS.lines().collect());
    NAMES.binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::super::lexer::tokenize;
    use super::*;

    fn state(sql: &str) -> Option<SessionState> {
        let tokens = tokenize(sql);
        let code: Vec<&Token> = tokens
            .iter()
            .filter(|t| !matches!(t, Token::BlockComment(_)))
            .collect();
        session_state(&code, &|n| n == "app_stateless" || n == "app.audit")
    }

    fn control(sql: &str) -> bool {
        let tokens = tokenize(sql);
        let code: Vec<&Token> = tokens.iter().collect();
        is_transaction_control(&code)
    }

    #[test]
    fn stateless_builtins_are_sorted() {
        assert!(STATELESS_BUILTINS.windows(2).all(|w| w[0] < w[1]));
        let catalog: Vec<&str> = CATALOG_FUNCTIONS.lines().collect();
        assert!(catalog.len() > 2000);
        assert!(catalog.windows(2).all(|w| w[0] < w[1]));
        for f in ["lower", "pg_backend_pid", "jsonb_path_exists", "set_config"] {
            assert!(is_catalog_function(f), "{f}");
        }
    }

    #[test]
    fn statements_that_leave_session_state() {
        use SessionState::*;
        for (sql, expected) in [
            ("SET search_path = x", Setting),
            ("set statement_timeout = 1", Setting),
            ("SET SESSION timezone = 'UTC'", Setting),
            ("SET TIME ZONE 'UTC'", Setting),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                Setting,
            ),
            ("RESET ALL", Setting),
            ("DISCARD ALL", Setting),
            ("select set_config('app.tenant', 'a', false)", Setting),
            ("SELECT set_config('app.tenant', $1, $2)", Setting),
            ("SELECT pg_catalog.set_config('x', 'y', false)", Setting),
            ("SET ROLE other", Role),
            ("SET SESSION AUTHORIZATION other", Role),
            ("RESET ROLE", Role),
            ("select pg_advisory_lock(1)", AdvisoryLock),
            ("SELECT pg_try_advisory_lock_shared($1)", AdvisoryLock),
            ("select pg_advisory_unlock_all()", AdvisoryLock),
            ("select setseed(0.5)", Setting),
            ("CREATE TEMP TABLE t (a int)", TempObject),
            ("create local temporary table t as select 1", TempObject),
            ("CREATE TEMPORARY VIEW v AS SELECT 1", TempObject),
            ("SELECT * INTO TEMP t FROM x", TempObject),
            ("PREPARE p AS SELECT 1", Prepared),
            ("EXECUTE p", Prepared),
            ("DEALLOCATE ALL", Prepared),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", HoldCursor),
            ("LISTEN ch", Listen),
            ("UNLISTEN *", Listen),
            ("LOAD 'auto_explain'", Load),
            ("SELECT my_function(1)", UnknownFunction),
            ("SELECT public.f()", UnknownFunction),
            ("SELECT \"F\"(1)", UnknownFunction),
            ("DO $$BEGIN PERFORM 1; END$$", UnknownFunction),
            ("CALL p()", UnknownFunction),
            ("INSERT INTO t VALUES (f(1))", UnknownFunction),
            ("SELECT 1; SET x = 1", Setting),
            ("SELECT f(), pg_advisory_lock(1)", AdvisoryLock),
        ] {
            assert_eq!(state(sql), Some(expected), "{sql}");
        }
    }

    #[test]
    fn statements_that_leave_nothing() {
        for sql in [
            "SELECT 1",
            "SET LOCAL search_path = x",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "select set_config('app.tenant', $1, true)",
            "select pg_advisory_xact_lock(1)",
            "SELECT pg_try_advisory_xact_lock(1)",
            "INSERT INTO t (a, b) VALUES (1, 2) ON CONFLICT (a) DO UPDATE SET (a, b) = (1, 2)",
            "INSERT INTO s.t (a) VALUES (nextval('q')) RETURNING id",
            "select x::varchar(10), cast(y as numeric(10, 2)) from t",
            "SELECT * FROM generate_series(1, 3) AS g(x)",
            "SELECT * FROM generate_series(1, 3) g(x)",
            "WITH c (a) AS (SELECT 1), d (b) AS (SELECT 2) SELECT * FROM c, d",
            "CREATE TABLE t (a varchar(10) DEFAULT f())",
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
            "SELECT count(*) FROM notes WHERE user_id = $1",
            "select pg_backend_pid(), current_setting('x'), now()",
            "SELECT jsonb_path_exists(doc, '$.a'), array_length(a, 1), pg_catalog.lower(x) FROM t",
            "SELECT app_stateless(1), app.audit(2)",
            "SELECT 'SET x = 1', $$pg_advisory_lock(1)$$",
            "SELECT a FROM t WHERE b IN (1, 2) AND EXISTS (SELECT 1)",
            "UPDATE t SET a = coalesce(b, 1) WHERE id = $1",
            // Found by psycopg's suite through homeport (COPY with a column list pinned).
            "COPY t (a, b) FROM STDIN",
            "copy s.t (a) to stdout",
            "COPY (SELECT a FROM t) TO STDOUT",
            "copy copy_in (col2, data) from stdin (format binary)",
            "COPY (SELECT 1) TO STDOUT (FORMAT csv, HEADER)",
            "COPY t FROM STDIN WITH (FORMAT csv)",
            "CREATE TABLE t (a int) WITH (fillfactor = 70)",
            "EXPLAIN (ANALYZE, BUFFERS) SELECT 1",
            "SELECT a FROM t FETCH FIRST (2) ROWS ONLY",
            "SELECT a, sum(b) FROM t GROUP BY ROLLUP (a), CUBE (a, b), GROUPING SETS ((a), ())",
            "SELECT xmlelement(name foo, xmlattributes(1 AS a)), xmlforest(a, b) FROM t",
        ] {
            assert_eq!(state(sql), None, "{sql}");
        }
    }

    #[test]
    fn custom_setting_names() {
        let names = |sql: &str| {
            let tokens = tokenize(sql);
            let code: Vec<&Token> = tokens.iter().collect();
            setting_names(&code)
        };
        let list = |v: &[&str]| {
            Some(SettingNames::Names(
                v.iter().map(|s| s.to_string()).collect(),
            ))
        };
        assert_eq!(names("SET app.tenant = 'a'"), list(&["app.tenant"]));
        assert_eq!(names("set local App.Tenant to 'a'"), list(&["app.tenant"]));
        assert_eq!(names("RESET app.tenant"), list(&["app.tenant"]));
        assert_eq!(
            names(
                "SELECT set_config('App.User_Id', $1, false), set_config('work_mem', '1MB', false)"
            ),
            list(&["app.user_id"])
        );
        assert_eq!(
            names("SELECT set_config($1, $2, false)"),
            Some(SettingNames::Dynamic)
        );
        assert_eq!(names("SET work_mem = '8MB'"), None);
        assert_eq!(names("SELECT 'set_config(1)'"), None);
    }

    #[test]
    fn transaction_control() {
        for sql in [
            "BEGIN",
            "begin isolation level serializable",
            "START TRANSACTION",
            "COMMIT",
            "end",
            "ROLLBACK",
            "abort",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "SELECT 1; COMMIT",
        ] {
            assert!(control(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "ROLLBACK TO SAVEPOINT a",
            "rollback to a",
            "SAVEPOINT a",
            "RELEASE SAVEPOINT a",
            "SELECT 'begin'",
            "PREPARE p AS SELECT 1",
        ] {
            assert!(!control(sql), "{sql}");
        }
    }
}

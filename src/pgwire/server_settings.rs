//! A client's session-level settings follow it from server connection to server connection.
//!
//! A session's settings are its startup parameters (`application_name`, `DateStyle`, `TimeZone`,
//! `-c name=value` options, ...) and whatever its `SET` / `set_config(.., false)` / `RESET`
//! statements leave. After a transaction in which such a statement ran, homeport reads the
//! session's settings back from the server (`pg_settings` where `source = 'session'`), so it
//! knows them however they were written. Every server connection remembers the settings homeport
//! left on it; when a session takes a connection whose settings differ from its own, homeport
//! makes them equal first (`set_config` and `RESET` in one round trip) — nothing is sent when
//! they already match, which is the usual case. So settings never cross from one client to
//! another, and a client keeps its own without pinning a server connection.

use std::collections::BTreeMap;

/// Setting name (lowercased) -> value, as `pg_settings` or the client gave it.
pub type Settings = BTreeMap<String, String>;

/// Reads the session-level settings of a server connection. Roles are never replayed (a session
/// that sets one is pinned instead).
const CAPTURE_SQL: &str = "SELECT lower(name), setting FROM pg_settings WHERE source = 'session' AND name NOT IN ('role', 'session_authorization')";

/// [`CAPTURE_SQL`] and the custom settings `custom` (which `pg_settings` does not list): an empty
/// or unset custom setting reads as NULL.
pub fn capture_sql<'a>(custom: impl IntoIterator<Item = &'a String>) -> String {
    let mut sql = CAPTURE_SQL.to_string();
    for name in custom.into_iter().filter(|n| valid_name(n)) {
        sql.push_str(&format!(
            " UNION ALL SELECT '{name}', nullif(current_setting('{name}', true), '')"
        ));
    }
    sql
}

/// Startup parameters that are not settings, or that homeport owns.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Whether `name` may be tracked: a plain or custom (`prefix.name`) setting name, so it can be
/// written into `set_config('name', ...)` and `RESET name` as is.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.split('.').count() <= 2
        && name
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// The settings a client asked for at startup: its parameters and `-c name=value` options,
/// except homeport's own (`homeport.*`), the identity setting homeport manages, names that are
/// not settings, and values the server reported already (`server`: its parameter statuses).
pub fn from_startup(
    params: &[(String, String)],
    identity: Option<&str>,
    server: &[(String, String)],
) -> Settings {
    let mut out = Settings::new();
    let mut add = |k: &str, v: &str| {
        let k = k.to_ascii_lowercase();
        let reported = server
            .iter()
            .any(|(sk, sv)| sk.eq_ignore_ascii_case(&k) && sv.eq_ignore_ascii_case(v));
        if !reported
            && !NOT_SETTINGS.contains(&k.as_str())
            && !k.starts_with("homeport.")
            && !k.starts_with('_')
            && Some(k.as_str()) != identity
            && valid_name(&k)
        {
            out.insert(k, v.to_string());
        }
    };
    for (k, v) in params {
        if k == "options" {
            for (k, v) in options(v) {
                add(&k, &v);
            }
        } else {
            add(k, v);
        }
    }
    out
}

/// `-c name=value` and `--name=value` pairs of a startup `options` string (backslash escapes
/// a space, as in libpq).
fn options(text: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
        } else if let Some(s) = w.strip_prefix("-c") {
            Some(s.to_string())
        } else {
            w.strip_prefix("--").map(String::from)
        };
        if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_string()));
        }
    }
    out
}

/// Behind a transaction-mode pooler: one statement giving the current transaction the settings
/// `wanted` (`set_config(.., true)`, gone at its end, never left for the pooler's next client),
/// or `None` when there are none.
pub fn local_sql(wanted: &Settings) -> Option<String> {
    let set: Vec<String> = wanted
        .iter()
        .filter(|(k, _)| valid_name(k))
        .map(|(k, v)| format!("set_config('{k}', {}, true)", literal(v)))
        .collect();
    (!set.is_empty()).then(|| format!("SELECT {}", set.join(", ")))
}

/// The statements that make a server connection's settings `current` equal to `wanted`, or
/// `None` when they are equal already.
pub fn reconcile_sql(wanted: &Settings, current: &Settings) -> Option<String> {
    let set: Vec<String> = wanted
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v) && valid_name(k))
        .map(|(k, v)| format!("set_config('{k}', {}, false)", literal(v)))
        .collect();
    let reset: Vec<String> = current
        .keys()
        .filter(|k| !wanted.contains_key(*k) && valid_name(k))
        .map(|k| format!("RESET {k}"))
        .collect();
    if set.is_empty() && reset.is_empty() {
        return None;
    }
    let mut sql = String::new();
    if !set.is_empty() {
        sql.push_str("SELECT ");
        sql.push_str(&set.join(", "));
    }
    for r in reset {
        if !sql.is_empty() {
            sql.push_str("; ");
        }
        sql.push_str(&r);
    }
    Some(sql)
}

/// A dollar-quoted literal whose tag does not occur in `v` (immune to
/// `standard_conforming_strings`).
fn literal(v: &str) -> String {
    let mut n = 0;
    loop {
        let tag = format!("$hp{n}$");
        if !v.contains(&tag) {
            return format!("{tag}{v}{tag}");
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn local_settings_end_with_the_transaction() {
        assert_eq!(local_sql(&Settings::new()), None);
        let mut wanted = Settings::new();
        wanted.insert("application_name".into(), "shop".into());
        wanted.insert("app.user_id".into(), "u$hp0$1".into());
        wanted.insert("bad name".into(), "x".into());
        assert_eq!(
            local_sql(&wanted).as_deref(),
            Some(
                "SELECT set_config('app.user_id', $hp1$u$hp0$1$hp1$, true), set_config('application_name', $hp0$shop$hp0$, true)"
            )
        );
    }

    #[test]
    fn startup_parameters_and_options_become_settings() {
        let s = from_startup(
            &params(&[
                ("user", "app"),
                ("database", "app"),
                ("application_name", "billing"),
                ("DateStyle", "ISO, DMY"),
                ("client_encoding", "UTF8"),
                ("TimeZone", "UTC"),
                ("homeport.user", "u1"),
                (
                    "options",
                    "-c homeport.user=u1 -c statement_timeout=7s --search-path=a,b -cwork_mem=8MB -c x=a\\ b",
                ),
                ("app.user_id", "forged"),
                ("bad name", "x"),
            ]),
            Some("app.user_id"),
            &params(&[("client_encoding", "UTF8"), ("TimeZone", "Europe/Berlin")]),
        );
        let want: Vec<(&str, &str)> = vec![
            ("application_name", "billing"),
            ("datestyle", "ISO, DMY"),
            ("search_path", "a,b"),
            ("statement_timeout", "7s"),
            ("timezone", "UTC"),
            ("work_mem", "8MB"),
            ("x", "a b"),
        ];
        let got: Vec<(&str, &str)> = s.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn reconcile_sets_what_differs_and_resets_what_is_extra() {
        let wanted: Settings = [("a", "1"), ("b", "it's $hp0$")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let current: Settings = [("a", "1"), ("c", "3")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        assert_eq!(
            reconcile_sql(&wanted, &current).as_deref(),
            Some("SELECT set_config('b', $hp1$it's $hp0$$hp1$, false); RESET c")
        );
        assert_eq!(reconcile_sql(&wanted, &wanted), None);
        assert_eq!(
            reconcile_sql(&Settings::new(), &current).as_deref(),
            Some("RESET a; RESET c")
        );
    }

    #[test]
    fn capture_reads_custom_settings_by_name() {
        let names = ["app.tenant".to_string(), "bad name".to_string()];
        let sql = capture_sql(&names);
        assert!(sql.ends_with(
            "UNION ALL SELECT 'app.tenant', nullif(current_setting('app.tenant', true), '')"
        ));
        assert!(!sql.contains("bad name"));
    }

    #[test]
    fn names_are_plain_or_custom() {
        for ok in ["work_mem", "app.tenant", "timezone"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a.b.c", "x;drop", "a b", "'x'", ".a"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}

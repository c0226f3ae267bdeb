//! homeport's own session settings on the wire: `SET [LOCAL] / RESET / SHOW` of `homeport.user`,
//! `homeport.consistency_token` and `homeport.max_staleness`, and `SHOW homeport.route`. They are
//! answered by homeport and never reach a server. Parsing is pure and unit-tested.

/// A statement addressed to homeport itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Set {
        name: String,
        value: String,
        local: bool,
    },
    Reset {
        name: String,
    },
    Show {
        name: String,
    },
}

/// Settings homeport knows. Reserved ones are recognised but refused until implemented.
pub const KNOWN: &[&str] = &[
    "user",
    "route",
    "consistency_token",
    "max_staleness",
    "idempotency_key",
    "optimistic_transactions",
];
pub const RESERVED: &[&str] = &[];

/// An `on` / `off` value (also `true`/`false`, `1`/`0`, `yes`/`no`, as PostgreSQL's booleans).
pub fn parse_on_off(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        other => Err(format!("{other:?} is not on or off")),
    }
}

/// A `homeport.max_staleness` value: `off` for no bound, a whole number
/// of milliseconds, or a duration such as `200ms` or `2s`.
pub fn parse_staleness(value: &str) -> Result<Option<std::time::Duration>, String> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("default") {
        return Ok(None);
    }
    if let Ok(ms) = v.parse::<u64>() {
        return Ok(Some(std::time::Duration::from_millis(ms)));
    }
    humantime::parse_duration(v)
        .map(Some)
        .map_err(|_| format!("{v:?} is not a duration; write e.g. 200ms, 2s, or off"))
}

/// Recognises `SET/RESET/SHOW homeport.<name>`; anything else is `None` (goes to a server).
pub fn parse(sql: &str) -> Option<Setting> {
    let s = sql.trim().trim_end_matches(';').trim();
    let (verb, rest) = split_word(s)?;
    // Most statements are not settings: answered before anything is allocated.
    if !["set", "reset", "show"]
        .iter()
        .any(|v| verb.eq_ignore_ascii_case(v))
    {
        return None;
    }
    let verb = verb.to_ascii_lowercase();
    let (mut word, mut rest) = split_word(rest)?;
    let mut local = false;
    if verb == "set" && (word.eq_ignore_ascii_case("local") || word.eq_ignore_ascii_case("session"))
    {
        local = word.eq_ignore_ascii_case("local");
        (word, rest) = split_word(rest)?;
    }
    let name = setting_name(word)?;
    match verb.as_str() {
        "show" if rest.trim().is_empty() => Some(Setting::Show { name }),
        "reset" if rest.trim().is_empty() => Some(Setting::Reset { name }),
        "set" => {
            let rest = rest.trim_start();
            let value = if let Some(v) = rest.strip_prefix('=') {
                v
            } else {
                let (to, v) = split_word(rest)?;
                if !to.eq_ignore_ascii_case("to") {
                    return None;
                }
                v
            };
            Some(Setting::Set {
                name,
                value: unquote(value.trim())?,
                local,
            })
        }
        _ => None,
    }
}

/// Whether a query that is not one plain setting statement still holds one: `BEGIN; SET LOCAL
/// homeport.x = ...; ...`, or a disguised spelling (`SET /**/ homeport.x`, `SET "homeport".x`).
/// The server would take it for an ordinary placeholder setting and silently accept it, so such
/// queries are refused instead.
pub fn hides_setting(sql: &str) -> bool {
    use crate::sql::lexer::{Token, tokenize};
    if !sql
        .as_bytes()
        .windows(8)
        .any(|w| w.eq_ignore_ascii_case(b"homeport"))
    {
        return false;
    }
    let quoted_homeport = sql
        .as_bytes()
        .windows(10)
        .any(|w| w.eq_ignore_ascii_case(b"\"homeport\""));
    // Comments change nothing for the server, so they change nothing here.
    let tokens: Vec<Token> = tokenize(sql)
        .into_iter()
        .filter(|t| !matches!(t, Token::BlockComment(_)))
        .collect();
    let mut at_start = true;
    for (i, t) in tokens.iter().enumerate() {
        if at_start
            && let Token::Word(verb) = t
            && matches!(verb.as_str(), "set" | "reset" | "show")
        {
            let mut j = i + 1;
            if matches!(tokens.get(j), Some(Token::Word(w)) if w == "local" || w == "session") {
                j += 1;
            }
            let prefix = match tokens.get(j) {
                Some(Token::Word(w)) => w == "homeport",
                Some(Token::QuotedIdent) => quoted_homeport,
                _ => false,
            };
            if prefix && tokens.get(j + 1) == Some(&Token::Dot) {
                return true;
            }
        }
        at_start = matches!(t, Token::Semicolon);
    }
    false
}

/// `homeport.user` -> `user` (case-insensitive prefix, like PostgreSQL's custom settings).
fn setting_name(word: &str) -> Option<String> {
    let lower = word.to_ascii_lowercase();
    let name = lower.strip_prefix("homeport.")?;
    (!name.is_empty()).then(|| name.to_string())
}

/// The word at the start of `s` (up to whitespace or '='), and the rest.
fn split_word(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(s.len());
    (end > 0).then(|| (&s[..end], &s[end..]))
}

/// `'it''s'` -> `it's`; a bare word stays as is; anything else is not a value.
fn unquote(v: &str) -> Option<String> {
    if let Some(inner) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        if inner.replace("''", "").contains('\'') {
            return None;
        }
        return Some(inner.replace("''", "'"));
    }
    (!v.is_empty() && v.chars().all(|c| c.is_alphanumeric() || "_-.@".contains(c)))
        .then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str, local: bool) -> Option<Setting> {
        Some(Setting::Set {
            name: name.into(),
            value: value.into(),
            local,
        })
    }

    #[test]
    fn recognised_forms() {
        assert_eq!(parse("SET homeport.user = 'u1'"), set("user", "u1", false));
        assert_eq!(
            parse("set homeport.user to 'o''brien';"),
            set("user", "o'brien", false)
        );
        assert_eq!(
            parse("SET LOCAL homeport.user = u2"),
            set("user", "u2", true)
        );
        assert_eq!(
            parse("SET SESSION homeport.user='u3'"),
            set("user", "u3", false)
        );
        assert_eq!(
            parse("  SHOW homeport.route ; "),
            Some(Setting::Show {
                name: "route".into()
            })
        );
        assert_eq!(
            parse("RESET HOMEPORT.USER"),
            Some(Setting::Reset {
                name: "user".into()
            })
        );
        assert_eq!(
            parse("SET homeport.consistency_token = 'x'"),
            set("consistency_token", "x", false)
        );
    }

    #[test]
    fn settings_hidden_in_longer_queries_are_found() {
        assert!(hides_setting(
            "BEGIN; SET LOCAL homeport.idempotency_key = 'k'; INSERT INTO t VALUES (1)"
        ));
        assert!(hides_setting("select 1; show HOMEPORT.route"));
        assert!(hides_setting("SET /**/ homeport.user = 'x'"));
        assert!(hides_setting("RESET/**/ HOMEPORT.x"));
        assert!(hides_setting("SET \"homeport\".user = 'x'"));
        assert!(!hides_setting("SET \"myapp\".user = 'homeport'"));
        assert!(!hides_setting("SELECT 'SET homeport.user = 1'"));
        assert!(!hides_setting("INSERT INTO homeport.things VALUES (1)"));
        assert!(!hides_setting("SELECT 1"));
    }

    #[test]
    fn staleness_values() {
        use std::time::Duration;
        assert_eq!(parse_staleness("250"), Ok(Some(Duration::from_millis(250))));
        assert_eq!(parse_staleness("2s"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(parse_staleness("OFF"), Ok(None));
        assert!(parse_staleness("soon").is_err());
        assert!(parse_staleness("-5").is_err());
    }

    #[test]
    fn everything_else_goes_to_the_server() {
        for sql in [
            "SET search_path = public",
            "SHOW server_version",
            "SELECT 1",
            "SET homeport.user = 'a' || 'b'",
            "SET homeport.user = 'unterminated",
            "SHOW homeport.user extra",
            "SET homeport. = 1",
            "",
        ] {
            assert_eq!(parse(sql), None, "{sql:?}");
        }
    }
}

//! A small SQL lexer: just enough of PostgreSQL's lexical rules to see words, punctuation and
//! comments without being fooled by string literals, quoted identifiers, dollar quoting or nested
//! block comments. See <https://www.postgresql.org/docs/15/sql-syntax-lexical.html>.
//!
//! It never fails: unterminated literals simply run to the end of the input, and the classifier
//! treats anything it does not understand as "not provably read-only".

/// One lexical token. Words are lowercased; literals keep no content (the classifier never needs
/// it), comments keep theirs (sqlcommenter hints live there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token<'a> {
    /// An unquoted identifier or keyword, lowercased.
    Word(String),
    /// A `"quoted identifier"`.
    QuotedIdent,
    /// A string, bit-string or dollar-quoted literal.
    Literal,
    /// A plain `'string'` literal: its text between the quotes, with `''` left doubled.
    Str(&'a str),
    Number,
    /// A positional parameter such as `$1`.
    Param,
    /// The text inside `/* ... */` (outermost level).
    BlockComment(&'a str),
    LParen,
    RParen,
    Semicolon,
    Dot,
    Comma,
    /// Any other operator or punctuation character.
    Punct(char),
    /// A literal, quoted identifier or comment that never ends: the input is not valid SQL.
    Unterminated,
}

/// Splits `sql` into tokens, skipping whitespace and `--` comments.
pub fn tokenize(sql: &str) -> Vec<Token<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match block_comment_end(b, i) {
                Some((end, inner_end)) => {
                    out.push(Token::BlockComment(&sql[i + 2..inner_end]));
                    i = end;
                }
                None => return unterminated(out),
            },
            b'\'' => {
                let escape = is_escape_string(b, i);
                let Some(end) = quoted_end(b, i + 1, b'\'', escape) else {
                    return unterminated(out);
                };
                out.push(if escape {
                    Token::Literal
                } else {
                    Token::Str(&sql[i + 1..end - 1])
                });
                i = end;
            }
            b'"' => {
                let Some(end) = quoted_end(b, i + 1, b'"', false) else {
                    return unterminated(out);
                };
                i = end;
                out.push(Token::QuotedIdent);
            }
            b'$' => {
                if let Some(end) = dollar_quote_end(b, i) {
                    let Some(end) = end else {
                        return unterminated(out);
                    };
                    i = end;
                    out.push(Token::Literal);
                } else {
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    out.push(Token::Param);
                }
            }
            b'(' => push1(&mut out, &mut i, Token::LParen),
            b')' => push1(&mut out, &mut i, Token::RParen),
            b';' => push1(&mut out, &mut i, Token::Semicolon),
            b',' => push1(&mut out, &mut i, Token::Comma),
            b'.' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                push1(&mut out, &mut i, Token::Dot)
            }
            b'0'..=b'9' | b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                out.push(Token::Number);
            }
            _ if is_ident_start(c) => {
                let start = i;
                while i < b.len() && is_ident_continue(b[i]) {
                    i += 1;
                }
                // E'...', B'...', X'...', U&'...' prefixes make the following quote a literal.
                let word = &sql[start..i];
                if b.get(i) == Some(&b'\'')
                    && matches!(word, "e" | "E" | "b" | "B" | "x" | "X" | "n" | "N")
                {
                    let Some(end) = quoted_end(b, i + 1, b'\'', matches!(word, "e" | "E")) else {
                        return unterminated(out);
                    };
                    i = end;
                    out.push(Token::Literal);
                } else {
                    out.push(Token::Word(word.to_ascii_lowercase()));
                }
            }
            _ => {
                // Multi-byte UTF-8 sequences that are not identifier characters land here too;
                // advance a whole character so slicing stays on boundaries.
                let ch = sql[i..].chars().next().unwrap_or('?');
                out.push(Token::Punct(ch));
                i += ch.len_utf8();
            }
        }
    }
    out
}

fn unterminated(mut out: Vec<Token<'_>>) -> Vec<Token<'_>> {
    out.push(Token::Unterminated);
    out
}

fn push1<'a>(out: &mut Vec<Token<'a>>, i: &mut usize, t: Token<'a>) {
    out.push(t);
    *i += 1;
}

/// For a statement without quotes, dollar signs, backslashes or comments: its text with every
/// numeric constant replaced by `0`. Texts that differ only in numbers then share one key, and
/// one classification, since a number token carries no content (the simple protocol carries
/// values inline, so `pgbench -S` sends a new text every time). Numbers are found as
/// [`tokenize`] finds them, so the masked text has the same tokens as the original.
pub fn numbers_masked(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    if b.iter().any(|c| matches!(c, b'\'' | b'"' | b'$' | b'\\'))
        || sql.contains("--")
        || sql.contains("/*")
    {
        return None;
    }
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if is_ident_start(c) {
            while i < b.len() && is_ident_continue(b[i]) {
                i += 1;
            }
            out.push_str(&sql[start..i]);
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            out.push('0');
        } else {
            let ch = sql[i..].chars().next()?;
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    Some(out)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_continue(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Whether the quote at `i` starts an `E'...'` string, where backslash escapes apply.
fn is_escape_string(b: &[u8], i: usize) -> bool {
    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i == 1 || !is_ident_continue(b[i - 2]))
}

/// End (exclusive) of a quoted run starting after its opening quote, `None` if it never ends.
/// A doubled quote is an escaped quote; in escape strings a backslash escapes the next byte.
fn quoted_end(b: &[u8], mut i: usize, q: u8, backslash: bool) -> Option<usize> {
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// Block comments nest in PostgreSQL. Returns (end of comment, end of its inner text).
fn block_comment_end(b: &[u8], start: usize) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some((i, i - 2));
            }
        } else {
            i += 1;
        }
    }
    None
}

/// If a `$tag$` dollar quote starts at `i`, the end of the whole literal (`Some(None)` when
/// the closing tag never comes).
fn dollar_quote_end(b: &[u8], i: usize) -> Option<Option<usize>> {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    if b.get(j) != Some(&b'$') || b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let tag = &b[i..=j];
    let body = j + 1;
    Some(
        b[body..]
            .windows(tag.len())
            .position(|w| w == tag)
            .map(|p| body + p + tag.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<String> {
        tokenize(sql)
            .into_iter()
            .filter_map(|t| match t {
                Token::Word(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn words_inside_literals_and_comments_are_not_words() {
        assert_eq!(
            words("SELECT 'insert into x' -- delete\n FROM t"),
            ["select", "from", "t"]
        );
        assert_eq!(
            words("select $$ update t $$, $x$ drop $x$ from t"),
            ["select", "from", "t"]
        );
        assert_eq!(words("select \"update\" from t"), ["select", "from", "t"]);
        assert_eq!(
            words("select E'it\\'s delete' from t"),
            ["select", "from", "t"]
        );
        assert_eq!(
            words("select 'it''s delete' from t"),
            ["select", "from", "t"]
        );
        assert_eq!(words("select /* a /* nested */ delete */ 1"), ["select"]);
    }

    #[test]
    fn params_and_numbers() {
        let t = tokenize("select $1, 1.5e3, .5, t.x from t");
        assert!(t.contains(&Token::Param));
        assert_eq!(t.iter().filter(|t| **t == Token::Number).count(), 2);
        assert!(t.contains(&Token::Dot));
    }

    #[test]
    fn masked_numbers_keep_the_tokens() {
        let masked = |s: &str| numbers_masked(s);
        assert_eq!(
            masked("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = 0;")
        );
        assert_eq!(
            masked("update t1 set x = x + -2712, y = 1.5e-3 where id = .5"),
            masked("update t1 set x = x + -1, y = 7e-9 where id = 12")
        );
        for sql in [
            "select t2.c3, 1.5e3, .5, 0x1f, 12abc from t2 where a = 1e-5 limit 10",
            "select ümlaut1, 3 from tabelle9",
            "select 1;insert into t values (2)",
        ] {
            let m = masked(sql).unwrap();
            let (a, b) = (tokenize(sql), tokenize(&m));
            assert_eq!(a, b, "{sql:?} -> {m:?}");
        }
        for sql in [
            "select 'x1'",
            "select \"c1\" from t",
            "select $1",
            "select 1 -- 2",
            "select 1 /* 2 */",
            "select $$1$$",
        ] {
            assert_eq!(masked(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn unterminated_input_never_panics() {
        for sql in [
            "select 'abc",
            "select \"abc",
            "select $a$ abc",
            "/* abc",
            "select E'\\",
        ] {
            assert_eq!(tokenize(sql).last(), Some(&Token::Unterminated), "{sql:?}");
        }
    }

    #[test]
    fn comment_text_is_kept() {
        let t = tokenize("select 1 /*homeport_route='primary'*/");
        assert!(t.contains(&Token::BlockComment("homeport_route='primary'")));
    }
}

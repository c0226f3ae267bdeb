//! Property checks over homeport's parsers, shared by the fuzz targets (`fuzz/fuzz_targets/*`)
//! and the ordinary test run (`tests/it/parsers_prop.rs` includes this file as a module, runs
//! proptest strategies through it and replays `fuzz/corpus/*` and `fuzz/regressions/*`).
//!
//! Every `check_*` function takes arbitrary bytes, never rejects an input by panicking on its own
//! account, and asserts properties of the code under test: reference models of the wire framing,
//! round trips through encoders, metamorphic relations (a leading comment does not change a
//! classification), and soundness conditions (what "read-only" must imply).
//!
//! The bugs these checks found (a timetz offset overflow, EXPLAIN ANALYZE of a write classified
//! read-only, disguised homeport settings reaching the server, zero-length array dimensions,
//! json[] elements, JSON numbers rounded through f64) are fixed; their inputs stay in
//! `fuzz/regressions/` and every check now asserts them unconditionally.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use base64::Engine;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_postgres::types::{Kind, Type};

use homeport::consistency::token::{Keys, MAX_TOKEN_LEN, Position, Token, TokenError};
use homeport::http::values::{TextParam, decode, numeric_text, param_to_text};
use homeport::pgwire::codec::{
    self, FramedReader, MAX_MESSAGE, MAX_STARTUP, Message, PROTOCOL_3, ProtocolError, Reader,
};
use homeport::pgwire::settings::{self, Setting};
use homeport::sql::classify;
use homeport::sql::lexer::{Token as SqlToken, tokenize};
use homeport::types::{Lsn, ShardId};

// ---------------------------------------------------------------------------------------------
// Wire protocol: FramedReader, read_message/read_startup, startup_params, Reader, field,
// first_value.
// ---------------------------------------------------------------------------------------------

/// Runs a future to completion on this thread. The readers used here never wait on anything
/// external, so polling in a loop with a no-op waker is enough (no runtime needed).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// An `AsyncRead` over a byte slice. With a non-zero seed it hands out data in small chunks of
/// varying size and now and then answers `Pending` (after waking itself), so the framing code
/// sees partial reads; with seed 0 it hands out as much as fits.
pub struct Trickle<'a> {
    data: &'a [u8],
    seed: u32,
}

impl<'a> Trickle<'a> {
    pub fn new(data: &'a [u8], seed: u32) -> Self {
        Trickle { data, seed }
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let mut n = usize::MAX;
        if this.seed != 0 {
            this.seed ^= this.seed << 13;
            this.seed ^= this.seed >> 17;
            this.seed ^= this.seed << 5;
            if this.seed.is_multiple_of(5) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            n = 1 + (this.seed >> 8) as usize % 97;
        }
        let n = n.min(buf.remaining()).min(this.data.len());
        buf.put_slice(&this.data[..n]);
        this.data = &this.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// What the reference model says the next read on a stream gives.
#[derive(Debug, PartialEq, Eq)]
enum Frame<'a> {
    Msg {
        tag: u8,
        body: &'a [u8],
        wire: usize,
    },
    Startup {
        code: i32,
        body: &'a [u8],
        wire: usize,
    },
    BadLength(i64),
    Closed,
}

/// The PostgreSQL v3 framing rule for tagged messages, written independently of the codec.
fn model_message(s: &[u8]) -> Frame<'_> {
    if s.len() < 5 {
        return Frame::Closed;
    }
    let len = i64::from(i32::from_be_bytes([s[1], s[2], s[3], s[4]]));
    if len < 4 || len - 4 > MAX_MESSAGE as i64 {
        return Frame::BadLength(len);
    }
    let wire = 1 + len as usize;
    if s.len() < wire {
        return Frame::Closed;
    }
    Frame::Msg {
        tag: s[0],
        body: &s[5..wire],
        wire,
    }
}

/// The framing rule for untagged startup-phase packets.
fn model_startup(s: &[u8]) -> Frame<'_> {
    if s.len() < 4 {
        return Frame::Closed;
    }
    let len = i64::from(i32::from_be_bytes([s[0], s[1], s[2], s[3]]));
    if !(8..=MAX_STARTUP as i64).contains(&len) {
        return Frame::BadLength(len);
    }
    let wire = len as usize;
    if s.len() < wire {
        return Frame::Closed;
    }
    Frame::Startup {
        code: i32::from_be_bytes([s[4], s[5], s[6], s[7]]),
        body: &s[8..wire],
        wire,
    }
}

fn got_message(r: Result<Message, ProtocolError>) -> Result<(u8, Vec<u8>), String> {
    match r {
        Ok(m) => Ok((m.tag, m.body.to_vec())),
        Err(ProtocolError::BadLength { len, .. }) => Err(format!("bad length {len}")),
        Err(ProtocolError::Closed) => Err("closed".into()),
        Err(e) => Err(format!("unexpected error: {e}")),
    }
}

fn expected_of(f: &Frame) -> Result<(u8, Vec<u8>), String> {
    match f {
        Frame::Msg { tag, body, .. } => Ok((*tag, body.to_vec())),
        Frame::Startup { .. } => unreachable!(),
        Frame::BadLength(len) => Err(format!("bad length {len}")),
        Frame::Closed => Err("closed".into()),
    }
}

/// Feeds `data[1..]` to `FramedReader` (and to the allocation-per-message `read_message` /
/// `read_startup`), in chunks chosen by `data[0]`, and checks every result against the reference
/// model: same messages, same errors, nothing read past a bad length, and each message writes
/// back (`Message::write_to`) to exactly the bytes it was cut from. Every body also goes through
/// the body parsers.
pub fn check_wire(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let startup_first = ctl & 1 == 1;
    let seed = u32::from(ctl >> 1);
    let mut framed = FramedReader::new(Trickle::new(stream, seed));
    let mut plain = Trickle::new(stream, seed.wrapping_mul(2654435761) | 1);
    let mut rest = stream;

    if startup_first {
        let expected = model_startup(rest);
        let got = block_on(framed.startup());
        let got_plain = block_on(codec::read_startup(&mut plain));
        match (&expected, got, got_plain) {
            (Frame::Startup { code, body, wire }, Ok((c, b)), Ok((c2, b2))) => {
                assert_eq!((*code, *body), (c, &b[..]), "FramedReader::startup");
                assert_eq!((*code, *body), (c2, &b2[..]), "read_startup");
                check_startup_body(c, &b);
                rest = &rest[*wire..];
            }
            (Frame::BadLength(len), Err(e), Err(e2)) => {
                for e in [e, e2] {
                    assert!(
                        matches!(e, ProtocolError::BadLength { len: l, .. } if l == *len),
                        "want bad length {len}, got {e:?}"
                    );
                }
                return;
            }
            // A truncated packet: FramedReader says Closed; read_startup says Closed when the
            // length is missing and passes read_exact's UnexpectedEof through when the body is.
            (Frame::Closed, Err(ProtocolError::Closed), Err(e2)) => {
                assert!(
                    matches!(&e2, ProtocolError::Closed)
                        || matches!(&e2, ProtocolError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof),
                    "read_startup on a truncated packet: {e2:?}"
                );
                return;
            }
            (expected, got, got_plain) => {
                panic!(
                    "startup: model {expected:?}, FramedReader {got:?}, read_startup {got_plain:?}"
                )
            }
        }
    }

    // Bounded by the input: every message consumes at least 5 bytes.
    loop {
        let expected = model_message(rest);
        let got = got_message(block_on(framed.next()));
        let got_plain = got_message(block_on(codec::read_message(&mut plain)));
        let want = expected_of(&expected);
        assert_eq!(
            got,
            want,
            "FramedReader::next at offset {}",
            stream.len() - rest.len()
        );
        assert_eq!(
            got_plain,
            want,
            "read_message at offset {}",
            stream.len() - rest.len()
        );
        let Frame::Msg { tag, body, wire } = expected else {
            return;
        };
        let mut out = BytesMut::new();
        Message::new(tag, body.to_vec()).write_to(&mut out);
        assert_eq!(&out[..], &rest[..wire], "write_to gives back the frame");
        check_body(body, ctl);
        rest = &rest[wire..];
    }
}

/// `startup_params` against a reference model; the cancel-request body through `Reader`.
pub fn check_startup_body(code: i32, body: &[u8]) {
    if code == PROTOCOL_3 {
        let got = codec::startup_params(body).ok();
        assert_eq!(got, model_startup_params(body), "startup_params");
        if let Some(params) = got {
            let mut enc = Vec::new();
            for (k, v) in &params {
                assert!(!k.is_empty());
                enc.extend_from_slice(k.as_bytes());
                enc.push(0);
                enc.extend_from_slice(v.as_bytes());
                enc.push(0);
            }
            assert!(body.starts_with(&enc));
            assert!(matches!(body.get(enc.len()), None | Some(0)));
        }
    }
    check_reader(body, code as u8);
}

/// `key\0value\0...\0`: stops at an empty key (or the end of the body right after a value);
/// a key without a value, a value without its NUL, or invalid UTF-8 is malformed.
fn model_startup_params(body: &[u8]) -> Option<Vec<(String, String)>> {
    fn upto_nul(s: &[u8]) -> (&[u8], Option<&[u8]>) {
        match s.iter().position(|b| *b == 0) {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        }
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let (key, after) = upto_nul(rest);
        if key.is_empty() {
            return Some(out);
        }
        let (value, after) = upto_nul(after?);
        out.push((
            String::from_utf8(key.to_vec()).ok()?,
            String::from_utf8(value.to_vec()).ok()?,
        ));
        rest = after?;
    }
}

/// Checks the body parsers on one message body: `first_value`, `field`/`error_code` against
/// reference models, `Reader` bookkeeping, and round trips through the message builders.
pub fn check_body(body: &[u8], seed: u8) {
    assert_eq!(
        codec::first_value(body),
        model_first_value(body),
        "first_value"
    );
    let mut wanted = vec![b'C', b'M', b'S'];
    wanted.extend(body.first());
    for w in wanted {
        assert_eq!(codec::field(body, w), model_field(body, w), "field {w}");
    }
    assert_eq!(codec::error_code(body), model_field(body, b'C'));
    check_reader(body, seed);

    // Builders then parsers give the text back (any text without NUL).
    let text = String::from_utf8_lossy(body).replace('\0', "");
    let e = codec::error_response("ERROR", &text, &text);
    assert_eq!(codec::error_code(&e.body).as_deref(), Some(text.as_str()));
    assert_eq!(codec::field(&e.body, b'M').as_deref(), Some(text.as_str()));
    assert_eq!(codec::field(&e.body, b'S').as_deref(), Some("ERROR"));
    let row = codec::text_data_row(&text);
    assert_eq!(codec::first_value(&row.body), Some(text.as_str()));
    let q = codec::query(&text);
    assert_eq!(
        Reader::new(&q.body, "query").cstr().ok(),
        Some(text.as_str())
    );
}

fn model_first_value(body: &[u8]) -> Option<&str> {
    let n = i16::from_be_bytes(body.get(0..2)?.try_into().ok()?);
    if n < 1 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    std::str::from_utf8(body.get(6..6usize.checked_add(len)?)?).ok()
}

fn model_field(body: &[u8], wanted: u8) -> Option<String> {
    let mut at = 0;
    loop {
        let f = *body.get(at)?;
        if f == 0 {
            return None;
        }
        let nul = at + 1 + body[at + 1..].iter().position(|b| *b == 0)?;
        let v = std::str::from_utf8(&body[at + 1..nul]).ok()?;
        if f == wanted {
            return Some(v.to_string());
        }
        at = nul + 1;
    }
}

/// A sequence of `Reader` calls chosen by `seed`: each success consumes exactly what it
/// returned, each failure consumes nothing.
fn check_reader(body: &[u8], seed: u8) {
    let mut r = Reader::new(body, "fuzz");
    let mut op = seed;
    for _ in 0..64 {
        let before = r.rest();
        let consumed = match op % 4 {
            0 => r.cstr().ok().map(|s| {
                assert!(!s.contains('\0'));
                assert_eq!(&before[..s.len()], s.as_bytes());
                assert_eq!(before[s.len()], 0);
                s.len() + 1
            }),
            1 => r.i16().ok().map(|v| {
                assert_eq!(v.to_be_bytes(), before[..2]);
                2
            }),
            2 => r.i32().ok().map(|v| {
                assert_eq!(v.to_be_bytes(), before[..4]);
                4
            }),
            _ => r.u8().ok().map(|v| {
                assert_eq!(v, before[0]);
                1
            }),
        };
        match consumed {
            Some(n) => assert_eq!(r.rest(), &before[n..]),
            None => {
                assert_eq!(r.rest(), before, "a failed read consumes nothing");
                if before.is_empty() {
                    return;
                }
            }
        }
        op = op
            .wrapping_mul(37)
            .wrapping_add(before.first().copied().unwrap_or(1));
    }
}

// ---------------------------------------------------------------------------------------------
// Settings: parse, hides_setting, parse_staleness.
// ---------------------------------------------------------------------------------------------

/// Statements that set, show or reset a homeport setting.
pub const SETTING_STATEMENTS: &[&str] = &[
    "SET LOCAL homeport.idempotency_key = 'k'",
    "show HOMEPORT.route",
    "RESET homeport.user",
    "set homeport.consistency_token to 'v1.x.y'",
];

pub fn check_settings(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    check_settings_str(&s);
}

pub fn check_settings_str(s: &str) {
    let parsed = settings::parse(s);
    // Whitespace around the statement and one trailing semicolon change nothing.
    assert_eq!(parsed, settings::parse(&format!(" \t{s}\n ")), "whitespace");
    assert_eq!(
        parsed,
        settings::parse(&format!("{};", s.trim_end())),
        "semicolon"
    );
    if let Some(p) = &parsed {
        let name = match p {
            Setting::Set { name, .. } | Setting::Reset { name } | Setting::Show { name } => name,
        };
        assert!(!name.is_empty());
        assert_eq!(*name, name.to_ascii_lowercase());
        assert!(!name.contains(|c: char| c.is_whitespace() || c == '='));
        let verb = s.trim_start().get(..3).map(str::to_ascii_lowercase);
        assert!(
            matches!(verb.as_deref(), Some("set" | "res" | "sho")),
            "{p:?} from {s:?}"
        );
    }

    let hides = settings::hides_setting(s);
    if hides {
        assert!(s.to_ascii_lowercase().contains("homeport."));
    }
    // Was a bug, fixed: PostgreSQL reads comments as whitespace, so `SET /**/ homeport.user = 'x'` is a
    // setting statement; homeport neither answers it (`parse`) nor refuses it (`hides_setting`),
    // and the server silently sets a placeholder variable (src/pgwire/settings.rs; see the
    // ignored test `disguised_settings_are_answered_or_refused` and the input the fuzzer found,
    // fuzz/regressions/settings/reset-comment-homeport).
    // (Fixed: disguised settings are refused by `hides_setting`; this was found by the fuzzer,
    // fuzz/regressions/settings/reset-comment-homeport.)
    if setting_statement_ignoring_comments(s) {
        assert!(
            parse_or_hidden(s),
            "setting statement {s:?} neither answered nor refused"
        );
    }
    // A setting statement after any complete text and a semicolon is always found.
    if tokenize(s).last() != Some(&SqlToken::Unterminated) {
        for st in SETTING_STATEMENTS {
            let q = format!("{s}\n;{st}");
            assert!(
                settings::hides_setting(&q),
                "hidden setting not found in {q:?}"
            );
        }
    }

    // Any value round-trips through a quoted SET (quotes doubled), and a bare word as is.
    let quoted = s.replace('\'', "''");
    assert_eq!(
        settings::parse(&format!("SET homeport.user = '{quoted}'")),
        Some(Setting::Set {
            name: "user".into(),
            value: s.to_string(),
            local: false
        })
    );
    assert_eq!(
        settings::parse(&format!(
            "set local HOMEPORT.idempotency_key TO '{quoted}';"
        )),
        Some(Setting::Set {
            name: "idempotency_key".into(),
            value: s.to_string(),
            local: true
        })
    );
    if !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || "_-.@".contains(c)) {
        assert_eq!(
            settings::parse(&format!("SET homeport.user={s}")),
            Some(Setting::Set {
                name: "user".into(),
                value: s.to_string(),
                local: false
            })
        );
    }

    let staleness = settings::parse_staleness(s);
    let t = s.trim();
    if !t.is_empty()
        && t.bytes().all(|b| b.is_ascii_digit())
        && let Ok(ms) = t.parse::<u64>()
    {
        assert_eq!(staleness, Ok(Some(std::time::Duration::from_millis(ms))));
    }
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("default") {
        assert_eq!(staleness, Ok(None));
    }
}

fn parse_or_hidden(s: &str) -> bool {
    settings::parse(s).is_some() || settings::hides_setting(s)
}

/// Whether a statement of `s`, with comments read as whitespace the way PostgreSQL reads them,
/// starts `SET|RESET|SHOW [LOCAL|SESSION] homeport.`.
fn setting_statement_ignoring_comments(s: &str) -> bool {
    let tokens: Vec<SqlToken> = tokenize(s)
        .into_iter()
        .filter(|t| !matches!(t, SqlToken::BlockComment(_)))
        .collect();
    let mut at_start = true;
    for (i, t) in tokens.iter().enumerate() {
        if at_start && matches!(word(t), Some("set" | "reset" | "show")) {
            let mut j = i + 1;
            if matches!(tokens.get(j).and_then(word), Some("local" | "session")) {
                j += 1;
            }
            if tokens.get(j).and_then(word) == Some("homeport")
                && tokens.get(j + 1) == Some(&SqlToken::Dot)
            {
                return true;
            }
        }
        at_start = *t == SqlToken::Semicolon;
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Consistency tokens.
// ---------------------------------------------------------------------------------------------

pub const TEST_KEY: &[u8] = b"fuzz-key-fuzz-key-fuzz-key-fuzz!";
pub const OTHER_KEY: &[u8] = b"other-key-other-key-other-key-ot";

pub fn test_keys() -> Keys {
    Keys {
        current: TEST_KEY.to_vec(),
        previous: None,
    }
}

/// A token text with `payload` signed by `key` the way homeport signs (HMAC-SHA256 over
/// `v1.<payload>`): lets the checks reach the payload parser behind the signature check.
pub fn sign_payload(payload: &[u8], key: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let signed = format!("v1.{}", B64.encode(payload));
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(signed.as_bytes());
    format!("{signed}.{}", B64.encode(m.finalize().into_bytes()))
}

/// A byte cursor that turns fuzz input into values (zero when it runs out).
pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| (acc << 8) | u64::from(self.u8()))
    }
    pub fn u32(&mut self) -> u32 {
        self.u64() as u32
    }
}

/// A valid shard name (DNS-label-like, 1 to 63 characters) built from input bytes.
pub fn shard_name(b: &mut Bytes) -> ShardId {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
    let len = 1 + usize::from(b.u8()) % 63;
    let mut name: Vec<u8> = (0..len)
        .map(|_| ALPHABET[usize::from(b.u8()) % ALPHABET.len()])
        .collect();
    if name[0] == b'-' {
        name[0] = b'a';
    }
    if name[len - 1] == b'-' {
        name[len - 1] = b'z';
    }
    ShardId::parse(std::str::from_utf8(&name).unwrap()).expect("valid by construction")
}

/// A token with up to `max_shards` shards built from input bytes. Shard names come from a small
/// set half the time so that merges overlap.
pub fn token_from(b: &mut Bytes, max_shards: usize) -> Token {
    let mut t = Token {
        issued_at_ms: b.u64(),
        ..Default::default()
    };
    for _ in 0..usize::from(b.u8()) % (max_shards + 1) {
        let shard = if b.u8().is_multiple_of(2) {
            ShardId::parse(["eu", "us", "ap"][usize::from(b.u8()) % 3]).unwrap()
        } else {
            shard_name(b)
        };
        let p = Position {
            timeline: b.u32(),
            lsn: Lsn(b.u64()),
            system_id: b.u64(),
        };
        t.record(shard, p, 0);
    }
    t
}

pub fn check_token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        // Arbitrary text.
        0 => check_token_text(&String::from_utf8_lossy(rest)),
        // Arbitrary payload bytes, correctly signed: the payload parser.
        1 => check_token_text(&sign_payload(rest, TEST_KEY)),
        // Structured tokens: round trip, merge laws.
        2 => {
            let mut b = Bytes(rest);
            let (x, y, z) = (
                token_from(&mut b, 8),
                token_from(&mut b, 8),
                token_from(&mut b, 8),
            );
            for t in [&x, &y, &z] {
                check_token_value(t);
            }
            check_merge(&x, &y, &z);
        }
        // A real token with edits applied: only the untouched text still verifies.
        _ => {
            let mut b = Bytes(rest);
            let t = token_from(&mut b, 4);
            let text = t.encode(&test_keys());
            let mut edited = text.clone().into_bytes();
            for _ in 0..1 + b.u8() % 4 {
                let at = usize::from(b.u8()) * 256 + usize::from(b.u8());
                let byte = b.u8();
                match b.u8() % 3 {
                    0 if !edited.is_empty() => {
                        let at = at % edited.len();
                        edited[at] = byte;
                    }
                    1 => {
                        let at = at % (edited.len() + 1);
                        edited.insert(at, byte);
                    }
                    _ if !edited.is_empty() => {
                        let at = at % edited.len();
                        edited.remove(at);
                    }
                    _ => {}
                }
            }
            let edited = String::from_utf8_lossy(&edited).into_owned();
            check_token_text(&edited);
            if edited != text {
                assert!(
                    Token::decode(&edited, &test_keys()).is_err(),
                    "edited token {edited:?} (from {text:?}) still verifies"
                );
            } else {
                assert_eq!(Token::decode(&edited, &test_keys()), Ok(t));
            }
        }
    }
}

/// Decoding arbitrary text: never panics, errors as documented, and whatever decodes
/// re-encodes to a token that decodes to the same value, verifies under rotation, and is refused
/// under another key.
pub fn check_token_text(s: &str) {
    let keys = test_keys();
    let r = Token::decode(s, &keys);
    if s.len() > MAX_TOKEN_LEN {
        assert_eq!(r, Err(TokenError::TooLong));
        return;
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 3 {
        assert_eq!(r, Err(TokenError::Malformed), "{s:?}");
    } else if parts[0] != "v1" {
        assert!(matches!(
            r,
            Err(TokenError::Version | TokenError::Malformed)
        ));
    }
    let rotated = Keys {
        current: OTHER_KEY.to_vec(),
        previous: Some(TEST_KEY.to_vec()),
    };
    assert_eq!(
        Token::decode(s, &rotated),
        r,
        "the previous key verifies too"
    );
    if let Ok(t) = r {
        assert!(t.shards.len() <= 64);
        let again = t.encode(&keys);
        assert_eq!(Token::decode(&again, &keys), Ok(t.clone()), "re-encoded");
        let retired = Keys {
            current: OTHER_KEY.to_vec(),
            previous: None,
        };
        assert_eq!(Token::decode(s, &retired), Err(TokenError::Signature));
    }
}

/// Encoding: URL-safe text that decodes to the same token, and any single bit flip is refused.
/// Holds for tokens that fit the decoder's limits (see the ignored `encode_output_is_decodable`
/// test in tests/it/parsers_prop.rs for the ones that do not).
pub fn check_token_value(t: &Token) {
    let keys = test_keys();
    let text = t.encode(&keys);
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "URL-safe: {text}"
    );
    if t.shards.len() > 64 || text.len() > MAX_TOKEN_LEN {
        return;
    }
    assert_eq!(Token::decode(&text, &keys), Ok(t.clone()));
    let bytes = text.as_bytes();
    // About 64 bits spread over the token (every bit of very short ones).
    let step = (bytes.len() * 8 / 64).max(1);
    for bit in (0..bytes.len() * 8).step_by(step) {
        let mut flipped = bytes.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        if let Ok(s) = std::str::from_utf8(&flipped) {
            assert!(
                Token::decode(s, &keys).is_err(),
                "bit {bit} flipped still verifies: {s:?}"
            );
        }
    }
}

/// Merge: commutative, associative, idempotent, and the least upper bound per shard.
pub fn check_merge(x: &Token, y: &Token, z: &Token) {
    assert_eq!(x.merge(y), y.merge(x), "commutative");
    assert_eq!(x.merge(y).merge(z), x.merge(&y.merge(z)), "associative");
    assert_eq!(x.merge(x), *x, "idempotent");
    check_merge_bound(x, y);
}

/// The merge holds, per shard, the later of the two positions, every shard of either token and
/// no other, and the later issue time.
pub fn check_merge_bound(x: &Token, y: &Token) {
    let xy = x.merge(y);
    assert_eq!(xy.issued_at_ms, x.issued_at_ms.max(y.issued_at_ms));
    let shards: std::collections::BTreeSet<_> = x.shards.keys().chain(y.shards.keys()).collect();
    assert_eq!(xy.shards.len(), shards.len());
    for s in shards {
        let want = match (x.shards.get(s), y.shards.get(s)) {
            (Some(a), Some(b)) => (*a).max(*b),
            (Some(a), None) | (None, Some(a)) => *a,
            (None, None) => unreachable!(),
        };
        assert_eq!(xy.shards[s], want, "upper bound on {s}");
    }
}

// ---------------------------------------------------------------------------------------------
// SQL lexer and classifier.
// ---------------------------------------------------------------------------------------------

/// Copy of the classifier's list of words that make a statement write.
const WRITE_WORDS: &[&str] = &[
    "insert", "update", "delete", "merge", "into", "copy", "lock", "call", "do", "execute",
    "truncate", "nextval", "setval", "refresh", "notify", "listen",
];

/// Statements EXPLAIN can explain: the first of these words ends its options.
const EXPLAINABLE: &[&str] = &[
    "select", "with", "values", "table", "insert", "update", "delete", "merge", "create",
    "declare", "execute",
];

fn word<'t>(t: &'t SqlToken) -> Option<&'t str> {
    match t {
        SqlToken::Word(w) => Some(w),
        _ => None,
    }
}

pub fn check_sql(data: &[u8]) {
    check_sql_str(&String::from_utf8_lossy(data));
}

pub fn check_sql_str(sql: &str) {
    let tokens = tokenize(sql);
    if let Some(i) = tokens.iter().position(|t| *t == SqlToken::Unterminated) {
        assert_eq!(i, tokens.len() - 1, "Unterminated is the last token");
    }
    for t in &tokens {
        match t {
            SqlToken::BlockComment(text) => assert!(sql.contains(&format!("/*{text}*/"))),
            SqlToken::Word(w) => {
                assert!(!w.is_empty());
                assert_eq!(*w, w.to_ascii_lowercase());
            }
            _ => {}
        }
    }
    let complete = tokens.last() != Some(&SqlToken::Unterminated);

    let c = classify(sql);
    assert_eq!(c, classify(sql), "deterministic");
    let code: Vec<&SqlToken> = tokens
        .iter()
        .filter(|t| !matches!(t, SqlToken::BlockComment(_)))
        .collect();
    let statements = code
        .split(|t| **t == SqlToken::Semicolon)
        .filter(|s| !s.is_empty())
        .count();
    assert_eq!(c.statements, statements);
    if statements == 0 {
        assert_eq!(c.command, "EMPTY");
    }

    // Metamorphic: a leading comment and trailing whitespace change nothing.
    assert_eq!(classify(&format!("/* fuzz */ {sql}")), c, "leading comment");
    assert_eq!(classify(&format!("{sql} \n")), c, "trailing whitespace");

    if c.read_only {
        assert!(complete, "read-only but unterminated: {sql:?}");
        assert_eq!(c.statements, 1);
        assert!(
            matches!(c.command.as_str(), "SELECT" | "SHOW" | "EXPLAIN"),
            "read-only {:?}: {sql:?}",
            c.command
        );
        let first = code.first().and_then(|t| word(t));
        assert!(
            matches!(
                first,
                Some("select" | "with" | "values" | "table" | "show" | "explain")
            ),
            "read-only starting with {first:?}: {sql:?}"
        );
        // ANALYZE is an EXPLAIN option only before the explained statement; after it, the word is
        // a name (`EXPLAIN SELECT 1 AS analyze`) or a syntax error that runs nothing.
        let analyze = code
            .iter()
            .skip(1)
            .take_while(|t| !matches!(word(t), Some(w) if EXPLAINABLE.contains(&w)))
            .any(|t| matches!(word(t), Some("analyze" | "analyse")));
        // EXPLAIN without ANALYZE only plans and SHOW only reads a setting: anything may follow.
        // EXPLAIN ANALYZE runs its statement. Was a bug, fixed: the classifier skips everything up to the
        // first SELECT/WITH/VALUES/TABLE after EXPLAIN ANALYZE, so `EXPLAIN ANALYZE INSERT INTO t
        // SELECT 1` is read-only (src/sql/classify.rs, is_read_only). Found by the fuzzer:
        // fuzz/regressions/sql_classifier/explain-analyze-hides-lock.
        let runs = match first {
            Some("show") => false,
            Some("explain") => analyze,
            _ => true,
        };
        if runs {
            for (i, t) in code.iter().enumerate() {
                let next = code.get(i + 1).copied();
                if let Some(w) = word(t) {
                    assert!(!WRITE_WORDS.contains(&w), "read-only with {w:?}: {sql:?}");
                    assert!(
                        !(w == "for"
                            && next.and_then(word).is_some_and(|n| {
                                matches!(n, "update" | "share" | "no" | "key")
                            })),
                        "read-only with a row lock: {sql:?}"
                    );
                }
                if **t == SqlToken::QuotedIdent {
                    assert_ne!(next, Some(&SqlToken::LParen), "quoted call: {sql:?}");
                }
            }
        }
        // Another statement after it is never read-only.
        let two = classify(&format!("{sql}\n;\nDELETE FROM t"));
        assert!(!two.read_only);
        assert_eq!(two.statements, 2);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP JSON bodies and parameter conversion.
// ---------------------------------------------------------------------------------------------

use homeport::http::{QueryBody, TransactionBody};

/// Parameter types the conversion is checked against.
pub fn param_types() -> [Type; 18] {
    [
        Type::TEXT,
        Type::VARCHAR,
        Type::INT4,
        Type::INT8,
        Type::BOOL,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::BYTEA,
        Type::JSON,
        Type::JSONB,
        Type::UUID,
        Type::TIMESTAMPTZ,
        Type::TEXT_ARRAY,
        Type::INT4_ARRAY,
        Type::BOOL_ARRAY,
        Type::BYTEA_ARRAY,
        Type::JSON_ARRAY,
        Type::JSONB_ARRAY,
    ]
}

pub fn check_json(data: &[u8]) {
    let value = homeport::http::parse_json::<Value>(data);
    if let Ok(q) = homeport::http::parse_json::<QueryBody>(data) {
        assert!(value.is_ok(), "a QueryBody is valid JSON");
        let _ = classify(&q.sql);
        for p in &q.params {
            check_param(p);
        }
    }
    if let Ok(t) = homeport::http::parse_json::<TransactionBody>(data) {
        assert!(value.is_ok(), "a TransactionBody is valid JSON");
        for s in &t.statements {
            let _ = classify(&s.sql);
            for p in &s.params {
                check_param(p);
            }
        }
    }
    if let Ok(v) = value {
        check_param(&v);
        if let Value::Array(items) = &v {
            items.iter().for_each(check_param);
        }
        if let Value::Object(fields) = &v {
            fields.values().for_each(check_param);
        }
    }
}

fn is_json(ty: &Type) -> bool {
    *ty == Type::JSON || *ty == Type::JSONB
}

/// `param_to_text` of one JSON value against every type in `param_types`.
pub fn check_param(v: &Value) {
    for ty in param_types() {
        let r = param_to_text(v, &ty);
        match (v, ty.kind()) {
            (Value::Null, _) => assert_eq!(r, Ok(TextParam(None))),
            _ if is_json(&ty) => {
                let text = r.expect("any JSON binds to json").0.expect("not NULL");
                let back: Value = serde_json::from_str(&text).expect("json text is JSON");
                assert!(json_equiv(&back, v), "{v} -> {text}");
            }
            (Value::Object(_), _) => assert!(r.is_err()),
            (Value::Array(_), k) if !matches!(k, Kind::Array(_)) => assert!(r.is_err()),
            (Value::Array(items), Kind::Array(elem)) => match r {
                Ok(TextParam(Some(text))) => {
                    let tree = parse_pg_array(&text)
                        .unwrap_or_else(|| panic!("not an array literal: {text:?}"));
                    check_array(&tree, items, elem);
                }
                Ok(TextParam(None)) => panic!("an array is not NULL"),
                Err(_) => assert!(
                    array_has_bad_leaf(items, elem),
                    "array refused without a reason: {v}"
                ),
            },
            _ => assert_eq!(
                r.ok().map(|p| p.0),
                expected_scalar(v, &ty).ok().map(Some),
                "{v} as {ty}"
            ),
        }
    }
}

/// What a JSON scalar becomes for a non-JSON type: its text, bytea as `\x` hex.
fn expected_scalar(v: &Value, ty: &Type) -> Result<String, ()> {
    match v {
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) if *ty == Type::BYTEA => {
            if s.starts_with("\\x") {
                return Ok(s.clone());
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| ())?;
            Ok(format!(
                "\\x{}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ))
        }
        Value::String(s) if s.contains('\0') => Err(()),
        Value::String(s) => Ok(s.clone()),
        _ => unreachable!("scalars only"),
    }
}

fn array_has_bad_leaf(items: &[Value], elem: &Type) -> bool {
    items.iter().any(|item| match item {
        Value::Null => false,
        Value::Array(inner) => array_has_bad_leaf(inner, elem),
        Value::Object(_) => !is_json(elem),
        _ if is_json(elem) => false,
        other => expected_scalar(other, elem).is_err(),
    })
}

fn check_array(tree: &PgElem, items: &[Value], elem: &Type) {
    let PgElem::Arr(children) = tree else {
        panic!("expected an array, got {tree:?}");
    };
    assert_eq!(children.len(), items.len());
    for (child, item) in children.iter().zip(items) {
        match (child, item) {
            (PgElem::Null, Value::Null) => {}
            (PgElem::Arr(_), Value::Array(inner)) => check_array(child, inner, elem),
            (PgElem::Str(text), Value::Object(_)) => {
                assert!(is_json(elem));
                let back: Value = serde_json::from_str(text).expect("object element is JSON");
                assert!(json_equiv(&back, item));
            }
            (PgElem::Str(text), scalar) if is_json(elem) => {
                // (Fixed: json[]/jsonb[] elements are JSON text whatever their JSON type.)
                let back: Value = serde_json::from_str(text).expect("json[] element is JSON");
                assert!(
                    json_equiv(&back, scalar),
                    "json[] element {scalar} sent as {text:?}"
                );
            }
            (PgElem::Str(text), scalar) => {
                assert_eq!(Ok(text.clone()), expected_scalar(scalar, elem));
            }
            (child, item) => panic!("{item} became {child:?}"),
        }
    }
}

/// JSON equality with floats compared to within a few units in the last place: serde_json
/// (without its `float_roundtrip` feature) does not always parse a float's shortest text back to
/// the same bits.
pub fn json_equiv(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    x == y || (x - y).abs() <= 8.0 * f64::EPSILON * x.abs().max(y.abs())
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equiv(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equiv(v, w)))
        }
        _ => a == b,
    }
}

/// A PostgreSQL array literal as homeport writes them: `{` elements `}`, each NULL, a nested
/// array or a double-quoted string with backslash escapes.
#[derive(Debug, PartialEq)]
pub enum PgElem {
    Null,
    Str(String),
    Arr(Vec<PgElem>),
}

pub fn parse_pg_array(s: &str) -> Option<PgElem> {
    let mut it = s.chars().peekable();
    let tree = parse_pg_arr(&mut it)?;
    it.next().is_none().then_some(tree)
}

fn parse_pg_arr(it: &mut std::iter::Peekable<std::str::Chars>) -> Option<PgElem> {
    if it.next()? != '{' {
        return None;
    }
    let mut out = Vec::new();
    if it.peek() == Some(&'}') {
        it.next();
        return Some(PgElem::Arr(out));
    }
    loop {
        let e = match it.peek()? {
            '{' => parse_pg_arr(it)?,
            '"' => {
                it.next();
                let mut s = String::new();
                loop {
                    match it.next()? {
                        '\\' => s.push(it.next()?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                PgElem::Str(s)
            }
            _ => {
                for c in "NULL".chars() {
                    if it.next()? != c {
                        return None;
                    }
                }
                PgElem::Null
            }
        };
        out.push(e);
        match it.next()? {
            ',' => continue,
            '}' => return Some(PgElem::Arr(out)),
            _ => return None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Binary result values -> JSON (`values::decode`).
// ---------------------------------------------------------------------------------------------

pub fn result_types() -> [Type; 28] {
    [
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::OID,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::TEXT,
        Type::UUID,
        Type::JSON,
        Type::JSONB,
        Type::BYTEA,
        Type::DATE,
        Type::TIME,
        Type::TIMETZ,
        Type::TIMESTAMP,
        Type::TIMESTAMPTZ,
        Type::INTERVAL,
        Type::INET,
        Type::CIDR,
        Type::INT4_ARRAY,
        Type::TEXT_ARRAY,
        Type::NUMERIC_ARRAY,
        Type::JSONB_ARRAY,
        Type::TIMESTAMPTZ_ARRAY,
        Type::INTERVAL_ARRAY,
        Type::INET_ARRAY,
    ]
}

/// Whether a binary array header has more than one dimension and a zero-length one: the input
/// of the known unbounded-output bug below.
pub fn array_header_has_zero_dimension(raw: &[u8]) -> bool {
    let be = |at: usize| {
        raw.get(at..at + 4)
            .map(|b| i32::from_be_bytes(b.try_into().unwrap()))
    };
    match be(0) {
        Some(ndim @ 2..=6) => (0..ndim as usize).any(|d| be(12 + 8 * d) == Some(0)),
        _ => false,
    }
}

fn nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(items) => items.iter().map(nodes).sum(),
        Value::Object(fields) => fields.values().map(nodes).sum(),
        _ => 0,
    }
}

pub fn check_result(data: &[u8]) {
    let Some((&sel, raw)) = data.split_first() else {
        return;
    };
    let types = result_types();
    let ty = &types[usize::from(sel) % types.len()];
    // Was a bug, fixed: a binary array with a zero-length dimension after a non-zero one (e.g. dims
    // [n, 0]) passes the `total > raw.len()` check (total is 0) and `nest` then builds n empty
    // arrays: output unbounded by the input (i32::MAX outer dimension: ~64 GiB; three dimensions:
    // ~2^62 iterations). src/http/values.rs, decode_array/nest. Found by the fuzzer:
    // fuzz/regressions/result_decode/array-zero-dimension.
    // (Fixed: such arrays are refused and shown as their hex form.)
    // Was a bug, fixed (found by this target, fuzz/regressions/result_decode/timetz-offset-i32-min): a
    // timetz whose zone offset is i32::MIN panics with "attempt to negate with overflow" at
    // src/http/time.rs:74 (`let east = -west;`) where overflow checks are on (debug builds, tests,
    // fuzzing); release builds wrap and print a nonsense offset.
    // (Fixed: the offset is negated as an i64.)
    assert_eq!(decode(ty, None), Value::Null);
    let v = decode(ty, Some(raw));
    assert_eq!(v, decode(ty, Some(raw)), "deterministic");
    // Output bounded by input: each element costs bytes, each of at most 6 dimensions an array.
    assert!(
        nodes(&v) <= 8 * raw.len() + 8,
        "{} nodes from {} bytes",
        nodes(&v),
        raw.len()
    );
    match *ty {
        Type::INT4 if raw.len() == 4 => {
            assert_eq!(v, Value::from(i32::from_be_bytes(raw.try_into().unwrap())))
        }
        Type::INT8 if raw.len() == 8 => {
            assert_eq!(v, Value::from(i64::from_be_bytes(raw.try_into().unwrap())))
        }
        Type::BOOL if !raw.is_empty() => assert_eq!(v, Value::Bool(raw[0] != 0)),
        Type::BYTEA => {
            let Value::String(s) = &v else {
                panic!("bytea as {v}")
            };
            assert_eq!(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .ok()
                    .as_deref(),
                Some(raw)
            );
        }
        Type::TEXT => match std::str::from_utf8(raw) {
            Ok(s) => assert_eq!(v, Value::String(s.into())),
            Err(_) => assert!(v.as_str().is_some_and(|s| s.starts_with("\\x"))),
        },
        Type::NUMERIC => {
            if let Some(s) = numeric_text(raw) {
                assert_eq!(v, Value::String(s.clone()));
                check_numeric_text(&s, raw);
            }
        }
        _ => {}
    }
}

fn check_numeric_text(s: &str, raw: &[u8]) {
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return;
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    assert!(
        !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()),
        "{s:?}"
    );
    assert!(frac.bytes().all(|b| b.is_ascii_digit()), "{s:?}");
    let dscale = usize::from(u16::from_be_bytes([raw[6], raw[7]]));
    assert_eq!(frac.len(), dscale, "{s:?} has dscale {dscale}");
}

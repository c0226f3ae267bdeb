//! Writes the seed inputs of every fuzz corpus: real protocol messages, tokens produced by
//! `Token::encode` with the fixed test key, real SQL, real request bodies, real binary values.
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seeds
//!
//! Seeds are written as `fuzz/corpus/<target>/seed-<name>`; the fuzzer adds (and `cargo fuzz
//! cmin` keeps) whatever else widens coverage.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::{BufMut, BytesMut};
use checks::{TEST_KEY, result_types, test_keys};
use homeport::consistency::token::{Position, Token};
use homeport::pgwire::codec::{self, CANCEL_REQUEST, Message, PROTOCOL_3, SSL_REQUEST};
use homeport::types::{Lsn, ShardId};
use tokio_postgres::types::Type;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn startup(params: &[(&str, &str)]) -> BytesMut {
    let mut body = BytesMut::new();
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_i32(8 + body.len() as i32);
    out.put_i32(PROTOCOL_3);
    out.put_slice(&body);
    out
}

fn msg(out: &mut BytesMut, tag: u8, body: &[u8]) {
    Message::new(tag, body.to_vec()).write_to(out);
}

fn cstrs(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

fn wire() {
    let t = "wire_decoder";
    // ctl byte: bit 0 = startup packet first, the rest seeds the read chunking (0 = one read).
    let mut s = BytesMut::from(&[1u8][..]);
    s.put_slice(&startup(&[
        ("user", "app"),
        ("database", "appdb"),
        ("application_name", "psql"),
        ("client_encoding", "UTF8"),
    ]));
    s.put_slice(&codec::query("SELECT 1").write_to_vec());
    msg(&mut s, b'X', b"");
    write(t, "startup-query-terminate", &s);

    let mut s = BytesMut::from(&[0x2bu8][..]);
    msg(
        &mut s,
        b'P',
        &[
            &cstrs(&[b"s1", b"select * from notes where user_id = $1"])[..],
            &[0, 1, 0, 0, 0, 25],
        ]
        .concat(),
    );
    let mut bind = cstrs(&[b"", b"s1"]);
    bind.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, b'u', b'1', 0, 0]);
    msg(&mut s, b'B', &bind);
    msg(&mut s, b'D', b"P\0");
    msg(&mut s, b'E', &[0, 0, 0, 0, 0]);
    msg(&mut s, b'S', b"");
    write(t, "extended-protocol", &s);

    let mut s = BytesMut::from(&[1u8][..]);
    s.put_i32(8);
    s.put_i32(SSL_REQUEST);
    write(t, "ssl-request", &s);

    let mut s = BytesMut::from(&[1u8][..]);
    s.put_i32(16);
    s.put_i32(CANCEL_REQUEST);
    s.put_i32(4242);
    s.put_i32(-559038737);
    write(t, "cancel-request", &s);

    let mut s = BytesMut::from(&[0u8][..]);
    for m in [
        codec::auth_ok(),
        codec::parameter_status("server_version", "16.4"),
        codec::parameter_status("homeport.route", "eu/primary"),
        codec::backend_key_data(1234, 5678),
        codec::ready_for_query(b'I'),
        codec::text_row_description("pg_current_wal_lsn"),
        codec::text_data_row("16/B374D848"),
        codec::command_complete("SELECT 1"),
        codec::error_response("ERROR", "40001", "could not serialize access"),
        codec::error_response("FATAL", "28000", "password authentication failed"),
        codec::empty(b'1'),
        codec::ready_for_query(b'T'),
    ] {
        m.write_to(&mut s);
    }
    write(t, "server-messages", &s);

    let mut s = BytesMut::from(&[0u8][..]);
    msg(
        &mut s,
        b'N',
        &cstrs(&[b"SNOTICE", b"C00000", b"Mhello", b""]),
    );
    msg(&mut s, b'D', &[0, 2, 0, 0, 0, 1, b'x', 255, 255, 255, 255]);
    msg(&mut s, b'D', &[0, 1, 255, 255, 255, 255]);
    write(t, "notice-and-null-rows", &s);

    write(t, "absurd-length", &[0, b'Q', 0x7f, 0xff, 0xff, 0xff]);
    write(t, "short-length", &[0, b'Q', 0, 0, 0, 2]);
    write(t, "truncated", &[0x11, b'Q', 0, 0, 0, 10, b's', b'e']);
    write(
        t,
        "startup-absurd",
        &[1, 0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
    );
    write(t, "startup-truncated", &[1, 0, 0, 0, 40, 0, 3, 0, 0, b'u']);
    let mut s = BytesMut::from(&[0x41u8][..]);
    s.put_slice(&codec::query("SET homeport.user = 'u1'").write_to_vec());
    s.put_slice(&codec::query("SHOW homeport.route").write_to_vec());
    write(t, "setting-queries", &s);
}

trait ToVec {
    fn write_to_vec(&self) -> Vec<u8>;
}

impl ToVec for Message {
    fn write_to_vec(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        self.write_to(&mut b);
        b.to_vec()
    }
}

fn settings() {
    for (name, s) in [
        ("set-user", "SET homeport.user = 'u1'"),
        (
            "set-local-key",
            "set local homeport.idempotency_key to 'order-42';",
        ),
        ("set-session", "SET SESSION homeport.user='o''brien'"),
        ("set-bare", "SET homeport.user = alice@example.com"),
        ("show-route", "SHOW homeport.route"),
        ("reset-token", "RESET HOMEPORT.CONSISTENCY_TOKEN"),
        ("staleness", "SET homeport.max_staleness = '200ms'"),
        ("staleness-value", "2s"),
        ("staleness-ms", "250"),
        ("staleness-off", "off"),
        (
            "hidden",
            "BEGIN; SET LOCAL homeport.idempotency_key = 'k'; INSERT INTO t VALUES (1)",
        ),
        ("in-literal", "SELECT 'SET homeport.user = 1'"),
        ("schema", "INSERT INTO homeport.things VALUES (1)"),
        ("other-setting", "SET search_path = public"),
        ("unterminated", "SET homeport.user = 'unterminated"),
        (
            "token",
            "SET homeport.consistency_token = 'v1.AAAAAYvMq7wBAmV1.abc'",
        ),
    ] {
        write("settings", name, s.as_bytes());
    }
}

fn token_value(shards: &[(&str, u32, u64, u64)], at: u64) -> Token {
    let mut t = Token::default();
    for (s, timeline, lsn, system) in shards {
        t.record(
            ShardId::parse(s).unwrap(),
            Position {
                timeline: *timeline,
                lsn: Lsn(*lsn),
                system_id: *system,
            },
            at,
        );
    }
    t
}

fn token() {
    let t = "token";
    let tokens = [
        ("empty", token_value(&[], 0)),
        (
            "one-shard",
            token_value(
                &[("eu", 1, 0x16_B374_D848, 7_300_000_000_000_000_001)],
                1_700_000_000_000,
            ),
        ),
        (
            "three-shards",
            token_value(
                &[
                    ("eu", 1, 0x3_0000_0028, 7_300_000_000_000_000_001),
                    ("us-east-1", 2, 0x1_0000_0000, 7_300_000_000_000_000_002),
                    ("ap", 1, 42, 7_300_000_000_000_000_003),
                ],
                1_700_000_123_456,
            ),
        ),
    ];
    for (name, tok) in &tokens {
        let text = tok.encode(&test_keys());
        // Mode 0: the token text.
        write(
            t,
            &format!("text-{name}"),
            &[b"\0", text.as_bytes()].concat(),
        );
        // Mode 1: its payload, which the check signs.
        let payload = B64.decode(text.split('.').nth(1).unwrap()).unwrap();
        write(
            t,
            &format!("payload-{name}"),
            &[&[1u8][..], &payload].concat(),
        );
        // Mode 3: the token rebuilt from bytes and edited (a structured seed).
        write(
            t,
            &format!("edit-{name}"),
            &[&[3u8][..], &payload[..20.min(payload.len())]].concat(),
        );
    }
    // Mode 2: structured tokens for the merge laws.
    write(
        t,
        "merge",
        &[
            &[2u8][..],
            &[7; 9],
            &[3, 0, 1],
            &[5; 20],
            &[1, 0, 1],
            &[9; 20],
        ]
        .concat(),
    );
    for (name, text) in [
        ("garbage-empty", ""),
        ("garbage-version", "v2.AA.AA"),
        ("garbage-parts", "v1.a.b.c"),
        ("garbage-base64", "v1.!!.??"),
    ] {
        write(t, name, &[b"\0", text.as_bytes()].concat());
    }
    let _ = TEST_KEY;
}

fn sql() {
    for (name, s) in [
        ("select", "SELECT 1"),
        (
            "select-param",
            "select * from notes where user_id = $1 order by id desc limit 20",
        ),
        (
            "aggregate",
            "SELECT count(*), max(id) FROM t GROUP BY a HAVING count(*) > 1;",
        ),
        ("cte", "WITH x AS (SELECT 1) SELECT * FROM x"),
        (
            "cte-write",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        ),
        (
            "subquery",
            "select a from t where b in (select c from u) and exists (select 1)",
        ),
        ("values", "VALUES (1), (2)"),
        ("table", "TABLE notes"),
        ("show", "SHOW server_version"),
        ("explain", "EXPLAIN SELECT * FROM t"),
        ("explain-analyze", "EXPLAIN (ANALYZE, BUFFERS) SELECT 1"),
        (
            "literals",
            "select 'delete from t', $$insert$$, $x$ drop $x$, E'it\\'s', \"update\" from t",
        ),
        (
            "cast",
            "select coalesce(a, 'x')::varchar(10), now() from t order by id limit 5",
        ),
        ("comment", "select x from t /* for update */ -- delete\n"),
        ("nested-comment", "select /* a /* nested */ delete */ 1"),
        (
            "hints",
            "SELECT 1 /*homeport_route='primary',homeport_user='alice%40example.com'*/",
        ),
        (
            "insert",
            "INSERT INTO notes (user_id, body) VALUES ($1, $2) RETURNING id",
        ),
        ("update", "update t set a = 1 where id = $1"),
        (
            "for-update",
            "SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED",
        ),
        ("into", "SELECT * INTO newtable FROM t"),
        ("function", "SELECT public.f(), my_function(1), \"f\"(2)"),
        ("multi", "BEGIN; SELECT 1; COMMIT"),
        (
            "ddl",
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)",
        ),
        ("unterminated", "select 'unterminated"),
        (
            "unicode",
            "SELECT 'héllo', \"naïve\" FROM tëst WHERE x = U&'\\0041'",
        ),
        ("numbers", "select 1.5e3, .5, 0x1F, 1_000 from t"),
    ] {
        write("sql_classifier", name, s.as_bytes());
    }
}

fn json() {
    for (name, s) in [
        (
            "query",
            r#"{"sql":"SELECT * FROM notes WHERE user_id = $1","params":["u1"]}"#,
        ),
        ("query-intent", r#"{"sql":"select 1","intent":"read"}"#),
        (
            "query-params",
            r#"{"sql":"insert into t values ($1,$2,$3,$4,$5,$6)","params":[42,-1.5e10,true,null,"AQI=","\\x0102"],"intent":"write"}"#,
        ),
        (
            "query-arrays",
            r#"{"sql":"select $1::int[], $2::text[]","params":[[[1,2],[3,null]],["a\"b","c\\d",null]]}"#,
        ),
        (
            "query-object",
            r#"{"sql":"select $1::jsonb","params":[{"a":[1,{"b":"c"}],"d":null}]}"#,
        ),
        (
            "transaction",
            r#"{"statements":[{"sql":"insert into t values ($1)","params":[1]},{"sql":"select * from t"}],"intent":"auto"}"#,
        ),
        ("place", r#"{"home_region":"eu"}"#),
        ("unknown-field", r#"{"sql":"select 1","param":[]}"#),
        ("bad-intent", r#"{"sql":"select 1","intent":"sometimes"}"#),
        ("truncated", r#"{"sql":"select 1","params":[1,2"#),
        (
            "big-number",
            r#"{"sql":"select $1::numeric","params":[12345678901234567890.123456789]}"#,
        ),
        (
            "unicode",
            r#"{"sql":"select $1","params":["\u00e9\ud83d\ude00\u0000"]}"#,
        ),
    ] {
        write("json_request", name, s.as_bytes());
    }
}

fn result() {
    let types = result_types();
    let at = |ty: &Type| types.iter().position(|t| t == ty).unwrap() as u8;
    let put = |name: &str, ty: Type, raw: &[u8]| {
        write("result_decode", name, &[&[at(&ty)][..], raw].concat());
    };
    put("bool", Type::BOOL, &[1]);
    put("int2", Type::INT2, &(-7i16).to_be_bytes());
    put("int4", Type::INT4, &42i32.to_be_bytes());
    put("int8", Type::INT8, &i64::MIN.to_be_bytes());
    put("float8", Type::FLOAT8, &f64::NAN.to_be_bytes());
    put("float4", Type::FLOAT4, &1.5f32.to_be_bytes());
    // numeric 12.34: ndigits 2, weight 0, sign +, dscale 2, digits 12 3400
    put(
        "numeric",
        Type::NUMERIC,
        &[0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x0d, 0x48],
    );
    put(
        "numeric-neg",
        Type::NUMERIC,
        &[0, 1, 0xff, 0xfe, 0x40, 0, 0, 8, 0, 12],
    );
    put("numeric-nan", Type::NUMERIC, &[0, 0, 0, 0, 0xc0, 0, 0, 0]);
    put("text", Type::TEXT, "héllo".as_bytes());
    put("uuid", Type::UUID, &[0xab; 16]);
    put("json", Type::JSON, br#"{"a":[1,2,{"b":null}]}"#);
    put("jsonb", Type::JSONB, b"\x01{\"a\":1}");
    put("bytea", Type::BYTEA, &[0, 1, 2, 255]);
    put("date", Type::DATE, &8766i32.to_be_bytes());
    put("time", Type::TIME, &45_296_500_000i64.to_be_bytes());
    put(
        "timetz",
        Type::TIMETZ,
        &[
            &45_296_000_000i64.to_be_bytes()[..],
            &(-3600i32).to_be_bytes(),
        ]
        .concat(),
    );
    put(
        "timestamp",
        Type::TIMESTAMP,
        &757_382_400_000_000i64.to_be_bytes(),
    );
    put("timestamptz", Type::TIMESTAMPTZ, &(-1i64).to_be_bytes());
    put(
        "interval",
        Type::INTERVAL,
        &[
            &5_400_500_000i64.to_be_bytes()[..],
            &3i32.to_be_bytes(),
            &14i32.to_be_bytes(),
        ]
        .concat(),
    );
    put("inet", Type::INET, &[2, 32, 0, 4, 10, 0, 0, 1]);
    put(
        "cidr6",
        Type::CIDR,
        &[
            3, 64, 1, 16, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    // int4[] '{{1,NULL},{3,4}}'
    let mut raw = Vec::new();
    for x in [2i32, 1, 23, 2, 1, 2, 1] {
        raw.extend_from_slice(&x.to_be_bytes());
    }
    for v in [Some(1i32), None, Some(3), Some(4)] {
        match v {
            Some(v) => {
                raw.extend_from_slice(&4i32.to_be_bytes());
                raw.extend_from_slice(&v.to_be_bytes());
            }
            None => raw.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    put("int4-array", Type::INT4_ARRAY, &raw);
    // text[] '{a,bc}'
    let mut raw = Vec::new();
    for x in [1i32, 0, 25, 2, 1, 1] {
        raw.extend_from_slice(&x.to_be_bytes());
    }
    raw.extend_from_slice(b"a");
    raw.extend_from_slice(&2i32.to_be_bytes());
    raw.extend_from_slice(b"bc");
    put("text-array", Type::TEXT_ARRAY, &raw);
    put("empty-array", Type::JSONB_ARRAY, &[0; 12]);
}

fn main() {
    wire();
    settings();
    token();
    sql();
    json();
    result();
    println!("seeds written under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}

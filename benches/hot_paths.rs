//! Micro-benchmarks of the pure code on the wire and HTTP hot paths: SQL classification, the
//! consistency token (sign, verify, merge) and wire framing and message decoding.
//!
//! `cargo bench --bench hot_paths` measures; `cargo test --benches` (part of `cargo test
//! --all-targets`) runs each benchmark once as a smoke test. Figures: docs/benchmarks.md.
#![allow(clippy::unwrap_used)] // test and benchmark code: a failed unwrap is a failed run

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;

use homeport::consistency::token::{Keys, Position, Token};
use homeport::pgwire::codec::{CLIENT_CHUNK, FramedReader, Message};
use homeport::pgwire::frontend::Frontend;
use homeport::sql::{ClassifyCache, classify};
use homeport::types::{Lsn, ShardId};

const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
const PGBENCH_UPDATE: &str =
    "UPDATE pgbench_accounts SET abalance = abalance + -2712 WHERE aid = 183744;";
const ORM_SELECT: &str = "/*homeport_user='u-4711',route='replica'*/ SELECT \"orders\".\"id\", \
    \"orders\".\"total\", \"orders\".\"created_at\" FROM \"orders\" INNER JOIN \"customers\" ON \
    \"customers\".\"id\" = \"orders\".\"customer_id\" WHERE \"customers\".\"email\" = $1 AND \
    \"orders\".\"status\" IN ('paid', 'shipped') ORDER BY \"orders\".\"created_at\" DESC LIMIT 20";

fn classification(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    for (name, sql) in [
        ("pgbench_select", PGBENCH_SELECT),
        ("pgbench_update", PGBENCH_UPDATE),
        ("orm_select", ORM_SELECT),
    ] {
        g.bench_function(name, |b| b.iter(|| classify(black_box(sql))));
    }
    let cache = ClassifyCache::new(1024);
    cache.classify(ORM_SELECT);
    g.bench_function("orm_select_cached", |b| {
        b.iter(|| cache.classify(black_box(ORM_SELECT)))
    });
    g.finish();
}

fn token(c: &mut Criterion) {
    let keys = Keys {
        current: b"0123456789abcdef0123456789abcdef".to_vec(),
        previous: Some(b"fedcba9876543210fedcba9876543210".to_vec()),
    };
    let position = |lsn| Position {
        timeline: 1,
        lsn: Lsn(lsn),
        system_id: 7_301_234_567_890_123_456,
    };
    let shard = |s: &str| ShardId::parse(s).expect("a valid shard name");
    let mut mine = Token::default();
    mine.record(shard("eu"), position(0x3_0000_1000), 1_764_500_000_000);
    let mut theirs = Token::default();
    theirs.record(shard("eu"), position(0x3_0000_2000), 1_764_500_000_100);
    theirs.record(shard("us"), position(0x1_0000_0100), 1_764_500_000_100);
    let encoded = theirs.encode(&keys);

    let mut g = c.benchmark_group("token");
    g.bench_function("sign", |b| b.iter(|| black_box(&theirs).encode(&keys)));
    g.bench_function("verify", |b| {
        b.iter(|| Token::decode(black_box(&encoded), &keys).expect("a valid token"))
    });
    g.bench_function("merge", |b| b.iter(|| black_box(&mine).merge(&theirs)));
    g.finish();
}

/// What `pgbench -S -M prepared` sends per transaction: Bind, Execute, Sync.
fn prepared_transaction(out: &mut BytesMut, aid: u32) {
    let value = aid.to_string();
    let params_len = 2 + 2 + 4 + value.len() + 2;
    out.put_u8(b'B');
    out.put_i32((4 + 1 + 5 + params_len) as i32);
    out.put_slice(b"\0P0_1\0");
    out.put_i16(0);
    out.put_i16(1);
    out.put_i32(value.len() as i32);
    out.put_slice(value.as_bytes());
    out.put_i16(0);
    out.put_slice(b"E\0\0\0\x09\0\0\0\0\0");
    out.put_slice(b"S\0\0\0\x04");
}

fn wire(c: &mut Criterion) {
    let mut stream = BytesMut::new();
    for aid in 0..100 {
        prepared_transaction(&mut stream, 10_000 + aid);
    }
    let mut g = c.benchmark_group("wire");
    // 300 messages cut from one client stream, as a session reads them.
    g.bench_function("frame_300_messages", |b| {
        b.iter(|| {
            let mut input: &[u8] = &stream;
            let mut reader = FramedReader::with_chunk(&mut input, CLIENT_CHUNK);
            let mut n = 0;
            while let Some(Ok(m)) = reader.next().now_or_never() {
                n += m.body.len();
            }
            n
        })
    });
    let mut input: &[u8] = &stream;
    let mut reader = FramedReader::new(&mut input);
    let batch: Vec<Message> = (0..3)
        .map(|_| {
            reader
                .next()
                .now_or_never()
                .expect("in memory")
                .expect("a message")
        })
        .collect();
    g.bench_function("decode_bind_execute_sync", |b| {
        b.iter(|| Frontend::decode_all(black_box(&batch)).map(|d| d.len()))
    });
    g.bench_function("encode_bind_execute_sync", |b| {
        let decoded = Frontend::decode_all(&batch).expect("a valid batch");
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            for m in &decoded {
                m.write_to(&mut out);
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, classification, token, wire);
criterion_main!(benches);

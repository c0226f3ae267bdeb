//! The authoritative idempotency records in each shard's primary: the schema homeport creates and
//! migrates itself, the claim that runs inside a write's transaction, the stored response, and
//! the cleanup of expired records in small batches.
//!
//! Schema (migration version 1, recorded in `homeport.migrations`; version 2 adds
//! `homeport.idempotency_refuse`, which raises a claim's refusal, and changes nothing else, so
//! sidecars of both versions work on one database):
//!
//! ```sql
//! homeport.idempotency_keys (
//!   user_id     text        -- the homeport user the key belongs to
//!   key         text        -- the client's key, 1..255 printable ASCII
//!   fingerprint bytea       -- SHA-256 of method, path and body (HTTP), or of the wire marker
//!   state       text        -- 'completed' (HTTP: response stored) or 'applied' (wire)
//!   status      smallint    -- the stored response's HTTP status (HTTP only)
//!   response    text        -- the stored response body, JSON (HTTP only)
//!   created_at  timestamptz
//!   expires_at  timestamptz -- after this the key may be used again; cleanup deletes the row
//!   PRIMARY KEY (user_id, key)
//! )
//! ```
//!
//! A request in flight has no committed row: it holds a transaction-scoped advisory lock on the
//! key (and, on the wire, an uncommitted row); both vanish if it rolls back or its connection
//! dies. The HTTP claim ([`claim_batch`]) costs one lock and one index probe and no PL/pgSQL unless
//! it refuses; the wire keeps version 1's claim function, which also inserts its row at once.

use std::sync::LazyLock;
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_postgres::types::Type;

use crate::db::{DbError, Pools};

/// Steps of homeport's own schema, applied in order, each once, under an advisory lock.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE homeport.idempotency_keys (
    user_id     text        NOT NULL,
    key         text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint bytea       NOT NULL,
    state       text        NOT NULL CHECK (state IN ('completed', 'applied')),
    status      smallint,
    response    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_expires_at ON homeport.idempotency_keys (expires_at);
COMMENT ON TABLE homeport.idempotency_keys IS
    'homeport idempotency records; written in the same transaction as the write they guard';

CREATE FUNCTION homeport.idempotency_claim(
    p_user text, p_key text, p_fingerprint bytea, p_state text, p_ttl_seconds double precision
) RETURNS void LANGUAGE plpgsql AS $claim$
DECLARE
    seen bytea;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended(p_user || chr(1) || p_key, 7401)) THEN
        RAISE EXCEPTION USING ERRCODE = 'HP409',
            MESSAGE = format('idempotency key %L is in use by a request that is still running', p_key),
            HINT = 'retry after it finished';
    END IF;
    SELECT fingerprint INTO seen FROM homeport.idempotency_keys
     WHERE user_id = p_user AND key = p_key AND expires_at > now();
    IF FOUND THEN
        IF seen = p_fingerprint THEN
            RAISE EXCEPTION USING ERRCODE = 'HP200',
                MESSAGE = format('idempotency key %L was already used by a committed transaction; this transaction was not applied', p_key),
                HINT = 'the earlier transaction with this key committed: treat this as success and roll back';
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'HP422',
            MESSAGE = format('idempotency key %L was already used for a different request', p_key);
    END IF;
    DELETE FROM homeport.idempotency_keys WHERE user_id = p_user AND key = p_key;
    -- The wire's record goes in now (homeport does not see that transaction's COMMIT coming);
    -- HTTP inserts its record with the response just before COMMIT.
    IF p_state = 'applied' THEN
        INSERT INTO homeport.idempotency_keys (user_id, key, fingerprint, state, expires_at)
        VALUES (p_user, p_key, p_fingerprint, p_state, now() + make_interval(secs => p_ttl_seconds));
    END IF;
END
$claim$;
"#,
    ),
    (
        2,
        r#"
CREATE FUNCTION homeport.idempotency_refuse(p_key text, p_code text) RETURNS boolean
LANGUAGE plpgsql AS $refuse$
BEGIN
    IF p_code = 'HP409' THEN
        RAISE EXCEPTION USING ERRCODE = 'HP409',
            MESSAGE = format('idempotency key %L is in use by a request that is still running', p_key),
            HINT = 'retry after it finished';
    ELSIF p_code = 'HP200' THEN
        RAISE EXCEPTION USING ERRCODE = 'HP200',
            MESSAGE = format('idempotency key %L was already used by a committed transaction; this transaction was not applied', p_key),
            HINT = 'the earlier transaction with this key committed: treat this as success and roll back';
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'HP422',
        MESSAGE = format('idempotency key %L was already used for a different request', p_key);
END
$refuse$;
COMMENT ON FUNCTION homeport.idempotency_refuse(text, text) IS
    'raises the refusal of an idempotency claim (HP409, HP200, HP422); called by homeport''s claim statements';
"#,
    ),
];

/// The HTTP claim, from the expressions of its three values. No row yet and no PL/pgSQL on this
/// path: the key's advisory lock (the same lock the version 1 claim function takes, so sidecars
/// of both versions exclude each other) and one probe of the primary key. A refusal raises
/// (`HP409` busy, `HP200` completed, `HP422` another request), which aborts the transaction so
/// the statement pipelined behind it never runs. The lock is tried before the probe: a CASE
/// evaluates its branches in order and the scalar subquery is an initplan, computed only when its
/// branch is reached.
fn claim_sql(user: &str, key: &str, fp: &str) -> String {
    format!(
        "SELECT CASE \
         WHEN NOT pg_try_advisory_xact_lock(hashtextextended({user} || chr(1) || {key}, 7401)) \
         THEN homeport.idempotency_refuse({key}, 'HP409') \
         ELSE (SELECT homeport.idempotency_refuse(key, \
                      CASE WHEN fingerprint = {fp} THEN 'HP200' ELSE 'HP422' END) \
                 FROM homeport.idempotency_keys \
                WHERE user_id = {user} AND key = {key} AND expires_at > now()) END"
    )
}

/// The record of an HTTP write with its response, from the expressions of its values. The
/// claim's probe saw no live record and the advisory lock is held, so the only row in the way is
/// an expired one, which is overwritten; anything else raises, and the rest of the Query
/// (COMMIT) is skipped, leaving the transaction to be rolled back.
fn record_sql(user: &str, key: &str, fp: &str, status: &str, response: &str, ttl: &str) -> String {
    format!(
        "INSERT INTO homeport.idempotency_keys AS k \
         (user_id, key, fingerprint, state, status, response, expires_at) \
         VALUES ({user}, {key}, {fp}, 'completed', {status}, {response}, \
                 now() + make_interval(secs => {ttl})) \
         ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
         state = EXCLUDED.state, status = EXCLUDED.status, response = EXCLUDED.response, \
         created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at \
         WHERE CASE WHEN k.expires_at <= now() THEN true \
         ELSE homeport.idempotency_refuse(k.key, 'HP409') END"
    )
}

/// The SQL names the claim and the record are prepared under on each server connection of a
/// directly reached primary ([`PREPARE_SQL`]); a change to either text needs new names.
const CLAIM_NAME: &str = "homeport_claim_v2";
const RECORD_NAME: &str = "homeport_record_v2";

/// Prepares the claim and the record under their names, once per server connection (tracked
/// by `db::statement::SqlPrepared`), outside any transaction: a prepared statement is the
/// session's, whatever becomes of a transaction.
pub static PREPARE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "PREPARE {CLAIM_NAME}(text, text, bytea) AS {}; \
         PREPARE {RECORD_NAME}(text, text, bytea, int2, text, float8) AS {}",
        claim_sql("$1", "$2", "$3"),
        record_sql("$1", "$2", "$3", "$4", "$5", "$6")
    )
});

/// BEGIN and the HTTP claim, one simple Query (one protocol cycle) pipelined with the first
/// statement of the write. `prepared`: the connection has [`PREPARE_SQL`], and the claim is an
/// `EXECUTE` of it, which the server plans once per connection instead of parsing and planning
/// the whole text on every keyed write (about a quarter less PostgreSQL CPU per keyed write,
/// docs/benchmarks.md); else (behind a transaction-mode pooler, where nothing named outlives a
/// transaction) the whole text. The values are literals either way.
pub fn claim_batch(prepared: bool, user: &str, key: &str, fingerprint: &[u8]) -> String {
    let (user, key, fp) = (literal(user), literal(key), bytea(fingerprint));
    let claim = if prepared {
        format!("EXECUTE {CLAIM_NAME}({user}, {key}, {fp})")
    } else {
        claim_sql(&user, &key, &fp)
    };
    format!("BEGIN; {claim}")
}

/// The record of an HTTP write with its response, COMMIT and the commit position, one simple
/// Query; `prepared` as for [`claim_batch`].
pub fn record_batch(
    prepared: bool,
    user: &str,
    key: &str,
    fingerprint: &[u8],
    status: u16,
    response: &str,
    ttl: Duration,
) -> String {
    let (user, key, fp) = (literal(user), literal(key), bytea(fingerprint));
    let (response, ttl) = (literal(response), ttl.as_secs_f64());
    let record = if prepared {
        format!("EXECUTE {RECORD_NAME}({user}, {key}, {fp}, {status}, {response}, {ttl})")
    } else {
        record_sql(
            &user,
            &key,
            &fp,
            &status.to_string(),
            &response,
            &ttl.to_string(),
        )
    };
    format!(
        "{record}; COMMIT; {position}",
        position = crate::consistency::sql::POSITION_SQL
    )
}

/// A string literal that reads the same whatever `standard_conforming_strings` says.
fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A bytea value from hex, with no backslash to interpret.
fn bytea(bytes: &[u8]) -> String {
    format!("decode('{}', 'hex')", super::hex(bytes))
}

/// The stored response of a completed key.
pub const LOOKUP_SQL: &str = "SELECT status, response, fingerprint FROM homeport.idempotency_keys \
     WHERE user_id = $1 AND key = $2 AND expires_at > now()";
pub const LOOKUP_TYPES: &[Type] = &[Type::TEXT, Type::TEXT];
/// One cleanup batch: expired rows nobody is touching, a bounded number at a time.
const CLEANUP_SQL: &str = "DELETE FROM homeport.idempotency_keys WHERE ctid IN (\
     SELECT ctid FROM homeport.idempotency_keys WHERE expires_at <= now() \
     ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)";

/// The claim as one simple-protocol statement, for the wire endpoint (values are escaped).
pub fn claim_literal(user: &str, key: &str, fingerprint: &[u8], ttl: Duration) -> String {
    let hex = super::hex(fingerprint);
    format!(
        "SELECT homeport.idempotency_claim({}, {}, '\\x{hex}'::bytea, 'applied', {})",
        quote(user),
        quote(key),
        ttl.as_secs_f64()
    )
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Applies the migrations a database lacks. Safe to run from many sidecars at once.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    migrate_to(client, LATEST).await
}

/// The newest schema version this build knows.
pub const LATEST: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Applies the migrations up to `version` that a database lacks (an older sidecar stops at its
/// own last version; the upgrade tests use this to build such a database).
pub async fn migrate_to(
    client: &mut tokio_postgres::Client,
    version: i32,
) -> Result<(), tokio_postgres::Error> {
    let steps: Vec<(i32, &str)> = MIGRATIONS
        .iter()
        .copied()
        .filter(|(v, _)| *v <= version)
        .collect();
    crate::db::migrate::migrate(client, "idempotency", &steps).await
}

/// Remembers, per endpoint, that its schema is current, so migration runs once per sidecar.
pub struct Schema {
    ready: Vec<OnceCell<()>>,
}

impl Schema {
    pub fn new(endpoints: usize) -> Schema {
        Schema {
            ready: (0..endpoints).map(|_| OnceCell::new()).collect(),
        }
    }

    pub fn is_ready(&self, index: usize) -> bool {
        self.ready[index].initialized()
    }

    /// Migrates endpoint `index` unless this sidecar already did; a failure is retried next time.
    pub async fn ensure(&self, pools: &Pools, index: usize) -> Result<(), DbError> {
        self.ready[index]
            .get_or_try_init(|| async {
                let endpoint = pools.endpoint_name(index);
                let mut client = pools.get(index).await?;
                migrate(&mut client)
                    .await
                    .map_err(|e| DbError::from_pg(endpoint, e))
            })
            .await
            .map(|_| ())
    }
}

/// Deletes expired records on one primary in batches of `batch`; returns how many went.
pub async fn cleanup(
    client: &deadpool_postgres::Object,
    batch: u32,
) -> Result<u64, tokio_postgres::Error> {
    let mut total = 0;
    loop {
        // Unnamed (Parse, Bind, Execute, Sync at once): nothing is left prepared, which a
        // transaction-mode pooler in front of the primary needs; once a minute costs nothing.
        let limit = i64::from(batch);
        let n = client
            .execute_typed(CLEANUP_SQL, &[(&limit, Type::INT8)])
            .await?;
        total += n;
        if n < u64::from(batch) {
            return Ok(total);
        }
    }
}

/// Cleans expired records on the primaries of this sidecar's own region's shards (cells), every
/// `cleanup_interval` (each region cleans its own shards; the batches skip locked rows, so several
/// sidecars of one region never wait on each other). Runs until aborted.
pub fn spawn_cleanup(app: std::sync::Arc<crate::app::App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let config = app.config.idempotency.clone();
        let mut ticker = tokio::time::interval(config.cleanup_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let local = app
                .config
                .shards
                .iter()
                .filter(|s| s.region == app.config.region);
            for shard in local {
                clean_shard(&app, &shard.name, config.cleanup_batch).await;
            }
        }
    })
}

/// One cleanup pass on `shard`'s primary, if it is reachable and has the schema.
async fn clean_shard(app: &crate::app::App, shard: &crate::types::ShardId, batch: u32) {
    let Ok(candidates) = app.candidates(shard, crate::types::Intent::Write) else {
        return;
    };
    let Some(primary) = candidates.first() else {
        return;
    };
    // Only a primary that has the schema (some request used a key) has rows to clean.
    if !app.idempotency_schema.is_ready(primary.index) {
        return;
    }
    let Ok(client) = app.pools.get(primary.index).await else {
        return;
    };
    match cleanup(&client, batch).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, %shard, "expired idempotency records removed"),
        Err(e) => tracing::warn!(error = %e, %shard, "idempotency cleanup failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_batches_escape_their_values_under_either_string_syntax() {
        let claim = claim_batch(false, "o'b\\", "k'1", &[0xab, 0x01]);
        assert!(claim.starts_with("BEGIN; SELECT CASE"));
        assert!(
            claim.contains("E'o''b\\\\' || chr(1) || E'k''1'"),
            "{claim}"
        );
        assert!(
            claim.contains("fingerprint = decode('ab01', 'hex')"),
            "{claim}"
        );
        let record = record_batch(
            false,
            "u",
            "k",
            &[1],
            200,
            r#"{"a":"it's \\n"}"#,
            Duration::from_secs(60),
        );
        assert!(record.contains(r#"E'{"a":"it''s \\\\n"}'"#), "{record}");
        assert!(record.contains("make_interval(secs => 60)"), "{record}");
        assert!(record.ends_with("COMMIT; SELECT pg_current_wal_lsn()::text"));
    }

    #[test]
    fn prepared_batches_execute_by_name_with_the_same_values() {
        let claim = claim_batch(true, "o'b", "k", &[0xab]);
        assert_eq!(
            claim,
            "BEGIN; EXECUTE homeport_claim_v2(E'o''b', E'k', decode('ab', 'hex'))"
        );
        let ttl = Duration::from_millis(1500);
        let record = record_batch(true, "u", "k", &[1], 200, "{}", ttl);
        assert_eq!(
            record,
            "EXECUTE homeport_record_v2(E'u', E'k', decode('01', 'hex'), 200, E'{}', 1.5); \
             COMMIT; SELECT pg_current_wal_lsn()::text"
        );
        // What is prepared is the whole text with parameters in place of the values.
        let whole = claim_batch(false, "u", "k", &[1]);
        let by_value = whole
            .trim_start_matches("BEGIN; ")
            .replace("E'u'", "$1")
            .replace("E'k'", "$2")
            .replace("decode('01', 'hex')", "$3");
        assert!(PREPARE_SQL.contains(&by_value), "{}", *PREPARE_SQL);
        let whole = record_batch(false, "u", "k", &[1], 200, "{}", ttl);
        let by_value = whole
            .trim_end_matches("; COMMIT; SELECT pg_current_wal_lsn()::text")
            .replace("E'u'", "$1")
            .replace("E'k'", "$2")
            .replace("decode('01', 'hex')", "$3")
            .replace("200", "$4")
            .replace("E'{}'", "$5")
            .replace("1.5", "$6");
        assert!(PREPARE_SQL.ends_with(&by_value), "{}", *PREPARE_SQL);
    }

    #[test]
    fn the_wire_claim_escapes_its_values() {
        let sql = claim_literal("o'brien", "k'1", &[0xab, 0x01], Duration::from_secs(60));
        assert_eq!(
            sql,
            "SELECT homeport.idempotency_claim('o''brien', 'k''1', '\\xab01'::bytea, 'applied', 60)"
        );
    }
}

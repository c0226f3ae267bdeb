//! The authoritative idempotency records in each shard's primary: the schema homeport creates and
//! migrates itself, the claim that runs inside a write's transaction, the stored response, and
//! the cleanup of expired records in small batches.
//!
//! Schema (migration version 1, recorded in `homeport.migrations`):
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
//! dies.

use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_postgres::types::Type;

use crate::db::{DbError, Pools};

/// Steps of homeport's own schema, applied in order, each once, under an advisory lock.
const MIGRATIONS: &[(i32, &str)] = &[(
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
)];

/// The claim, run first inside the write's transaction (see the module docs).
pub const CLAIM_SQL: &str = "SELECT homeport.idempotency_claim($1, $2, $3, $4, $5)";
pub const CLAIM_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::TEXT,
    Type::FLOAT8,
];
/// The record of an HTTP write with its response, just before its COMMIT.
pub const RECORD_SQL: &str = "INSERT INTO homeport.idempotency_keys \
     (user_id, key, fingerprint, state, status, response, expires_at) \
     VALUES ($1, $2, $3, 'completed', $4, $5, now() + make_interval(secs => $6))";
pub const RECORD_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::INT2,
    Type::TEXT,
    Type::FLOAT8,
];
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
pub async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('homeport.migrations', 7401));
         CREATE SCHEMA IF NOT EXISTS homeport;
         CREATE TABLE IF NOT EXISTS homeport.migrations (
             component text NOT NULL, version integer NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))",
    )
    .await?;
    let done: Option<i32> = tx
        .query_one(
            "SELECT max(version) FROM homeport.migrations WHERE component = 'idempotency'",
            &[],
        )
        .await?
        .get(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > done.unwrap_or(0)) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO homeport.migrations (component, version) VALUES ('idempotency', $1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "idempotency schema migrated");
    }
    tx.commit().await
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

/// Cleans expired records on the primary of this sidecar's own region's shard, every
/// `cleanup_interval` (each region cleans its own shard; the batches skip locked rows, so several
/// sidecars of one region never wait on each other). Runs until aborted.
pub fn spawn_cleanup(app: std::sync::Arc<crate::app::App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let config = app.config.idempotency.clone();
        let mut ticker = tokio::time::interval(config.cleanup_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Ok(candidates) = app.candidates(&app.config.region, crate::types::Intent::Write)
            else {
                continue;
            };
            let Some(primary) = candidates.first() else {
                continue;
            };
            // Only a primary that has the schema (some request used a key) has rows to clean.
            if !app.idempotency_schema.is_ready(primary.index) {
                continue;
            }
            let Ok(client) = app.pools.get(primary.index).await else {
                continue;
            };
            match cleanup(&client, config.cleanup_batch).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired idempotency records removed"),
                Err(e) => tracing::warn!(error = %e, "idempotency cleanup failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_claim_escapes_its_values() {
        let sql = claim_literal("o'brien", "k'1", &[0xab, 0x01], Duration::from_secs(60));
        assert_eq!(
            sql,
            "SELECT homeport.idempotency_claim('o''brien', 'k''1', '\\xab01'::bytea, 'applied', 60)"
        );
    }
}

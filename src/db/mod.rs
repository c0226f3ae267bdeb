//! Server connections: one deadpool-postgres pool per endpoint (indexed like the topology
//! snapshot), acquire with a bounded wait, and the error type for everything that can go wrong
//! between homeport and a PostgreSQL server.

pub mod migrate;
pub mod statement;
pub mod tls;

use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::config::PostgresConfig;
use crate::topology::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection could be had in time: the server is down, unreachable, or the pool is full.
    #[error("{endpoint}: {reason}")]
    Unavailable { endpoint: String, reason: String },
    /// The server ran the statement and raised an error.
    #[error("{0}")]
    Server(#[source] tokio_postgres::Error),
    /// The connection broke while the statement was in flight; whether it ran is unknown.
    #[error("{endpoint}: connection lost: {reason}")]
    Lost { endpoint: String, reason: String },
    /// A parameter could not be bound (index is 1-based like `$1`).
    #[error("parameter ${index}: {message}")]
    Param { index: usize, message: String },
    /// The statement cannot run the way this endpoint is reached (a type that is not built in,
    /// behind a transaction-mode pooler).
    #[error("{0}")]
    Unsupported(String),
    /// The result passed a limit of the HTTP API (`http.max_result_rows`, `http.max_result_bytes`).
    #[error("{0}")]
    TooLarge(String),
    /// The sidecar's budget of buffered result bytes (`http.result_budget`) is in use.
    #[error("{0}")]
    OverBudget(String),
}

impl DbError {
    pub fn from_pg(endpoint: &str, e: tokio_postgres::Error) -> DbError {
        match e.code() {
            // A server error with a SQLSTATE is the server's verdict on the statement, except the
            // ones that mean the server is going away.
            Some(code) if !is_unavailable(code) => DbError::Server(e),
            Some(_) => DbError::Unavailable {
                endpoint: endpoint.to_string(),
                reason: describe(&e),
            },
            None => DbError::Lost {
                endpoint: endpoint.to_string(),
                reason: describe(&e),
            },
        }
    }

    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            DbError::Server(e) => e.code(),
            _ => None,
        }
    }

    /// Whether trying another copy is safe and useful: nothing ran, or it was a read.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable { .. })
    }
}

/// An error with its causes ("error performing TLS handshake: invalid peer certificate: ...").
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn is_unavailable(code: &SqlState) -> bool {
    *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || code.code().starts_with("08")
}

/// Pools for every endpoint, in snapshot order.
pub struct Pools {
    pools: Vec<(String, Pool)>,
    /// Per endpoint: the statement shapes learnt behind a transaction-mode pooler, `None` for
    /// a direct server (statements are prepared per connection there).
    shapes: Vec<Option<std::sync::Arc<statement::Shapes>>>,
}

impl Pools {
    pub fn new(snapshot: &Snapshot, settings: &PostgresConfig, tls: &tls::ServerTls) -> Pools {
        let pools = snapshot
            .endpoints
            .iter()
            .map(|e| {
                let config = ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                };
                let manager = match tls.make_connect() {
                    Some(tls) => Manager::from_config(e.info.pg.clone(), tls, config),
                    None => Manager::from_config(e.info.pg.clone(), NoTls, config),
                };
                let pool = Pool::builder(manager)
                    .max_size(settings.pool_size)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(settings.acquire_timeout))
                    .create_timeout(Some(settings.connect_timeout))
                    .recycle_timeout(Some(Duration::from_secs(1)))
                    .build()
                    .expect("runtime and timeouts are set");
                (e.info.name.clone(), pool)
            })
            .collect();
        let shapes = snapshot
            .endpoints
            .iter()
            .map(|e| e.info.pooler.is_transaction().then(Default::default))
            .collect();
        Pools { pools, shapes }
    }

    /// Whether endpoint `index` is behind a transaction-mode pooler (statements go unnamed).
    pub fn unnamed(&self, index: usize) -> bool {
        self.shapes[index].is_some()
    }

    /// The statement shapes of the endpoint named `endpoint`, if it is behind a
    /// transaction-mode pooler.
    pub fn shapes_of(&self, endpoint: &str) -> Option<std::sync::Arc<statement::Shapes>> {
        let index = self.pools.iter().position(|(n, _)| n == endpoint)?;
        self.shapes[index].clone()
    }

    /// Closes idle connections unused for `idle` or older than `lifetime`.
    pub fn reap(&self, idle: Duration, lifetime: Duration) {
        for (_, pool) in &self.pools {
            pool.retain(|_, m| m.last_used() < idle && m.age() < lifetime);
        }
    }

    /// Idle connections in every pool.
    pub fn idle_count(&self) -> usize {
        self.pools.iter().map(|(_, p)| p.status().available).sum()
    }

    pub fn endpoint_name(&self, index: usize) -> &str {
        &self.pools[index].0
    }

    /// A connection to endpoint `index`, within the acquire timeout.
    pub async fn get(&self, index: usize) -> Result<Object, DbError> {
        let (name, pool) = &self.pools[index];
        pool.get().await.map_err(|e| DbError::Unavailable {
            endpoint: name.clone(),
            reason: match e {
                PoolError::Timeout(_) => "timed out waiting for a connection".into(),
                PoolError::Backend(e) => describe(&e),
                other => other.to_string(),
            },
        })
    }

    /// At most one row of a small internal query with text parameters.
    pub async fn query_row(
        &self,
        index: usize,
        sql: &str,
        params: &[&str],
    ) -> Result<Option<tokio_postgres::Row>, DbError> {
        let client = self.get(index).await?;
        let name = self.endpoint_name(index);
        let types = vec![tokio_postgres::types::Type::TEXT; params.len()];
        let stmt = statement::Own::prepare(&client, self.unnamed(index), sql, &types)
            .await
            .map_err(|e| DbError::from_pg(name, e))?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as _).collect();
        stmt.query_opt(&client, &params)
            .await
            .map_err(|e| DbError::from_pg(name, e))
    }

    /// One text column of at most one row, for small internal lookups.
    pub async fn query_opt_text(
        &self,
        index: usize,
        sql: &str,
        params: &[&str],
    ) -> Result<Option<String>, DbError> {
        Ok(self.query_row(index, sql, params).await?.map(|r| r.get(0)))
    }

    /// One row of (text, bool), for the directory's insert-or-read.
    pub async fn query_one_text_bool(
        &self,
        index: usize,
        sql: &str,
        params: &[&str],
    ) -> Result<(String, bool), DbError> {
        let row = self
            .query_row(index, sql, params)
            .await?
            .ok_or_else(|| DbError::Lost {
                endpoint: self.endpoint_name(index).to_string(),
                reason: "the statement returned no row".into(),
            })?;
        Ok((row.get(0), row.get(1)))
    }
}

//! Running statements for the HTTP API on a pooled connection: prepare (cached per server
//! connection; behind a transaction-mode pooler the statement goes unnamed with the parameter
//! types learnt once, `db::statement`), bind the JSON parameters as text, and encode the rows to JSON as they arrive
//! (`encode`), within the result limits (`http.max_result_rows`, `http.max_result_bytes`, the
//! request's `max_rows`) and the global budget of buffered bytes (`budget`).
//!
//! Two ways to run: [`run`] collects the whole result (transactions, writes, reads that carry a
//! consistency token), and [`start`] begins a `/v1/query` read that turns into a stream
//! (`stream`) once it outgrows [`STREAM_AFTER`] bytes, so small results are still sent in one
//! piece with a `Content-Length`.
//!
//! Past a limit the statement is cancelled with PostgreSQL's cancel request (a separate
//! connection to the server, <https://www.postgresql.org/docs/15/protocol-flow.html#id-1.10.6.7.10>).
//! A cancel can arrive late and hit whatever runs next on that server connection, so a
//! connection a cancel was sent on is never pooled again: [`Exec::release`] closes it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use deadpool_postgres::Object;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::Value;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{CancelToken, Row, RowStream};

use super::budget::Reservation;
use super::encode::ResultJson;
use super::values::{TextParam, param_to_text};
use crate::app::App;
use crate::db::DbError;
use crate::db::statement::{DescribeError, Shape, Shapes, Unnamed};

/// A `/v1/query` result larger than this many bytes of JSON is streamed (chunked) rather than
/// sent in one piece. Below it, a result costs exactly what it did before streaming existed.
pub const STREAM_AFTER: usize = 64 << 10;

/// The result of one statement, collected: its complete JSON object.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub json: Bytes,
    pub row_count: u64,
}

/// How much of a result one request may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows per statement (`http.max_result_rows`): past it the request fails.
    pub max_rows: u64,
    /// Bytes of JSON per response (`http.max_result_bytes`): past it the request fails.
    pub max_bytes: usize,
    /// The request's own `max_rows`: past it the result is cut and marked `"truncated": true`.
    pub page: Option<u64>,
}

/// Why a result stopped before its last row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The request's `max_rows` was reached and there were more rows.
    Page,
    /// More rows than `http.max_result_rows`.
    Rows(u64),
    /// More JSON than `http.max_result_bytes`.
    Bytes(usize),
    /// The global budget (`http.result_budget`, this many bytes) is in use by other requests.
    Budget(usize),
}

impl Limits {
    /// Whether a result that has `rows` rows may get one more.
    pub fn before_row(&self, rows: u64) -> Option<Stop> {
        if self.page.is_some_and(|p| rows >= p) {
            return Some(Stop::Page);
        }
        (rows >= self.max_rows).then_some(Stop::Rows(self.max_rows))
    }

    /// Whether a response of `written` bytes is still within the byte limit.
    pub fn after_row(&self, written: usize) -> Option<Stop> {
        (written > self.max_bytes).then_some(Stop::Bytes(self.max_bytes))
    }
}

/// Sends PostgreSQL cancel requests for one server connection.
#[derive(Clone)]
pub struct Canceller {
    token: CancelToken,
    /// How to reach the server; the TLS connector is only built for a cancel, not per request.
    tls: crate::db::tls::ServerTls,
}

impl Canceller {
    pub async fn cancel(&self) {
        let sent = match self.tls.make_connect() {
            Some(tls) => self.token.cancel_query(tls).await,
            None => self.token.cancel_query(tokio_postgres::NoTls).await,
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "cancel request not sent; the connection is closed instead");
        }
    }
}

/// One request's statements on one server connection: where, within which limits, charged to
/// which budget, and how to cancel them.
pub struct Exec {
    pub endpoint: String,
    pub limits: Limits,
    canceller: Canceller,
    /// Results already finished in this request, and the bytes reserved for all of them.
    held: Mutex<(usize, Reservation)>,
    cancelled: AtomicBool,
    /// The endpoint is behind a transaction-mode pooler: statements go unnamed.
    shapes: Option<std::sync::Arc<Shapes>>,
    /// The statements run inside a transaction the caller opened.
    in_transaction: AtomicBool,
    /// The connection holds state that must not be lent again (see [`Exec::release`]).
    spoiled: AtomicBool,
}

impl Exec {
    pub fn new(app: &App, client: &Object, endpoint: &str, page: Option<u64>) -> Exec {
        let http = &app.config.http;
        Exec {
            endpoint: endpoint.to_string(),
            limits: Limits {
                max_rows: http.max_result_rows,
                max_bytes: http.max_result_bytes,
                page,
            },
            canceller: Canceller {
                token: client.cancel_token(),
                tls: app.topology.tls.clone(),
            },
            held: Mutex::new((0, app.http_budget.reservation())),
            cancelled: AtomicBool::new(false),
            shapes: app.pools.shapes_of(endpoint),
            in_transaction: AtomicBool::new(false),
            spoiled: AtomicBool::new(false),
        }
    }

    /// Whether the endpoint is behind a transaction-mode pooler (statements go unnamed).
    pub fn unnamed(&self) -> bool {
        self.shapes.is_some()
    }

    /// Says that the statements run from now on are inside a transaction the caller opened
    /// (a statement's shape is then learnt inside it, not in a transaction of its own).
    pub fn in_transaction(&self) {
        self.in_transaction.store(true, Ordering::SeqCst);
    }

    /// Adds `row` to `json` if the limits and the budget allow it; otherwise says why not.
    pub fn admit(&self, json: &mut ResultJson, row: &Row) -> Result<Option<Stop>, DbError> {
        if let Some(stop) = self.limits.before_row(json.rows()) {
            return Ok(Some(stop));
        }
        json.push_row(row)
            .map_err(|e| DbError::from_pg(&self.endpoint, e))?;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stop) = self.limits.after_row(held.0 + json.written()) {
            return Ok(Some(stop));
        }
        let need = held.0 + json.held();
        if !held.1.cover(need) {
            return Ok(Some(Stop::Budget(budget_capacity(&held.1))));
        }
        Ok(None)
    }

    /// Records a finished result, which stays held until the response is sent.
    fn finished(&self, bytes: usize) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).0 += bytes;
    }

    /// Gives back the share of the limits of a collected result that will not be sent.
    pub fn discard(&self, result: QueryResult) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.0 = held.0.saturating_sub(result.json.len());
    }

    /// Sends a cancel request for the statement running on this connection.
    pub async fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.canceller.cancel().await;
    }

    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Lets a connection go back to the pool, unless a cancel was sent on it or it keeps state
    /// it must not lend (type lookups prepared behind a pooler): then it is closed.
    pub fn release(&self, client: Object) {
        if self.cancelled() || self.spoiled.load(Ordering::SeqCst) {
            drop(Object::take(client));
        }
    }

    /// The error for a result stopped by a limit. `finished` says whether the statement ran to
    /// its end anyway (the cancel came too late), when that is known.
    pub fn stop_error(&self, stop: Stop, finished: Option<bool>) -> DbError {
        let after = match finished {
            Some(true) => {
                " The statement had already finished when it was stopped: outside a transaction, its effects are applied."
            }
            Some(false) => " The statement was cancelled.",
            None => " The statement was cancelled.",
        };
        match stop {
            Stop::Budget(capacity) => DbError::OverBudget(format!(
                "this sidecar already holds its budget of {capacity} bytes of results for other requests (http.result_budget); retry, or ask for less.{after}"
            )),
            Stop::Rows(n) => DbError::TooLarge(format!(
                "the result has more than {n} rows (http.max_result_rows); page through it (keyset pagination with WHERE and LIMIT) or set \"max_rows\".{after}"
            )),
            Stop::Bytes(n) => DbError::TooLarge(format!(
                "the response is larger than {n} bytes (http.max_result_bytes); page through it (keyset pagination with WHERE and LIMIT) or select fewer columns.{after}"
            )),
            Stop::Page => DbError::TooLarge(format!("max_rows reached.{after}")),
        }
    }
}

fn budget_capacity(r: &Reservation) -> usize {
    r.budget().capacity()
}

/// A statement ready to run on one connection: prepared there, or (behind a transaction-mode
/// pooler) its shape, to be sent unnamed.
pub enum Prepared<'s> {
    Named(tokio_postgres::Statement),
    Unnamed(&'s str, std::sync::Arc<Shape>),
}

impl Prepared<'_> {
    fn params(&self) -> &[Type] {
        match self {
            Prepared::Named(s) => s.params(),
            Prepared::Unnamed(_, shape) => &shape.params,
        }
    }

    fn begin_json(&self) -> ResultJson {
        match self {
            Prepared::Named(s) => {
                ResultJson::begin(s.columns().iter().map(|c| (c.name(), c.type_())))
            }
            Prepared::Unnamed(_, shape) => {
                ResultJson::begin(shape.columns.iter().map(|(n, t)| (n.as_str(), t)))
            }
        }
    }

    /// Sends the statement with `bound`; nothing awaits before it is handed to the connection.
    async fn query<C: Unnamed>(
        &self,
        client: &C,
        bound: &[TextParam],
    ) -> Result<RowStream, tokio_postgres::Error> {
        match self {
            Prepared::Named(s) => client.query_raw(s, bound.iter()).await,
            Prepared::Unnamed(sql, shape) => {
                let typed = bound
                    .iter()
                    .map(|b| b as &(dyn ToSql + Sync))
                    .zip(shape.params.iter().cloned())
                    .collect();
                client.query_unnamed(sql, typed).await
            }
        }
    }

    /// The JSON for the first row's columns: behind a pooler the shape was learnt earlier and
    /// the schema may have changed since; then the row's own columns are written and the shape
    /// is forgotten (a prepared statement would have failed with 0A000 instead).
    fn check_first_row(&self, exec: &Exec, json: &mut ResultJson, row: &Row) {
        if let Prepared::Unnamed(sql, shape) = self
            && json.rows() == 0
            && !shape.matches(row.columns())
        {
            if let Some(shapes) = &exec.shapes {
                shapes.forget(sql);
            }
            *json = ResultJson::begin(row.columns().iter().map(|c| (c.name(), c.type_())));
        }
    }
}

/// Prepares `sql` on `client` the way its endpoint needs (see [`Prepared`]).
pub async fn prepare<'s, C: Unnamed>(
    client: &C,
    exec: &Exec,
    sql: &'s str,
) -> Result<Prepared<'s>, DbError> {
    let pg = |e| DbError::from_pg(&exec.endpoint, e);
    let Some(shapes) = &exec.shapes else {
        return client
            .prepare_cached(sql)
            .await
            .map(Prepared::Named)
            .map_err(pg);
    };
    let in_transaction = exec.in_transaction.load(Ordering::SeqCst);
    match shapes.describe(client, sql, in_transaction).await {
        Ok(shape) => Ok(Prepared::Unnamed(sql, shape)),
        Err(DescribeError::Server(e)) => Err(pg(e)),
        Err(DescribeError::Custom(ty)) => {
            exec.spoiled.store(true, Ordering::SeqCst);
            Err(DbError::Unsupported(format!(
                "the statement uses the type {ty}, which is not built into PostgreSQL; behind a \
                 transaction-mode pooler (pooler = \"transaction\") homeport runs only \
                 statements with built-in types: cast it (for example ::text)"
            )))
        }
    }
}

/// Binds the JSON parameters as text for `stmt`.
fn bind(stmt: &Prepared, params: &[Value]) -> Result<Vec<TextParam>, DbError> {
    let types = stmt.params();
    if types.len() != params.len() {
        return Err(DbError::Param {
            index: params.len().min(types.len()) + 1,
            message: format!(
                "the statement takes {} parameter(s), {} given",
                types.len(),
                params.len()
            ),
        });
    }
    params
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (v, ty))| {
            param_to_text(v, ty).map_err(|message| DbError::Param {
                index: i + 1,
                message,
            })
        })
        .collect()
}

/// Prepares and runs one statement, collecting its result. `command` is the tag from the
/// classifier (tokio-postgres does not expose the server's CommandComplete tag; for a single
/// statement they agree).
pub async fn run<C: Unnamed>(
    client: &C,
    exec: &Exec,
    sql: &str,
    params: &[Value],
    command: &str,
) -> Result<QueryResult, DbError> {
    let stmt = prepare(client, exec, sql).await?;
    run_prepared(client, exec, &stmt, params, command).await
}

/// Runs an already prepared statement, collecting its result. Nothing here awaits before the
/// statement is handed to the connection, so a query polled right after this one (to capture
/// the commit position in the same round trip) is sent after it.
///
/// Past `max_rows` the rest of the result is read and dropped, not cancelled: a cancel would
/// abort the surrounding transaction. Past a hard limit the statement is cancelled and the rest
/// read and dropped, to learn whether it finished anyway.
pub async fn run_prepared<C: Unnamed>(
    client: &C,
    exec: &Exec,
    stmt: &Prepared<'_>,
    params: &[Value],
    command: &str,
) -> Result<QueryResult, DbError> {
    let pg = |e| DbError::from_pg(&exec.endpoint, e);
    let bound = bind(stmt, params)?;
    let rows = stmt.query(client, &bound).await.map_err(pg)?;
    let mut rows = std::pin::pin!(rows);
    let mut json = stmt.begin_json();
    while let Some(row) = rows.try_next().await.map_err(pg)? {
        stmt.check_first_row(exec, &mut json, &row);
        match exec.admit(&mut json, &row)? {
            None => {}
            Some(Stop::Page) => {
                drain(rows.as_mut()).await.map_err(pg)?;
                return Ok(finish(exec, json, command, None));
            }
            Some(stop) => {
                exec.cancel().await;
                let finished = drain(rows.as_mut()).await.is_ok();
                return Err(exec.stop_error(stop, Some(finished)));
            }
        }
    }
    let row_count = rows.rows_affected().unwrap_or(json.rows());
    Ok(finish(exec, json, command, Some(row_count)))
}

/// Closes a collected result; `row_count` is `None` for one cut at the request's `max_rows`.
fn finish(exec: &Exec, mut json: ResultJson, command: &str, row_count: Option<u64>) -> QueryResult {
    let rows = row_count.unwrap_or(json.rows());
    json.end(command, rows, row_count.is_none());
    let json = json.take();
    exec.finished(json.len());
    QueryResult {
        json,
        row_count: rows,
    }
}

/// Reads a result to its end, dropping the rows.
async fn drain(mut rows: std::pin::Pin<&mut RowStream>) -> Result<(), tokio_postgres::Error> {
    while rows.next().await.transpose()?.is_some() {}
    Ok(())
}

/// A `/v1/query` read that has begun: either complete, or streaming on with its connection.
pub enum Started {
    Complete(QueryResult),
    Streaming(super::stream::ResultStream),
}

/// Begins an autocommit read on `client`: rows are collected until the result is complete or
/// passes [`STREAM_AFTER`]; then the rest is streamed by [`super::stream`], which owns the
/// connection until the last row. Past a limit here the statement is cancelled and its
/// connection closed.
pub async fn start(
    client: Object,
    exec: Exec,
    sql: &str,
    params: &[Value],
    command: &str,
    down: super::stream::Down,
) -> Result<Started, DbError> {
    let pg = |e| DbError::from_pg(&exec.endpoint, e);
    let stmt = match prepare(&client, &exec, sql).await {
        Ok(stmt) => stmt,
        Err(e) => {
            exec.release(client);
            return Err(e);
        }
    };
    let bound = bind(&stmt, params)?;
    let rows = stmt.query(&client, &bound).await.map_err(pg)?;
    let mut rows = Box::pin(rows);
    let mut json = stmt.begin_json();
    while let Some(row) = rows.try_next().await.map_err(pg)? {
        stmt.check_first_row(&exec, &mut json, &row);
        match exec.admit(&mut json, &row)? {
            None if json.held() < STREAM_AFTER => {}
            None => {
                return Ok(Started::Streaming(super::stream::ResultStream::new(
                    client, rows, json, exec, command, down,
                )));
            }
            Some(stop) => {
                exec.cancel().await;
                exec.release(client);
                return match stop {
                    Stop::Page => Ok(Started::Complete(finish(&exec, json, command, None))),
                    stop => Err(exec.stop_error(stop, None)),
                };
            }
        }
    }
    let row_count = rows.rows_affected().unwrap_or(json.rows());
    Ok(Started::Complete(finish(
        &exec,
        json,
        command,
        Some(row_count),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_stop_at_the_first_row_too_many() {
        let l = Limits {
            max_rows: 3,
            max_bytes: 100,
            page: None,
        };
        assert_eq!(l.before_row(2), None);
        assert_eq!(l.before_row(3), Some(Stop::Rows(3)));
        assert_eq!(l.after_row(100), None);
        assert_eq!(l.after_row(101), Some(Stop::Bytes(100)));
    }

    #[test]
    fn the_requests_max_rows_truncates_before_the_hard_limit_fails() {
        let l = Limits {
            max_rows: 3,
            max_bytes: 100,
            page: Some(3),
        };
        assert_eq!(l.before_row(3), Some(Stop::Page));
        let l = Limits { page: Some(5), ..l };
        assert_eq!(l.before_row(3), Some(Stop::Rows(3)));
    }
}

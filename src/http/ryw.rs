//! Reads that carry a consistency token (read-your-writes). Copies are tried nearest first; one
//! the probes saw at or past the token's position serves at once; one on the same history but
//! behind is asked, in one round trip, "have you replayed the position?" together with the read
//! itself, every few milliseconds until `consistency.max_wait`; then the next copy, and last the
//! primary. The check and the read are two statements pipelined on one connection at READ
//! COMMITTED, so the read's snapshot is taken after the check saw the position replayed.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::execute::{self, Exec, QueryResult};
use crate::app::{App, ServeError, Served};
use crate::consistency::ryw::{
    Fallback, foreign_message, foreign_system, split_candidates, worth_waiting,
};
use crate::consistency::token::Position;
use crate::db::DbError;
use crate::db::statement::Own;
use crate::routing::{Candidate, RouteError};
use crate::types::{RegionName, UserId};

/// How often a waiting read asks a lagging replica again.
const POLL: Duration = Duration::from_millis(5);

pub struct RywRead {
    pub result: QueryResult,
    pub served: Served,
}

pub async fn read(
    app: &App,
    user: &UserId,
    candidates: &[Candidate],
    required: &Position,
    query: &super::QueryBody,
    command: &str,
    max_wait: Duration,
) -> Result<RywRead, ServeError> {
    let (sql, params, page) = (query.sql.as_str(), query.params.as_slice(), query.max_rows);
    let (result, served) = serve(
        app,
        user,
        candidates,
        required,
        max_wait,
        |client, endpoint, deadline| async move {
            let exec = Exec::new(app, &client, &endpoint, page);
            let r = match deadline {
                None => execute::run(&client, &exec, sql, params, command)
                    .await
                    .map(Some),
                Some(deadline) => {
                    wait_and_read(&client, &exec, required, sql, params, command, deadline).await
                }
            };
            exec.release(client);
            r
        },
    )
    .await?;
    Ok(RywRead { result, served })
}

/// Tries the copies nearest first for a read that must see `required`. `run` gets a connection
/// to a copy, its endpoint name, and `None` if the copy is known to have the position, or the
/// deadline until which it may wait for it; it answers `Ok(None)` if the copy never got there.
pub async fn serve<T, F, Fut>(
    app: &App,
    user: &UserId,
    candidates: &[Candidate],
    required: &Position,
    max_wait: Duration,
    mut run: F,
) -> Result<(T, Served), ServeError>
where
    F: FnMut(deadpool_postgres::Object, String, Option<Instant>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, DbError>>,
{
    let started = Instant::now();
    let snapshot = app.topology.snapshot();
    if let Some(system) = foreign_system(&snapshot, candidates, required) {
        return Err(ServeError::Token(foreign_message(
            required.system_id,
            system,
        )));
    }
    let (ready, waiting) = split_candidates(&snapshot, candidates, Some(required));
    let mut last_error = None;
    let mut fallback = Fallback::default();
    for c in candidates {
        let is_ready = ready.contains(c);
        if !is_ready && !waiting.contains(c) {
            fallback.passed_over("history");
            continue;
        }
        if !is_ready && !worth_waiting(&snapshot.get(c.index).status, max_wait) {
            fallback.passed_over("lagging");
            continue;
        }
        let client = match app.connect(c.index, user).await {
            Ok(client) => client,
            Err(e) => {
                fallback.passed_over("unavailable");
                last_error = Some(e);
                continue;
            }
        };
        let endpoint = app.pools.endpoint_name(c.index).to_string();
        let deadline = (!is_ready).then_some(started + max_wait);
        match app.while_up(c.index, run(client, endpoint, deadline)).await {
            Ok(Some(result)) => {
                app.ryw_fallback(fallback, Some(c.target));
                app.ryw_waited(started.elapsed());
                return Ok((result, app.served_for(c)));
            }
            Ok(None) => fallback.passed_over("timeout"),
            Err(e @ (DbError::Unavailable { .. } | DbError::Lost { .. })) => {
                fallback.passed_over("unavailable");
                last_error = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    app.ryw_fallback(fallback, None);
    Err(match last_error {
        Some(e) => e.into(),
        None => ServeError::Route(RouteError::NoCopy(
            RegionName::parse("none").expect("valid"),
        )),
    })
}

/// Asks a replica every [`POLL`] until `deadline` whether it has replayed `required`; for reads
/// that are more than one statement, which then run after it answered yes.
pub async fn wait_replayed(
    client: &deadpool_postgres::Object,
    app: &App,
    endpoint: &str,
    required: &Position,
    deadline: Instant,
) -> Result<bool, DbError> {
    let unnamed = app.pools.shapes_of(endpoint).is_some();
    let check = Own::prepare(client, unnamed, CHECK_SQL, CHECK_TYPES)
        .await
        .map_err(|e| DbError::from_pg(endpoint, e))?;
    let lsn = required.lsn.to_string();
    loop {
        let row = check
            .query_opt(client, &[&lsn])
            .await
            .map_err(|e| DbError::from_pg(endpoint, e))?;
        if row.and_then(|r| r.get::<_, Option<bool>>(0)) == Some(true) {
            return Ok(true);
        }
        if Instant::now() + POLL > deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether the replica has replayed a position. Behind a transaction-mode pooler the check and
/// the read after it may run on two backends of the replica; replay is server-wide and only
/// moves forward, and the pooler sends the read only after the check's transaction ended, so a
/// yes still holds when the read takes its snapshot.
const CHECK_SQL: &str = "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn";
const CHECK_TYPES: &[tokio_postgres::types::Type] = &[tokio_postgres::types::Type::TEXT];

/// The pipelined check-then-read until `deadline`; `None` if the replica never got there.
async fn wait_and_read(
    client: &deadpool_postgres::Object,
    exec: &Exec,
    required: &Position,
    sql: &str,
    params: &[Value],
    command: &str,
    deadline: Instant,
) -> Result<Option<QueryResult>, DbError> {
    let endpoint = exec.endpoint.as_str();
    let check = Own::prepare(client, exec.unnamed(), CHECK_SQL, CHECK_TYPES)
        .await
        .map_err(|e| DbError::from_pg(endpoint, e))?;
    let stmt = execute::prepare(client, exec, sql).await?;
    let lsn = required.lsn.to_string();
    let check_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&lsn];
    loop {
        let (replayed, result) = tokio::join!(
            check.query_opt(client, &check_params),
            execute::run_prepared(client, exec, &stmt, params, command)
        );
        let replayed = replayed.map_err(|e| DbError::from_pg(endpoint, e))?;
        if replayed.and_then(|r| r.get::<_, Option<bool>>(0)) == Some(true) {
            return result.map(Some);
        }
        // Read too early: its result is dropped, and so is its share of the limits.
        exec.discard(result?);
        if Instant::now() + POLL > deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

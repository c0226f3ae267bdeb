//! Reads that carry a consistency token (read-your-writes), driven by the read plan
//! (`consistency::plan`): this file only takes connections, sends the plan's replay check and the
//! read, and reports how each attempt went. A single statement is pipelined behind the check on
//! one connection at READ COMMITTED, so the read's snapshot is taken after the check saw the
//! position replayed; a transaction waits for the check first.

use std::time::Instant;

use serde_json::Value;
use tokio_postgres::SimpleQueryMessage;

use super::execute::{self, Exec, QueryResult};
use crate::app::{App, ServeError, Served};
use crate::consistency::plan::{Need, Outcome, ReadPlan, Wait};
use crate::consistency::sql::replayed;
use crate::db::DbError;
use crate::routing::{Candidate, RouteError};
use crate::types::UserId;

pub struct RywRead {
    pub result: QueryResult,
    pub served: Served,
}

/// One statement that must see `need.position`, nearest qualifying copy first.
pub async fn read(
    app: &App,
    user: &UserId,
    candidates: &[Candidate],
    need: &Need,
    query: &super::QueryBody,
    command: &str,
) -> Result<RywRead, ServeError> {
    let (sql, params, page) = (query.sql.as_str(), query.params.as_slice(), query.max_rows);
    let (result, served) = serve(
        app,
        user,
        candidates,
        need,
        |client, endpoint, wait| async move {
            let exec = Exec::new(app, &client, &endpoint, page);
            let r = match wait {
                None => execute::run(&client, &exec, sql, params, command)
                    .await
                    .map(Some),
                Some(wait) => wait_and_read(&client, &exec, wait, sql, params, command).await,
            };
            exec.release(client);
            r
        },
    )
    .await?;
    Ok(RywRead { result, served })
}

/// Drives the read plan for `candidates`. `run` gets a connection to a copy, its endpoint name,
/// and `Some(wait)` when the copy must be asked first; it answers `Ok(None)` if the copy never
/// got there.
pub async fn serve<T, F, Fut>(
    app: &App,
    user: &UserId,
    candidates: &[Candidate],
    need: &Need,
    mut run: F,
) -> Result<(T, Served), ServeError>
where
    F: FnMut(deadpool_postgres::Object, String, Option<Wait>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, DbError>>,
{
    let snapshot = app.topology.snapshot();
    let mut plan = ReadPlan::new(&snapshot, candidates, need, Instant::now())
        .map_err(|e| ServeError::Token(e.to_string()))?;
    drop(snapshot);
    let mut last_error = None;
    while let Some(attempt) = plan.next_attempt() {
        let c = attempt.candidate;
        let client = match app.connect(c.index, user).await {
            Ok(client) => client,
            Err(e) => {
                plan.failed(Outcome::Unavailable);
                last_error = Some(e);
                continue;
            }
        };
        let endpoint = app.pools.endpoint_name(c.index).to_string();
        match app
            .while_up(c.index, run(client, endpoint, attempt.wait))
            .await
        {
            Ok(Some(result)) => {
                plan.served();
                app.ryw_report(plan.report(Instant::now()));
                return Ok((result, app.served_for(&c)));
            }
            Ok(None) => plan.failed(Outcome::TimedOut),
            Err(e @ (DbError::Unavailable { .. } | DbError::Lost { .. })) => {
                plan.failed(Outcome::Unavailable);
                last_error = Some(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    app.ryw_report(plan.report(Instant::now()));
    Err(match last_error {
        Some(e) => e.into(),
        None => ServeError::Route(RouteError::NoCopy(
            crate::types::ShardId::parse("none").expect("valid"),
        )),
    })
}

/// Asks the copy until it has replayed the position or the wait is over; for reads that are
/// more than one statement, which then run after it answered yes.
pub async fn wait_replayed(
    client: &deadpool_postgres::Object,
    endpoint: &str,
    wait: Wait,
) -> Result<bool, DbError> {
    let check = wait.check_sql();
    loop {
        let answer = client
            .simple_query(&check)
            .await
            .map_err(|e| DbError::from_pg(endpoint, e))?;
        if says_replayed(&answer) {
            return Ok(true);
        }
        let Some(after) = wait.retry(Instant::now()) else {
            return Ok(false);
        };
        tokio::time::sleep(after).await;
    }
}

/// The check pipelined in front of the read until the copy says yes; `None` if it never did.
async fn wait_and_read(
    client: &deadpool_postgres::Object,
    exec: &Exec,
    wait: Wait,
    sql: &str,
    params: &[Value],
    command: &str,
) -> Result<Option<QueryResult>, DbError> {
    let endpoint = exec.endpoint.as_str();
    let stmt = execute::prepare(client, exec, sql).await?;
    let check = wait.check_sql();
    loop {
        // Polled in this order, the check goes out before the read on the connection.
        let (answer, result) = tokio::join!(
            client.simple_query(&check),
            execute::run_prepared(client, exec, &stmt, params, command)
        );
        let answer = answer.map_err(|e| DbError::from_pg(endpoint, e))?;
        if says_replayed(&answer) {
            return result.map(Some);
        }
        // Read too early: its result is dropped, and so is its share of the limits.
        exec.discard(result?);
        let Some(after) = wait.retry(Instant::now()) else {
            return Ok(None);
        };
        tokio::time::sleep(after).await;
    }
}

fn says_replayed(answer: &[SimpleQueryMessage]) -> bool {
    answer.iter().any(|m| match m {
        SimpleQueryMessage::Row(row) => replayed(row.get(0)),
        _ => false,
    })
}

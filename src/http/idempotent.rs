//! Writes with an `Idempotency-Key` header (see `crate::idempotency` for the design).
//!
//! When the home primary is in another region, the regional Redis first: a cached completed
//! response with the same fingerprint is replayed at once, a different fingerprint is 422, and a
//! held in-flight lock is 409. Then on the home primary, in one transaction: BEGIN and the claim
//! (one simple Query) and the first statement go out together; the remaining statements run; the
//! stored response, COMMIT and the commit-position query go out as one simple Query. An
//! idempotent `/v1/query` therefore costs two round trips and three protocol cycles on the home
//! primary where a plain write costs one round trip and two cycles. A claim that finds
//! the key completed replays the stored response.

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::execute::{self, Exec, QueryResult};
use super::handlers::answered_position;
use super::handlers::{
    CONSISTENCY_TOKEN, Outcome, StatementFailed, TxGuard, response_token, serve_problem,
    trim_statement_cache,
};
use super::problem::Problem;
use super::{Reply, SERVED_BY};
use crate::app::{App, Served};
use crate::consistency::sql::POSITION_SQL;
use crate::consistency::token::Token;
use crate::db::DbError;
use crate::db::statement::Own;
use crate::idempotency::{Key, Refusal, cache, store};
use crate::metrics;
use crate::routing::Candidate;
use crate::types::{Intent, ShardId, UserId};

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";

/// One statement of the write.
pub struct Stmt<'a> {
    pub sql: &'a str,
    pub params: &'a [Value],
    pub command: &'a str,
}

/// How the results become the response body.
#[derive(Clone, Copy)]
pub enum Shape {
    /// `/v1/query`: the one result.
    Single,
    /// `/v1/transaction`: `{"results": [...]}`.
    Transaction,
}

/// The request's key, if it has one; a write without one when keys are required is a 400.
pub fn key(app: &App, headers: &HeaderMap) -> Result<Option<Key>, Problem> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        if app.config.idempotency.require {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "idempotency-key-required",
                "Idempotency-Key required",
                "this homeport requires an Idempotency-Key header on every write (idempotency.require = true)",
            ));
        }
        return Ok(None);
    };
    let bad = |detail: String| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-idempotency-key",
            "Bad Idempotency-Key",
            detail,
        )
    };
    if headers.get_all(IDEMPOTENCY_KEY).iter().count() > 1 {
        return Err(bad("send one Idempotency-Key header, not several".into()));
    }
    let text = value
        .to_str()
        .map_err(|_| bad("the idempotency key must be printable ASCII".into()))?;
    Key::parse(text).map(Some).map_err(bad)
}

pub struct Request<'a> {
    pub key: Key,
    pub fingerprint: Vec<u8>,
    pub user: &'a UserId,
    pub home: &'a ShardId,
    pub statements: Vec<Stmt<'a>>,
    pub shape: Shape,
    pub token_in: Option<Token>,
}

pub async fn write(
    app: &App,
    req: Request<'_>,
    candidates: Vec<Candidate>,
    outcome: &mut Outcome,
) -> Result<Reply, Problem> {
    // Outside a resident shard's regions nothing of its responses may be stored, not even in
    // this region's Redis: the home primary's record alone decides (one more round trip). When
    // the home primary is in this region Redis would save no cross-region round trip, only add
    // two of its own, so the primary alone decides then too.
    let local_primary = candidates
        .first()
        .is_some_and(|c| app.in_this_region(c.index));
    let kv = app.kv_for(req.home).filter(|_| !local_primary);
    let fingerprint_hex =
        kv.map_or_else(String::new, |_| crate::idempotency::hex(&req.fingerprint));
    let holder = match kv {
        Some(_) => crate::idempotency::hex(
            &crate::random::bytes::<12>().map_err(|e| Problem::unavailable(e.to_string()))?,
        ),
        None => String::new(),
    };
    if let Some(kv) = kv {
        let lock_ttl = app.config.idempotency.lock_ttl;
        match cache::before(kv, req.user, &req.key, &holder, lock_ttl).await {
            cache::Before::Cached(hit) => {
                metrics::idempotency_cache("hit");
                if hit.fingerprint != fingerprint_hex {
                    metrics::idempotency("mismatch", "http");
                    return Err(refused(Refusal::Mismatch, &req.key));
                }
                metrics::idempotency("replayed", "http");
                let reply = Reply::raw_json(
                    StatusCode::from_u16(hit.status).unwrap_or(StatusCode::OK),
                    hit.body,
                )
                .header(REPLAYED, "true".into())
                .header(SERVED_BY, format!("{}/cache", app.config.region));
                return Ok(match merged_token(app, req.token_in, hit.token) {
                    Some(t) => reply.header(CONSISTENCY_TOKEN, t),
                    None => reply,
                });
            }
            cache::Before::Busy => {
                metrics::idempotency_cache("miss");
                metrics::idempotency("conflict", "http");
                return Err(refused(Refusal::InFlight, &req.key));
            }
            cache::Before::Locked => metrics::idempotency_cache("miss"),
            cache::Before::Unknown => {}
        }
    }
    let done = match on_home_primary(app, &req, candidates, outcome).await {
        Ok(done) => done,
        Err(e) => {
            if let Some(kv) = kv {
                cache::after(kv, req.user, &req.key, &holder, None).await;
            }
            return Err(e);
        }
    };
    if let Some(kv) = kv {
        let entry = cache::Cached {
            fingerprint: fingerprint_hex,
            status: done.status.as_u16(),
            body: done.body.clone(),
            token: done.token.clone(),
        };
        let ttl = app.config.idempotency.ttl;
        cache::after(kv, req.user, &req.key, &holder, Some((&entry, ttl))).await;
    }
    let mut reply = Reply::raw_json(done.status, done.body).served(&done.served);
    if done.replayed {
        reply = reply.header(REPLAYED, "true".into());
    }
    if let Some(t) = done.token {
        reply = reply.header(CONSISTENCY_TOKEN, t);
    }
    Ok(reply)
}

/// The response a key's write produced (now or, when `replayed`, earlier).
struct Done {
    status: StatusCode,
    body: String,
    token: Option<String>,
    served: Served,
    replayed: bool,
}

async fn on_home_primary(
    app: &App,
    req: &Request<'_>,
    candidates: Vec<Candidate>,
    outcome: &mut Outcome,
) -> Result<Done, Problem> {
    let mut attempts = app.attempts(candidates, Intent::Write, req.user);
    let (client, served) = attempts.next().await.map_err(serve_problem)?;
    outcome.served = Some(served.clone());
    trim_statement_cache(&client);
    let index = served.index;
    app.while_up(index, keyed_transaction(app, req, client, served))
        .await
}

/// The claim, the statements, the record and COMMIT on the home primary's connection `client`.
async fn keyed_transaction(
    app: &App,
    req: &Request<'_>,
    client: deadpool_postgres::Object,
    served: Served,
) -> Result<Done, Problem> {
    let endpoint = served.endpoint.clone();
    let endpoint = endpoint.as_str();
    let pg = |e| Problem::from(DbError::from_pg(endpoint, e));
    app.idempotency_schema
        .ensure(&app.pools, served.index)
        .await
        .map_err(Problem::from)?;
    let exec = Exec::new(app, &client, endpoint, None);
    let guard = TxGuard(Some(client));
    let c = guard.client();
    // Prepared once per connection (the lookup and position for a replay, the claim and record
    // under SQL names), in one round trip, or sent unnamed behind a transaction-mode pooler.
    let unnamed = exec.unnamed();
    let (lookup, lsn_stmt, prepared) = tokio::try_join!(
        Own::prepare(c, unnamed, store::LOOKUP_SQL, store::LOOKUP_TYPES),
        Own::prepare(c, unnamed, POSITION_SQL, &[]),
        app.idempotency_prepared
            .ensure(c, unnamed, &store::PREPARE_SQL),
    )
    .map_err(pg)?;
    let (user, key) = (req.user.as_str(), req.key.as_str());
    let first = &req.statements[0];
    let claim = store::claim_batch(prepared, user, key, &req.fingerprint);
    exec.in_transaction();
    let (claimed, first_result) = tokio::join!(
        c.batch_execute(&claim),
        execute::run(c, &exec, first.sql, first.params, first.command),
    );
    if let Err(e) = claimed {
        let refusal = e
            .as_db_error()
            .and_then(|db| Refusal::from_sqlstate(db.code().code()));
        if refusal == Some(Refusal::Completed) {
            // ROLLBACK and the stored response's lookup go out together.
            let done = replay(app, req, c, endpoint, served, (&lookup, &lsn_stmt)).await;
            guard.finish_with(&exec);
            return done;
        }
        c.batch_execute("ROLLBACK").await.map_err(pg)?;
        guard.finish_with(&exec);
        let Some(refusal) = refusal else {
            return Err(pg(e));
        };
        metrics::idempotency(refusal.metric(), "http");
        return Err(refused(refusal, &req.key));
    }
    let mut results = Vec::with_capacity(req.statements.len());
    let mut failed = first_result.map(|r| results.push(r)).err().map(|e| (0, e));
    for (i, s) in req.statements.iter().enumerate().skip(1) {
        if failed.is_some() {
            break;
        }
        match execute::run(c, &exec, s.sql, s.params, s.command).await {
            Ok(r) => results.push(r),
            Err(e) => failed = Some((i, e)),
        }
    }
    if let Some((i, e)) = failed {
        // Rolled back: no write and no record, so the client may retry with the same key.
        c.batch_execute("ROLLBACK").await.map_err(pg)?;
        guard.finish_with(&exec);
        let e = match req.shape {
            Shape::Single => e,
            Shape::Transaction => StatementFailed(i, e).into(),
        };
        return Err(e.into());
    }
    let body = shape(req.shape, results);
    let ttl = app.config.idempotency.ttl;
    let record = store::record_batch(prepared, user, key, &req.fingerprint, 200, &body, ttl);
    let lsn = match c.simple_query(&record).await {
        Ok(messages) => messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                crate::consistency::sql::parse_position(row.get(0))
            }
            _ => None,
        }),
        Err(e) => {
            // Nothing committed. The record raises when a request with the same key committed
            // between this claim's snapshot and its lock (see `store::record_batch`).
            let refusal = e
                .as_db_error()
                .and_then(|db| Refusal::from_sqlstate(db.code().code()));
            c.batch_execute("ROLLBACK").await.map_err(pg)?;
            guard.finish_with(&exec);
            let Some(refusal) = refusal else {
                return Err(pg(e));
            };
            metrics::idempotency(refusal.metric(), "http");
            return Err(refused(refusal, &req.key));
        }
    };
    guard.finish_with(&exec);
    metrics::idempotency("new", "http");
    let token = response_token(app, req.token_in.clone(), req.home, &served, lsn);
    Ok(Done {
        status: StatusCode::OK,
        body,
        token,
        served,
        replayed: false,
    })
}

/// Rolls back the refused transaction and reads the stored response of the completed key, in
/// one round trip, with a token from the primary's position now (at or past the original
/// commit, so it covers the original write).
async fn replay(
    app: &App,
    req: &Request<'_>,
    c: &deadpool_postgres::Object,
    endpoint: &str,
    served: Served,
    (lookup, lsn_stmt): (&Own<'_>, &Own<'_>),
) -> Result<Done, Problem> {
    let pg = |e| Problem::from(DbError::from_pg(endpoint, e));
    let (user, key) = (req.user.as_str(), req.key.as_str());
    let lookup_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&user, &key];
    let (rollback, row, lsn) = tokio::join!(
        c.batch_execute("ROLLBACK"),
        lookup.query_opt(c, &lookup_params),
        lsn_stmt.query_opt(c, &[]),
    );
    rollback.map_err(pg)?;
    let row = row.map_err(pg)?;
    let stored = row.and_then(|r| {
        let status: Option<i16> = r.get(0);
        let body: Option<String> = r.get(1);
        let fingerprint: Vec<u8> = r.get(2);
        (fingerprint == req.fingerprint).then_some((status?, body?))
    });
    let Some((status, body)) = stored else {
        // Expired between the claim and now, or written by the wire endpoint: nothing to replay.
        metrics::idempotency("mismatch", "http");
        return Err(refused(Refusal::Mismatch, &req.key));
    };
    metrics::idempotency("replayed", "http");
    let lsn = answered_position(lsn);
    let token = response_token(app, req.token_in.clone(), req.home, &served, lsn);
    Ok(Done {
        status: StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK),
        body,
        token,
        served,
        replayed: true,
    })
}

fn shape(shape: Shape, mut results: Vec<QueryResult>) -> String {
    let json = match shape {
        Shape::Single => results.remove(0).json,
        Shape::Transaction => {
            let results: Vec<_> = results.into_iter().map(|r| r.json).collect();
            super::encode::results_object(&results)
        }
    };
    // The encoder writes UTF-8 only.
    String::from_utf8_lossy(&json).into_owned()
}

/// The cached token merged with the one the request brought.
fn merged_token(app: &App, incoming: Option<Token>, cached: Option<String>) -> Option<String> {
    let config = app.config.consistency.as_ref()?;
    let cached = cached.and_then(|t| Token::decode(&t, &config.keys).ok());
    match (incoming, cached) {
        (Some(a), Some(b)) => Some(a.merge(&b)),
        (a, b) => a.or(b),
    }
    .map(|t| t.encode(&config.keys))
}

fn refused(refusal: Refusal, key: &Key) -> Problem {
    let key = key.as_str();
    let mut p = match refusal {
        Refusal::InFlight => Problem {
            retry_after: Some(1),
            ..Problem::new(
                StatusCode::CONFLICT,
                "idempotency-key-in-flight",
                "Request with this key in flight",
                format!(
                    "a request with idempotency key {key:?} is still running; retry when it finished"
                ),
            )
        },
        Refusal::Mismatch => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-mismatch",
            "Idempotency key reused",
            format!("idempotency key {key:?} was already used for a different request"),
        ),
        Refusal::Completed => Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-completed",
            "Already applied",
            format!("idempotency key {key:?} was already applied"),
        ),
    };
    p.sqlstate = Some(refusal.sqlstate().into());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_shape_of_their_endpoint() {
        let r = || QueryResult {
            json: bytes::Bytes::from_static(
                b"{\"columns\":[],\"rows\":[],\"command\":\"INSERT\",\"row_count\":1}",
            ),
            row_count: 1,
        };
        assert!(shape(Shape::Single, vec![r()]).starts_with("{\"columns\":[]"));
        assert!(shape(Shape::Transaction, vec![r(), r()]).starts_with("{\"results\":["));
    }
}

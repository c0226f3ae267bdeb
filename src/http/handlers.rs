//! The data and directory handlers: `POST /v1/query`, `POST /v1/transaction`,
//! `GET|PUT /v1/users/{id}/home`. Each parses and checks its input, asks `App` where to run, and
//! turns the outcome into JSON or a problem.

use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::execute::{self, Exec, QueryResult, Started};
use super::problem::Problem;
use super::{Reply, ReplyBody, parse_json};
use crate::app::{App, ServeError, Served};
use crate::consistency::plan::Need;
use crate::consistency::sql::POSITION_SQL;
use crate::consistency::token::{Position, Token};

pub const CONSISTENCY_TOKEN: &str = "consistency-token";
use crate::auth::{self, Identity};
use crate::db::DbError;
use crate::directory::PlaceOutcome;
use crate::routing::effective_intent;
use crate::sql::{Classification, RouteHint};
use crate::types::{Intent, UserId};

/// Most statements accepted in one `/v1/transaction`.
const MAX_STATEMENTS: usize = 1000;
/// Most prepared statements cached per server connection before the cache is reset.
const STATEMENT_CACHE_LIMIT: usize = 512;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntentField {
    #[default]
    Auto,
    Read,
    Write,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    pub sql: String,
    #[serde(default)]
    pub params: Vec<Value>,
    #[serde(default)]
    pub intent: IntentField,
    /// At most this many rows: a longer result is cut and marked `"truncated": true`.
    #[serde(default)]
    pub max_rows: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementBody {
    pub sql: String,
    #[serde(default)]
    pub params: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionBody {
    pub statements: Vec<StatementBody>,
    #[serde(default)]
    pub intent: IntentField,
}

/// `PUT /v1/users/{id}/home`: a home region, a shard, a country (ISO 3166-1 alpha-2), or a
/// combination that agrees.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceBody {
    home_region: Option<String>,
    shard: Option<String>,
    country: Option<String>,
}

/// What a request turned out to be, for metrics and the response headers every front-end
/// outcome shares.
pub struct Outcome {
    pub intent: Intent,
    pub served: Option<Served>,
    /// The user's home region, once known (`Homeport-Home-Region` when it is not this region).
    pub home: Option<crate::types::RegionName>,
    /// The request ran outside its shard's residency under policy `forward`.
    pub forwarded: bool,
}

/// Applies the home shard's residency: `Err` for redirect and deny, and notes a forward.
fn residency_gate(
    app: &App,
    home: &crate::types::ShardId,
    outcome: &mut Outcome,
) -> Result<(), Problem> {
    use crate::residency::Decision;
    match app.residency(home) {
        d @ (Decision::Redirect { .. } | Decision::Deny { .. }) => {
            Err(super::problem::residency(&d, home))
        }
        Decision::Forward => {
            outcome.forwarded = true;
            Ok(())
        }
        Decision::Unrestricted | Decision::Inside => Ok(()),
    }
}

impl IntentField {
    /// The intent the client declared, if any (`auto` declares none).
    fn explicit(self) -> Option<Intent> {
        match self {
            IntentField::Auto => None,
            IntentField::Read => Some(Intent::Read),
            IntentField::Write => Some(Intent::Write),
        }
    }
}

pub async fn query(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    outcome: &mut Outcome,
) -> Result<Reply, Problem> {
    let q: QueryBody = parse_json(body)?;
    let identity = auth::identify(&app.config.http.auth, headers)?;
    let class = app.classifier.classify(&q.sql);
    if class.statements == 0 {
        return Err(Problem::bad_request("sql is empty"));
    }
    if class.statements > 1 {
        return Err(Problem::bad_request(
            "sql holds more than one statement; send one per query, or use /v1/transaction",
        ));
    }
    super::session_state::check(&class, None)?;
    super::session_state::check_identity(app.identity_setting(), &class, None)?;
    let effective = effective_intent(class.read_only, q.intent.explicit(), class.route);
    let intent = effective.intent;
    outcome.intent = intent;
    let home = home_of(app, &identity).await?;
    outcome.home = Some(home.region);
    let home = home.shard;
    residency_gate(app, &home, outcome)?;
    let candidates = app.candidates(&home, effective.candidates_for())?;
    let max_staleness = max_staleness(headers)?.filter(|_| intent == Intent::Read);
    // An explicit read that the classifier cannot prove read-only must not write if it lands on a
    // primary, so it runs in a READ ONLY transaction there.
    let guard_reads = intent == Intent::Read && !class.read_only;
    let sql = q.sql.as_str();
    let command = class.command.as_str();
    let token_in = request_token(app, headers)?;
    if intent == Intent::Write
        && let Some(key) = super::idempotent::key(app, headers)?
    {
        let req = super::idempotent::Request {
            key,
            fingerprint: crate::idempotency::fingerprint("POST", "/v1/query", body),
            user: &identity.user,
            home: &home,
            statements: vec![super::idempotent::Stmt {
                sql,
                params: &q.params,
                command,
            }],
            shape: super::idempotent::Shape::Single,
            token_in,
        };
        return super::idempotent::write(app, req, candidates, outcome).await;
    }
    let capture = intent == Intent::Write && app.config.consistency.is_some();
    let required = token_in.as_ref().and_then(|t| t.shards.get(&home)).copied();
    if let (Some(required), Intent::Read, false, Some(config)) =
        (required, intent, guard_reads, &app.config.consistency)
    {
        let need = Need {
            position: Some(required),
            max_staleness,
            max_wait: config.max_wait,
        };
        let read = super::ryw::read(app, &identity.user, &candidates, &need, &q, command)
            .await
            .map_err(serve_problem)?;
        outcome.served = Some(read.served.clone());
        let mut reply = with_staleness(
            app,
            Reply::encoded(ReplyBody::Full(read.result.json)).served(&read.served),
            &read.served,
        );
        if let Some(token) = response_token(app, token_in, &home, &read.served, None) {
            reply = reply.header(CONSISTENCY_TOKEN, token);
        }
        return Ok(reply);
    }
    // Plain reads stream once their result outgrows a small buffer; writes and guarded reads
    // are collected, because their transaction or commit position ends after the last row.
    let streams = intent == Intent::Read && !guard_reads && !capture;
    let candidates = match max_staleness {
        Some(max) => crate::consistency::staleness::within(
            &app.topology.snapshot(),
            &candidates,
            max,
            std::time::Instant::now(),
        ),
        None => candidates,
    };
    let mut attempts = app.attempts(candidates, intent, &identity.user);
    let ((body, lsn), served) = loop {
        let (client, served) = attempts.next().await.map_err(serve_problem)?;
        trim_statement_cache(&client);
        let exec = Exec::new(app, &client, &served.endpoint, q.max_rows);
        let run = async {
            if streams {
                let down = super::stream::Down::new(app, served.index);
                let started = execute::start(client, exec, sql, &q.params, command, down).await?;
                Ok(match started {
                    Started::Complete(r) => (ReplyBody::Full(r.json), None),
                    Started::Streaming(s) => (ReplyBody::Stream(s), None),
                })
            } else {
                run_one(client, exec, sql, &q.params, command, guard_reads, capture)
                    .await
                    .map(|(r, lsn)| (ReplyBody::Full(r.json), lsn))
            }
        };
        match app.while_up(served.index, run).await {
            Ok(r) => break (r, served),
            Err(e) => attempts.failed(e).map_err(serve_problem)?,
        }
    };
    outcome.served = Some(served.clone());
    let mut reply = with_staleness(app, Reply::encoded(body).served(&served), &served);
    if let Some(token) = response_token(app, token_in, &home, &served, lsn) {
        reply = reply.header(CONSISTENCY_TOKEN, token);
    }
    Ok(reply)
}

pub async fn transaction(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    outcome: &mut Outcome,
) -> Result<Reply, Problem> {
    let t: TransactionBody = parse_json(body)?;
    let identity = auth::identify(&app.config.http.auth, headers)?;
    if t.statements.is_empty() {
        return Err(Problem::bad_request("statements is empty"));
    }
    if t.statements.len() > MAX_STATEMENTS {
        return Err(Problem::bad_request(format!(
            "at most {MAX_STATEMENTS} statements per transaction"
        )));
    }
    let classes: Vec<_> = t
        .statements
        .iter()
        .map(|s| app.classifier.classify(&s.sql))
        .collect();
    if let Some(i) = classes.iter().position(|c| c.statements != 1) {
        return Err(Problem::bad_request(format!(
            "statements[{i}] must hold exactly one statement"
        )));
    }
    for (i, c) in classes.iter().enumerate() {
        super::session_state::check(c, Some(i))?;
        super::session_state::check_identity(app.identity_setting(), c, Some(i))?;
    }
    let hint = classes
        .iter()
        .any(|c| c.route == Some(RouteHint::Primary))
        .then_some(RouteHint::Primary);
    let all_read_only = classes.iter().all(|c| c.read_only);
    let effective = effective_intent(all_read_only, t.intent.explicit(), hint);
    let intent = effective.intent;
    outcome.intent = intent;
    let home = home_of(app, &identity).await?;
    outcome.home = Some(home.region);
    let home = home.shard;
    residency_gate(app, &home, outcome)?;
    let candidates = app.candidates(&home, effective.candidates_for())?;
    let token_in = request_token(app, headers)?;
    let required = token_in.as_ref().and_then(|t| t.shards.get(&home)).copied();
    if let (Some(required), Intent::Read, Some(config)) =
        (required, intent, &app.config.consistency)
    {
        let (statements, classes) = (&t.statements, &classes);
        let need = Need {
            position: Some(required),
            max_staleness: None,
            max_wait: config.max_wait,
        };
        let (results, served) = super::ryw::serve(
            app,
            &identity.user,
            &candidates,
            &need,
            |client, endpoint, wait| async move {
                if let Some(wait) = wait
                    && !super::ryw::wait_replayed(&client, &endpoint, wait).await?
                {
                    return Ok(None);
                }
                run_transaction(app, client, &endpoint, statements, classes, intent)
                    .await
                    .map(Some)
            },
        )
        .await
        .map_err(serve_problem)?;
        outcome.served = Some(served.clone());
        return Ok(transaction_reply(
            app, results, token_in, &home, &served, None,
        ));
    }
    if intent == Intent::Write
        && let Some(key) = super::idempotent::key(app, headers)?
    {
        let req = super::idempotent::Request {
            key,
            fingerprint: crate::idempotency::fingerprint("POST", "/v1/transaction", body),
            user: &identity.user,
            home: &home,
            statements: t
                .statements
                .iter()
                .zip(&classes)
                .map(|(s, c)| super::idempotent::Stmt {
                    sql: &s.sql,
                    params: &s.params,
                    command: &c.command,
                })
                .collect(),
            shape: super::idempotent::Shape::Transaction,
            token_in,
        };
        return super::idempotent::write(app, req, candidates, outcome).await;
    }
    let capture = intent == Intent::Write && app.config.consistency.is_some();
    let mut attempts = app.attempts(candidates, intent, &identity.user);
    let ((results, lsn), served) = loop {
        let (client, served) = attempts.next().await.map_err(serve_problem)?;
        trim_statement_cache(&client);
        let run = async {
            if capture {
                run_write_transaction_capturing(
                    app,
                    client,
                    &served.endpoint,
                    &t.statements,
                    &classes,
                )
                .await
            } else {
                run_transaction(
                    app,
                    client,
                    &served.endpoint,
                    &t.statements,
                    &classes,
                    intent,
                )
                .await
                .map(|r| (r, None))
            }
        };
        match app.while_up(served.index, run).await {
            Ok(r) => break (r, served),
            Err(e) => attempts.failed(e).map_err(serve_problem)?,
        }
    };
    outcome.served = Some(served.clone());
    Ok(transaction_reply(
        app, results, token_in, &home, &served, lsn,
    ))
}

fn transaction_reply(
    app: &App,
    results: Vec<QueryResult>,
    token_in: Option<Token>,
    home: &crate::types::ShardId,
    served: &Served,
    lsn: Option<crate::types::Lsn>,
) -> Reply {
    let results: Vec<_> = results.into_iter().map(|r| r.json).collect();
    let body = super::encode::results_object(&results);
    drop(results);
    let mut reply = Reply::encoded(ReplyBody::Full(body)).served(served);
    if let Some(token) = response_token(app, token_in, home, served, lsn) {
        reply = reply.header(CONSISTENCY_TOKEN, token);
    }
    reply
}

/// One statement, collected; in a READ ONLY transaction when `guard` is set. The connection is
/// closed instead of pooled if a limit made `exec` cancel the statement.
async fn run_one(
    mut client: deadpool_postgres::Object,
    exec: Exec,
    sql: &str,
    params: &[Value],
    command: &str,
    guard: bool,
    capture: bool,
) -> Result<(QueryResult, Option<crate::types::Lsn>), DbError> {
    let r = run_one_on(&mut client, &exec, sql, params, command, guard, capture).await;
    exec.release(client);
    r
}

async fn run_one_on(
    client: &mut deadpool_postgres::Object,
    exec: &Exec,
    sql: &str,
    params: &[Value],
    command: &str,
    guard: bool,
    capture: bool,
) -> Result<(QueryResult, Option<crate::types::Lsn>), DbError> {
    if capture {
        return run_capturing_position(client, exec, sql, params, command).await;
    }
    if !guard {
        return Ok((
            execute::run(&*client, exec, sql, params, command).await?,
            None,
        ));
    }
    let endpoint = exec.endpoint.as_str();
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(|e| DbError::from_pg(endpoint, e))?;
    exec.in_transaction();
    let r = execute::run(&tx, exec, sql, params, command).await?;
    tx.commit()
        .await
        .map_err(|e| DbError::from_pg(endpoint, e))?;
    Ok((r, None))
}

/// An autocommit write and `pg_current_wal_lsn()` right behind it, sent together: the position
/// covers the write's commit record and costs no extra round trip. Both statements are prepared
/// first, so nothing can reorder them on the connection.
async fn run_capturing_position(
    client: &deadpool_postgres::Object,
    exec: &Exec,
    sql: &str,
    params: &[Value],
    command: &str,
) -> Result<(QueryResult, Option<crate::types::Lsn>), DbError> {
    let stmt = execute::prepare(client, exec, sql).await?;
    let lsn_stmt = position_statement(client, exec).await?;
    let (result, lsn) = tokio::join!(
        execute::run_prepared(client, exec, &stmt, params, command),
        lsn_stmt.query_opt(client, &[])
    );
    let lsn = answered_position(lsn);
    Ok((result?, lsn))
}

/// The position query's answer, if it came.
pub(super) fn answered_position(
    row: Result<Option<tokio_postgres::Row>, tokio_postgres::Error>,
) -> Option<crate::types::Lsn> {
    crate::consistency::sql::parse_position(row.ok()??.get::<_, Option<&str>>(0))
}

/// [`POSITION_SQL`], ready to run on `client` right behind a write. Behind a transaction-mode
/// pooler it may run on another backend than the write it follows; the position is the
/// server's, so it still covers that write.
pub(super) async fn position_statement<'a>(
    client: &deadpool_postgres::Object,
    exec: &Exec,
) -> Result<crate::db::statement::Own<'a>, DbError> {
    crate::db::statement::Own::prepare(client, exec.unnamed(), POSITION_SQL, &[])
        .await
        .map_err(|e| DbError::from_pg(&exec.endpoint, e))
}

pub const MAX_STALENESS: &str = "homeport-max-staleness-ms";
pub const STALENESS: &str = "homeport-staleness-ms";

/// `Homeport-Max-Staleness-Ms`: serve from a replica only if its data is at most this old.
fn max_staleness(headers: &HeaderMap) -> Result<Option<std::time::Duration>, Problem> {
    let Some(v) = headers.get(MAX_STALENESS) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map(|ms| Some(std::time::Duration::from_millis(ms)))
        .ok_or_else(|| {
            Problem::bad_request("Homeport-Max-Staleness-Ms must be a whole number of milliseconds")
        })
}

/// `Homeport-Staleness-Ms` on replica reads: an upper bound of how old the data read was.
fn with_staleness(app: &App, reply: Reply, served: &Served) -> Reply {
    if served.target == crate::routing::Target::Primary {
        return reply;
    }
    let snapshot = app.topology.snapshot();
    match crate::consistency::staleness::bound(
        &snapshot.get(served.index).status,
        std::time::Instant::now(),
    ) {
        Some(b) => reply.header(
            STALENESS,
            b.as_millis()
                .saturating_add(u128::from(b.subsec_nanos() % 1_000_000 != 0))
                .to_string(),
        ),
        None => reply,
    }
}

/// The request's `Consistency-Token`, verified. A token that does not verify is the client's
/// mistake to hear about, never something to ignore.
fn request_token(app: &App, headers: &HeaderMap) -> Result<Option<Token>, Problem> {
    let Some(value) = headers.get(CONSISTENCY_TOKEN) else {
        return Ok(None);
    };
    let bad = |detail: String| Problem {
        sqlstate: Some("22023".into()),
        ..Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-consistency-token",
            "Bad consistency token",
            detail,
        )
    };
    let Some(config) = &app.config.consistency else {
        return Err(bad(
            "this homeport has no [consistency] keys configured, so it cannot verify tokens".into(),
        ));
    };
    let text = value
        .to_str()
        .map_err(|_| bad("the token is not visible ASCII".into()))?;
    Token::decode(text, &config.keys)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// The token to send back: the request's, plus this write's commit position on `home`.
pub(super) fn response_token(
    app: &App,
    incoming: Option<Token>,
    home: &crate::types::ShardId,
    served: &Served,
    lsn: Option<crate::types::Lsn>,
) -> Option<String> {
    let config = app.config.consistency.as_ref()?;
    let mut token = incoming;
    if let Some(lsn) = lsn {
        let snapshot = app.topology.snapshot();
        let status = &snapshot.get(served.index).status;
        if let (Some(system_id), Some(timeline)) = (status.system_id, status.timeline) {
            let now_ms = crate::consistency::token::unix_millis();
            token.get_or_insert_with(Token::default).record(
                home.clone(),
                Position {
                    timeline,
                    lsn,
                    system_id,
                },
                now_ms,
            );
        }
    }
    token.map(|t| t.encode(&config.keys))
}

/// All statements in one transaction; any error rolls it back (dropping the transaction does).
/// The results together are within the request's limits (`execute::Exec`).
async fn run_transaction(
    app: &App,
    mut client: deadpool_postgres::Object,
    endpoint: &str,
    statements: &[StatementBody],
    classes: &[std::sync::Arc<Classification>],
    intent: Intent,
) -> Result<Vec<QueryResult>, DbError> {
    let exec = Exec::new(app, &client, endpoint, None);
    let r = run_transaction_on(&mut client, &exec, statements, classes, intent).await;
    exec.release(client);
    r
}

async fn run_transaction_on(
    client: &mut deadpool_postgres::Object,
    exec: &Exec,
    statements: &[StatementBody],
    classes: &[std::sync::Arc<Classification>],
    intent: Intent,
) -> Result<Vec<QueryResult>, DbError> {
    let endpoint = exec.endpoint.as_str();
    let tx = client
        .build_transaction()
        .read_only(intent == Intent::Read)
        .start()
        .await
        .map_err(|e| DbError::from_pg(endpoint, e))?;
    exec.in_transaction();
    let mut results = Vec::with_capacity(statements.len());
    for (i, (s, c)) in statements.iter().zip(classes).enumerate() {
        let r = execute::run(&tx, exec, &s.sql, &s.params, &c.command)
            .await
            .map_err(|e| StatementFailed(i, e))?;
        results.push(r);
    }
    tx.commit()
        .await
        .map_err(|e| DbError::from_pg(endpoint, e))?;
    Ok(results)
}

/// Closes a server connection instead of pooling it if a transaction on it did not finish
/// (the request was abandoned mid-way): it might still be inside that transaction.
pub(super) struct TxGuard(pub(super) Option<deadpool_postgres::Object>);

impl TxGuard {
    pub(super) fn client(&self) -> &deadpool_postgres::Object {
        self.0
            .as_ref()
            .expect("guard holds the connection until finished")
    }

    /// The connection is idle again and may go back to the pool.
    pub(super) fn finish(mut self) {
        self.0.take();
    }

    /// Like [`TxGuard::finish`], but closes the connection if `exec` sent a cancel on it.
    pub(super) fn finish_with(mut self, exec: &Exec) {
        if let Some(client) = self.0.take() {
            exec.release(client);
        }
    }
}

impl Drop for TxGuard {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            drop(deadpool_postgres::Object::take(obj));
        }
    }
}

/// A write transaction whose COMMIT and `pg_current_wal_lsn()` go out together, so the commit
/// position costs no extra round trip. BEGIN and COMMIT are plain statements on the pooled
/// connection (tokio-postgres' Transaction would hold the connection exclusively).
async fn run_write_transaction_capturing(
    app: &App,
    client: deadpool_postgres::Object,
    endpoint: &str,
    statements: &[StatementBody],
    classes: &[std::sync::Arc<Classification>],
) -> Result<(Vec<QueryResult>, Option<crate::types::Lsn>), DbError> {
    let exec = Exec::new(app, &client, endpoint, None);
    let guard = TxGuard(Some(client));
    let c = guard.client();
    let pg = |e| DbError::from_pg(endpoint, e);
    let lsn_stmt = position_statement(c, &exec).await?;
    c.batch_execute("BEGIN").await.map_err(pg)?;
    exec.in_transaction();
    let mut results = Vec::with_capacity(statements.len());
    for (i, (s, cl)) in statements.iter().zip(classes).enumerate() {
        match execute::run(c, &exec, &s.sql, &s.params, &cl.command).await {
            Ok(r) => results.push(r),
            Err(e) => {
                c.batch_execute("ROLLBACK").await.map_err(pg)?;
                guard.finish_with(&exec);
                return Err(StatementFailed(i, e).into());
            }
        }
    }
    let (commit, lsn) = tokio::join!(c.batch_execute("COMMIT"), lsn_stmt.query_opt(c, &[]));
    commit.map_err(pg)?;
    guard.finish();
    let lsn = answered_position(lsn);
    Ok((results, lsn))
}

/// Marks which statement of a transaction failed; the whole transaction was rolled back.
pub(super) struct StatementFailed(pub(super) usize, pub(super) DbError);

impl From<StatementFailed> for DbError {
    fn from(f: StatementFailed) -> Self {
        match f.1 {
            DbError::Param { index, message } => DbError::Param {
                index,
                message: format!("statements[{}]: {message}", f.0),
            },
            other => other,
        }
    }
}

pub async fn get_home(
    app: &App,
    headers: &HeaderMap,
    raw_id: &str,
    outcome: &mut Outcome,
) -> Result<Reply, Problem> {
    let user = path_user(raw_id)?;
    let claims = check_self(app, headers, &user)?;
    let (home, source) = app.directory.home_of(&user, &claims.home_claims()).await?;
    outcome.home = Some(home.region.clone());
    Ok(Reply::json(
        StatusCode::OK,
        json!({
            "user": user.as_str(),
            "home_region": home.region.as_str(),
            "shard": home.shard.as_str(),
            "home_url": app.config.residency.public_url(&home.region),
            "source": format!("{source:?}").to_lowercase(),
        }),
    ))
}

pub async fn put_home(
    app: &App,
    headers: &HeaderMap,
    raw_id: &str,
    body: &[u8],
    outcome: &mut Outcome,
) -> Result<Reply, Problem> {
    let user = path_user(raw_id)?;
    let p: PlaceBody = parse_json(body)?;
    let claims = check_self(app, headers, &user)?;
    // A verified token's country is the user's country; a body naming another one is refused.
    let country = match (claims.country, p.country) {
        (Some(claimed), Some(asked))
            if crate::directory::country_code(&asked).ok().as_ref() != Some(&claimed) =>
        {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "country-mismatch",
                "Country differs from the token's",
                format!("the body names country {asked:?}, the token {claimed:?}"),
            ));
        }
        (claimed, asked) => claimed.or(asked),
    };
    let request = crate::directory::PlaceRequest {
        region: p.home_region.as_deref(),
        shard: p.shard.as_deref(),
        country: country.as_deref(),
    };
    let (home, placed) = app.directory.place(&user, &request).await?;
    outcome.home = Some(home.region.clone());
    let status = match placed {
        PlaceOutcome::Created => StatusCode::CREATED,
        PlaceOutcome::Unchanged => StatusCode::OK,
    };
    Ok(Reply::json(
        status,
        json!({
            "user": user.as_str(),
            "home_region": home.region.as_str(),
            "shard": home.shard.as_str(),
            "home_url": app.config.residency.public_url(&home.region),
        }),
    ))
}

fn path_user(raw: &str) -> Result<UserId, Problem> {
    let decoded = crate::types::percent_decode(raw).ok_or_else(|| {
        Problem::bad_request("user id in the path is not valid percent-encoded UTF-8")
    })?;
    UserId::parse(&decoded).map_err(Problem::bad_request)
}

/// The claims of a verified token that the directory handlers use.
#[derive(Default)]
struct Claims {
    region: Option<String>,
    shard: Option<String>,
    country: Option<String>,
}

impl Claims {
    fn home_claims(&self) -> crate::directory::HomeClaims<'_> {
        crate::directory::HomeClaims {
            region: self.region.as_deref(),
            shard: self.shard.as_deref(),
            country: self.country.as_deref(),
        }
    }
}

/// The path names the user. Trusted-header mode trusts the pod (a signup flow places users
/// before they have any identity); with JWT auth a caller may only read or place itself.
/// Returns the token's region and country claims, if any.
fn check_self(app: &App, headers: &HeaderMap, user: &UserId) -> Result<Claims, Problem> {
    match app.config.http.auth {
        crate::config::AuthConfig::TrustedHeader => Ok(Claims::default()),
        ref auth @ crate::config::AuthConfig::Jwt(_) => {
            let identity = auth::identify(auth, headers)?;
            if &identity.user != user {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "Forbidden",
                    "a token may only read or place its own user",
                ));
            }
            Ok(Claims {
                region: identity.region_claim,
                shard: identity.shard_claim,
                country: identity
                    .country_claim
                    .and_then(|c| crate::directory::country_code(&c).ok()),
            })
        }
    }
}

async fn home_of(app: &App, identity: &Identity) -> Result<crate::directory::Home, Problem> {
    let claims = crate::directory::HomeClaims {
        region: identity.region_claim.as_deref(),
        shard: identity.shard_claim.as_deref(),
        country: identity.country_claim.as_deref(),
    };
    Ok(app.directory.home_of(&identity.user, &claims).await?.0)
}

pub(super) fn serve_problem(e: ServeError) -> Problem {
    match e {
        ServeError::Route(r) => r.into(),
        ServeError::Db(d) => d.into(),
        ServeError::Token(detail) => Problem {
            sqlstate: Some("22023".into()),
            ..Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-consistency-token",
                "Bad consistency token",
                detail,
            )
        },
    }
}

/// Keeps the per-connection prepared-statement cache bounded: apps that inline values into SQL
/// would otherwise grow it without limit.
pub(super) fn trim_statement_cache(client: &deadpool_postgres::Object) {
    if client.statement_cache.size() > STATEMENT_CACHE_LIMIT {
        client.statement_cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_declares_no_intent() {
        assert_eq!(IntentField::Auto.explicit(), None);
        assert_eq!(IntentField::Read.explicit(), Some(Intent::Read));
        assert_eq!(IntentField::Write.explicit(), Some(Intent::Write));
    }

    #[test]
    fn bodies_reject_unknown_fields_and_wrong_types() {
        assert!(serde_json::from_str::<QueryBody>(r#"{"sql":"select 1","param":[]}"#).is_err());
        assert!(serde_json::from_str::<QueryBody>(r#"{"sql":5}"#).is_err());
        assert!(serde_json::from_str::<QueryBody>(r#"{"sql":"x","intent":"maybe"}"#).is_err());
        assert!(serde_json::from_str::<QueryBody>(r#"{"sql":"x","params":{}}"#).is_err());
        assert!(serde_json::from_str::<QueryBody>(r#"{"sql":"x"}"#).is_ok());
    }
}

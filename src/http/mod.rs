//! The HTTP front end (hyper, HTTP/1.1): two listeners with graceful drain. The data listener
//! (`http.listen`) routes the data API by path, with body limits, JSON parsing and problem+json
//! errors, plus `/v1/topology`, `/healthz` and `/readyz`; data handlers live in `handlers`;
//! results are encoded in `encode`, run within limits in `execute`, streamed in `stream`, and
//! charged to `budget`. The ops listener (`ops.listen`, module `ops`) serves `/healthz`,
//! `/readyz` and `/metrics` only.

mod budget;
pub use budget::Budget;
mod encode;
mod execute;
mod handlers;
/// The request bodies, public for the fuzz targets and property tests.
pub use handlers::{IntentField, QueryBody, StatementBody, TransactionBody};
mod idempotent;
mod ops;
pub mod problem;
mod ryw;
mod session_state;
mod stream;
mod time;
pub mod values;

use std::convert::Infallible;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::{App, Served};
use crate::types::Intent;
use handlers::Outcome;
use problem::Problem;

pub const SERVED_BY: &str = "homeport-served-by";

/// How much of an oversized body is read and dropped before answering 413.
const DISCARD_CAP: usize = 16 << 20;

/// A response before it is turned into hyper's type.
pub struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: ReplyBody,
    headers: Vec<(&'static str, String)>,
}

/// A body sent at once (with `Content-Length`), or a result streamed as it arrives (chunked).
pub enum ReplyBody {
    Full(Bytes),
    Stream(stream::ResultStream),
}

/// What hyper sends: small bodies stay a plain `Full`, so they pay nothing for streaming.
pub type Body = Either<Full<Bytes>, StreamBody<stream::ResultStream>>;

impl Reply {
    /// Serializes straight to bytes, without an intermediate `Value`.
    pub fn serialize<T: serde::Serialize>(status: StatusCode, body: &T) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: ReplyBody::Full(Bytes::from(serde_json::to_vec(body).unwrap_or_default())),
            headers: Vec::new(),
        }
    }

    pub fn json(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: ReplyBody::Full(Bytes::from(serde_json::to_vec(&body).unwrap_or_default())),
            headers: Vec::new(),
        }
    }

    /// A JSON body that is already text (a stored response).
    pub fn raw_json(status: StatusCode, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: ReplyBody::Full(Bytes::from(body)),
            headers: Vec::new(),
        }
    }

    /// A JSON body that is already encoded, sent at once or streamed.
    pub fn encoded(body: ReplyBody) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: "application/json",
            body,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }

    pub fn served(mut self, served: &Served) -> Reply {
        self.headers.push((SERVED_BY, served.header_value()));
        self
    }

    fn problem(p: &Problem) -> Reply {
        let mut r = Reply::json(p.status, p.body());
        r.content_type = "application/problem+json";
        if let Some(secs) = p.retry_after {
            r.headers.push(("retry-after", secs.to_string()));
        }
        r
    }
}

/// Parses a JSON body strictly; the serde message says which field is wrong and where.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))
}

/// Which of the two HTTP listeners a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `http.listen`: the data API.
    Data,
    /// `ops.listen`: `/healthz`, `/readyz`, `/metrics`.
    Ops,
}

/// Serves the data API on `listener` until `shutdown` flips to true, then stops accepting and
/// waits for in-flight requests (bounded by the caller's grace period).
pub async fn serve(
    current: crate::reload::Current,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    serve_listener(current, listener, shutdown, Listener::Data).await
}

/// Serves the ops endpoints on `listener` until `shutdown` flips to true. The caller keeps it
/// open through the drain, so probes see `/readyz` turn false and the last metrics are scraped.
pub async fn serve_ops(
    current: crate::reload::Current,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    serve_listener(current, listener, shutdown, Listener::Ops).await
}

async fn serve_listener(
    current: crate::reload::Current,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    kind: Listener,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    while let Some(stream) = crate::net::accept(&listener, &mut shutdown).await {
        let header_timeout = current.load().app.config.http.header_timeout;
        let current = current.clone();
        // Each request runs on the config generation current when it arrived.
        let service = service_fn(move |req| {
            let generation = current.load_full();
            async move {
                Ok::<_, Infallible>(match kind {
                    Listener::Data => handle(&generation.app, req).await,
                    Listener::Ops => ops::handle(&generation.app, &req),
                })
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn handle(app: &App, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let mut outcome = Outcome {
        intent: Intent::Write,
        served: None,
        home: None,
        forwarded: false,
    };
    let is_data = matches!(path.as_str(), "/v1/query" | "/v1/transaction");
    let reply = match route(
        app,
        &parts.method,
        &path,
        &parts.headers,
        body,
        &mut outcome,
    )
    .await
    {
        Ok(r) => r,
        Err(p) => Reply::problem(&p),
    };
    let reply = home_headers(app, reply, &outcome);
    if is_data {
        let target = outcome
            .served
            .as_ref()
            .map(|s| s.target.as_str())
            .unwrap_or("none");
        let result = if reply.status.is_success() {
            "ok"
        } else if reply.status.is_client_error() {
            "client_error"
        } else {
            "error"
        };
        app.http_metrics
            .record(outcome.intent.as_str(), target, result, started.elapsed());
    }
    into_response(reply, app)
}

pub const HOME_REGION: &str = "homeport-home-region";
pub const HOME_URL: &str = "homeport-home-url";
pub const RESIDENCY: &str = "homeport-residency";

/// Every response for a user homed in another region names that region and, when known, its
/// public URL, so an app can send the user home (also on errors, including a 421). A request
/// that ran outside its shard's residency under `forward` says so.
fn home_headers(app: &App, mut reply: Reply, outcome: &Outcome) -> Reply {
    if let Some(home) = outcome.home.as_ref().filter(|h| **h != app.config.region) {
        reply.headers.push((HOME_REGION, home.to_string()));
        if let Some(url) = app.config.residency.public_url(home) {
            reply.headers.push((HOME_URL, url.to_string()));
        }
    }
    if outcome.forwarded {
        reply.headers.push((RESIDENCY, "forwarded".into()));
    }
    reply
}

pub(crate) fn into_response(reply: Reply, app: &App) -> Response<Body> {
    let body = match reply.body {
        ReplyBody::Full(bytes) => Either::Left(Full::new(bytes)),
        ReplyBody::Stream(s) => Either::Right(StreamBody::new(s)),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    let mut served = false;
    for (k, v) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            served |= k == SERVED_BY;
            h.insert(k, v);
        }
    }
    if !served {
        // Nothing reached a database: homeport answered by itself.
        if let Ok(v) = HeaderValue::from_str(&format!("{}/homeport", app.config.region)) {
            h.insert(SERVED_BY, v);
        }
    }
    resp
}

async fn route(
    app: &App,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Incoming,
    outcome: &mut Outcome,
) -> Result<Reply, Problem> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(ops::healthz()),
        (&Method::GET, ["readyz"]) => Ok(ops::readyz(app)),
        (_, ["metrics"]) => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "metrics are served on the ops listener (ops.listen), not on the data listener",
        )),
        (&Method::GET, ["v1", "topology"]) => {
            let snapshot = app.topology.snapshot();
            Ok(Reply::json(
                StatusCode::OK,
                json!({ "region": app.config.region, "endpoints": snapshot.report() }),
            ))
        }
        (&Method::POST, ["v1", "query"]) => {
            let (body, _held) = read_body(app, headers, body).await?;
            handlers::query(app, headers, &body, outcome).await
        }
        (&Method::POST, ["v1", "transaction"]) => {
            let (body, _held) = read_body(app, headers, body).await?;
            handlers::transaction(app, headers, &body, outcome).await
        }
        (&Method::GET, ["v1", "users", id, "home"]) => {
            handlers::get_home(app, headers, id, outcome).await
        }
        (&Method::PUT, ["v1", "users", id, "home"]) => {
            let (body, _held) = read_body(app, headers, body).await?;
            handlers::put_home(app, headers, id, &body, outcome).await
        }
        (_, ["healthz" | "readyz"])
        | (_, ["v1", "topology" | "query" | "transaction"])
        | (_, ["v1", "users", _, "home"]) => Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no endpoint at {path}"),
        )),
    }
}

/// Reads the whole body, refusing more than `http.max_body` bytes (413) and non-JSON content (415).
/// The body is charged to the result budget (`http.result_budget`) until the reservation
/// returned with it is dropped; past the budget, 503.
async fn read_body(
    app: &App,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<(Bytes, budget::Reservation), Problem> {
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !(ct.starts_with("application/json") || ct.is_empty()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as application/json",
            ));
        }
    }
    let limit = app.config.http.max_body;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            format!("the body limit is {limit} bytes"),
        )
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > DISCARD_CAP as u64) {
        return Err(too_large());
    }
    // Read frame by frame. Past the limit, keep reading (and dropping) up to DISCARD_CAP so a
    // client that sends its whole body before reading gets the 413 instead of a reset.
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut held = app.http_budget.reservation();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now()
        + app
            .config
            .http
            .header_timeout
            .max(std::time::Duration::from_secs(1))
            * 3;
    loop {
        let next = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| {
                Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    "Request timeout",
                    "the request body did not arrive in time",
                )
            })?;
        let Some(frame) = next else { break };
        let frame =
            frame.map_err(|e| Problem::bad_request(format!("could not read the body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen <= limit {
                if !held.cover(seen) {
                    return Err(Problem::unavailable(format!(
                        "this sidecar already holds its budget of {} bytes of requests and results (http.result_budget); retry",
                        app.http_budget.capacity()
                    )));
                }
                buf.extend_from_slice(data);
            } else if seen > DISCARD_CAP {
                break;
            }
        }
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok((buf.freeze(), held))
}

//! The operations listener (`ops.listen`): `/healthz`, `/readyz` and `/metrics`, nothing else. It
//! runs no query and reads no identity, which is why it is the listener that may face the pod
//! network (kubelet probes, Prometheus) while the data API stays on loopback.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::{Body, Reply, ReplyBody, into_response, problem::Problem};
use crate::app::App;

/// Answers a request on the ops listener.
pub fn handle<B>(app: &App, req: &Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let reply = match (req.method(), path) {
        (&Method::GET, "/metrics") => Ok(Reply {
            status: StatusCode::OK,
            content_type: "text/plain; version=0.0.4",
            body: ReplyBody::Full(Bytes::from(app.metrics.render())),
            headers: Vec::new(),
        }),
        (&Method::GET, "/healthz") => Ok(healthz()),
        (&Method::GET, "/readyz") => Ok(readyz(app)),
        (_, "/metrics" | "/healthz" | "/readyz") => Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("{} is not allowed on {path}", req.method()),
        )),
        _ => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!(
                "the ops listener serves only /healthz, /readyz and /metrics; {path} is on the \
                 data listener (http.listen)"
            ),
        )),
    };
    into_response(reply.unwrap_or_else(|p| Reply::problem(&p)), app)
}

/// `GET /healthz`: the process answers. Served by both listeners: the kubelet probes the ops
/// listener, the app container may ask on loopback.
pub fn healthz() -> Reply {
    Reply::json(StatusCode::OK, json!({"status": "ok"}))
}

/// `GET /readyz`, with the reason (see `topology::readiness`). Served by both listeners.
pub fn readyz(app: &App) -> Reply {
    let r = app.readiness();
    if r.is_ready() {
        Reply::json(
            StatusCode::OK,
            json!({"status": "ready", "reason": r.describe()}),
        )
    } else {
        Reply::problem(&Problem::unavailable(format!(
            "not ready: {}",
            r.describe()
        )))
    }
}

//! Errors as `application/problem+json` (RFC 9457). Every error a handler can return maps to one
//! status here, in one place; docs/http-api.md lists the statuses for readers (it is written by hand).

use http::StatusCode;
use serde_json::{Value, json};

use crate::auth::AuthError;
use crate::db::DbError;
use crate::directory::DirectoryError;
use crate::routing::RouteError;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// Short machine-readable kind; `type` is `urn:homeport:problem:<kind>`.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub sqlstate: Option<String>,
    pub retry_after: Option<u64>,
    /// Extension members of the problem object (RFC 9457 section 3.2), e.g. `allowed_regions`:
    /// a JSON object, boxed so the common problem stays small.
    pub extensions: Option<Box<Value>>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            sqlstate: None,
            retry_after: None,
            extensions: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Problem {
            retry_after: Some(RETRY_AFTER_SECS),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                detail,
            )
        }
    }

    pub fn body(&self) -> Value {
        let mut v = json!({
            "type": format!("urn:homeport:problem:{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(s) = &self.sqlstate {
            v["sqlstate"] = Value::String(s.clone());
        }
        if let Some(Value::Object(members)) = self.extensions.as_deref() {
            for (name, value) in members {
                v[name.as_str()] = value.clone();
            }
        }
        v
    }
}

/// HTTP status for a PostgreSQL error, by SQLSTATE class
/// (<https://www.postgresql.org/docs/15/errcodes-appendix.html>).
pub fn status_for_sqlstate(code: &str) -> StatusCode {
    match code.get(0..2).unwrap_or("") {
        // integrity constraint violation, transaction rollback (serialization, deadlock),
        // invalid transaction state (e.g. read-only transaction): the request conflicts with
        // the data's current state.
        "23" | "40" | "25" => StatusCode::CONFLICT,
        // data exception: well-formed request, values the types or functions cannot take.
        "22" => StatusCode::UNPROCESSABLE_ENTITY,
        "57" if code == "57014" => StatusCode::GATEWAY_TIMEOUT,
        "53" | "57" | "08" => StatusCode::SERVICE_UNAVAILABLE,
        // The server refused homeport's own credentials or privileges: an operator problem.
        "28" => StatusCode::BAD_GATEWAY,
        // syntax error or access rule violation, and everything else the statement caused.
        _ => StatusCode::BAD_REQUEST,
    }
}

impl From<DbError> for Problem {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable { .. } => Problem::unavailable(e.to_string()),
            DbError::Lost { .. } => Problem {
                retry_after: Some(RETRY_AFTER_SECS),
                ..Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "connection-lost",
                    "Connection to the database lost",
                    format!("{e}; the statement may or may not have been applied"),
                )
            },
            DbError::Param { .. } => Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-parameter",
                "Bad parameter",
                e.to_string(),
            ),
            DbError::Unsupported(detail) => Problem {
                sqlstate: Some("0A000".into()),
                ..Problem::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported-through-pooler",
                    "Not supported through a transaction-mode pooler",
                    detail,
                )
            },
            DbError::TooLarge(detail) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "result-too-large",
                "Result too large",
                detail,
            ),
            DbError::OverBudget(detail) => Problem {
                retry_after: Some(RETRY_AFTER_SECS),
                ..Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "result-budget",
                    "Result budget in use",
                    detail,
                )
            },
            DbError::Server(pg) => {
                let (code, detail) = match pg.as_db_error() {
                    Some(db) => {
                        let mut d = db.message().to_string();
                        if let Some(extra) = db.detail() {
                            d.push_str(": ");
                            d.push_str(extra);
                        }
                        (db.code().code().to_string(), d)
                    }
                    None => ("XX000".to_string(), pg.to_string()),
                };
                let status = status_for_sqlstate(&code);
                Problem {
                    sqlstate: Some(code),
                    retry_after: (status == StatusCode::SERVICE_UNAVAILABLE)
                        .then_some(RETRY_AFTER_SECS),
                    ..Problem::new(
                        status,
                        "statement-error",
                        "The database rejected the statement",
                        detail,
                    )
                }
            }
        }
    }
}

impl From<RouteError> for Problem {
    fn from(e: RouteError) -> Self {
        Problem::unavailable(e.to_string())
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidUser(_) => Problem::bad_request(e.to_string()),
            _ => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                e.to_string(),
            ),
        }
    }
}

impl From<DirectoryError> for Problem {
    fn from(e: DirectoryError) -> Self {
        match e {
            DirectoryError::UnknownUser(_) => Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-user",
                "Unknown user",
                e.to_string(),
            ),
            DirectoryError::UnknownRegion(_) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-region",
                "Unknown region",
                e.to_string(),
            ),
            DirectoryError::UnknownShard(_) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-shard",
                "Unknown shard",
                e.to_string(),
            ),
            DirectoryError::ShardOutsideRegion { .. } => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "shard-not-in-region",
                "Shard and region disagree",
                e.to_string(),
            ),
            DirectoryError::ShardClosed(_) | DirectoryError::RegionClosed(_) => Problem::new(
                StatusCode::CONFLICT,
                "shard-closed",
                "Closed to new users",
                e.to_string(),
            ),
            DirectoryError::AmbiguousRow(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "directory-row-without-shard",
                "Directory row names no shard",
                e.to_string(),
            ),
            DirectoryError::AlreadyPlaced { .. } => Problem::new(
                StatusCode::CONFLICT,
                "already-placed",
                "User already placed",
                e.to_string(),
            ),
            DirectoryError::NotAllowed { ref allowed, .. } => Problem {
                extensions: Some(Box::new(json!({
                    "allowed_regions": allowed.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                }))),
                ..Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "region-not-allowed",
                    "Home region not allowed for the user's country",
                    e.to_string(),
                )
            },
            DirectoryError::BadCountry(_) | DirectoryError::NothingToPlaceBy => {
                Problem::bad_request(e.to_string())
            }
            DirectoryError::Unavailable(_) => Problem::unavailable(e.to_string()),
            DirectoryError::Db(db) => db.into(),
        }
    }
}

/// A request a sidecar outside a shard's residency does not serve: 421 for `redirect` (the
/// `Homeport-Home-*` headers say where to go), 403 / `42501` for `deny`.
pub fn residency(decision: &crate::residency::Decision, shard: &crate::types::ShardId) -> Problem {
    use crate::residency::Decision;
    let detail = decision.detail(shard).unwrap_or_default();
    match decision {
        Decision::Redirect { home, url } => Problem {
            extensions: Some(Box::new(json!({
                "home_region": home.as_str(),
                "home_url": url,
            }))),
            ..Problem::new(
                StatusCode::MISDIRECTED_REQUEST,
                "residency-redirect",
                "Served in the user's home region only",
                detail,
            )
        },
        _ => Problem {
            sqlstate: Some("42501".into()),
            ..Problem::new(
                StatusCode::FORBIDDEN,
                "residency-denied",
                "Not served outside the data's residency",
                detail,
            )
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes_map_to_documented_statuses() {
        for (code, status) in [
            ("23505", 409),
            ("40001", 409),
            ("25006", 409),
            ("22P02", 422),
            ("42601", 400),
            ("42P01", 400),
            ("57014", 504),
            ("53300", 503),
            ("28P01", 502),
            ("P0001", 400),
        ] {
            assert_eq!(status_for_sqlstate(code).as_u16(), status, "{code}");
        }
    }

    #[test]
    fn body_has_rfc9457_members() {
        let b = Problem::bad_request("x").body();
        for k in ["type", "title", "status", "detail"] {
            assert!(b.get(k).is_some(), "{k}");
        }
        assert_eq!(b["status"], 400);
    }
}

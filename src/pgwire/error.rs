//! The wire's error mapping, as `http/problem.rs` is the HTTP one: every ErrorResponse homeport
//! itself answers a client with is a [`ClientError`], its SQLSTATE a named
//! `tokio_postgres::error::SqlState` constant (homeport's own `HP...` codes come from the module
//! that owns them: `residency`, `idempotency`). Errors a server raised are relayed as they came and
//! never pass here.
//!
//! An ERROR answers one statement or batch and the session goes on; a FATAL ends the session
//! (startup and authentication failures, protocol violations, shutdown).

pub use tokio_postgres::error::SqlState;

use super::codec::{self, Message};

/// A failure answered to the client with an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: SqlState,
    pub message: String,
    /// The DETAIL field, which psql and drivers show apart from the message.
    pub detail: Option<String>,
}

impl ClientError {
    pub fn new(code: SqlState, message: impl Into<String>) -> Self {
        ClientError {
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(code: SqlState, message: &str, detail: &str) -> Self {
        ClientError {
            detail: Some(detail.to_string()),
            ..ClientError::new(code, message)
        }
    }

    /// A server homeport needs cannot be reached or was lost (`08006`).
    pub fn unreachable(message: impl Into<String>) -> Self {
        ClientError::new(SqlState::CONNECTION_FAILURE, message)
    }

    /// The client broke the protocol (`08P01`).
    pub fn protocol(message: impl Into<String>) -> Self {
        ClientError::new(SqlState::PROTOCOL_VIOLATION, message)
    }

    /// Something homeport does not do, or not here (`0A000`).
    pub fn not_supported(message: impl Into<String>) -> Self {
        ClientError::new(SqlState::FEATURE_NOT_SUPPORTED, message)
    }

    /// A value the client gave is not acceptable (`22023`).
    pub fn invalid_value(message: impl Into<String>) -> Self {
        ClientError::new(SqlState::INVALID_PARAMETER_VALUE, message)
    }

    /// No user to run as, or one this endpoint refuses (`28000`).
    pub fn no_user(message: impl Into<String>) -> Self {
        ClientError::new(SqlState::INVALID_AUTHORIZATION_SPECIFICATION, message)
    }

    /// The ErrorResponse with severity ERROR: the session goes on.
    pub fn error(&self) -> Message {
        self.response("ERROR")
    }

    /// The ErrorResponse with severity FATAL: the session ends after it.
    pub fn fatal(&self) -> Message {
        self.response("FATAL")
    }

    fn response(&self, severity: &str) -> Message {
        codec::error_response_with_detail(
            severity,
            self.code.code(),
            &self.message,
            self.detail.as_deref(),
        )
    }
}

/// A statement that makes the server itself raise `code` with `message`, so the server's
/// transaction is aborted like after any failed statement (the client then sees the server's
/// ErrorResponse). The message goes into a quoted literal inside a dollar-quoted body: quotes are
/// doubled and the body's tag cannot occur in it.
pub fn raise_sql(code: &SqlState, message: &str) -> String {
    let quoted = message
        .replace('\'', "''")
        .replace("$homeport$", "$ homeport$");
    format!(
        "DO $homeport$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{quoted}'; END$homeport$",
        code.code()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_severity_code_message_and_detail() {
        let e = ClientError::with_detail(SqlState::from_code("HP421"), "elsewhere", "go to eu");
        let m = e.error();
        assert_eq!(m.tag, b'E');
        assert_eq!(codec::field(&m.body, b'S').as_deref(), Some("ERROR"));
        assert_eq!(codec::field(&m.body, b'C').as_deref(), Some("HP421"));
        assert_eq!(codec::field(&m.body, b'M').as_deref(), Some("elsewhere"));
        assert_eq!(codec::field(&m.body, b'D').as_deref(), Some("go to eu"));
        let f = ClientError::protocol("bad").fatal();
        assert_eq!(codec::field(&f.body, b'V').as_deref(), Some("FATAL"));
        assert_eq!(codec::field(&f.body, b'C').as_deref(), Some("08P01"));
        assert_eq!(codec::field(&f.body, b'D'), None);
    }

    #[test]
    fn raised_messages_stay_inside_their_literal() {
        assert_eq!(
            raise_sql(&SqlState::FEATURE_NOT_SUPPORTED, "it's $homeport$ here"),
            "DO $homeport$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = 'it''s $ homeport$ here'; END$homeport$"
        );
    }

    #[test]
    fn the_named_constructors_keep_their_codes() {
        let codes = [
            (ClientError::unreachable("x"), "08006"),
            (ClientError::protocol("x"), "08P01"),
            (ClientError::not_supported("x"), "0A000"),
            (ClientError::invalid_value("x"), "22023"),
            (ClientError::no_user("x"), "28000"),
        ];
        for (e, code) in codes {
            assert_eq!(e.code.code(), code);
        }
    }
}

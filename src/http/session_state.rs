//! Session state over HTTP. An HTTP request has no session: each one borrows a pooled server
//! connection for one statement or one transaction, and the next request may get the same
//! connection. So a statement that would leave state on the connection (a setting, a role, a lock,
//! a temporary table, ...) or control a transaction is refused before anything runs, with a 400
//! problem naming it and saying what to do instead. `SET LOCAL` and `set_config(.., true)` inside
//! `POST /v1/transaction` are the way to scope a setting.

use http::StatusCode;

use super::problem::Problem;
use crate::sql::{Classification, SessionState};

pub const KIND: &str = "session-state";

/// Refuses `class` if it controls a transaction or leaves session state; `index` is the
/// statement's position in a `/v1/transaction` body.
pub fn check(class: &Classification, index: Option<usize>) -> Result<(), Problem> {
    let at = index.map_or(String::new(), |i| format!("statements[{i}]: "));
    let command = &class.command;
    let detail = if class.transaction_control {
        format!(
            "{at}{command} controls a transaction, and HTTP requests share pooled server connections; send the statements together to POST /v1/transaction, which runs them in one transaction"
        )
    } else if let Some(state) = class.session {
        let instead = match state {
            SessionState::Setting => {
                "to scope a setting, use SET LOCAL (or set_config(name, value, true)) inside POST /v1/transaction"
            }
            SessionState::UnknownFunction => {
                "if the function it calls leaves no session state, list it in postgres.stateless_functions"
            }
            SessionState::AdvisoryLock => {
                "use pg_advisory_xact_lock inside POST /v1/transaction, or the PostgreSQL wire endpoint"
            }
            _ => {
                "use the PostgreSQL wire endpoint, where a session keeps its own server connection"
            }
        };
        format!(
            "{at}this {command} statement leaves {} on the server connection, and HTTP requests share pooled server connections; {instead}",
            state.describe()
        )
    } else {
        return Ok(());
    };
    Err(Problem::new(
        StatusCode::BAD_REQUEST,
        KIND,
        "Session state is not available over HTTP",
        detail,
    ))
}

/// Refuses `class` if it may set the identity setting homeport gives every statement
/// (`postgres.identity_setting`), even `SET LOCAL` inside a transaction: a client may not act as
/// another user.
pub fn check_identity(
    identity: Option<&str>,
    class: &Classification,
    index: Option<usize>,
) -> Result<(), Problem> {
    let (Some(identity), Some(names)) = (identity, class.setting_names.as_ref()) else {
        return Ok(());
    };
    if !names.may_set(identity) {
        return Ok(());
    }
    let at = index.map_or(String::new(), |i| format!("statements[{i}]: "));
    let mut p = Problem::new(
        StatusCode::FORBIDDEN,
        IDENTITY_KIND,
        "The identity setting is homeport's",
        format!(
            "{at}{identity} is set by homeport to the request's user (postgres.identity_setting); a statement may not set it, nor call set_config with a setting name given as a parameter"
        ),
    );
    p.sqlstate = Some("42501".into());
    Err(p)
}

pub const IDENTITY_KIND: &str = "identity-setting";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::classify;

    #[test]
    fn refuses_session_state_and_transaction_control() {
        for sql in [
            "BEGIN",
            "COMMIT",
            "SET statement_timeout = 1",
            "SET search_path = x",
            "SELECT set_config('app.tenant', 'a', false)",
            "SELECT pg_advisory_lock(1)",
            "CREATE TEMP TABLE t (a int)",
            "PREPARE p AS SELECT 1",
            "LISTEN ch",
            "SET ROLE other",
            "SELECT my_function()",
        ] {
            let e = check(&classify(sql), Some(2)).expect_err(sql);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.kind, KIND);
            assert!(e.detail.starts_with("statements[2]: "), "{}", e.detail);
        }
        let e = check(&classify("SET x = 1"), None).unwrap_err();
        assert!(e.detail.contains("SET LOCAL"), "{}", e.detail);
    }

    #[test]
    fn lets_transaction_scoped_statements_through() {
        for sql in [
            "SELECT 1",
            "SET LOCAL app.tenant = 'a'",
            "SELECT set_config('app.tenant', $1, true)",
            "SELECT pg_advisory_xact_lock(1)",
            "INSERT INTO t VALUES (1)",
            "SAVEPOINT a",
            "ROLLBACK TO SAVEPOINT a",
        ] {
            assert!(check(&classify(sql), None).is_ok(), "{sql}");
        }
    }

    #[test]
    fn refuses_statements_that_may_set_the_identity_setting() {
        let identity = Some("app.user_id");
        for sql in [
            "SET LOCAL app.user_id = 'bob'",
            "SELECT set_config('App.User_Id', 'bob', true)",
            "SELECT set_config($1, $2, true)",
            "RESET app.user_id",
        ] {
            let e = check_identity(identity, &classify(sql), Some(1)).expect_err(sql);
            assert_eq!(e.status, StatusCode::FORBIDDEN);
            assert_eq!(e.kind, IDENTITY_KIND);
            assert_eq!(e.sqlstate.as_deref(), Some("42501"));
            assert!(e.detail.starts_with("statements[1]: "), "{}", e.detail);
        }
        for sql in [
            "SET LOCAL app.tenant = 'a'",
            "SELECT current_setting('app.user_id')",
        ] {
            assert!(
                check_identity(identity, &classify(sql), None).is_ok(),
                "{sql}"
            );
        }
        let dynamic = classify("SELECT set_config($1, $2, true)");
        assert!(check_identity(None, &dynamic, None).is_ok());
    }
}

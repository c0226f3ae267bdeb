//! `SET LOCAL homeport.idempotency_key = 'k'` on the wire endpoint: the transaction applies at
//! most once per (user, key). homeport runs the claim (see `crate::idempotency::store`) on the
//! transaction's own server connection, inside the transaction, so the key's record commits or
//! rolls back with it. A key that already committed is refused with SQLSTATE `HP200` (the
//! transaction is aborted; the client should roll back and treat the earlier commit as the
//! result), a key whose transaction is still running with `HP409`, and a key used over HTTP with
//! `HP422`. After a rollback the key is free again.

use super::attached::TxnStatus;
use super::codec;
use super::error::SqlState;
use super::session::{ClientError, Session, SettingOutput};
use crate::idempotency::{Key, Refusal, store, wire_fingerprint};
use crate::metrics;

impl Session {
    /// Claims `value` as the open transaction's idempotency key.
    pub(super) async fn claim_idempotency_key(
        &mut self,
        value: &str,
        local: bool,
    ) -> Result<SettingOutput, ClientError> {
        let refuse = |code: SqlState, message: &str| ClientError::new(code, message);
        if !local {
            return Err(refuse(
                SqlState::FEATURE_NOT_SUPPORTED,
                "homeport.idempotency_key belongs to one transaction: use SET LOCAL inside BEGIN ... COMMIT",
            ));
        }
        let key = Key::parse(value).map_err(|m| {
            ClientError::invalid_value(format!("invalid homeport.idempotency_key: {m}"))
        })?;
        // Claiming a key announces a write: an optimistic transaction moves to the primary now.
        if self.optimistic.is_some() {
            match self.promote_now().await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(refuse(
                        SqlState::CONNECTION_FAILURE,
                        "homeport lost the server while moving this transaction to the primary",
                    ));
                }
            }
        }
        let status = self.server.as_ref().and_then(|a| a.ready);
        match status {
            Some(TxnStatus::InBlock) => {}
            Some(TxnStatus::Failed) => {
                return Err(refuse(
                    SqlState::IN_FAILED_SQL_TRANSACTION,
                    "current transaction is aborted, commands ignored until end of transaction block",
                ));
            }
            _ => {
                return Err(refuse(
                    SqlState::NO_ACTIVE_SQL_TRANSACTION,
                    "SET LOCAL homeport.idempotency_key can only be used in transaction blocks",
                ));
            }
        }
        if self.server.as_ref().is_some_and(|a| a.on_replica()) {
            return Err(refuse(
                SqlState::READ_ONLY_SQL_TRANSACTION,
                "a READ ONLY transaction writes nothing and needs no idempotency key",
            ));
        }
        if self.txn_key.is_some() {
            return Err(refuse(
                SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "this transaction already has an idempotency key",
            ));
        }
        let (Some(user), Some((index, _))) = (
            self.server.as_ref().map(|a| a.user.clone()),
            self.last_route,
        ) else {
            return Err(refuse(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "no homeport user for this transaction",
            ));
        };
        self.app
            .idempotency_schema
            .ensure(&self.app.pools, index)
            .await
            .map_err(|e| {
                ClientError::new(
                    SqlState::SYSTEM_ERROR,
                    format!("homeport could not prepare its idempotency table: {e}"),
                )
            })?;
        let sql = store::claim_literal(
            user.as_str(),
            key.as_str(),
            &wire_fingerprint(),
            self.app.config.idempotency.ttl,
        );
        let Some(attached) = self.server.as_mut() else {
            return Err(refuse(
                SqlState::CONNECTION_FAILURE,
                "the transaction's server is gone",
            ));
        };
        let (outcome, status) = match attached.lease.conn.run_own(&sql).await {
            Ok(r) => r,
            Err(e) => {
                self.server_lost(e);
                return Err(refuse(
                    SqlState::CONNECTION_FAILURE,
                    "the transaction's server is gone",
                ));
            }
        };
        if let Some(a) = self.server.as_mut() {
            a.ready = TxnStatus::from_byte(status);
        }
        match outcome {
            Ok(_) => {
                self.txn_key = Some(key);
                metrics::idempotency("new", "pg");
                Ok(SettingOutput {
                    row: None,
                    tag: "SET",
                })
            }
            Err(error) => {
                let code = codec::error_code(&error.body).unwrap_or_default();
                let message = codec::field(&error.body, b'M').unwrap_or_default();
                let refusal = Refusal::from_sqlstate(&code);
                if let Some(r) = refusal {
                    metrics::idempotency(r.metric(), "pg");
                }
                let code = refusal.map_or(SqlState::INTERNAL_ERROR, |r| {
                    SqlState::from_code(r.sqlstate())
                });
                Err(ClientError::new(code, message))
            }
        }
    }
}

//! `SET LOCAL homeport.idempotency_key = 'k'` on the wire endpoint: the transaction applies at
//! most once per (user, key). homeport runs the claim (see `crate::idempotency::store`) on the
//! transaction's own server connection, inside the transaction, so the key's record commits or
//! rolls back with it. A key that already committed is refused with SQLSTATE `HP200` (the
//! transaction is aborted; the client should roll back and treat the earlier commit as the
//! result), a key whose transaction is still running with `HP409`, and a key used over HTTP with
//! `HP422`. After a rollback the key is free again.

use super::attached::TxnStatus;
use super::codec;
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
        let refuse = |code: &'static str, message: &str| ClientError {
            code,
            message: message.to_string(),
        };
        if !local {
            return Err(refuse(
                "0A000",
                "homeport.idempotency_key belongs to one transaction: use SET LOCAL inside BEGIN ... COMMIT",
            ));
        }
        let key = Key::parse(value).map_err(|m| ClientError {
            code: "22023",
            message: format!("invalid homeport.idempotency_key: {m}"),
        })?;
        // Claiming a key announces a write: an optimistic transaction moves to the primary now.
        if self.optimistic.is_some() {
            match self.promote_now().await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(refuse(
                        "08006",
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
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                ));
            }
            _ => {
                return Err(refuse(
                    "25P01",
                    "SET LOCAL homeport.idempotency_key can only be used in transaction blocks",
                ));
            }
        }
        if self.server.as_ref().is_some_and(|a| a.on_replica()) {
            return Err(refuse(
                "25006",
                "a READ ONLY transaction writes nothing and needs no idempotency key",
            ));
        }
        if self.txn_key.is_some() {
            return Err(refuse(
                "55000",
                "this transaction already has an idempotency key",
            ));
        }
        let (Some(user), Some((index, _))) = (
            self.server.as_ref().map(|a| a.user.clone()),
            self.last_route,
        ) else {
            return Err(refuse("28000", "no homeport user for this transaction"));
        };
        self.app
            .idempotency_schema
            .ensure(&self.app.pools, index)
            .await
            .map_err(|e| ClientError {
                code: "58000",
                message: format!("homeport could not prepare its idempotency table: {e}"),
            })?;
        let sql = store::claim_literal(
            user.as_str(),
            key.as_str(),
            &wire_fingerprint(),
            self.app.config.idempotency.ttl,
        );
        let Some(attached) = self.server.as_mut() else {
            return Err(refuse("08006", "the transaction's server is gone"));
        };
        let (outcome, status) = match attached.lease.conn.run_own(&sql).await {
            Ok(r) => r,
            Err(e) => {
                self.server_lost(e);
                return Err(refuse("08006", "the transaction's server is gone"));
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
                Err(ClientError {
                    code: refusal.map_or("XX000", Refusal::sqlstate),
                    message,
                })
            }
        }
    }
}

//! Read-your-writes and bounded staleness on the wire endpoint.
//!
//! A session remembers where its own writes committed: a position query goes out right behind
//! the statement that may commit, in the same write to the server, so it costs no extra round
//! trip; homeport swallows its answer, adds the position to the session's token and tells the
//! client the new token in a ParameterStatus before the ReadyForQuery. Tokens from other sessions
//! or pods come in with `SET homeport.consistency_token`. A read then takes a replica only if it
//! has replayed those positions: at once if the probes saw it there, otherwise after asking it
//! (every few milliseconds, up to `consistency.max_wait`), then the next copy, then the primary:
//! the read plan (`consistency::plan`) decides, this file takes the connections and asks.
//! The question and the read are separate statements on the same connection at READ COMMITTED,
//! the question first, so the read's snapshot includes the write.

use std::time::Instant;

use super::backend::ServerConn;
use super::codec::{self, Message, ProtocolError};
use super::error::SqlState;
use super::pool::Lease;
use super::session::{ClientError, Session};
use crate::consistency::plan::{Need, Outcome, ReadPlan, Wait};
use crate::consistency::sql::{POSITION_SQL, replayed};
use crate::consistency::token::{Position, Token};
use crate::routing::Candidate;
use crate::sql::TxnEffect;

/// The ParameterStatus name (and setting) carrying the session's token.
pub(super) const TOKEN_PARAMETER: &str = "homeport.consistency_token";

impl Session {
    /// A server for a read of `home`'s data: the nearest copy within the session's staleness
    /// bound that has the session's writes, as the read plan (`consistency::plan`) decides.
    /// Returns the last reason when no copy can serve.
    pub(super) async fn acquire_read(
        &mut self,
        home: &crate::types::ShardId,
        candidates: Vec<Candidate>,
    ) -> Result<(Lease, Candidate), ClientError> {
        let position = self.token.shards.get(home).copied();
        let need = Need {
            position,
            max_staleness: self.max_staleness,
            max_wait: self
                .app
                .config
                .consistency
                .as_ref()
                .map_or(crate::config::DEFAULT_MAX_WAIT, |c| c.max_wait),
        };
        let snapshot = self.app.topology.snapshot();
        let mut plan = ReadPlan::new(&snapshot, &candidates, &need, Instant::now())
            .map_err(|e| ClientError::invalid_value(e.to_string()))?;
        drop(snapshot);
        let mut last = match position {
            Some(_) => "no copy can show this session's writes",
            None => "no copy qualifies",
        }
        .to_string();
        while let Some(attempt) = plan.next_attempt() {
            let c = attempt.candidate;
            let mut lease = match self.pools.acquire(c.index).await {
                Ok(l) => l,
                Err(e) => {
                    plan.failed(Outcome::Unavailable);
                    last = e.to_string();
                    continue;
                }
            };
            if let Some(wait) = attempt.wait {
                match wait_for_replay(&mut lease.conn, wait).await {
                    Ok(true) => {}
                    Ok(false) => {
                        plan.failed(Outcome::TimedOut);
                        lease.release();
                        continue;
                    }
                    Err(e) => {
                        // The lease is dropped, so the broken connection is closed.
                        plan.failed(Outcome::Unavailable);
                        last = e.to_string();
                        continue;
                    }
                }
            }
            plan.served();
            self.app.ryw_report(plan.report(Instant::now()));
            return Ok((lease, c));
        }
        self.app.ryw_report(plan.report(Instant::now()));
        Err(unreachable(home, last))
    }

    /// The first candidate whose pool lends a connection.
    pub(super) async fn acquire_first(
        &mut self,
        home: &crate::types::ShardId,
        candidates: &[Candidate],
    ) -> Result<(Lease, Candidate), ClientError> {
        let mut last = "no copy qualifies".to_string();
        for c in candidates {
            match self.pools.acquire(c.index).await {
                Ok(lease) => return Ok((lease, *c)),
                Err(e) => last = e.to_string(),
            }
        }
        Err(unreachable(home, last))
    }

    /// Whether the unit about to be sent should carry the position query behind it: a write on a
    /// primary whose transaction may end with this unit. Units that might enter COPY FROM STDIN
    /// cannot (the server would take the query for COPY data), and neither can a unit that only
    /// opens a transaction (the query would fix a REPEATABLE READ snapshot early); a write that
    /// ends without the query pipelined has its position asked right after.
    pub(super) fn capture_ahead(&self, unit: TxnEffect) -> bool {
        self.server.as_ref().is_some_and(|a| {
            a.writing()
                && !unit.may_copy
                && (unit.may_end || (!a.in_transaction() && !unit.may_begin))
        })
    }

    /// A write that finished without the position query pipelined still needs its position.
    pub(super) fn capture_after(&self, status: u8) -> bool {
        status == b'I' && self.server.as_ref().is_some_and(|a| a.writing())
    }

    /// Records the position the server answered for the session's latest write on its shard,
    /// and queues the ParameterStatus that tells the client its new token.
    pub(super) fn captured(&mut self, lsn: Option<&str>) {
        let (Some(lsn), Some(shard), Some((index, _))) = (
            lsn.and_then(|l| l.parse().ok()),
            self.server.as_ref().map(|a| a.shard.clone()),
            self.last_route,
        ) else {
            return;
        };
        let snapshot = self.app.topology.snapshot();
        let status = &snapshot.get(index).status;
        let (Some(system_id), Some(timeline)) = (status.system_id, status.timeline) else {
            return;
        };
        self.token.record(
            shard,
            Position {
                timeline,
                lsn,
                system_id,
            },
            crate::consistency::token::unix_millis(),
        );
        if let Some(config) = &self.app.config.consistency {
            let encoded = self.token.encode(&config.keys);
            self.send(codec::parameter_status(TOKEN_PARAMETER, &encoded));
        }
    }

    /// `SHOW homeport.consistency_token`: the session's token, signed ("" before any write).
    pub(super) fn show_token(&self) -> Result<String, ClientError> {
        if self.token.shards.is_empty() {
            return Ok(String::new());
        }
        Ok(self.token.encode(&self.token_keys()?))
    }

    /// `SET homeport.consistency_token`: the client's token joins what the session knows.
    pub(super) fn set_token(&mut self, text: &str) -> Result<(), ClientError> {
        if text.is_empty() {
            return Ok(());
        }
        let keys = self.token_keys()?;
        let token = Token::decode(text, &keys).map_err(|e| {
            ClientError::invalid_value(format!("invalid homeport.consistency_token: {e}"))
        })?;
        self.token = self.token.merge(&token);
        Ok(())
    }

    fn token_keys(&self) -> Result<crate::consistency::token::Keys, ClientError> {
        self.app
            .config
            .consistency
            .as_ref()
            .map(|c| c.keys.clone())
            .ok_or_else(|| ClientError::new(SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, "this homeport has no [consistency] keys configured, so it cannot sign or verify tokens"))
    }
}

fn unreachable(home: &crate::types::ShardId, last: String) -> ClientError {
    ClientError::unreachable(format!("no server for shard {home} is reachable: {last}"))
}

/// The position query as a message, to append behind a unit.
pub(super) fn position_query() -> Message {
    codec::query(POSITION_SQL)
}

/// Asks a replica the plan's replay check until it answers yes (`true`) or the wait is over
/// (`false`).
async fn wait_for_replay(conn: &mut ServerConn, wait: Wait) -> Result<bool, ProtocolError> {
    let sql = wait.check_sql();
    loop {
        if replayed(conn.query_value(&sql).await?.as_deref()) {
            return Ok(true);
        }
        let Some(after) = wait.retry(Instant::now()) else {
            return Ok(false);
        };
        tokio::time::sleep(after).await;
    }
}

//! Read-your-writes and bounded staleness on the wire endpoint.
//!
//! A session remembers where its own writes committed: a position query goes out right behind
//! the statement that may commit, in the same write to the server, so it costs no extra round
//! trip; homeport swallows its answer, adds the position to the session's token and tells the
//! client the new token in a ParameterStatus before the ReadyForQuery. Tokens from other sessions
//! or pods come in with `SET homeport.consistency_token`. A read then takes a replica only if it
//! has replayed those positions: at once if the probes saw it there, otherwise after asking it
//! (every few milliseconds, up to `consistency.max_wait`), then the next copy, then the primary.
//! The question and the read are separate statements on the same connection at READ COMMITTED,
//! the question first, so the read's snapshot includes the write.

use std::time::{Duration, Instant};

use super::backend::ServerConn;
use super::codec::{self, Message, ProtocolError};
use super::pool::Lease;
use super::session::{ClientError, Session};
use crate::consistency::ryw::{
    Fallback, foreign_message, foreign_system, split_candidates, worth_waiting,
};
use crate::consistency::token::{Position, Token};
use crate::routing::Candidate;
use crate::sql::TxnEffect;

/// The commit position query pipelined behind a write.
pub(super) const POSITION_SQL: &str = "SELECT pg_current_wal_lsn()::text";
/// The ParameterStatus name (and setting) carrying the session's token.
pub(super) const TOKEN_PARAMETER: &str = "homeport.consistency_token";
/// How often a read waiting for a lagging replica asks it again.
const POLL: Duration = Duration::from_millis(5);
/// `consistency.max_wait` when no `[consistency]` section is configured.
const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(50);

impl Session {
    /// A server for a read of `home`'s data: the nearest copy within the session's staleness
    /// bound that has the session's writes. Returns the last reason when no copy can serve.
    pub(super) async fn acquire_read(
        &mut self,
        home: &crate::types::ShardId,
        candidates: Vec<Candidate>,
    ) -> Result<(Lease, Candidate), ClientError> {
        let snapshot = self.app.topology.snapshot();
        let candidates = match self.max_staleness {
            Some(max) => {
                crate::consistency::staleness::within(&snapshot, &candidates, max, Instant::now())
            }
            None => candidates,
        };
        let Some(required) = self.token.shards.get(home).copied() else {
            return self.acquire_first(home, &candidates).await;
        };
        if let Some(system) = foreign_system(&snapshot, &candidates, &required) {
            return Err(ClientError {
                code: "22023",
                message: foreign_message(required.system_id, system),
            });
        }
        let max_wait = self
            .app
            .config
            .consistency
            .as_ref()
            .map_or(DEFAULT_MAX_WAIT, |c| c.max_wait);
        let started = Instant::now();
        let (ready, waiting) = split_candidates(&snapshot, &candidates, Some(&required));
        let mut last = "no copy can show this session's writes".to_string();
        let mut fallback = Fallback::default();
        for c in &candidates {
            let is_ready = ready.contains(c);
            if !is_ready && !waiting.contains(c) {
                fallback.passed_over("history");
                continue;
            }
            if !is_ready && !worth_waiting(&snapshot.get(c.index).status, max_wait) {
                fallback.passed_over("lagging");
                continue;
            }
            let mut lease = match self.pools.acquire(c.index).await {
                Ok(l) => l,
                Err(e) => {
                    fallback.passed_over("unavailable");
                    last = e.to_string();
                    continue;
                }
            };
            if !is_ready {
                match wait_for_replay(&mut lease.conn, &required, started + max_wait).await {
                    Ok(true) => {}
                    Ok(false) => {
                        fallback.passed_over("timeout");
                        lease.release();
                        continue;
                    }
                    Err(e) => {
                        // The lease is dropped, so the broken connection is closed.
                        fallback.passed_over("unavailable");
                        last = e.to_string();
                        continue;
                    }
                }
            }
            self.app.ryw_fallback(fallback, Some(c.target));
            self.app.ryw_waited(started.elapsed());
            return Ok((lease, *c));
        }
        self.app.ryw_fallback(fallback, None);
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
        let token = Token::decode(text, &keys).map_err(|e| ClientError {
            code: "22023",
            message: format!("invalid homeport.consistency_token: {e}"),
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
            .ok_or_else(|| ClientError {
                code: "55000",
                message: "this homeport has no [consistency] keys configured, so it cannot sign or verify tokens".into(),
            })
    }
}

fn unreachable(home: &crate::types::ShardId, last: String) -> ClientError {
    ClientError {
        code: "08006",
        message: format!("no server for shard {home} is reachable: {last}"),
    }
}

/// The position query as a message, to append behind a unit.
pub(super) fn position_query() -> Message {
    codec::query(POSITION_SQL)
}

/// Asks a replica whether it has replayed `required`, every [`POLL`] until `deadline`.
async fn wait_for_replay(
    conn: &mut ServerConn,
    required: &Position,
    deadline: Instant,
) -> Result<bool, ProtocolError> {
    let sql = format!(
        "SELECT pg_last_wal_replay_lsn() >= '{}'::pg_lsn",
        required.lsn
    );
    loop {
        if conn.query_value(&sql).await?.as_deref() == Some("t") {
            return Ok(true);
        }
        if Instant::now() + POLL > deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

//! Reads a replica cannot serve, run again on a primary.
//!
//! A standby refuses to read unlogged and temporary tables ("cannot access temporary or unlogged
//! relations during recovery", SQLSTATE 0A000), which the classifier cannot know from the text.
//! Such a read failed before producing anything, and a read is safe to run twice: when it was a
//! unit of its own (a simple query, or an extended-protocol batch up to Sync, that took a fresh
//! server connection and left it idle) and nothing of its answer reached the client yet, homeport
//! drops the replica's answer and runs the unit again on a primary. Its statements are
//! remembered by the classifier (`ClassifyCache::remember_primary_only`), so they go to a primary
//! from then on, also where a retry is impossible (inside a transaction).
//!
//! The same kind of unit also runs again, once, when the idle pooled connection it was lent had
//! lost its server before answering: the connection closed, or its first message was a FATAL
//! saying the server process was terminated or the server is shutting down (57P01, 57P02,
//! 57P03; a backend an administrator terminated while it sat idle has not always exited when
//! the pool's check looks at it). Only reads: a write's fate is not known from a lost
//! connection, so the client hears the error as before.

use super::codec::{self, Message, Reader};
use super::error::SqlState;
use super::session::{Session, SessionError};

/// The message of a standby's refusal to read an unlogged or temporary table.
const REFUSAL: &str = "cannot access temporary or unlogged relations during recovery";

/// Whether an ErrorResponse body is a standby's refusal to read an unlogged or temporary table.
pub(super) fn is_recovery_refusal(body: &[u8]) -> bool {
    codec::field(body, b'C').as_deref() == Some(SqlState::FEATURE_NOT_SUPPORTED.code())
        && codec::field(body, b'M').as_deref() == Some(REFUSAL)
}

/// SQLSTATEs of a FATAL that says the server process is going away, not that the statement
/// failed: admin_shutdown, crash_shutdown, cannot_connect_now.
const SERVER_GOING_AWAY: [&str; 3] = ["57P01", "57P02", "57P03"];

impl Session {
    /// Hook for the relay, before any answer to the unit: the server is gone (`fatal`: its
    /// ErrorResponse, or `None` for a lost connection). For a fresh read unit the connection is
    /// dropped without a word to the client and the unit is marked to run again; returns whether
    /// that happened.
    pub(super) fn gone_before_answer(&mut self, fatal: Option<&[u8]>) -> bool {
        let going_away = fatal.is_none_or(|body| {
            codec::error_code(body).is_some_and(|c| SERVER_GOING_AWAY.contains(&c.as_str()))
        });
        let read = self
            .server
            .as_ref()
            .is_some_and(|a| a.intent == crate::types::Intent::Read && a.pin.is_none());
        // `out` empty: nothing of the unit's answer is waiting for the client either (a unit
        // may relay more than one exchange).
        if !(self.unit_fresh && self.out.is_empty() && going_away && read) {
            return false;
        }
        self.forget_server();
        self.server_gone = true;
        true
    }

    /// Hook for the relay: an error from the attached server. `flushed`: part of the unit's
    /// answer already went to the client, so it cannot be taken back.
    pub(super) fn note_server_error(&mut self, m: &Message, flushed: bool) {
        let on_replica = self.server.as_ref().is_some_and(|a| a.on_replica());
        if on_replica && is_recovery_refusal(&m.body) {
            self.refused_in_recovery = Some(!flushed);
        }
    }

    /// A simple query, run again on a primary if a replica refused it (see the module doc).
    pub(super) async fn simple_query_or_reroute(
        &mut self,
        msg: Message,
    ) -> Result<(), SessionError> {
        let fresh = self.server.is_none() && self.out.is_empty();
        self.refused_in_recovery = None;
        (self.unit_fresh, self.server_gone) = (fresh, false);
        let ran = self.simple_query(msg.clone()).await;
        self.unit_fresh = false;
        ran?;
        if std::mem::take(&mut self.server_gone) {
            crate::metrics::wire_rerouted("server_gone");
            return self.simple_query(msg).await;
        }
        let Some(retry) = self.refused_in_recovery.take() else {
            return Ok(());
        };
        if let Ok(sql) = Reader::new(&msg.body, "query").text() {
            self.app.classifier.remember_primary_only(&sql);
        }
        if retry && fresh && self.server.is_none() {
            self.out.clear();
            crate::metrics::wire_rerouted("recovery_refusal");
            self.simple_query(msg).await?;
        }
        Ok(())
    }

    /// An extended-protocol batch (the messages held up to this Sync or Flush), run again on a
    /// primary if a replica refused it (see the module doc).
    pub(super) async fn run_batch_or_reroute(&mut self, sync: bool) -> Result<(), SessionError> {
        let fresh = sync && self.server.is_none() && self.out.is_empty();
        let batch = self.batch.clone();
        self.refused_in_recovery = None;
        (self.unit_fresh, self.server_gone) = (fresh, false);
        let ran = self.run_batch(sync).await;
        self.unit_fresh = false;
        ran?;
        if std::mem::take(&mut self.server_gone) {
            crate::metrics::wire_rerouted("server_gone");
            self.batch = batch;
            return self.run_batch(sync).await;
        }
        let Some(retry) = self.refused_in_recovery.take() else {
            return Ok(());
        };
        let texts = self.batch_texts(&batch);
        for sql in &texts {
            self.app.classifier.remember_primary_only(sql);
        }
        if retry && fresh && self.server.is_none() {
            self.out.clear();
            crate::metrics::wire_rerouted("recovery_refusal");
            self.batch = batch;
            self.run_batch(sync).await?;
        }
        Ok(())
    }

    /// The statement texts a batch runs: its Parses', and those of the statements it binds.
    fn batch_texts(&self, batch: &[Message]) -> Vec<String> {
        let mut texts = Vec::new();
        for m in batch {
            let mut r = Reader::new(&m.body, "batch");
            match m.tag {
                b'P' => {
                    if r.cstr().is_ok()
                        && let Ok(sql) = Reader::new(r.rest(), "parse").text()
                    {
                        texts.push(sql.into_owned());
                    }
                }
                b'B' => {
                    let named = r.cstr().and_then(|_| r.cstr());
                    let sql = match named {
                        Ok("") => self.unnamed_sql.clone(),
                        Ok(name) => self.statements.get(name).map(|s| s.sql.clone()),
                        Err(_) => None,
                    };
                    texts.extend(sql.map(|s| s.to_string()));
                }
                _ => {}
            }
        }
        texts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_recognised_by_code_and_message() {
        let body = |code: &str, m: &str| codec::error_response("ERROR", code, m).body;
        assert!(is_recovery_refusal(&body("0A000", REFUSAL)));
        assert!(!is_recovery_refusal(&body("0A000", "something else")));
        assert!(!is_recovery_refusal(&body("25006", REFUSAL)));
    }
}

//! Optimistic transactions: ordinary `BEGIN` transactions (every ORM's) read locally.
//!
//! A plain `BEGIN` starts on the nearest copy read-your-writes allows, usually the local replica,
//! where every transaction is read-only. While the transaction only reads, it stays and ends
//! there. homeport keeps each unit the client sent (a simple query or an extended-protocol batch)
//! and a SHA-256 digest of what the client received for it (row descriptions, rows, command tags).
//! When the first unit arrives that is not a provably read-only, repeatable read, the transaction
//! is promoted: rolled back on the replica, opened on the home primary, its units replayed there
//! with their answers swallowed and digested. Equal digests mean the primary, now, returns exactly
//! what the client already acted on, so the transaction goes on there as if it had always run
//! there; any difference fails the transaction with SQLSTATE 40001 (serialization_failure), which
//! ORMs and retry libraries already handle. This is MariaDB MaxScale's `optimistictrx` design.
//!
//! A transaction goes straight to the primary when its `BEGIN` asks for `SERIALIZABLE` or `READ
//! WRITE`, when its first unit writes, or when optimistic transactions are off. Memory is
//! bounded: past `pg.optimistic_replay_bytes` of kept messages the transaction is promoted at once.

use std::time::Instant;

use sha2::{Digest, Sha256};

use super::codec::{Message, Reader};
use super::session::ClientStatement;
use crate::sql::{Classification, RouteHint};

/// One unit the client sent in the transaction, kept for replay.
pub(super) enum Unit {
    Query(Message),
    /// An extended-protocol batch, with the named statements it used as they were then (the
    /// client may close or redefine them before a replay).
    Batch(Vec<Message>, Vec<(String, ClientStatement)>),
}

impl Unit {
    pub(super) fn len(&self) -> usize {
        match self {
            Unit::Query(m) => m.body.len() + 5,
            Unit::Batch(ms, _) => ms.iter().map(|m| m.body.len() + 5).sum(),
        }
    }
}

/// The named statements a batch's Parse, Bind and Describe messages refer to.
pub(super) fn statement_names(batch: &[Message]) -> Vec<String> {
    let mut names = Vec::new();
    for m in batch {
        let mut r = Reader::new(&m.body, "statement name");
        let name = match m.tag {
            b'P' => r.cstr().ok(),
            b'B' => r.cstr().ok().and_then(|_| r.cstr().ok()),
            b'D' if r.u8().ok() == Some(b'S') => r.cstr().ok(),
            _ => None,
        };
        if let Some(n) = name.filter(|n| !n.is_empty() && !names.iter().any(|x| x == n)) {
            names.push(n.to_string());
        }
    }
    names
}

/// An optimistic transaction in progress on a read copy.
pub(super) struct Optimistic {
    pub(super) units: Vec<(Unit, [u8; 32])>,
    pub(super) bytes: usize,
    /// Digest of what the client has received for the unit being relayed.
    pub(super) current: Sha256,
    pub(super) started: Instant,
}

impl Optimistic {
    pub(super) fn new() -> Self {
        Optimistic {
            units: Vec::new(),
            bytes: 0,
            current: Sha256::new(),
            started: Instant::now(),
        }
    }

    /// The unit just relayed is kept, with the digest of its answer.
    pub(super) fn keep(&mut self, unit: Unit) {
        self.bytes += unit.len();
        let digest = std::mem::take(&mut self.current).finalize().into();
        self.units.push((unit, digest));
    }
}

/// Feeds a message the client receives into a transaction's digest: the messages that carry
/// results (not notices, parameter statuses or protocol acknowledgements).
pub(super) fn feed(digest: &mut Sha256, m: &Message) {
    if matches!(m.tag, b'T' | b'D' | b'C' | b'I' | b's' | b'E') {
        digest.update([m.tag]);
        digest.update((m.body.len() as u32).to_be_bytes());
        digest.update(&m.body);
    }
}

/// Whether a unit whose statements are `classes` opens an optimistic transaction: a plain
/// `BEGIN` (not `READ ONLY`, which goes to a replica anyway, not `READ WRITE`, not
/// `SERIALIZABLE`) followed only by statements that may stay on a replica.
pub fn starts(classes: &[&Classification]) -> bool {
    let Some((first, rest)) = classes.split_first() else {
        return false;
    };
    let Some(b) = first.begin else {
        return false;
    };
    !b.read_only && !b.read_write && !b.serializable && stays(rest)
}

/// Whether statements may run in an optimistic transaction without promoting it: provably
/// read-only reads that return the same when run again and carry no primary hint, savepoints,
/// `SET LOCAL`, and the statements that end the transaction.
pub fn stays(classes: &[&Classification]) -> bool {
    classes.iter().all(|c| {
        (c.read_only && !c.volatile && c.route != Some(RouteHint::Primary))
            || (c.statements == 1
                && matches!(
                    c.command.as_str(),
                    "COMMIT" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE"
                ))
            || (c.statements == 1 && c.command == "SET" && c.session.is_none())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::classify;

    fn all(sqls: &[&str]) -> Vec<Classification> {
        sqls.iter().map(|s| classify(s)).collect()
    }

    fn refs(v: &[Classification]) -> Vec<&Classification> {
        v.iter().collect()
    }

    #[test]
    fn plain_begins_start_optimistically() {
        for unit in [
            &["BEGIN"][..],
            &["START TRANSACTION ISOLATION LEVEL REPEATABLE READ"],
            &["BEGIN", "SELECT * FROM notes WHERE user_id = $1"],
        ] {
            assert!(starts(&refs(&all(unit))), "{unit:?}");
        }
        for unit in [
            &["BEGIN READ ONLY"][..],
            &["BEGIN ISOLATION LEVEL SERIALIZABLE"],
            &["BEGIN READ WRITE"],
            &["BEGIN", "INSERT INTO t VALUES (1)"],
            &["SELECT 1"],
            &[],
        ] {
            assert!(!starts(&refs(&all(unit))), "{unit:?}");
        }
    }

    #[test]
    fn reads_stay_and_writes_promote() {
        for sql in [
            "SELECT * FROM notes",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT a",
            "ROLLBACK TO SAVEPOINT a",
            "RELEASE a",
            "SET LOCAL statement_timeout = 100",
            "SHOW search_path",
        ] {
            assert!(stays(&refs(&all(&[sql]))), "{sql}");
        }
        for sql in [
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t FOR UPDATE",
            "SELECT now()",
            "SELECT my_function()",
            "SELECT 1 /*homeport_route='primary'*/",
            "SET search_path = x",
            "SELECT 1; COMMIT",
        ] {
            assert!(!stays(&refs(&all(&[sql]))), "{sql}");
        }
    }

    #[test]
    fn digests_see_results_not_notices() {
        let mut a = Sha256::new();
        let mut b = Sha256::new();
        feed(&mut a, &Message::new(b'D', &b"row"[..]));
        feed(&mut b, &Message::new(b'N', &b"notice"[..]));
        feed(&mut b, &Message::new(b'D', &b"row"[..]));
        assert_eq!(a.clone().finalize(), b.finalize());
        feed(&mut a, &Message::new(b'D', &b"other"[..]));
        let mut c = Sha256::new();
        feed(&mut c, &Message::new(b'D', &b"row"[..]));
        assert_ne!(a.finalize(), c.finalize());
    }
}

mod drive {
    //! The session side: starting, keeping, ending and promoting optimistic transactions.

    use std::collections::VecDeque;

    use bytes::BytesMut;
    use sha2::{Digest, Sha256};

    use super::super::attached::TxnStatus;
    use super::super::codec::{self, Message};
    use super::super::session::{ClientError, Expect, Session, SessionError, SqlState};
    use super::{Optimistic, Unit, starts, stays};
    use crate::metrics;
    use crate::sql::Classification;

    impl Session {
        /// Optimistic transactions are on for this session (config, then `SET
        /// homeport.optimistic_transactions`).
        pub(in super::super) fn optimistic_on(&self) -> bool {
            self.optimistic_setting.unwrap_or_else(|| {
                self.app
                    .config
                    .pg
                    .as_ref()
                    .is_none_or(|p| p.optimistic_transactions)
            })
        }

        fn replay_limit(&self) -> usize {
            self.app
                .config
                .pg
                .as_ref()
                .map_or(crate::config::DEFAULT_OPTIMISTIC_REPLAY_BYTES, |p| {
                    p.optimistic_replay_bytes
                })
        }

        /// Whether a new transaction opened by a unit of `classes` starts optimistically.
        pub(in super::super) fn opens_optimistic(&self, classes: &[&Classification]) -> bool {
            self.server.is_none() && self.optimistic_on() && starts(classes)
        }

        /// After the unit that opens a transaction took its server: an optimistic one when it
        /// landed on a replica; counted as `primary` when a plain BEGIN went to the primary.
        pub(in super::super) fn began(&mut self, optimistic: bool, classes: &[&Classification]) {
            let is_begin = classes.first().is_some_and(|c| c.begin.is_some());
            if !is_begin || !self.optimistic_on() {
                return;
            }
            let on_replica = self.server.as_ref().is_some_and(|a| a.on_replica());
            if optimistic && on_replica {
                self.optimistic = Some(Optimistic::new());
            } else if optimistic {
                // The nearest copy is the home primary itself: an ordinary transaction there,
                // whose writes move the session's token.
                if let Some(a) = self.server.as_mut() {
                    a.intent = crate::types::Intent::Write;
                }
            } else {
                metrics::optimistic_transaction("primary");
            }
        }

        /// Whether the optimistic transaction may run a unit of `classes` (`len` bytes) where it
        /// is; otherwise it must be promoted first. A failed transaction stays: it only ends.
        pub(in super::super) fn may_stay(&self, classes: &[&Classification], len: usize) -> bool {
            let Some(o) = &self.optimistic else {
                return true;
            };
            let failed = self
                .server
                .as_ref()
                .is_some_and(|a| a.ready == Some(TxnStatus::Failed));
            failed || (stays(classes) && o.bytes + len <= self.replay_limit())
        }

        /// Keeps a relayed unit for a later replay.
        pub(in super::super) fn keep_unit(&mut self, unit: Unit) {
            if let Some(o) = self.optimistic.as_mut() {
                o.keep(unit);
            }
        }

        /// Keeps a relayed extended-protocol batch, with the statements it used.
        pub(in super::super) fn keep_batch(&mut self, batch: Vec<Message>) {
            if self.optimistic.is_none() {
                return;
            }
            let used = super::statement_names(&batch)
                .into_iter()
                .filter_map(|n| self.statements.get(&n).map(|s| (n, s.clone())))
                .collect();
            self.keep_unit(Unit::Batch(batch, used));
        }

        /// The transaction ended (ReadyForQuery idle): an optimistic one stayed read-only.
        pub(in super::super) fn optimistic_ended(&mut self) {
            if self.optimistic.take().is_some() {
                metrics::optimistic_transaction("read_only");
            }
        }

        /// Moves the optimistic transaction to the home primary and replays it there. `Ok(true)`:
        /// the transaction goes on there, the unit at hand may run. `Ok(false)`: the client was
        /// answered (40001 on a changed read, 08006 if the primary cannot be had), and the
        /// client's unit must not run (`sync`: it ends in Sync, else its rest is dropped).
        pub(in super::super) async fn promote(&mut self, sync: bool) -> Result<bool, SessionError> {
            match self.promote_now().await? {
                Ok(()) => Ok(true),
                Err(e) => {
                    // The error is the transaction's: 40001 on a failed primary transaction (its
                    // ROLLBACK goes there), or 08006 with no server left.
                    self.fail(e);
                    self.txn_failed = true;
                    if sync {
                        let status = self.txn_status();
                        self.send(codec::ready_for_query(status));
                    } else {
                        self.discarding = true;
                    }
                    Ok(false)
                }
            }
        }

        /// [`Self::promote`] without answering the client: the error to answer with, if any.
        /// Callers that are about to write without a unit of their own (claiming an idempotency
        /// key) use it directly.
        pub(in super::super) async fn promote_now(
            &mut self,
        ) -> Result<Result<(), ClientError>, SessionError> {
            let Some(o) = self.optimistic.take() else {
                return Ok(Ok(()));
            };
            let user = self.server.as_ref().map(|a| a.user.to_string());
            if let Some(mut a) = self.detach() {
                // The replica's read-only transaction ends; the connection goes back if clean.
                if let Ok((Ok(_), b'I')) = a.lease.conn.run_own("ROLLBACK").await {
                    a.lease.release();
                }
            }
            let write =
                crate::routing::effective_intent(false, Some(crate::types::Intent::Write), None);
            if let Err(e) = self.attach(write, user.as_deref()).await {
                self.detach();
                return Ok(Err(e));
            }
            let changed = self.replay(&o).await?;
            metrics::optimistic_replay(o.started.elapsed());
            if self.server.is_none() {
                return Ok(Err(ClientError::unreachable(
                    "homeport lost the home primary while moving this transaction there",
                )));
            }
            match changed {
                None => {
                    metrics::optimistic_transaction("promoted");
                    Ok(Ok(()))
                }
                Some(unit) => {
                    metrics::optimistic_transaction("conflict");
                    Ok(Err(self.conflict(unit).await))
                }
            }
        }

        /// Replays the kept units on the attached primary, digesting what it answers instead of
        /// sending it to the client. `Some(i)`: unit `i` answered differently.
        async fn replay(&mut self, o: &Optimistic) -> Result<Option<usize>, SessionError> {
            for (i, (unit, digest)) in o.units.iter().enumerate() {
                let (buf, queue) = match unit {
                    Unit::Query(m) => {
                        let mut buf = BytesMut::new();
                        m.write_to(&mut buf);
                        (buf, VecDeque::from([Expect::Sync]))
                    }
                    Unit::Batch(ms, used) => {
                        // The statements as the batch knew them, whatever the client did since.
                        let saved: Vec<_> = used
                            .iter()
                            .map(|(n, s)| (n.clone(), self.statements.insert(n.clone(), s.clone())))
                            .collect();
                        let rewritten = super::super::frontend::Frontend::decode_all(ms)
                            .map_err(SessionError::from)
                            .and_then(|d| self.rewrite(&d));
                        for (n, before) in saved {
                            match before {
                                Some(b) => self.statements.insert(n, b),
                                None => self.statements.remove(&n),
                            };
                        }
                        rewritten?
                    }
                };
                self.replaying = Some(Sha256::new());
                self.relay(buf, queue).await?;
                let got: [u8; 32] = self
                    .replaying
                    .take()
                    .map(|d| d.finalize().into())
                    .unwrap_or_default();
                if self.server.is_none() {
                    return Ok(None);
                }
                if got != *digest {
                    return Ok(Some(i));
                }
            }
            Ok(None)
        }

        /// A replayed read answered differently on the primary: the primary's transaction is
        /// made to fail with 40001, so the client's ROLLBACK (or COMMIT) ends it there.
        async fn conflict(&mut self, unit: usize) -> ClientError {
            let message = format!(
                "homeport: this transaction read rows on a replica that have changed on the primary since (statement group {} of the transaction), so it cannot go on there; retry the transaction",
                unit + 1
            );
            let sql =
                super::super::error::raise_sql(&SqlState::T_R_SERIALIZATION_FAILURE, &message);
            let failed = match self.server.as_mut() {
                Some(a) => match a.lease.conn.run_own(&sql).await {
                    Ok((Err(_), status)) => {
                        a.ready = TxnStatus::from_byte(status);
                        true
                    }
                    _ => false,
                },
                None => false,
            };
            if !failed {
                // The primary's transaction could not be made to fail: it is closed instead.
                self.detach();
            }
            ClientError::new(SqlState::T_R_SERIALIZATION_FAILURE, message)
        }
    }
}

//! The server connection a wire session holds, and everything that is true only while it holds
//! one: the transaction status the server last reported, the role and shard it was chosen for,
//! the user it runs for, and whether (and why) the session is pinned to it.
//!
//! A session has `Option<Attached>`: "pinned without a server" or "a transaction status without
//! a server" cannot be represented, and detaching is one `take()`.

use std::time::Instant;

use super::pool::Lease;
use crate::routing::Target;
use crate::sql::SessionState;
use crate::types::{Intent, ShardId, UserId};

/// The transaction status of a ReadyForQuery message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InBlock,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TxnStatus {
    pub fn from_byte(b: u8) -> Option<TxnStatus> {
        match b {
            b'I' => Some(TxnStatus::Idle),
            b'T' => Some(TxnStatus::InBlock),
            b'E' => Some(TxnStatus::Failed),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            TxnStatus::Idle => b'I',
            TxnStatus::InBlock => b'T',
            TxnStatus::Failed => b'E',
        }
    }
}

pub(super) struct Attached {
    pub(super) lease: Lease,
    /// The status of the server's last ReadyForQuery since it was attached; `None` before the
    /// first one (the connection was idle when it was lent).
    pub(super) ready: Option<TxnStatus>,
    /// Where the connection was chosen for: a replica or the primary.
    pub(super) target: Target,
    pub(super) intent: Intent,
    pub(super) shard: ShardId,
    pub(super) user: UserId,
    /// Set once a statement left session state on the server: the session keeps this
    /// connection until it ends.
    pub(super) pin: Option<SessionState>,
    /// When the current transaction (or autocommit statement) started, for the metrics.
    pub(super) txn_started: Option<Instant>,
}

impl Attached {
    pub(super) fn on_replica(&self) -> bool {
        self.target != Target::Primary
    }

    /// Taken for a write on the home primary: what it commits moves the session's token.
    pub(super) fn writing(&self) -> bool {
        self.intent == Intent::Write && !self.on_replica()
    }

    /// Inside a transaction block (open or failed).
    pub(super) fn in_transaction(&self) -> bool {
        matches!(self.ready, Some(TxnStatus::InBlock | TxnStatus::Failed))
    }

    /// The status to report to the client.
    pub(super) fn status(&self) -> TxnStatus {
        self.ready.unwrap_or(TxnStatus::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bytes_round_trip() {
        for s in [TxnStatus::Idle, TxnStatus::InBlock, TxnStatus::Failed] {
            assert_eq!(TxnStatus::from_byte(s.byte()), Some(s));
        }
        assert_eq!(TxnStatus::from_byte(b'X'), None);
    }
}

//! What a wire session does differently when its server connection goes through a pooler in
//! transaction mode (`pooler = "transaction"` on the endpoint): the pooler may run each
//! transaction on another backend and lends every backend to its other clients in between, so
//! homeport leaves nothing on a server that outlives the transaction.
//!
//! - **Statements.** A client's named statement is never prepared under a name on the server.
//!   Each Bind or Describe of it is preceded, in the same batch (before its Sync), by a Parse of
//!   its text as the unnamed statement, unless that batch has just parsed it there; the client's
//!   own unnamed statement is parsed again the same way when a later batch binds it.
//! - **Settings.** The session's settings (startup parameters, and the identity setting) go
//!   ahead of the first statement of every transaction as `set_config(name, value, true)`, in
//!   the same Query or batch, so they end with the transaction (`server_settings::local_sql`).
//! - **Session state.** A statement that would leave state on the server (a session-level `SET`,
//!   a temporary table, `LISTEN`, a session advisory lock, ...) cannot be pinned to one backend
//!   through the pooler, and would reach the pooler's next client: it is refused with `0A000`.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{Message, ProtocolError, Reader};
use super::frontend::{self, Frontend, Kind};
use super::session::{Expect, Session, SessionError, with_name};
use crate::sql::SessionState;

/// What the server's unnamed statement holds while a batch is being rewritten.
#[derive(Debug, PartialEq)]
enum Unnamed {
    Unknown,
    ClientsOwn,
    Named(String),
}

impl Session {
    /// [`Session::rewrite`] behind a transaction-mode pooler: the batch with every statement
    /// the client named sent as the unnamed statement, parsed again where needed.
    pub(super) fn rewrite_unnamed(
        &mut self,
        batch: &[Frontend<'_>],
    ) -> Result<(BytesMut, VecDeque<Expect>), SessionError> {
        let mut buf = BytesMut::new();
        let mut queue = VecDeque::with_capacity(batch.len() + 4);
        self.local_settings_extended(&mut buf, &mut queue);
        let mut held = Unnamed::Unknown;
        for m in batch {
            match m {
                Frontend::Parse(p) => {
                    if p.name.is_empty() {
                        m.write_to(&mut buf);
                        held = Unnamed::ClientsOwn;
                    } else {
                        Message::new(b'P', self.unnamed_parse_of(p.name)?).write_to(&mut buf);
                        held = Unnamed::Named(p.name.to_string());
                    }
                    queue.push_back(Expect::Parse);
                }
                Frontend::Bind(b) => {
                    self.parse_again(b.statement, &mut held, &mut buf, &mut queue)?;
                    b.write_for("", &mut buf);
                    queue.push_back(Expect::Bind);
                }
                Frontend::Describe(t) => {
                    if t.kind == Kind::Statement {
                        self.parse_again(t.name, &mut held, &mut buf, &mut queue)?;
                        frontend::write_describe_statement("", &mut buf);
                    } else {
                        m.write_to(&mut buf);
                    }
                    queue.push_back(Expect::Describe);
                }
                Frontend::Close(t) => {
                    if let Some(name) = t.named_statement() {
                        // Nothing of it is on the server; the client's name is gone.
                        self.statements.remove(name);
                        queue.push_back(Expect::SynthClose);
                    } else {
                        if t.kind == Kind::Statement {
                            held = Unnamed::Unknown;
                            self.unnamed_parse = None;
                        }
                        m.write_to(&mut buf);
                        queue.push_back(Expect::ClosePortal);
                    }
                }
                Frontend::Execute(_) => {
                    m.write_to(&mut buf);
                    queue.push_back(Expect::Execute);
                }
                Frontend::Sync => {
                    m.write_to(&mut buf);
                    queue.push_back(Expect::Sync);
                }
                Frontend::Flush => m.write_to(&mut buf),
            }
        }
        Ok((buf, queue))
    }

    /// Writes a Parse of statement `stmt` ("" is the client's unnamed one) as the server's
    /// unnamed statement unless it holds it already; its ParseComplete is homeport's.
    fn parse_again(
        &self,
        stmt: &str,
        held: &mut Unnamed,
        buf: &mut BytesMut,
        queue: &mut VecDeque<Expect>,
    ) -> Result<(), SessionError> {
        let wanted = if stmt.is_empty() {
            Unnamed::ClientsOwn
        } else {
            Unnamed::Named(stmt.to_string())
        };
        if *held == wanted {
            return Ok(());
        }
        let body = if stmt.is_empty() {
            // Never parsed by this client: the server answers the Bind as it would.
            let Some(body) = self.unnamed_parse.clone() else {
                return Ok(());
            };
            body
        } else {
            self.unnamed_parse_of(stmt)?
        };
        Message::new(b'P', body).write_to(buf);
        queue.push_back(Expect::Swallow);
        *held = wanted;
        Ok(())
    }

    /// The Parse body of the client's statement `name`, for the unnamed statement.
    fn unnamed_parse_of(&self, name: &str) -> Result<Bytes, SessionError> {
        let stmt = self.statements.get(name).ok_or_else(|| {
            ProtocolError::Unsupported(format!("prepared statement \"{name}\" does not exist"))
        })?;
        Ok(unnamed_body(&stmt.parse_body))
    }

    /// Whether the attached server is reached through a transaction-mode pooler.
    pub(super) fn behind_pooler(&self) -> bool {
        self.server.as_ref().is_some_and(|a| a.lease.behind_pooler)
    }

    /// The refusal of a statement that would leave `state` on a server behind a
    /// transaction-mode pooler.
    pub(super) fn pooler_refusal(&self, state: Option<SessionState>) -> Option<String> {
        let state = state.filter(|_| self.behind_pooler())?;
        let advice = match state {
            SessionState::Setting => {
                "use SET LOCAL inside a transaction, or give session settings as startup parameters (options='-c name=value'), which homeport applies to every transaction"
            }
            _ => {
                "keep such state inside one transaction (temporary tables ON COMMIT DROP, pg_advisory_xact_lock, cursors without HOLD)"
            }
        };
        Some(format!(
            "homeport: this statement would leave session state ({}) on a server reached through a transaction-mode pooler (pooler = \"transaction\"), where it would outlive the transaction and reach the pooler's other clients; {advice}",
            state.as_str()
        ))
    }

    /// Behind a transaction-mode pooler, a simple Query that opens a transaction carries the
    /// session's settings ahead of the client's text, in the same message (one implicit
    /// transaction; a `BEGIN` in it takes the settings into its transaction).
    pub(super) fn local_settings_simple(
        &mut self,
        msg: Message,
        queue: &mut VecDeque<Expect>,
    ) -> Message {
        if self.local_settings.is_none()
            || Reader::new(&msg.body, "query")
                .text()
                .is_ok_and(|sql| !in_transaction_block(&sql))
        {
            return msg;
        }
        let Some(prefix) = self.take_local_settings() else {
            return msg;
        };
        let mut body = BytesMut::with_capacity(prefix.len() + 2 + msg.body.len());
        body.put_slice(prefix.as_bytes());
        body.put_slice(b";\n");
        body.put_slice(&msg.body);
        queue.push_front(Expect::Prefix);
        Message::new(b'Q', body.freeze())
    }

    /// The same ahead of an extended-protocol batch: Parse, Bind and Execute of the unnamed
    /// statement before the client's messages, before their Sync.
    fn local_settings_extended(&mut self, buf: &mut BytesMut, queue: &mut VecDeque<Expect>) {
        let Some(prefix) = self.take_local_settings() else {
            return;
        };
        let mut parse = BytesMut::new();
        parse.put_u8(0);
        parse.put_slice(prefix.as_bytes());
        parse.put_slice(&[0, 0, 0]);
        Message::new(b'P', parse.freeze()).write_to(buf);
        // Bind "" to "": no parameters, all results in text.
        Message::new(b'B', Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0])).write_to(buf);
        Message::new(b'E', Bytes::from_static(&[0, 0, 0, 0, 0])).write_to(buf);
        queue.push_back(Expect::Prefix);
    }

    fn take_local_settings(&mut self) -> Option<String> {
        if !self.behind_pooler() {
            return None;
        }
        self.local_settings.take()
    }
}

/// Whether `sql` may run inside a transaction block, and so behind a settings prefix:
/// `VACUUM`, `CREATE DATABASE`, `... CONCURRENTLY` and their like may not; they run without
/// the session's settings.
fn in_transaction_block(sql: &str) -> bool {
    let lower = sql.trim_start().to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().take(4).collect();
    let starts = |w: &[&str]| words.len() >= w.len() && words[..w.len()] == *w;
    !(starts(&["vacuum"])
        || starts(&["reindex"])
        || starts(&["cluster"])
        || starts(&["alter", "system"])
        || starts(&["create", "database"])
        || starts(&["drop", "database"])
        || starts(&["create", "tablespace"])
        || starts(&["drop", "tablespace"])
        || starts(&["alter", "database"]) && lower.contains(" set tablespace ")
        || lower.contains("concurrently"))
}

/// A Parse body `name\0rest` as the unnamed statement's: `\0rest`.
fn unnamed_body(parse_body: &Bytes) -> Bytes {
    let at = parse_body.iter().position(|b| *b == 0).map_or(0, |i| i + 1);
    with_name("", &parse_body[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_that_refuse_a_transaction_block_get_no_settings_prefix() {
        for sql in [
            "VACUUM ANALYZE pgbench_accounts",
            "  vacuum",
            "CREATE DATABASE x",
            "create index concurrently i on t (a)",
            "ALTER SYSTEM SET work_mem = '8MB'",
            "REINDEX TABLE t",
        ] {
            assert!(!in_transaction_block(sql), "{sql}");
        }
        for sql in [
            "SELECT 1",
            "BEGIN",
            "INSERT INTO vacuum_log VALUES (1)",
            "CREATE TABLE t (a int)",
        ] {
            assert!(in_transaction_block(sql), "{sql}");
        }
    }

    #[test]
    fn a_named_parse_becomes_the_unnamed_one_with_its_types() {
        let named = with_name("hp_1", b"select $1\0\0\x01\0\0\0\x17");
        assert_eq!(
            unnamed_body(&named).as_ref(),
            b"\0select $1\0\0\x01\0\0\0\x17"
        );
    }
}

//! One client session on the wire endpoint, pooled per transaction.
//!
//! A server connection is taken when a transaction (or autocommit statement, or extended-protocol
//! batch) starts, chosen by the routing functions from the session's user and the statement's
//! classification, and given back when the server reports ReadyForQuery idle. Sessions that
//! changed server state (`SET`, `LISTEN`, temp tables, session advisory locks) are pinned to
//! their server.
//!
//! Named prepared statements work across pooled connections (the PgBouncer 1.21 approach): the
//! session remembers each statement's text, server connections know which statements they have
//! under a content-derived name, and homeport prepares a statement on a connection the first time
//! a client uses it there, swallowing the extra ParseComplete.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::codec::{self, FramedReader, Message, ProtocolError, Reader};
use super::pool::{Lease, WirePools};
use super::settings::{self, Setting};
use crate::app::App;
use crate::sql::RouteHint;
use crate::types::{Intent, UserId};

/// Why a query mentioning a homeport setting in any but the plain form is refused.
pub(super) const HIDDEN_SETTING: &str = "homeport.* settings must be written plainly (SET homeport.name = 'value') as a statement of their own, not inside a multi-statement query or behind comments or quotes";

/// Flush buffered output to the client once it holds this much.
pub(super) const FLUSH_AT: usize = 64 * 1024;

pub(super) struct ClientStatement {
    pub(super) sql: Arc<str>,
    /// Name on server connections: derived from text and parameter types.
    pub(super) server_name: String,
    /// Parse body as the server should see it (server name, query, types).
    pub(super) parse_body: Bytes,
}

/// What the session expects back from the server for each message it sent, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Parse,
    Bind,
    Describe,
    Execute,
    ClosePortal,
    Sync,
    /// A Parse homeport injected: its ParseComplete is not the client's.
    Swallow,
    /// A Parse the server already has: homeport answers ParseComplete itself.
    SynthParse,
    /// A statement Close: homeport keeps the server's copy and answers CloseComplete itself.
    SynthClose,
    /// homeport's commit-position query behind a write: its answer is homeport's own.
    Position,
}

pub struct Session {
    pub(super) app: Arc<App>,
    pub(super) pools: Arc<WirePools>,
    /// The config generation the session uses now, and where to find the newest one: the
    /// session moves to a reloaded config at its next transaction boundary.
    generation: Arc<crate::reload::Generation>,
    current: crate::reload::Current,
    pub(super) client: FramedReader<super::ClientRead>,
    out_half: super::ClientWrite,
    pub(super) out: BytesMut,
    user: Option<UserId>,
    /// `SET LOCAL homeport.user`: for the current transaction only.
    pub(super) txn_user: Option<UserId>,
    pub(super) server: Option<Lease>,
    /// The attached server's last ReadyForQuery status.
    pub(super) server_status: Option<u8>,
    pub(super) pinned: bool,
    /// The shard of the attached server.
    pub(super) shard: Option<crate::types::RegionName>,
    pub(super) attached_user: Option<UserId>,
    home_cache: Option<(UserId, crate::types::RegionName)>,
    /// When the current transaction took its server, with its intent and target, for metrics.
    pub(super) txn_started: Option<(std::time::Instant, Intent, crate::routing::Target)>,
    pub(super) txn_failed: bool,
    /// The attached server is a replica.
    pub(super) on_replica: bool,
    /// The server is skipping messages after an error until the next Sync.
    pub(super) skipping: bool,
    pub(super) statements: HashMap<String, ClientStatement>,
    pub(super) unnamed_sql: Option<Arc<str>>,
    /// Server statement names prepared by the batch in flight (forgotten if it fails).
    pub(super) parsed_now: Vec<String>,
    pub(super) batch: Vec<Message>,
    /// Where the last statement ran: endpoint index and target, formatted on SHOW.
    pub(super) last_route: Option<(usize, crate::routing::Target)>,
    /// The attached server was taken for a write (on the home primary).
    pub(super) writing: bool,
    /// Where this session's writes committed, and tokens the client set: reads must see these.
    pub(super) token: crate::consistency::token::Token,
    /// `homeport.max_staleness`: replica reads only within this bound.
    pub(super) max_staleness: Option<std::time::Duration>,
    /// `SET LOCAL homeport.idempotency_key`: the key the open transaction claimed.
    pub(super) txn_key: Option<crate::idempotency::Key>,
    /// This session's cancel key and the server its statements run on now.
    cancel: super::cancel::Registration,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// What a homeport setting statement returns: an optional (column, value) row and a tag.
pub(super) struct SettingOutput {
    pub(super) row: Option<(String, String)>,
    pub(super) tag: &'static str,
}

/// A failure answered to the client with an ErrorResponse (the session goes on).
pub(super) struct ClientError {
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl Session {
    pub fn new(
        generation: Arc<crate::reload::Generation>,
        current: crate::reload::Current,
        client: FramedReader<super::ClientRead>,
        out_half: super::ClientWrite,
        user: Option<UserId>,
        cancel: super::cancel::Registration,
    ) -> Self {
        let app = generation.app.clone();
        let pools = generation
            .wire_pools
            .clone()
            .expect("wire sessions exist only with [pg] configured");
        Session {
            app,
            pools,
            generation,
            current,
            client,
            out_half,
            out: BytesMut::with_capacity(8192),
            user,
            txn_user: None,
            server: None,
            server_status: None,
            pinned: false,
            shard: None,
            attached_user: None,
            home_cache: None,
            txn_started: None,
            txn_failed: false,
            on_replica: false,
            skipping: false,
            statements: HashMap::new(),
            unnamed_sql: None,
            parsed_now: Vec::new(),
            batch: Vec::new(),
            last_route: None,
            writing: false,
            token: Default::default(),
            max_staleness: None,
            txn_key: None,
            cancel,
        }
    }

    /// Serves the client until it terminates or breaks the protocol, or homeport drains: then the
    /// session ends at its next transaction boundary with FATAL 57P01, as PostgreSQL does.
    pub async fn run(
        mut self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        loop {
            let between_transactions =
                self.batch.is_empty() && !matches!(self.server_status, Some(b'T' | b'E'));
            let draining = *shutdown.borrow();
            if between_transactions && draining {
                return self.terminate_for_shutdown().await;
            }
            let next = if between_transactions {
                tokio::select! {
                    m = self.next_client_message() => Some(m),
                    _ = shutdown.wait_for(|s| *s) => None,
                }
            } else {
                Some(self.next_client_message().await)
            };
            let Some(next) = next else {
                return self.terminate_for_shutdown().await;
            };
            let msg = match next {
                Ok(m) => m,
                Err(ProtocolError::Closed) => return Ok(()),
                Err(e) => {
                    self.send(codec::error_response(
                        "FATAL",
                        "08P01",
                        &format!("invalid message: {e}"),
                    ));
                    let _ = self.flush().await;
                    return Err(e.into());
                }
            };
            match msg.tag {
                b'Q' => self.simple_query(msg).await?,
                b'P' | b'B' | b'D' | b'E' | b'C' => self.batch.push(msg),
                b'S' | b'H' => {
                    let sync = msg.tag == b'S';
                    self.batch.push(msg);
                    self.run_batch(sync).await?;
                }
                b'X' => return Ok(()),
                b'd' | b'c' | b'f' => {} // copy messages outside COPY are ignored, as PostgreSQL does
                other => {
                    let m = format!("unexpected message type '{}'", other as char);
                    self.send(codec::error_response("FATAL", "08P01", &m));
                    let _ = self.flush().await;
                    return Err(ProtocolError::Unsupported(m).into());
                }
            }
            self.flush().await?;
        }
    }

    /// Moves to the newest config generation if there is one (between transactions, with no
    /// server attached, so nothing in flight belongs to the old one).
    fn follow_reload(&mut self) {
        let latest = self.current.load();
        if Arc::ptr_eq(&latest, &self.generation) {
            return;
        }
        let Some(pools) = latest.wire_pools.clone() else {
            return;
        };
        self.generation = latest.clone();
        self.app = latest.app.clone();
        self.pools = pools;
        self.home_cache = None;
        self.shard = None;
        self.last_route = None;
    }

    async fn terminate_for_shutdown(&mut self) -> Result<(), SessionError> {
        self.send(codec::error_response(
            "FATAL",
            "57P01",
            "terminating connection: homeport is shutting down",
        ));
        let _ = self.flush().await;
        Ok(())
    }

    /// The client's next message. While a pinned session sits idle on its server, whatever the
    /// server sends meanwhile (NOTIFY for a LISTEN, notices, parameter changes) is passed on at
    /// once. Both reads are cancel-safe: partial input stays in the framed readers' buffers.
    async fn next_client_message(&mut self) -> Result<Message, ProtocolError> {
        loop {
            let idle_pinned =
                self.pinned && self.batch.is_empty() && self.server_status == Some(b'I');
            let Some(lease) = self.server.as_mut().filter(|_| idle_pinned) else {
                return self.client.next().await;
            };
            tokio::select! {
                m = self.client.next() => return m,
                m = lease.conn.recv() => match m {
                    Ok(m) if matches!(m.tag, b'A' | b'N' | b'S') => {
                        self.send(m);
                        self.flush().await?;
                    }
                    Ok(_) | Err(_) => {
                        // Anything else from an idle server means it is gone or broken.
                        self.server = None;
                        self.server_status = None;
                        self.pinned = false;
                        self.sync_cancel_target();
                    }
                },
            }
        }
    }

    /// Points this session's cancel key at the attached server (or at nothing).
    pub(super) fn sync_cancel_target(&self) {
        let target = self.server.as_ref().map(|l| l.conn.cancel_target.clone());
        *self.cancel.slot.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    pub(super) fn send(&mut self, m: Message) {
        m.write_to(&mut self.out);
    }

    pub(super) async fn flush(&mut self) -> Result<(), ProtocolError> {
        if !self.out.is_empty() {
            self.out_half.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    pub(super) fn fail(&mut self, e: ClientError) {
        self.send(codec::error_response("ERROR", e.code, &e.message));
    }

    async fn simple_query(&mut self, msg: Message) -> Result<(), SessionError> {
        let sql = Reader::new(&msg.body, "query").cstr()?.to_string();
        if let Some(setting) = settings::parse(&sql) {
            self.answer_setting(setting).await;
            let status = self.txn_status();
            self.send(codec::ready_for_query(status));
            return Ok(());
        }
        if settings::hides_setting(&sql) {
            self.fail(ClientError {
                code: "0A000",
                message: HIDDEN_SETTING.into(),
            });
            let status = self.txn_status();
            self.send(codec::ready_for_query(status));
            return Ok(());
        }
        // Simple-protocol statements usually carry their values inline, so each text is new:
        // classify without filling the cache with texts that will not come again.
        let class = self.app.classifier.classify_uncached(&sql);
        let read_only = class.read_only || is_read_only_begin(&sql);
        self.leave_replica_for_write(read_only).await;
        if self.server.is_none()
            && let Err(e) = self
                .attach(read_only, class.route, class.user.as_deref())
                .await
        {
            self.fail(e);
            self.send(codec::ready_for_query(b'I'));
            return Ok(());
        }
        if let Some(message) = self.other_shard(class.user.as_deref()).await {
            return self.raise_on_server(&message).await;
        }
        if pins_session(&sql) {
            self.pinned = true;
        }
        if forgets_prepared(&sql)
            && let Some(s) = self.server.as_mut()
        {
            s.conn.prepared.clear();
        }
        let mut buf = BytesMut::new();
        msg.write_to(&mut buf);
        let mut queue = VecDeque::from([Expect::Sync]);
        if self.capture_ahead(class.effect) {
            super::consistency::position_query().write_to(&mut buf);
            queue.push_back(Expect::Position);
        }
        self.relay(buf, queue).await
    }

    pub(super) fn txn_status(&self) -> u8 {
        self.server_status.unwrap_or(b'I')
    }

    async fn answer_setting(&mut self, setting: Setting) {
        match self.apply_setting_io(&setting).await {
            Ok(out) => {
                if let Some((column, value)) = &out.row {
                    self.send(codec::text_row_description(column));
                    self.send(codec::text_data_row(value));
                }
                self.send(codec::command_complete(out.tag));
            }
            Err(e) => self.fail(e),
        }
    }

    /// Carries out `SET/RESET/SHOW homeport.*`, including the ones that need the server
    /// (`SET LOCAL homeport.idempotency_key`); the caller writes the protocol messages.
    pub(super) async fn apply_setting_io(
        &mut self,
        setting: &Setting,
    ) -> Result<SettingOutput, ClientError> {
        match setting {
            Setting::Set { name, value, local } if name == "idempotency_key" => {
                self.claim_idempotency_key(value, *local).await
            }
            _ => self.apply_setting(setting),
        }
    }

    /// Carries out `SET/RESET/SHOW homeport.*`; the caller writes the protocol messages.
    pub(super) fn apply_setting(
        &mut self,
        setting: &Setting,
    ) -> Result<SettingOutput, ClientError> {
        let name = match setting {
            Setting::Set { name, .. } | Setting::Reset { name } | Setting::Show { name } => {
                name.as_str()
            }
        };
        if settings::RESERVED.contains(&name) {
            return Err(ClientError {
                code: "0A000",
                message: format!(
                    "homeport.{name} is reserved and not supported by this homeport version yet"
                ),
            });
        }
        if !settings::KNOWN.contains(&name) {
            return Err(ClientError {
                code: "42704",
                message: format!("unrecognized configuration parameter \"homeport.{name}\""),
            });
        }
        let done = |tag| Ok(SettingOutput { row: None, tag });
        match setting {
            Setting::Show { name } => {
                let value = self.show_setting(name)?;
                Ok(SettingOutput {
                    row: Some((format!("homeport.{name}"), value)),
                    tag: "SHOW",
                })
            }
            Setting::Set { name, value, local } => match name.as_str() {
                "user" => {
                    let u = UserId::parse(value).map_err(|m| ClientError {
                        code: "22023",
                        message: format!("invalid homeport.user: {m}"),
                    })?;
                    if *local {
                        self.txn_user = Some(u);
                    } else {
                        self.user = Some(u);
                    }
                    done("SET")
                }
                "consistency_token" => self.set_token(value).and(done("SET")),
                "max_staleness" => {
                    self.max_staleness =
                        settings::parse_staleness(value).map_err(|m| ClientError {
                            code: "22023",
                            message: format!("invalid homeport.max_staleness: {m}"),
                        })?;
                    done("SET")
                }
                _ => Err(ClientError {
                    code: "55P02",
                    message: "homeport.route is read-only; use a /*homeport_route='primary'*/ hint"
                        .into(),
                }),
            },
            Setting::Reset { name } => match name.as_str() {
                "user" => {
                    self.user = None;
                    done("RESET")
                }
                "consistency_token" => {
                    self.token = Default::default();
                    done("RESET")
                }
                "max_staleness" => {
                    self.max_staleness = None;
                    done("RESET")
                }
                "idempotency_key" => Err(ClientError {
                    code: "0A000",
                    message: "a claimed homeport.idempotency_key stays with its transaction; roll back to release it".into(),
                }),
                _ => Err(ClientError {
                    code: "55P02",
                    message: "homeport.route is read-only".into(),
                }),
            },
        }
    }

    fn show_setting(&self, name: &str) -> Result<String, ClientError> {
        Ok(match name {
            "user" => self
                .txn_user
                .as_ref()
                .or(self.user.as_ref())
                .map(|u| u.to_string())
                .unwrap_or_default(),
            "consistency_token" => self.show_token()?,
            "idempotency_key" => self
                .txn_key
                .as_ref()
                .map(|k| k.as_str().to_string())
                .unwrap_or_default(),
            "max_staleness" => self
                .max_staleness
                .map(|d| format!("{}ms", d.as_millis()))
                .unwrap_or_else(|| "off".into()),
            _ => self
                .last_route
                .map(|(i, t)| {
                    format!(
                        "{}/{}",
                        self.app.topology.snapshot().get(i).info.region,
                        t.role_str()
                    )
                })
                .unwrap_or_default(),
        })
    }

    /// With a server attached (in a transaction or pinned), a statement for a user of another
    /// shard cannot run there: the message saying so, if that is the case.
    pub(super) async fn other_shard(&mut self, comment_user: Option<&str>) -> Option<String> {
        let shard = self.shard.clone()?;
        self.server.as_ref()?;
        let user = match comment_user {
            Some(u) => UserId::parse(u).ok()?,
            None => self.txn_user.clone().or_else(|| self.user.clone())?,
        };
        if self.attached_user.as_ref() == Some(&user) {
            return None;
        }
        let (home, _) = self.app.directory.home_of(&user, None).await.ok()?;
        (home != shard).then(|| {
            format!("homeport: user {user} lives in shard {home}, but this transaction runs on shard {shard}; a transaction runs wholly on one shard")
        })
    }

    /// Makes the attached server raise `message` (SQLSTATE 0A000) so its transaction is aborted
    /// like any failed statement, and relays the outcome.
    pub(super) async fn raise_on_server(&mut self, message: &str) -> Result<(), SessionError> {
        let quoted = message.replace('\'', "''");
        let sql = format!(
            "DO $homeport$BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '{quoted}'; END$homeport$"
        );
        let mut body = BytesMut::new();
        body.put_slice(sql.as_bytes());
        body.put_u8(0);
        let mut buf = BytesMut::new();
        Message::new(b'Q', body.freeze()).write_to(&mut buf);
        self.relay(buf, VecDeque::from([Expect::Sync])).await
    }

    /// Takes a server connection for the user's home shard.
    pub(super) async fn attach(
        &mut self,
        read_only: bool,
        hint: Option<RouteHint>,
        comment_user: Option<&str>,
    ) -> Result<(), ClientError> {
        // A new transaction starts: on the newest config, if it was reloaded meanwhile.
        self.follow_reload();
        let user = match comment_user {
            Some(u) => UserId::parse(u).map_err(|m| ClientError { code: "22023", message: m })?,
            None => self.txn_user.clone().or_else(|| self.user.clone()).ok_or_else(|| ClientError {
                code: "28000",
                message: "no homeport user for this session: SET homeport.user = '...', connect with options='-c homeport.user=...', or add /*homeport_user='...'*/".into(),
            })?,
        };
        // A user's home does not change (placements are never moved), so the session remembers
        // the last answer and skips the directory for the user it keeps using.
        let cached = self
            .home_cache
            .as_ref()
            .filter(|(u, _)| *u == user)
            .map(|(_, h)| h.clone());
        let home = match cached {
            Some(h) => h,
            None => self
                .app
                .directory
                .home_of(&user, None)
                .await
                .map(|(h, _)| h)
                .map_err(|e| match e {
                    crate::directory::DirectoryError::UnknownUser(_) => ClientError {
                        code: "28000",
                        message: e.to_string(),
                    },
                    other => ClientError {
                        code: "08006",
                        message: other.to_string(),
                    },
                })?,
        };
        self.home_cache = Some((user.clone(), home.clone()));
        let intent = if read_only && hint != Some(RouteHint::Primary) {
            Intent::Read
        } else {
            Intent::Write
        };
        let candidates = self
            .app
            .candidates(&home, intent)
            .map_err(|e| ClientError {
                code: "08006",
                message: e.to_string(),
            })?;
        let (lease, c) = match intent {
            Intent::Read => self.acquire_read(&home, candidates).await?,
            Intent::Write => self.acquire_first(&home, &candidates).await?,
        };
        self.last_route = Some((c.index, c.target));
        self.app.note_cross_region(c.index);
        self.txn_started = Some((std::time::Instant::now(), intent, c.target));
        self.on_replica = c.target != crate::routing::Target::Primary;
        self.writing = intent == Intent::Write && !self.on_replica;
        self.server = Some(lease);
        self.shard = Some(home.clone());
        self.attached_user = Some(user.clone());
        self.sync_cancel_target();
        Ok(())
    }
}

/// `BEGIN READ ONLY` / `START TRANSACTION READ ONLY ...`.
fn is_read_only_begin(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == ';' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    matches!(words.first(), Some(&"begin") | Some(&"start"))
        && words.windows(2).any(|w| w == ["read", "only"])
        && !words.windows(2).any(|w| w == ["read", "write"])
}

/// Statements that leave state on the server connection beyond the transaction.
fn pins_session(sql: &str) -> bool {
    let t = sql.trim_start();
    let set = starts_ci(t, "set ")
        && !starts_ci(t, "set local ")
        && !starts_ci(t, "set transaction")
        && !starts_ci(t, "set session characteristics");
    set || starts_ci(t, "listen ")
        || starts_ci(t, "prepare ")
        || starts_ci(t, "create temp")
        || starts_ci(t, "create local temp")
        || (starts_ci(t, "declare ") && contains_ci(t, " with hold"))
        || contains_ci(t, "pg_advisory_lock(")
        || contains_ci(t, "pg_advisory_lock_shared(")
}

fn forgets_prepared(sql: &str) -> bool {
    let t = sql.trim_start();
    starts_ci(t, "discard all") || starts_ci(t, "deallocate all")
}

fn starts_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn contains_ci(s: &str, needle: &str) -> bool {
    s.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Server-side statement name from the statement's text and parameter types.
pub(super) fn server_statement_name(parse_rest: &[u8]) -> String {
    static HASHER: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = HASHER.get_or_init(Default::default).build_hasher();
    h.write(parse_rest);
    format!("hp_{:016x}", h.finish())
}

pub(super) fn with_name(name: &str, rest: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(name.len() + 1 + rest.len());
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_slice(rest);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_begin_forms() {
        assert!(is_read_only_begin("BEGIN READ ONLY"));
        assert!(is_read_only_begin(
            "start transaction isolation level repeatable read, read only;"
        ));
        assert!(!is_read_only_begin("BEGIN"));
        assert!(!is_read_only_begin("BEGIN READ WRITE"));
        assert!(!is_read_only_begin("SELECT 'begin read only'"));
    }

    #[test]
    fn session_state_pins() {
        for sql in [
            "SET search_path = x",
            "LISTEN ch",
            "CREATE TEMP TABLE t (a int)",
            "select pg_advisory_lock(1)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        ] {
            assert!(pins_session(sql), "{sql}");
        }
        for sql in [
            "SET LOCAL x = 1",
            "SET TRANSACTION READ ONLY",
            "SELECT 1",
            "select pg_advisory_xact_lock(1)",
        ] {
            assert!(!pins_session(sql), "{sql}");
        }
    }

    #[test]
    fn statement_names_depend_on_text_and_types() {
        assert_eq!(
            server_statement_name(b"select 1\0\0\0"),
            server_statement_name(b"select 1\0\0\0")
        );
        assert_ne!(
            server_statement_name(b"select 1\0\0\0"),
            server_statement_name(b"select 2\0\0\0")
        );
    }
}

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

use super::attached::{Attached, TxnStatus};
use super::codec::{self, FramedReader, Message, ProtocolError, Reader};
use super::pool::{Lease, WirePools};
use super::server_settings::{self, Settings};
use super::settings::{self, Setting};
use crate::app::App;
use crate::routing::{Effective, effective_intent};
use crate::sql::{SessionState, SettingNames};
use crate::types::{Intent, UserId};

/// Why a query mentioning a homeport setting in any but the plain form is refused.
pub(super) const HIDDEN_SETTING: &str = "homeport.* settings must be written plainly (SET homeport.name = 'value') as a statement of their own, not inside a multi-statement query or behind comments or quotes";

/// Flush buffered output to the client once it holds this much.
pub(super) const FLUSH_AT: usize = 64 * 1024;
/// An output buffer that grew past this (a large result) is freed when the session goes idle, so
/// an idle client does not keep its peak; smaller ones are kept and reused.
const OUT_KEEP: usize = 8 * 1024;

#[derive(Clone)]
pub(super) struct ClientStatement {
    pub(super) sql: Arc<str>,
    /// Name on server connections: derived from text and parameter types.
    pub(super) server_name: String,
    /// Parse body as the server should see it (server name, query, types).
    pub(super) parse_body: Bytes,
}

pub(super) use super::expect::Expect;

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
    /// The server connection the session holds now, with its transaction status and pin.
    pub(super) server: Option<Attached>,
    home_cache: Option<(UserId, crate::types::ShardId)>,
    /// The current transaction (or statement) failed, for the metrics.
    pub(super) txn_failed: bool,
    /// The server is skipping messages after an error until the next Sync.
    pub(super) skipping: bool,
    pub(super) statements: HashMap<String, ClientStatement>,
    pub(super) unnamed_sql: Option<Arc<str>>,
    /// The client's last Parse of the unnamed statement (its body), to parse it again behind a
    /// transaction-mode pooler, where it may not outlive the batch (`unnamed.rs`).
    pub(super) unnamed_parse: Option<bytes::Bytes>,
    /// Behind a transaction-mode pooler: `SELECT set_config(.., true), ...` giving the
    /// transaction that starts the session's settings, sent ahead of its first statement.
    pub(super) local_settings: Option<String>,
    /// Server statement names whose Parse is in flight, in the order sent: each ParseComplete
    /// confirms the first; after an error the unconfirmed ones are not on the server.
    pub(super) parsed_now: VecDeque<String>,
    pub(super) batch: Vec<Message>,
    /// Bytes held in `batch`; past `pg.max_batch_bytes` the batch is refused.
    pub(super) batch_bytes: usize,
    /// A refused batch: the client's messages are dropped until its Sync.
    pub(super) discarding: bool,
    /// Where the last statement ran: endpoint index and target, formatted on SHOW.
    pub(super) last_route: Option<(usize, crate::routing::Target)>,
    /// Where this session's writes committed, and tokens the client set: reads must see these.
    pub(super) token: crate::consistency::token::Token,
    /// `homeport.max_staleness`: replica reads only within this bound.
    pub(super) max_staleness: Option<std::time::Duration>,
    /// `SET LOCAL homeport.idempotency_key`: the key the open transaction claimed.
    pub(super) txn_key: Option<crate::idempotency::Key>,
    /// This session's cancel key and the server its statements run on now.
    cancel: super::cancel::Registration,
    /// The session-level settings the client has (startup parameters, SETs): every server
    /// connection it runs on has them (see `server_settings`).
    pub(super) settings: Settings,
    /// A statement of the current transaction may have changed the session's settings: they
    /// are read back from the server when it ends.
    pub(super) settings_changed: bool,
    /// Custom settings (`prefix.name`) the session's statements named: `pg_settings` does not
    /// list them, so they are read back by name.
    pub(super) custom_names: std::collections::BTreeSet<String>,
    /// The optimistic transaction in progress on a read copy, if any.
    pub(super) optimistic: Option<super::optimistic::Optimistic>,
    /// While an optimistic transaction is replayed on the primary: the digest its answers go
    /// into instead of to the client.
    pub(super) replaying: Option<sha2::Sha256>,
    /// `SET homeport.optimistic_transactions`: the session's choice over the config's.
    pub(super) optimistic_setting: Option<bool>,
    /// A replica refused to read an unlogged or temporary table in the current unit: whether
    /// the unit can still be run again on a primary (see `reroute`).
    pub(super) refused_in_recovery: Option<bool>,
    /// The unit being run took a fresh server connection with nothing owed to the client
    /// (see `reroute`): if that server turns out gone before answering, the unit may run again.
    pub(super) unit_fresh: bool,
    /// Set by the relay when the fresh unit's server was gone before answering.
    pub(super) server_gone: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The server ended the session with a FATAL error (relayed to the client).
    #[error("the server ended the session: {0}")]
    ServerFatal(String),
}

/// What a homeport setting statement returns: an optional (column, value) row and a tag.
pub(super) struct SettingOutput {
    pub(super) row: Option<(String, String)>,
    pub(super) tag: &'static str,
}

pub(super) use super::error::{ClientError, SqlState};

impl Session {
    pub fn new(
        generation: Arc<crate::reload::Generation>,
        current: crate::reload::Current,
        client: FramedReader<super::ClientRead>,
        out_half: super::ClientWrite,
        user: Option<UserId>,
        cancel: super::cancel::Registration,
        settings: Settings,
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
            out: BytesMut::new(),
            user,
            txn_user: None,
            server: None,
            home_cache: None,
            txn_failed: false,
            skipping: false,
            statements: HashMap::new(),
            unnamed_sql: None,
            unnamed_parse: None,
            local_settings: None,
            parsed_now: VecDeque::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            discarding: false,
            last_route: None,
            token: Default::default(),
            max_staleness: None,
            txn_key: None,
            cancel,
            settings,
            settings_changed: false,
            custom_names: Default::default(),
            optimistic: None,
            replaying: None,
            optimistic_setting: None,
            refused_in_recovery: None,
            unit_fresh: false,
            server_gone: false,
        }
    }

    /// Serves the client until it terminates or breaks the protocol, or homeport drains: then the
    /// session ends at its next transaction boundary with FATAL 57P01, as PostgreSQL does.
    pub async fn run(
        mut self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        loop {
            let between_transactions = self.batch.is_empty()
                && !self.server.as_ref().is_some_and(Attached::in_transaction);
            let draining = *shutdown.borrow();
            if between_transactions && draining {
                return self.terminate_for_shutdown().await;
            }
            let next = if between_transactions {
                self.shrink_buffers();
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
                    self.send(ClientError::protocol(format!("invalid message: {e}")).fatal());
                    let _ = self.flush().await;
                    return Err(e.into());
                }
            };
            if self.discarding && msg.tag != b'X' {
                // A refused batch: everything up to its Sync is dropped, as the server does
                // after an error.
                if msg.tag == b'S' {
                    self.discarding = false;
                    let status = self.txn_status();
                    self.send(codec::ready_for_query(status));
                    self.flush().await?;
                }
                continue;
            }
            // The work on a message is boxed: its future (several KiB of nested state) exists
            // only while a message is handled, so an idle session's task stays small (the
            // memory of many idle clients).
            match msg.tag {
                b'Q' => Box::pin(self.simple_query_or_reroute(msg)).await?,
                b'P' | b'B' | b'D' | b'E' | b'C' => self.hold(msg),
                b'S' | b'H' => {
                    let sync = msg.tag == b'S';
                    self.batch.push(msg);
                    self.batch_bytes = 0;
                    Box::pin(self.run_batch_or_reroute(sync)).await?;
                }
                b'X' => return Ok(()),
                b'd' | b'c' | b'f' => {} // copy messages outside COPY are ignored, as PostgreSQL does
                other => {
                    let m = format!("unexpected message type '{}'", other as char);
                    self.send(ClientError::protocol(&m).fatal());
                    let _ = self.flush().await;
                    return Err(ProtocolError::Unsupported(m).into());
                }
            }
            self.flush().await?;
        }
    }

    /// Keeps an extended-protocol message for the batch run at the next Sync or Flush; a batch
    /// past `pg.max_batch_bytes` is refused with 54000 and the rest of it dropped.
    fn hold(&mut self, msg: Message) {
        self.batch_bytes += msg.body.len() + 5;
        let limit = self
            .app
            .config
            .pg
            .as_ref()
            .map_or(crate::config::DEFAULT_MAX_BATCH_BYTES, |p| {
                p.max_batch_bytes
            });
        if self.batch_bytes <= limit {
            self.batch.push(msg);
            return;
        }
        self.batch.clear();
        self.batch_bytes = 0;
        self.discarding = true;
        self.fail(ClientError::new(SqlState::PROGRAM_LIMIT_EXCEEDED, format!(
                "extended-protocol messages before Sync exceed pg.max_batch_bytes ({limit} bytes); send a Sync more often"
            )));
    }

    /// `homeport.optimistic_transactions` given at startup.
    pub fn with_optimistic(mut self, on: Option<bool>) -> Self {
        self.optimistic_setting = on;
        self
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
        self.last_route = None;
    }

    async fn terminate_for_shutdown(&mut self) -> Result<(), SessionError> {
        self.send(
            ClientError::new(
                SqlState::ADMIN_SHUTDOWN,
                "terminating connection: homeport is shutting down",
            )
            .fatal(),
        );
        let _ = self.flush().await;
        Ok(())
    }

    /// The client's next message. While a pinned session sits idle on its server, whatever the
    /// server sends meanwhile (NOTIFY for a LISTEN, notices, parameter changes) is passed on at
    /// once. Both reads are cancel-safe: partial input stays in the framed readers' buffers.
    async fn next_client_message(&mut self) -> Result<Message, ProtocolError> {
        loop {
            let batch_empty = self.batch.is_empty();
            let Some(attached) = self
                .server
                .as_mut()
                .filter(|a| batch_empty && a.pin.is_some() && a.ready == Some(TxnStatus::Idle))
            else {
                return self.client.next().await;
            };
            tokio::select! {
                m = self.client.next() => return m,
                m = attached.lease.conn.recv() => match m {
                    Ok(m) if matches!(m.tag, b'A' | b'N' | b'S') => {
                        // What the server sent together (a transaction's notifications) reaches
                        // the client in one write, as PostgreSQL sent it.
                        self.send(m);
                        while let Some(m) = self
                            .server
                            .as_mut()
                            .and_then(|a| a.lease.conn.buffered(b"ANS"))
                        {
                            self.send(m);
                        }
                        self.flush().await?;
                    }
                    Ok(m) => {
                        // An idle server speaks otherwise only to say it is going away (FATAL,
                        // e.g. pg_terminate_backend): the client hears it and is disconnected,
                        // as it would be by PostgreSQL, since its pinned state is gone.
                        self.detach();
                        if m.tag == b'E' {
                            self.send(m);
                        }
                        let _ = self.flush().await;
                        return Err(ProtocolError::Closed);
                    }
                    Err(_) => {
                        self.detach();
                        return Err(ProtocolError::Closed);
                    }
                },
            }
        }
    }

    /// Points this session's cancel key at the attached server (or at nothing).
    pub(super) fn sync_cancel_target(&self) {
        let target = self
            .server
            .as_ref()
            .map(|a| a.lease.conn.cancel_target.clone());
        *self.cancel.slot.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    pub(super) fn send(&mut self, m: Message) {
        if let Some(d) = self.replaying.as_mut() {
            super::optimistic::feed(d, &m);
            return;
        }
        if let Some(o) = self.optimistic.as_mut() {
            super::optimistic::feed(&mut o.current, &m);
        }
        m.write_to(&mut self.out);
    }

    /// Idle between transactions: buffers grown by a large message or result are freed.
    fn shrink_buffers(&mut self) {
        self.client.shrink();
        if self.out.is_empty() && self.out.capacity() > OUT_KEEP {
            self.out = BytesMut::new();
        }
    }

    pub(super) async fn flush(&mut self) -> Result<(), ProtocolError> {
        if !self.out.is_empty() {
            self.out_half.write_all(&self.out).await?;
            self.out.clear();
            // Part of the unit's answer reached the client: it cannot run again.
            self.unit_fresh = false;
        }
        Ok(())
    }

    pub(super) fn fail(&mut self, e: ClientError) {
        self.send(e.error());
    }

    pub(super) async fn simple_query(&mut self, msg: Message) -> Result<(), SessionError> {
        let body = msg.body.clone();
        let sql = Reader::new(&body, "query").text()?;
        if let Some(setting) = settings::parse(&sql) {
            self.answer_setting(setting).await;
            let status = self.txn_status();
            self.send(codec::ready_for_query(status));
            return Ok(());
        }
        if settings::hides_setting(&sql) {
            self.fail(ClientError::not_supported(HIDDEN_SETTING));
            let status = self.txn_status();
            self.send(codec::ready_for_query(status));
            return Ok(());
        }
        // Simple-protocol statements usually carry their values inline, so each text is new.
        let class = self.app.classifier.classify_simple(&sql);
        if let Some(e) = self.touches_identity(class.setting_names.as_ref()) {
            self.fail(e);
            let status = self.txn_status();
            self.send(codec::ready_for_query(status));
            return Ok(());
        }
        let classes = [class.as_ref()];
        if !self.may_stay(&classes, msg.body.len() + 5) && !self.promote(true).await? {
            return Ok(());
        }
        let optimistic = self.opens_optimistic(&classes);
        let declared = (is_read_only_begin(&sql) || optimistic).then_some(Intent::Read);
        let effective = effective_intent(class.read_only, declared, class.route);
        self.leave_replica_for_write(effective.intent == Intent::Read)
            .await;
        if self.server.is_none() {
            if let Err(e) = self.attach(effective, class.user.as_deref()).await {
                self.fail(e);
                self.send(codec::ready_for_query(b'I'));
                return Ok(());
            }
            self.began(optimistic, &classes);
        }
        if let Some(message) = self.other_shard(class.user.as_deref()).await {
            return self.raise_on_server(&message).await;
        }
        if let Some(message) = self.pooler_refusal(class.session) {
            return self.raise_on_server(&message).await;
        }
        if let Some(state) = class.session {
            self.session_state(state, class.setting_names.as_ref());
        }
        if forgets_prepared(&sql)
            && let Some(a) = self.server.as_mut()
        {
            a.lease.conn.prepared.clear();
        }
        let mut buf = BytesMut::new();
        let mut queue = VecDeque::from([Expect::Sync]);
        self.local_settings_simple(msg.clone(), &mut queue)
            .write_to(&mut buf);
        if self.capture_ahead(class.effect) {
            super::consistency::position_query().write_to(&mut buf);
            queue.push_back(Expect::Position);
        }
        self.relay(buf, queue).await?;
        self.keep_unit(super::optimistic::Unit::Query(msg));
        Ok(())
    }

    /// The transaction status to report to the client.
    pub(super) fn txn_status(&self) -> u8 {
        self.server
            .as_ref()
            .map_or(TxnStatus::Idle, Attached::status)
            .byte()
    }

    /// Lets go of the server connection: the one place a session detaches. The connection is
    /// dropped (closed) unless the caller gives the returned value back to its pool.
    pub(super) fn detach(&mut self) -> Option<Attached> {
        let attached = self.server.take();
        self.sync_cancel_target();
        attached
    }

    /// A statement about to run leaves `state` on the server: settings are read back when the
    /// transaction ends (they follow the session to other connections); anything else pins.
    /// A setting named by an expression (`set_config($1, ...)`) cannot be read back: it pins.
    pub(super) fn session_state(&mut self, state: SessionState, names: Option<&SettingNames>) {
        match (state, names) {
            (SessionState::Setting, Some(SettingNames::Dynamic)) => self.pin(state),
            (SessionState::Setting, names) => {
                if let Some(SettingNames::Names(n)) = names {
                    self.custom_names.extend(n.iter().cloned());
                }
                self.settings_changed = true;
            }
            _ => self.pin(state),
        }
    }

    /// A statement that would set the identity setting homeport manages
    /// (`postgres.identity_setting`), or a `set_config` whose setting homeport cannot read while
    /// one is configured: refused with 42501, so a client cannot act as another user.
    pub(super) fn touches_identity(&self, names: Option<&SettingNames>) -> Option<ClientError> {
        let identity = self.app.config.postgres.identity_setting.as_deref()?;
        let touches = names?.may_set(identity);
        touches.then(|| ClientError::new(SqlState::INSUFFICIENT_PRIVILEGE, format!(
                "{identity} is set by homeport to the session's user (postgres.identity_setting); a client may not set it, nor call set_config with a setting name given as a parameter"
            )))
    }

    /// Makes a server connection's session-level settings this session's (and the identity
    /// setting this transaction's user), in one round trip and only when they differ. On failure
    /// the connection is dropped (closed): it may hold another session's settings.
    fn wanted_settings(&self, user: &UserId) -> Settings {
        let mut wanted = self.settings.clone();
        if let Some(name) = &self.app.config.postgres.identity_setting {
            wanted.insert(name.clone(), user.to_string());
        }
        wanted
    }

    /// Reads the session's settings back from its server after a transaction that may have
    /// changed them. If that fails the server is dropped, so no other client can get it.
    pub(super) async fn capture_settings(&mut self) {
        let identity = self.app.config.postgres.identity_setting.clone();
        let sql = server_settings::capture_sql(self.custom_names.iter().chain(identity.as_ref()));
        let Some(a) = self.server.as_mut() else {
            return;
        };
        match a.lease.conn.run_own_rows(&sql).await {
            Ok((Ok(rows), b'I')) => {
                let mut conn_settings = Settings::new();
                for row in rows {
                    if let [Some(k), Some(v)] = row.as_slice() {
                        conn_settings.insert(k.clone(), v.clone());
                    }
                }
                let mut mine = conn_settings.clone();
                if let Some(name) = &identity {
                    mine.remove(name);
                }
                a.lease.conn.settings = conn_settings;
                self.settings = mine;
            }
            _ => {
                self.detach();
            }
        }
    }

    /// Pins the session to its server connection because a statement leaves `state` there.
    pub(super) fn pin(&mut self, state: crate::sql::SessionState) {
        if let Some(a) = self.server.as_mut()
            && a.pin.is_none()
        {
            a.pin = Some(state);
            crate::metrics::wire_pin(state.as_str());
        }
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
            return Err(ClientError::not_supported(format!(
                "homeport.{name} is reserved and not supported by this homeport version yet"
            )));
        }
        if !settings::KNOWN.contains(&name) {
            return Err(ClientError::new(
                SqlState::UNDEFINED_OBJECT,
                format!("unrecognized configuration parameter \"homeport.{name}\""),
            ));
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
                    let u = UserId::parse(value).map_err(|m| {
                        ClientError::invalid_value(format!("invalid homeport.user: {m}"))
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
                    self.max_staleness = settings::parse_staleness(value).map_err(|m| {
                        ClientError::invalid_value(format!("invalid homeport.max_staleness: {m}"))
                    })?;
                    done("SET")
                }
                "optimistic_transactions" => {
                    self.optimistic_setting = Some(settings::parse_on_off(value).map_err(|m| {
                        ClientError::invalid_value(format!(
                            "invalid homeport.optimistic_transactions: {m}"
                        ))
                    })?);
                    done("SET")
                }
                _ => Err(ClientError::new(
                    SqlState::CANT_CHANGE_RUNTIME_PARAM,
                    "homeport.route is read-only; use a /*homeport_route='primary'*/ hint",
                )),
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
                "optimistic_transactions" => {
                    self.optimistic_setting = None;
                    done("RESET")
                }
                "idempotency_key" => Err(ClientError::not_supported(
                    "a claimed homeport.idempotency_key stays with its transaction; roll back to release it",
                )),
                _ => Err(ClientError::new(
                    SqlState::CANT_CHANGE_RUNTIME_PARAM,
                    "homeport.route is read-only",
                )),
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
            "optimistic_transactions" => if self.optimistic_on() { "on" } else { "off" }.into(),
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
        let attached = self.server.as_ref()?;
        let named;
        let user = match comment_user {
            Some(u) => {
                named = UserId::parse(u).ok()?;
                &named
            }
            None => self.txn_user.as_ref().or(self.user.as_ref())?,
        };
        // The usual case, checked without copying anything: the transaction's own user.
        if attached.user == *user {
            return None;
        }
        let (user, shard) = (user.clone(), attached.shard.clone());
        let (home, _) = self
            .app
            .directory
            .home_of(&user, &Default::default())
            .await
            .ok()?;
        let home = home.shard;
        (home != shard).then(|| {
            format!("homeport: user {user} lives in shard {home}, but this transaction runs on shard {shard}; a transaction runs wholly on one shard")
        })
    }

    /// Makes the attached server raise `message` (SQLSTATE 0A000) so its transaction is aborted
    /// like any failed statement, and relays the outcome.
    pub(super) async fn raise_on_server(&mut self, message: &str) -> Result<(), SessionError> {
        let sql = super::error::raise_sql(&SqlState::FEATURE_NOT_SUPPORTED, message);
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
        effective: Effective,
        comment_user: Option<&str>,
    ) -> Result<(), ClientError> {
        // A new transaction starts: on the newest config, if it was reloaded meanwhile.
        self.follow_reload();
        let user = match comment_user {
            Some(u) => UserId::parse(u).map_err(ClientError::invalid_value)?,
            None => self.txn_user.clone().or_else(|| self.user.clone()).ok_or_else(|| ClientError::no_user("no homeport user for this session: SET homeport.user = '...', connect with options='-c homeport.user=...', or add /*homeport_user='...'*/"))?,
        };
        // A user's home does not change (placements are never moved), so the session remembers
        // the last answer and skips the directory for the user it keeps using.
        let cached = self
            .home_cache
            .as_ref()
            .filter(|(u, _)| *u == user)
            .map(|(_, h)| h.clone());
        let hit = cached.is_some();
        let home = match cached {
            Some(h) => h,
            None => self
                .app
                .directory
                .home_of(&user, &Default::default())
                .await
                .map(|(h, _)| h.shard)
                .map_err(|e| match e {
                    crate::directory::DirectoryError::UnknownUser(_) => {
                        ClientError::no_user(e.to_string())
                    }
                    other => ClientError::unreachable(other.to_string()),
                })?,
        };
        if !hit {
            self.home_cache = Some((user.clone(), home.clone()));
        }
        // Residency: a user of a shard resident elsewhere may be refused here (HP421 / 42501).
        if let Some(r) = crate::residency::wire_refusal(&self.app.residency(&home), &home) {
            return Err(ClientError::with_detail(
                SqlState::from_code(r.code),
                &r.message,
                &r.detail,
            ));
        }
        let intent = effective.intent;
        let candidates = self
            .app
            .candidates(&home, effective.candidates_for())
            .map_err(|e| ClientError::unreachable(e.to_string()))?;
        let (mut lease, c) = match intent {
            Intent::Read => self.acquire_read(&home, candidates).await?,
            Intent::Write => self.acquire_first(&home, &candidates).await?,
        };
        // Without an identity setting, a connection that has this session's settings already
        // (the usual case) needs nothing: no copy of them, no round trip.
        let identity = self.app.config.postgres.identity_setting.is_some();
        if lease.behind_pooler {
            self.local_settings = server_settings::local_sql(&self.wanted_settings(&user));
        } else if identity || lease.conn.settings != self.settings {
            sync_settings(&mut lease, self.wanted_settings(&user)).await?;
        }
        self.last_route = Some((c.index, c.target));
        self.app.note_cross_region(c.index);
        self.server = Some(Attached {
            lease,
            ready: None,
            target: c.target,
            intent,
            shard: home,
            user,
            pin: None,
            txn_started: Some(std::time::Instant::now()),
        });
        self.sync_cancel_target();
        Ok(())
    }
}

/// Makes a server connection's session-level settings `wanted`, in one round trip and only when
/// they differ. On failure the caller drops (closes) the connection: it may hold another
/// session's settings.
async fn sync_settings(lease: &mut Lease, wanted: Settings) -> Result<(), ClientError> {
    let Some(sql) = server_settings::reconcile_sql(&wanted, &lease.conn.settings) else {
        return Ok(());
    };
    match lease.conn.run_own(&sql).await {
        Ok((Ok(_), b'I')) => {
            lease.conn.settings = wanted;
            Ok(())
        }
        Ok((Err(e), _)) => Err(ClientError::unreachable(format!(
            "homeport could not give the server connection this session's settings: {}",
            codec::field(&e.body, b'M').unwrap_or_default()
        ))),
        Ok((Ok(_), _)) | Err(_) => Err(ClientError::unreachable(
            "homeport lost the server connection while applying this session's settings",
        )),
    }
}

impl Drop for Session {
    /// A pinned session that ends while its server is idle gives the connection back after
    /// `DISCARD ALL` clears its session state; any other attached connection is closed.
    fn drop(&mut self) {
        if let Some(a) = self.server.take()
            && a.pin.is_some()
            && a.ready == Some(TxnStatus::Idle)
        {
            a.lease.reset_and_release();
        }
    }
}

/// `BEGIN READ ONLY` / `START TRANSACTION READ ONLY ...`.
fn is_read_only_begin(sql: &str) -> bool {
    // Most statements are not a BEGIN: answered without copying the text.
    let first = sql
        .split(|c: char| c.is_whitespace() || c == ';' || c == ',')
        .find(|w| !w.is_empty());
    if !first.is_some_and(|w| w.eq_ignore_ascii_case("begin") || w.eq_ignore_ascii_case("start")) {
        return false;
    }
    let lower = sql.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == ';' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    matches!(words.first(), Some(&"begin") | Some(&"start"))
        && words.windows(2).any(|w| w == ["read", "only"])
        && !words.windows(2).any(|w| w == ["read", "write"])
}

/// Statements after which the server connection has none of homeport's prepared statements.
pub(super) fn forgets_prepared(sql: &str) -> bool {
    let t = sql.trim_start();
    starts_ci(t, "discard all") || starts_ci(t, "deallocate all")
}

fn starts_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
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

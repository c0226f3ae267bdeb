//! Relaying a client's messages to its server connection and the responses back: simple queries,
//! extended-protocol batches with prepared-statement rewriting, COPY FROM STDIN, and the
//! bookkeeping at ReadyForQuery (release the connection, end `SET LOCAL homeport.user`).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use super::attached::TxnStatus;
use super::codec::{self, Message, ProtocolError};
use super::error::SqlState;
use super::expect::{Expectations, Step};
use super::frontend::{self, Frontend, Kind};
use super::session::{
    ClientError, ClientStatement, Expect, Session, SessionError, server_statement_name, with_name,
};
use crate::sql::SettingNames;

impl Session {
    /// Sends `buf` to the attached server and relays responses until every expectation is met.
    pub(super) async fn relay(
        &mut self,
        buf: BytesMut,
        queue: VecDeque<Expect>,
    ) -> Result<(), SessionError> {
        let mut queue = Expectations::from(queue);
        if self.skipping {
            // The server ignores everything up to the next Sync after an earlier error.
            queue.skip_to_sync();
        }
        let Some(attached) = self.server.as_mut() else {
            return Ok(());
        };
        if let Err(e) = attached.lease.conn.send_raw(&buf).await {
            if !self.gone_before_answer(None) {
                self.server_lost(e);
            }
            return Ok(());
        }
        // Nothing came back from the server yet (a unit may run again if its server was gone).
        let mut answered = false;
        // One watch on the server's health for the whole exchange (a timer armed per message
        // waited for would cost a timer registration per round trip).
        let endpoint = attached.lease.endpoint;
        let app = self.app.clone();
        let poll = app
            .config
            .probe
            .interval
            .min(std::time::Duration::from_millis(250));
        let down = app.topology.down(endpoint, poll);
        tokio::pin!(down);
        // The client's ReadyForQuery, held back while homeport's position query is answered.
        let mut held: Option<Message> = None;
        let mut position: Option<String> = None;
        // Part of the answer went to the client already (a reroute could not take it back).
        let mut flushed = false;
        loop {
            while let Some(tag) = queue.synthesized() {
                if !self.skipping {
                    self.send(codec::empty(tag));
                }
            }
            if queue.is_empty() {
                break;
            }
            let Some(lease) = self.server.as_mut().map(|a| &mut a.lease) else {
                break;
            };
            // `biased`: a message already buffered is taken without polling the watch.
            let m = tokio::select! {
                biased;
                m = lease.conn.recv() => m,
                () = &mut down => Err(ProtocolError::Unreachable),
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    if answered || !self.gone_before_answer(None) {
                        self.server_lost(e);
                    }
                    return Ok(());
                }
            };
            let first = !answered;
            answered = true;
            match queue.take(m.tag, &m.body) {
                Step::Forward => self.send(m),
                Step::Drop => {}
                Step::Parsed { forward } => {
                    self.parsed_now.pop_front();
                    if forward {
                        self.send(m);
                    }
                }
                Step::Position => {
                    position = codec::first_value(&m.body).map(String::from);
                    continue;
                }
                Step::PositionDone => {
                    self.captured(position.take().as_deref());
                    if let Some(ready) = held.take() {
                        let status = ready.body.first().copied().unwrap_or(b'I');
                        self.send(ready);
                        self.after_ready(status).await;
                    }
                    continue;
                }
                Step::Fatal => {
                    if first && self.gone_before_answer(Some(&m.body)) {
                        return Ok(());
                    }
                    // The server is ending the session (terminated, shutting down): the client
                    // sees the error and loses its connection, as it would with PostgreSQL.
                    let message = codec::field(&m.body, b'M').unwrap_or_default();
                    self.send(m);
                    self.detach();
                    let _ = self.flush().await;
                    return Err(SessionError::ServerFatal(message));
                }
                Step::Error => {
                    self.note_server_error(&m, flushed);
                    self.send(m);
                    self.skipping = true;
                    self.txn_failed = true;
                    // Parses not yet confirmed were skipped by the server.
                    if let Some(a) = self.server.as_mut() {
                        for name in self.parsed_now.drain(..) {
                            a.lease.conn.prepared.remove(&name);
                        }
                    }
                }
                Step::Ready => {
                    self.skipping = false;
                    let status = m.body.first().copied().unwrap_or(b'I');
                    if queue.front() == Some(Expect::Position) {
                        held = Some(m);
                    } else if self.capture_after(status) {
                        // A write whose position could not be pipelined: ask now.
                        if let Some(a) = self.server.as_mut() {
                            let mut q = BytesMut::new();
                            super::consistency::position_query().write_to(&mut q);
                            if let Err(e) = a.lease.conn.send_raw(&q).await {
                                self.server_lost(e);
                                return Ok(());
                            }
                        }
                        queue.push(Expect::Position);
                        held = Some(m);
                    } else {
                        self.send(m);
                        self.after_ready(status).await;
                    }
                }
                Step::CopyIn => {
                    self.send(m);
                    flushed = true;
                    self.flush().await?;
                    self.copy_in().await?;
                }
            }
            if self.out.len() >= super::session::FLUSH_AT {
                flushed = true;
                self.flush().await?;
            }
        }
        self.parsed_now.clear();
        Ok(())
    }

    /// COPY FROM STDIN: the client's CopyData goes to the server until CopyDone or CopyFail.
    async fn copy_in(&mut self) -> Result<(), SessionError> {
        loop {
            let m = self.client.next().await?;
            let end = matches!(m.tag, b'c' | b'f');
            if !matches!(m.tag, b'd' | b'c' | b'f') {
                // Flush and Sync are allowed and ignored during COPY; anything else aborts it.
                if matches!(m.tag, b'H' | b'S') {
                    continue;
                }
                return Err(ProtocolError::Unsupported(format!(
                    "message '{}' during COPY",
                    m.tag as char
                ))
                .into());
            }
            let mut buf = BytesMut::with_capacity(m.body.len() + 5);
            m.write_to(&mut buf);
            let Some(attached) = self.server.as_mut() else {
                return Ok(());
            };
            if let Err(e) = attached.lease.conn.send_raw(&buf).await {
                self.server_lost(e);
                return Ok(());
            }
            if end {
                return Ok(());
            }
        }
    }

    /// A session can stay attached to a replica between extended-protocol batches that end in
    /// Flush (drivers describe statements that way). If the next statement writes and no
    /// transaction is open, the replica's implicit transaction is closed with a Sync, the replica
    /// goes back to its pool, and the write gets a primary.
    pub(super) async fn leave_replica_for_write(&mut self, read_only: bool) {
        let Some(attached) = self.server.as_mut() else {
            return;
        };
        if read_only
            || !attached.on_replica()
            || attached.in_transaction()
            || attached.pin.is_some()
        {
            return;
        }
        let mut buf = BytesMut::new();
        codec::empty(b'S').write_to(&mut buf);
        let mut ok = attached.lease.conn.send_raw(&buf).await.is_ok();
        while ok {
            match attached.lease.conn.recv().await {
                Ok(m) if m.tag == b'Z' => break,
                Ok(_) => {}
                Err(_) => ok = false,
            }
        }
        self.skipping = false;
        if let Some(a) = self.detach()
            && ok
        {
            a.lease.release();
        }
    }

    /// ReadyForQuery from the server: an idle server goes back to its pool unless pinned.
    pub(super) async fn after_ready(&mut self, status: u8) {
        let status = TxnStatus::from_byte(status);
        if let Some(a) = self.server.as_mut() {
            a.ready = status;
        }
        if status != Some(TxnStatus::Idle) || self.replaying.is_some() {
            return;
        }
        self.optimistic_ended();
        if std::mem::take(&mut self.settings_changed) {
            self.capture_settings().await;
        }
        self.txn_user = None;
        self.txn_key = None;
        self.record_transaction();
        if self.server.as_ref().is_some_and(|a| a.pin.is_none())
            && let Some(a) = self.detach()
        {
            a.lease.release();
        }
    }

    /// Counts a finished transaction (or autocommit statement) in the request metrics.
    fn record_transaction(&mut self) {
        let failed = std::mem::take(&mut self.txn_failed);
        let Some(a) = self.server.as_mut() else {
            return;
        };
        if let Some(started) = a.txn_started.take() {
            let outcome = if failed { "client_error" } else { "ok" };
            self.app.wire_metrics.record(
                a.intent.as_str(),
                a.target.as_str(),
                outcome,
                started.elapsed(),
            );
        }
        if a.pin.is_some() {
            // A pinned session keeps its server: the next transaction starts now.
            a.txn_started = Some(std::time::Instant::now());
        }
    }

    /// The server connection broke: it is closed (never reused), and the client hears why.
    pub(super) fn server_lost(&mut self, e: ProtocolError) {
        self.forget_server();
        self.send(
            ClientError::unreachable(format!("homeport lost the server connection: {e}")).error(),
        );
        self.send(codec::ready_for_query(b'I'));
    }

    /// Drops the attached server and everything the session kept about its transaction there.
    pub(super) fn forget_server(&mut self) {
        if let Some(a) = self.detach()
            && let Some(started) = a.txn_started
        {
            self.app.wire_metrics.record(
                a.intent.as_str(),
                a.target.as_str(),
                "error",
                started.elapsed(),
            );
        }
        self.txn_failed = false;
        self.txn_key = None;
        self.skipping = false;
        self.parsed_now.clear();
        self.optimistic = None;
    }

    /// Runs the extended-protocol messages collected up to a Sync (or Flush).
    pub(super) async fn run_batch(&mut self, sync: bool) -> Result<(), SessionError> {
        let batch = std::mem::take(&mut self.batch);
        let decoded = Frontend::decode_all(&batch).map_err(protocol);
        if let Ok(decoded) = &decoded
            && self.settings_only(decoded).is_some()
        {
            return self.emulate(&batch).await;
        }
        let plan = match decoded.and_then(|d| self.plan_batch(&d).map(|plan| (plan, d))) {
            Ok(p) => p,
            Err(e) => {
                self.fail(e);
                if sync {
                    let status = self.txn_status();
                    self.send(codec::ready_for_query(status));
                } else {
                    self.skipping = true;
                }
                return Ok(());
            }
        };
        let (plan, decoded) = plan;
        if let Some(e) = self.touches_identity(plan.setting_names.as_ref()) {
            self.fail(e);
            if sync {
                let status = self.txn_status();
                self.send(codec::ready_for_query(status));
            } else {
                self.skipping = true;
            }
            return Ok(());
        }
        let classes: Vec<&crate::sql::Classification> =
            plan.executed.iter().map(|c| c.as_ref()).collect();
        let len = batch.iter().map(|m| m.body.len() + 5).sum();
        if !self.may_stay(&classes, len) && !self.promote(sync).await? {
            return Ok(());
        }
        let optimistic = self.opens_optimistic(&classes);
        let declared = optimistic.then_some(crate::types::Intent::Read);
        let effective = crate::routing::effective_intent(plan.read_only, declared, plan.hint);
        self.leave_replica_for_write(effective.intent == crate::types::Intent::Read)
            .await;
        if self.server.is_none() {
            if !plan.any_statement {
                if sync {
                    self.skipping = false;
                    self.send(codec::ready_for_query(b'I'));
                }
                return Ok(());
            }
            if let Err(e) = self.attach(effective, plan.user.as_deref()).await {
                self.fail(e);
                if sync {
                    self.send(codec::ready_for_query(b'I'));
                }
                return Ok(());
            }
            self.began(optimistic, &classes);
        }
        if sync && let Some(message) = self.other_shard(plan.user.as_deref()).await {
            return self.raise_on_server(&message).await;
        }
        if let Some(message) = self.pooler_refusal(plan.session) {
            if sync {
                return self.raise_on_server(&message).await;
            }
            self.fail(ClientError::not_supported(message));
            self.skipping = true;
            return Ok(());
        }
        if let Some(state) = plan.session {
            self.session_state(state, plan.setting_names.as_ref());
        }
        if plan.forgets_prepared
            && let Some(a) = self.server.as_mut()
        {
            a.lease.conn.prepared.clear();
        }
        let (mut buf, mut queue) = self.rewrite(&decoded)?;
        drop(decoded);
        if sync && self.capture_ahead(plan.effect) {
            super::consistency::position_query().write_to(&mut buf);
            queue.push_back(Expect::Position);
        }
        self.relay(buf, queue).await?;
        self.keep_batch(batch);
        Ok(())
    }

    /// First pass over a batch: remember parsed statements, check that referenced statements
    /// exist, and classify what will run.
    fn plan_batch(&mut self, batch: &[Frontend<'_>]) -> Result<BatchPlan, ClientError> {
        let mut plan = BatchPlan {
            read_only: true,
            any_statement: false,
            hint: None,
            user: None,
            effect: Default::default(),
            session: None,
            setting_names: None,
            forgets_prepared: false,
            executed: Vec::new(),
        };
        for m in batch {
            match m {
                Frontend::Parse(p) => {
                    plan.any_statement = true;
                    let sql = p.sql().map_err(protocol)?;
                    let sql = sql.as_ref();
                    if super::settings::hides_setting(sql) {
                        return Err(ClientError::not_supported(super::session::HIDDEN_SETTING));
                    }
                    plan.note(sql, &self.app);
                    if p.name.is_empty() {
                        self.unnamed_sql = Some(sql.into());
                        if self.pools.any_behind_pooler() {
                            self.unnamed_parse = Some(with_name("", p.after_name));
                        }
                    } else {
                        let server_name = server_statement_name(p.after_name);
                        let parse_body = with_name(&server_name, p.after_name);
                        self.statements.insert(
                            p.name.to_string(),
                            ClientStatement {
                                sql: Arc::from(sql),
                                server_name,
                                parse_body,
                            },
                        );
                    }
                }
                Frontend::Bind(_) | Frontend::Describe(_) => {
                    plan.any_statement = true;
                    let Some(name) = m.statement() else {
                        continue; // a portal's Describe
                    };
                    let sql = if name.is_empty() {
                        self.unnamed_sql.clone()
                    } else {
                        self.statements.get(name).map(|s| s.sql.clone())
                    };
                    match sql {
                        Some(sql) => {
                            let class = plan.note(&sql, &self.app);
                            if matches!(m, Frontend::Bind(_)) {
                                plan.executed.push(class);
                            }
                        }
                        None if name.is_empty() => {}
                        None => {
                            return Err(ClientError::new(
                                SqlState::INVALID_SQL_STATEMENT_NAME,
                                format!("prepared statement \"{name}\" does not exist"),
                            ));
                        }
                    }
                }
                Frontend::Close(t) => {
                    plan.any_statement = true;
                    // Closed now, so a later Bind or Describe in this batch must not find it.
                    if t.kind == Kind::Statement {
                        self.statements.remove(t.name);
                    }
                }
                Frontend::Execute(_) => plan.any_statement = true,
                Frontend::Sync | Frontend::Flush => {}
            }
        }
        Ok(plan)
    }

    /// Second pass: the bytes to send, with statement names rewritten and missing statements
    /// prepared, and what to expect back for each message.
    pub(super) fn rewrite(
        &mut self,
        batch: &[Frontend<'_>],
    ) -> Result<(BytesMut, VecDeque<Expect>), SessionError> {
        if self.server.as_ref().is_some_and(|a| a.lease.behind_pooler) {
            return self.rewrite_unnamed(batch);
        }
        let mut buf = BytesMut::with_capacity(256);
        let mut queue = VecDeque::with_capacity(batch.len() + 2);
        let mark = self
            .server
            .as_ref()
            .map_or(0, |a| a.lease.conn.prepared.mark());
        for m in batch {
            match m {
                Frontend::Parse(p) => {
                    if p.name.is_empty() {
                        p.write_to(&mut buf);
                        queue.push_back(Expect::Parse);
                    } else if self.ensure_prepared(p.name, &mut buf, &mut queue, mark) {
                        queue.push_back(Expect::ParseNamed);
                    } else {
                        queue.push_back(Expect::SynthParse);
                    }
                }
                Frontend::Bind(b) => {
                    if b.statement.is_empty() {
                        b.write_to(&mut buf);
                    } else {
                        if self.ensure_prepared(b.statement, &mut buf, &mut queue, mark) {
                            queue.push_back(Expect::Swallow);
                        }
                        b.write_for(self.server_name(b.statement)?, &mut buf);
                    }
                    queue.push_back(Expect::Bind);
                }
                Frontend::Describe(t) => {
                    if let Some(name) = t.named_statement() {
                        if self.ensure_prepared(name, &mut buf, &mut queue, mark) {
                            queue.push_back(Expect::Swallow);
                        }
                        frontend::write_describe_statement(self.server_name(name)?, &mut buf);
                    } else {
                        m.write_to(&mut buf);
                    }
                    queue.push_back(Expect::Describe);
                }
                Frontend::Close(t) => {
                    if let Some(name) = t.named_statement() {
                        // The server keeps its copy for other clients; the client's name is gone.
                        self.statements.remove(name);
                        queue.push_back(Expect::SynthClose);
                    } else {
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

    /// The server name of the client's statement `name` (checked to exist by `plan_batch`).
    fn server_name(&self, name: &str) -> Result<&str, SessionError> {
        self.statements
            .get(name)
            .map(|s| s.server_name.as_str())
            .ok_or_else(|| {
                ProtocolError::Unsupported(format!("prepared statement \"{name}\" does not exist"))
                    .into()
            })
    }

    /// Writes a Parse for the client's statement `name` unless the attached server has it, and
    /// before it a Close of the least recently used statement when the server holds
    /// `pg.max_prepared_statements` (none used by this batch, since `mark`). Returns whether a
    /// Parse was written.
    fn ensure_prepared(
        &mut self,
        name: &str,
        buf: &mut BytesMut,
        queue: &mut VecDeque<Expect>,
        mark: u64,
    ) -> bool {
        let (Some(stmt), Some(attached)) = (self.statements.get(name), self.server.as_mut()) else {
            return false;
        };
        let prepared = &mut attached.lease.conn.prepared;
        if prepared.touch(&stmt.server_name) {
            return false;
        }
        let keep = self
            .app
            .config
            .pg
            .as_ref()
            .map_or(crate::config::DEFAULT_MAX_PREPARED, |p| {
                p.max_prepared_statements
            });
        while let Some(old) = prepared.evict(keep.saturating_sub(1), mark) {
            frontend::write_close_statement(&old, buf);
            queue.push_back(Expect::Evict);
        }
        prepared.insert(stmt.server_name.clone());
        self.parsed_now.push_back(stmt.server_name.clone());
        Message::new(b'P', stmt.parse_body.clone()).write_to(buf);
        true
    }
}

pub(super) struct BatchPlan {
    read_only: bool,
    any_statement: bool,
    hint: Option<crate::sql::RouteHint>,
    user: Option<String>,
    /// What the batch's statements may do to the transaction.
    effect: crate::sql::TxnEffect,
    /// Session state the batch's statements may leave on the server.
    session: Option<crate::sql::SessionState>,
    /// Custom settings the batch's statements name.
    setting_names: Option<SettingNames>,
    /// A statement drops every prepared statement (`DISCARD ALL`, `DEALLOCATE ALL`).
    forgets_prepared: bool,
    /// The classifications of the statements the batch executes (its Binds), in order.
    executed: Vec<std::sync::Arc<crate::sql::Classification>>,
}

impl BatchPlan {
    /// Adds a statement the batch runs (or describes) to the plan; its classification.
    fn note(&mut self, sql: &str, app: &crate::app::App) -> Arc<crate::sql::Classification> {
        let class = app.classifier.classify(sql);
        self.session = self.session.or(class.session);
        self.setting_names = match (self.setting_names.take(), &class.setting_names) {
            (Some(SettingNames::Dynamic), _) | (_, Some(SettingNames::Dynamic)) => {
                Some(SettingNames::Dynamic)
            }
            (Some(SettingNames::Names(mut a)), Some(SettingNames::Names(b))) => {
                a.extend(b.iter().cloned());
                Some(SettingNames::Names(a))
            }
            (a, b) => a.or_else(|| b.clone()),
        };
        self.forgets_prepared |= super::session::forgets_prepared(sql);
        self.effect = self.effect.and(class.effect);
        self.read_only &= class.read_only;
        self.hint = self.hint.or(class.route);
        if self.user.is_none() {
            self.user = class.user.clone();
        }
        class
    }
}

fn protocol(e: ProtocolError) -> ClientError {
    ClientError::protocol(e.to_string())
}

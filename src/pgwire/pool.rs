//! Per-endpoint pools of wire-protocol server connections. A connection is lent for one
//! transaction (or autocommit statement, or a pinned session) and comes back only when it is idle
//! at ReadyForQuery; anything else is closed instead of being reused. Pools start empty, grow on
//! demand, and give connections back to the server: idle longer than `postgres.idle_timeout` or
//! older than `postgres.max_lifetime`, a connection is closed; one the server closed while it sat
//! idle is noticed before it is lent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::backend::{ConnectError, ServerConn};
use crate::topology::Snapshot;

pub struct EndpointPool {
    pg: tokio_postgres::Config,
    /// `pooler = "transaction"`: every transaction may run on another backend.
    behind_pooler: bool,
    idle: Mutex<Vec<ServerConn>>,
    slots: Arc<Semaphore>,
    limits: Limits,
}

/// The parameters a server reported at startup, shared by every login that reports them.
pub type ServerParams = Arc<[(String, String)]>;

/// How long a server connection may sit idle, and live.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
}

impl Limits {
    fn expired(&self, conn: &ServerConn, now: Instant) -> bool {
        now.duration_since(conn.idle_since) >= self.idle_timeout
            || now.duration_since(conn.created) >= self.max_lifetime
    }
}

pub struct WirePools {
    pools: Vec<Arc<EndpointPool>>,
    /// Some endpoint is a transaction-mode pooler (checked on every unnamed Parse).
    any_behind_pooler: bool,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    /// Parameter statuses of the first server connection made, reported to clients at startup.
    params: Mutex<Option<ServerParams>>,
    /// Client sessions' cancel keys and the servers they currently run on.
    pub cancel: Arc<super::cancel::CancelRegistry>,
    tls: crate::db::tls::ServerTls,
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("timed out after {0:?} waiting for a server connection")]
    Timeout(Duration),
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// A lent connection. Give it back with [`Lease::release`]; dropping it closes the connection.
pub struct Lease {
    pub conn: ServerConn,
    pub endpoint: usize,
    /// The endpoint is a transaction-mode pooler: nothing may be left on the server past the
    /// transaction (no named statements, settings only `set_config(.., true)`).
    pub behind_pooler: bool,
    pool: Arc<EndpointPool>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// Returns an idle (ReadyForQuery 'I') connection without session state to its pool; one
    /// past its lifetime is closed instead.
    pub fn release(self) {
        let Lease {
            mut conn,
            pool,
            _permit,
            ..
        } = self;
        let now = Instant::now();
        if now.duration_since(conn.created) >= pool.limits.max_lifetime {
            return;
        }
        conn.idle_since = now;
        pool.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }

    /// Returns a connection that may hold session state (a pinned session ended while idle) to
    /// its pool after `DISCARD ALL` cleared that state, in the background; if the reset fails or
    /// takes too long the connection is closed. The pool slot stays taken until then.
    pub fn reset_and_release(mut self) {
        tokio::spawn(async move {
            let reset = tokio::time::timeout(RESET_TIMEOUT, self.conn.run_own("DISCARD ALL")).await;
            if let Ok(Ok((Ok(_), b'I'))) = reset {
                self.conn.prepared.clear();
                self.conn.settings.clear();
                self.release();
            }
        });
    }
}

/// How long a `DISCARD ALL` may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(2);

impl EndpointPool {
    /// The most recently used idle connection that is still good: not past its limits, and not
    /// closed by the server while it sat idle (a terminated backend, a restarted server).
    fn take_idle(&self) -> Option<ServerConn> {
        let now = Instant::now();
        loop {
            let mut conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if self.limits.expired(&conn, now) || !conn.still_idle() {
                continue;
            }
            return Some(conn);
        }
    }
}

impl WirePools {
    /// Whether any endpoint is reached through a transaction-mode pooler (sessions then keep
    /// what they need to parse their statements again per batch).
    pub fn any_behind_pooler(&self) -> bool {
        self.any_behind_pooler
    }

    pub fn new(
        snapshot: &Snapshot,
        size: usize,
        acquire_timeout: Duration,
        connect_timeout: Duration,
        cancel: Arc<super::cancel::CancelRegistry>,
        tls: crate::db::tls::ServerTls,
        limits: Limits,
    ) -> WirePools {
        let pools: Vec<Arc<EndpointPool>> = snapshot
            .endpoints
            .iter()
            .map(|e| {
                Arc::new(EndpointPool {
                    pg: e.info.pg.clone(),
                    behind_pooler: e.info.pooler.is_transaction(),
                    idle: Mutex::new(Vec::new()),
                    slots: Arc::new(Semaphore::new(size)),
                    limits,
                })
            })
            .collect();
        WirePools {
            any_behind_pooler: pools.iter().any(|p| p.behind_pooler),
            pools,
            acquire_timeout,
            connect_timeout,
            params: Mutex::new(None),
            cancel,
            tls,
        }
    }

    pub async fn acquire(&self, endpoint: usize) -> Result<Lease, AcquireError> {
        let pool = self.pools[endpoint].clone();
        // Fast path without a timer; wait (bounded) only when the pool is full.
        let permit = match pool.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                tokio::time::timeout(self.acquire_timeout, pool.slots.clone().acquire_owned())
                    .await
                    .map_err(|_| AcquireError::Timeout(self.acquire_timeout))?
                    .expect("semaphore is never closed")
            }
        };
        let idle = pool.take_idle();
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = ServerConn::connect(&pool.pg, self.connect_timeout, &self.tls).await?;
                let mut params = self.params.lock().unwrap_or_else(|p| p.into_inner());
                if params.is_none() {
                    *params = Some(c.params.clone().into());
                }
                c
            }
        };
        Ok(Lease {
            conn,
            endpoint,
            behind_pooler: pool.behind_pooler,
            pool,
            _permit: permit,
        })
    }

    /// Closes the idle connections past their idle timeout or lifetime, in every pool.
    pub fn reap(&self) {
        for pool in &self.pools {
            let now = Instant::now();
            pool.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|c| !pool.limits.expired(c, now));
        }
    }

    /// Idle connections in every pool (for tests and `/v1/topology`-style reporting).
    pub fn idle_count(&self) -> usize {
        self.pools
            .iter()
            .map(|p| p.idle.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// The server parameters to report to a new client, connecting to `endpoint` if no server
    /// connection has been made yet.
    pub async fn startup_params(&self, endpoint: usize) -> Result<ServerParams, AcquireError> {
        if let Some(p) = self
            .params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(p);
        }
        let lease = self.acquire(endpoint).await?;
        let params: ServerParams = lease.conn.params.clone().into();
        lease.release();
        Ok(params)
    }
}

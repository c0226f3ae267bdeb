//! Per-endpoint pools of wire-protocol server connections. A connection is lent for one
//! transaction (or autocommit statement, or a pinned session) and comes back only when it is idle
//! at ReadyForQuery; anything else is closed instead of being reused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::backend::{ConnectError, ServerConn};
use crate::topology::Snapshot;

pub struct EndpointPool {
    pg: tokio_postgres::Config,
    idle: Mutex<Vec<ServerConn>>,
    slots: Arc<Semaphore>,
}

pub struct WirePools {
    pools: Vec<Arc<EndpointPool>>,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    /// Parameter statuses of the first server connection made, reported to clients at startup.
    params: Mutex<Option<Vec<(String, String)>>>,
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
    pool: Arc<EndpointPool>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// Returns an idle (ReadyForQuery 'I') connection to its pool.
    pub fn release(self) {
        let Lease {
            conn,
            pool,
            _permit,
            ..
        } = self;
        pool.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }
}

impl WirePools {
    pub fn new(
        snapshot: &Snapshot,
        size: usize,
        acquire_timeout: Duration,
        connect_timeout: Duration,
        cancel: Arc<super::cancel::CancelRegistry>,
        tls: crate::db::tls::ServerTls,
    ) -> WirePools {
        let pools = snapshot
            .endpoints
            .iter()
            .map(|e| {
                Arc::new(EndpointPool {
                    pg: e.info.pg.clone(),
                    idle: Mutex::new(Vec::new()),
                    slots: Arc::new(Semaphore::new(size)),
                })
            })
            .collect();
        WirePools {
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
        let idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = ServerConn::connect(&pool.pg, self.connect_timeout, &self.tls).await?;
                let mut params = self.params.lock().unwrap_or_else(|p| p.into_inner());
                if params.is_none() {
                    *params = Some(c.params.clone());
                }
                c
            }
        };
        Ok(Lease {
            conn,
            endpoint,
            pool,
            _permit: permit,
        })
    }

    /// The server parameters to report to a new client, connecting to `endpoint` if no server
    /// connection has been made yet.
    pub async fn startup_params(
        &self,
        endpoint: usize,
    ) -> Result<Vec<(String, String)>, AcquireError> {
        if let Some(p) = self
            .params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(p);
        }
        let lease = self.acquire(endpoint).await?;
        let params = lease.conn.params.clone();
        lease.release();
        Ok(params)
    }
}

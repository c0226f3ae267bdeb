//! `homeport serve`: builds the first config generation (topology probes, pools, directory),
//! starts the HTTP and wire front ends, the ops listener and the reload watcher, and runs until
//! SIGTERM/SIGINT, then drains: `/readyz` turns false, the data and wire listeners close,
//! in-flight requests and wire transactions finish within `shutdown_grace`. The ops listener
//! stays open until the process exits, so probes and the last scrape still get answers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::config::Config;
use crate::reload::{self, Current, Generation};
use crate::{http, metrics, pgwire};

/// Why the sidecar could not start; printed as one line by `main`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("{0}")]
    Random(#[from] crate::random::RandomError),
}

/// Runs the sidecar. With `config_path`, SIGHUP or a change of that file reloads the config
/// (see [`crate::reload`]).
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), StartError> {
    for note in crate::auth::notes(&config.http.auth) {
        tracing::warn!("{note}");
    }
    let handle = metrics::install();
    let listen = config.http.listen;
    let grace = config.shutdown_grace;
    let listener = bind(listen).await?;
    let ops_listener = bind(config.ops.listen).await?;
    let ops_listen = ops_listener.local_addr().unwrap_or(config.ops.listen);
    let pg = config.pg.clone();
    let cancel = Arc::new(pgwire::CancelRegistry::default());
    let current: Current = Arc::new(ArcSwap::new(Generation::start(
        config,
        handle.clone(),
        &cancel,
    )));
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let wire = match pg {
        Some(pg) => {
            let wire_listener = bind(pg.listen).await?;
            let auth = Arc::new(pgwire::ClientAuth::from_config(&pg.auth)?);
            let tls = match &pg.tls {
                Some(t) => Some(Arc::new(pgwire::tls::load(t).map_err(StartError::Tls)?)),
                None => None,
            };
            Some(tokio::spawn(pgwire::serve(
                current.clone(),
                auth,
                tls,
                wire_listener,
                pg.max_client_conn,
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    let reloads = config_path.map(|path| {
        tokio::spawn(reload::watch(
            path,
            current.clone(),
            cancel.clone(),
            handle.clone(),
            Duration::from_secs(2),
            stop_rx.clone(),
        ))
    });
    let server = tokio::spawn(http::serve(current.clone(), listener, stop_rx));
    let (ops_stop, ops_stop_rx) = watch::channel(false);
    let ops = tokio::spawn(http::serve_ops(current.clone(), ops_listener, ops_stop_rx));
    tracing::info!(region = %current.load().app.config.region, %listen, ops = %ops_listen, "homeport serving");

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("draining");
    current.load().app.start_draining();
    let _ = stop_tx.send(true);
    if let Some(r) = reloads {
        r.abort();
    }
    // HTTP requests and wire transactions in flight finish within one shared grace period.
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, server).await.is_err() {
        tracing::warn!(
            ?grace,
            "in-flight requests did not finish within the grace period"
        );
    }
    if let Some(w) = wire {
        let abort = w.abort_handle();
        if tokio::time::timeout_at(deadline, w).await.is_err() {
            tracing::warn!(
                ?grace,
                "wire transactions still open at the end of the grace period"
            );
            abort.abort();
        }
    }
    let _ = ops_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), ops).await;
    Ok(())
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

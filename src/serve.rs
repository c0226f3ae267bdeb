//! `homeport serve`: wires config, topology probes, pools, directory and the HTTP front end
//! together, and runs until SIGTERM/SIGINT, then drains: `/readyz` turns false, the listener
//! closes, in-flight requests finish within `shutdown_grace`.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::app::App;
use crate::config::Config;
use crate::{http, metrics, pgwire, topology};

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
}

pub async fn run(config: Config) -> Result<(), StartError> {
    let handle = metrics::install();
    let listen = config.http.listen;
    let grace = config.shutdown_grace;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
    let app = Arc::new(App::new(config, handle));
    let probes = topology::probe::spawn_all(app.topology.clone(), app.config.probe.clone());
    let cleanup = crate::idempotency::store::spawn_cleanup(app.clone());
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let wire = match app.config.pg.clone() {
        Some(pg) => {
            let wire_listener =
                TcpListener::bind(pg.listen)
                    .await
                    .map_err(|source| StartError::Listen {
                        addr: pg.listen,
                        source,
                    })?;
            let pools = Arc::new(pgwire::WirePools::new(
                &app.topology.snapshot(),
                pg.pool_size,
                app.config.postgres.acquire_timeout,
                app.config.postgres.connect_timeout,
            ));
            let auth = Arc::new(pgwire::ClientAuth::from_config(&pg.auth));
            let tls = match &pg.tls {
                Some(t) => Some(Arc::new(pgwire::tls::load(t).map_err(StartError::Tls)?)),
                None => None,
            };
            Some(tokio::spawn(pgwire::serve(
                app.clone(),
                pools,
                auth,
                tls,
                wire_listener,
                pg.max_client_conn,
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    let server = tokio::spawn(http::serve(app.clone(), listener, stop_rx));
    tracing::info!(region = %app.config.region, %listen, "homeport serving");

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("draining");
    app.start_draining();
    let _ = stop_tx.send(true);
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
    for p in probes {
        p.abort();
    }
    cleanup.abort();
    Ok(())
}

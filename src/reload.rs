//! Config reload. SIGHUP, or a change of the config file, builds a new generation from the file:
//! topology and its probes, pools, directory, keys, timeouts. New HTTP requests and new wire
//! transactions use the new generation; work in flight finishes on the one it started with; no
//! client connection is closed. What belongs to the process (the region, the listeners, wire
//! authentication and TLS, the client limit) needs a restart: a file that changes any of it, or
//! does not validate, is refused with a log line and the running generation stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::{Config, PgAuth};
use crate::pgwire::{CancelRegistry, WirePools};

/// Everything built from one version of the config file.
pub struct Generation {
    pub app: Arc<App>,
    /// Server connection pools of the wire front end, when `[pg]` is configured.
    pub wire_pools: Option<Arc<WirePools>>,
    /// Probe and cleanup tasks; they end with the generation.
    tasks: Vec<JoinHandle<()>>,
}

/// The generation new work uses.
pub type Current = Arc<ArcSwap<Generation>>;

impl Generation {
    /// Starts a generation: its probes and background tasks run until it is dropped, which
    /// happens when it is no longer current and the last request or session using it ended.
    /// Cancel keys are shared by all generations, so a cancel reaches a session of any of them.
    pub fn start(
        config: Config,
        metrics: PrometheusHandle,
        cancel: &Arc<CancelRegistry>,
    ) -> Arc<Generation> {
        let app = Arc::new(App::new(config, metrics));
        let mut tasks = crate::topology::probe::spawn_all(
            app.topology.clone(),
            app.config.probe.clone(),
            app.kv.clone(),
            app.config.region.clone(),
        );
        tasks.push(crate::idempotency::store::spawn_cleanup(app.clone()));
        let wire_pools = app.config.pg.as_ref().map(|pg| {
            Arc::new(WirePools::new(
                &app.topology.snapshot(),
                pg.pool_size,
                app.config.postgres.acquire_timeout,
                app.config.postgres.connect_timeout,
                cancel.clone(),
                app.topology.tls.clone(),
                crate::pgwire::PoolLimits {
                    idle_timeout: app.config.postgres.idle_timeout,
                    max_lifetime: app.config.postgres.max_lifetime,
                },
            ))
        });
        tasks.push(spawn_reaper(app.clone(), wire_pools.clone()));
        Arc::new(Generation {
            app,
            wire_pools,
            tasks,
        })
    }
}

/// Closes idle server connections past `postgres.idle_timeout` or `max_lifetime`, in both front
/// ends' pools, a few times per idle timeout.
fn spawn_reaper(
    app: Arc<crate::app::App>,
    wire: Option<Arc<WirePools>>,
) -> tokio::task::JoinHandle<()> {
    let limits = &app.config.postgres;
    let every = (limits.idle_timeout / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(w) = &wire {
                w.reap();
            }
            app.pools.reap(
                app.config.postgres.idle_timeout,
                app.config.postgres.max_lifetime,
            );
        }
    })
}

impl Drop for Generation {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Settings a reload cannot change (they belong to the running process), by path.
pub fn fixed_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.region != new.region {
        changed.push("region");
    }
    if old.http.listen != new.http.listen {
        changed.push("http.listen");
    }
    if old.ops.listen != new.ops.listen {
        changed.push("ops.listen");
    }
    match (&old.pg, &new.pg) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            if a.listen != b.listen {
                changed.push("pg.listen");
            }
            if a.max_client_conn != b.max_client_conn {
                changed.push("pg.max_client_conn");
            }
            let same_auth = match (&a.auth, &b.auth) {
                (PgAuth::Trust, PgAuth::Trust) => true,
                (PgAuth::ScramSha256(x), PgAuth::ScramSha256(y)) => x == y,
                _ => false,
            };
            if !same_auth {
                changed.push("pg.auth");
            }
            let tls = |t: &Option<crate::config::PgTlsConfig>| {
                t.as_ref()
                    .map(|t| (t.cert_file.clone(), t.key_file.clone(), t.required))
            };
            if tls(&a.tls) != tls(&b.tls) {
                changed.push("pg.tls");
            }
        }
        _ => changed.push("pg"),
    }
    changed
}

/// Reloads on SIGHUP and when the file's modification time changes (checked every `poll`), until
/// `stop` turns true.
pub async fn watch(
    path: PathBuf,
    current: Current,
    cancel: Arc<CancelRegistry>,
    metrics: PrometheusHandle,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; reload on file change only");
        return;
    };
    let mut seen = modified(&path);
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = tokio::time::sleep(poll) => {
                let now = modified(&path);
                if now == seen {
                    continue;
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        seen = modified(&path);
        reload(&path, &current, &cancel, &metrics);
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// One reload attempt; the outcome is logged and counted.
pub fn reload(
    path: &Path,
    current: &Current,
    cancel: &Arc<CancelRegistry>,
    metrics: &PrometheusHandle,
) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "config reload refused: the file does not validate; still running the previous config");
            crate::metrics::config_reload("invalid");
            return;
        }
    };
    let fixed = fixed_changes(&current.load().app.config, &config);
    if !fixed.is_empty() {
        tracing::error!(settings = ?fixed, "config reload refused: these settings need a restart; still running the previous config");
        crate::metrics::config_reload("needs_restart");
        return;
    }
    let old = current.swap(Generation::start(config, metrics.clone(), cancel));
    if old.app.is_draining() {
        current.load().app.start_draining();
    }
    tracing::info!(
        endpoints = current.load().app.topology.snapshot().endpoints.len(),
        "config reloaded"
    );
    crate::metrics::config_reload("ok");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_and_timeouts_may_change_listeners_may_not() {
        let base = include_str!("../config/eu.toml")
            .replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "");
        let old = Config::parse(&base).unwrap();
        let moved =
            Config::parse(&base.replace("interval = \"500ms\"", "interval = \"1s\"")).unwrap();
        assert!(fixed_changes(&old, &moved).is_empty());
        let relisten = Config::parse(&base.replace("127.0.0.1:7400", "127.0.0.1:7500")).unwrap();
        assert_eq!(fixed_changes(&old, &relisten), ["http.listen"]);
        let ops = Config::parse(&base.replace("127.0.0.1:7402", "127.0.0.1:7502")).unwrap();
        assert_eq!(fixed_changes(&old, &ops), ["ops.listen"]);
    }
}

//! `homeport check`: validates the config, probes every endpoint once, prints the topology, and
//! tells the caller (a human or a CI job) whether everything needed is reachable.

use std::fmt::Write;
use std::sync::Arc;

use crate::config::Config;
use crate::topology::{Topology, probe};
use crate::types::Role;

/// Probes every endpoint once and returns the printed report and whether all were reachable.
pub async fn run(config: &Config) -> (String, bool) {
    let topology = Arc::new(Topology::from_config(config));
    let snapshot = topology.snapshot();
    let probes = snapshot.endpoints.iter().map(|e| {
        let info = e.info.clone();
        let topology = topology.clone();
        let timeout = config.probe.timeout.max(config.postgres.connect_timeout);
        async move {
            let mut client = None;
            let r = tokio::time::timeout(
                timeout,
                probe::probe_once(&info, &topology.tls, &mut client),
            )
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")));
            (info, r)
        }
    });
    let results = futures_util::future::join_all(probes).await;
    for (info, r) in &results {
        let r = r.clone();
        topology.update(info.index, |s| {
            s.health = s.health.observe(r.is_ok(), 1, 1);
            if let Ok(p) = &r {
                s.role = Some(p.role);
                s.wal_lsn = p.wal_lsn;
                s.rtt = Some(p.rtt);
            } else if let Err(e) = &r {
                s.last_error = Some(e.clone());
            }
        });
    }
    let snapshot = topology.snapshot();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "region {}: {} endpoint(s)",
        config.region,
        snapshot.endpoints.len()
    );
    out.push_str(&notes(config));
    out.push_str(&budget(config).line());
    let _ = writeln!(
        out,
        "{:<10} {:<8} {:<40} {:<9} {:>8} {:>12}  status",
        "shard", "region", "endpoint", "role", "rtt ms", "lag bytes"
    );
    let mut ok = true;
    for r in snapshot.report() {
        let expected_primary =
            matches!(r.configured, crate::topology::Configured::PrimaryCandidate);
        let status = match (&r.last_error, r.role) {
            (Some(e), _) => {
                ok = false;
                format!("UNREACHABLE: {e}")
            }
            (None, Some(Role::Replica)) if !expected_primary => "ok".into(),
            (None, Some(Role::Primary)) if expected_primary => "ok".into(),
            (None, Some(role)) => format!(
                "ok (configured as {}, probed {})",
                if expected_primary {
                    "primary candidate"
                } else {
                    "replica"
                },
                role.as_str()
            ),
            (None, None) => "unknown".into(),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<8} {:<40} {:<9} {:>8} {:>12}  {}",
            r.shard,
            r.region,
            r.endpoint,
            r.role.map(Role::as_str).unwrap_or("-"),
            r.rtt_ms
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.lag_bytes
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            status
        );
    }
    for shard in config
        .shards
        .iter()
        .map(|s| &s.name)
        .chain(std::iter::once(&config.directory.shard.name))
    {
        if snapshot.primary_of(shard).is_none() {
            ok = false;
            let _ = writeln!(out, "shard {shard}: no reachable primary");
        }
    }
    (out, ok)
}

/// The most server connections one sidecar opens to any one endpoint: what a fleet budget
/// multiplies by the number of pods (k8s/chart checks `pods × max_per_endpoint` against each
/// database's `max_connections`, see docs/fleet.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `postgres.pool_size`: the HTTP front end's pool.
    pub http_pool: usize,
    /// `pg.pool_size`: the wire front end's pool (0 without `[pg]`).
    pub wire_pool: usize,
    /// The probe's own connection (one per endpoint).
    pub probe: usize,
}

impl Budget {
    pub fn max_per_endpoint(&self) -> usize {
        self.http_pool + self.wire_pool + self.probe
    }

    fn line(&self) -> String {
        format!(
            "per-sidecar maximum: {} server connections per endpoint (HTTP pool {} + wire pool {} + probe {}); a fleet of N pods needs N x {} on every server it reaches\n",
            self.max_per_endpoint(),
            self.http_pool,
            self.wire_pool,
            self.probe,
            self.max_per_endpoint()
        )
    }
}

pub fn budget(config: &Config) -> Budget {
    Budget {
        http_pool: config.postgres.pool_size,
        wire_pool: config.pg.as_ref().map_or(0, |pg| pg.pool_size),
        probe: 1,
    }
}

/// Warnings about the configuration that do not stop it from working, one `note:` line each.
fn notes(config: &Config) -> String {
    let mut notes = crate::auth::notes(&config.http.auth);
    let endpoints: Vec<_> = config
        .shards
        .iter()
        .chain(std::iter::once(&config.directory.shard))
        .flat_map(|s| s.primaries.iter().chain(&s.replicas))
        .collect();
    if endpoints
        .iter()
        .any(|e| e.probe_pg.is_some() && !e.pooler.is_transaction())
    {
        notes.push(
            "endpoints with probe_url but without pooler = \"transaction\": if their url is a \
             pooler in transaction mode, say so, or prepared statements and settings break \
             through it (26000); see docs/fleet.md"
                .into(),
        );
    }
    if endpoints
        .iter()
        .any(|e| e.pooler.is_transaction() && e.probe_pg.is_none())
    {
        notes.push(
            "endpoints with pooler = \"transaction\" but no probe_url: their probe goes through \
             the pooler, so role, WAL position and lag are those of whichever server answers; \
             set probe_url to the server itself"
                .into(),
        );
    }
    notes.into_iter().map(|n| format!("note: {n}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_adds_both_pools_and_the_probe() {
        let base = include_str!("../config/eu.toml")
            .replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "");
        let config = Config::parse(&base).unwrap();
        let b = budget(&config);
        assert_eq!(
            b.max_per_endpoint(),
            config.postgres.pool_size + config.pg.as_ref().map_or(0, |p| p.pool_size) + 1
        );
        assert!(b.line().contains(&format!(
            "{} server connections per endpoint",
            b.max_per_endpoint()
        )));
    }

    #[test]
    fn check_warns_about_endpoints_behind_a_pooler() {
        let base = include_str!("../config/eu.toml")
            .replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "");
        assert!(!notes(&Config::parse(&base).unwrap()).contains("probe_url"));
        let pooled = base.replace(
            "primary = [\"postgresql://pg-eu-primary.eu.internal:5432\"]",
            "primary = [{ url = \"postgresql://pgbouncer:6432\", region = \"eu\", probe_url = \"postgresql://pg-eu-primary.eu.internal:5432\" }]",
        );
        let out = notes(&Config::parse(&pooled).unwrap());
        assert!(
            out.contains("note: endpoints with probe_url but without pooler"),
            "{out}"
        );
        let declared = pooled.replace(
            "probe_url = \"postgresql://pg-eu-primary.eu.internal:5432\" }]",
            "probe_url = \"postgresql://pg-eu-primary.eu.internal:5432\", pooler = \"transaction\" }]",
        );
        assert!(!notes(&Config::parse(&declared).unwrap()).contains("pooler"));
        let unprobed = declared.replace(
            "probe_url = \"postgresql://pg-eu-primary.eu.internal:5432\", ",
            "",
        );
        let out = notes(&Config::parse(&unprobed).unwrap());
        assert!(out.contains("but no probe_url"), "{out}");
    }

    #[test]
    fn check_says_when_the_jwt_audience_is_not_checked() {
        let secret = std::env::temp_dir().join(format!("homeport-check-{}", std::process::id()));
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        let base = include_str!("../config/eu.toml")
            .replace("password_env = \"HOMEPORT_PG_PASSWORD\"\n", "")
            .replace("auth = \"trusted-header\"", "auth = \"jwt\"");
        let jwt = format!(
            "\n[jwt]\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n",
            secret.display()
        );
        let config = Config::parse(&(base.clone() + &jwt)).unwrap();
        let out = notes(&config);
        assert!(out.contains("note: jwt.audience is not set"), "{out}");
        let config = Config::parse(&(base + &jwt + "audience = \"homeport\"\n")).unwrap();
        assert!(!notes(&config).contains("jwt.audience"));
        let _ = std::fs::remove_file(secret);
    }
}

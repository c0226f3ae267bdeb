//! The sidecar's shared state and the data path every front end uses: who is the user, where is
//! their home, which copies may serve the request (from `routing`), and trying those copies in
//! order on pooled connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::Object;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::db::{DbError, Pools};
use crate::directory::Directory;
use crate::metrics::{self, CrossRegionMetrics, RequestMetrics};
use crate::residency::Decision;
use crate::routing::{self, Candidate, RouteError, Target};
use crate::sql::ClassifyCache;
use crate::topology::Topology;
use crate::topology::readiness::{Readiness, readiness};
use crate::types::{Intent, RegionName, ShardId, UserId};

pub struct App {
    pub config: Config,
    pub topology: Arc<Topology>,
    pub pools: Arc<Pools>,
    pub directory: Directory,
    /// The regional Redis, when configured.
    pub kv: Option<Arc<crate::kv::Kv>>,
    /// Which primaries have homeport's idempotency schema, as far as this sidecar knows.
    pub idempotency_schema: crate::idempotency::store::Schema,
    /// Connections with the HTTP claim and record prepared (`store::PREPARE_SQL`).
    pub idempotency_prepared: crate::db::statement::SqlPrepared,
    pub metrics: PrometheusHandle,
    pub http_metrics: RequestMetrics,
    pub wire_metrics: RequestMetrics,
    pub classifier: ClassifyCache,
    /// Result bytes all HTTP requests together may hold (`http.result_budget`).
    pub http_budget: crate::http::Budget,
    cross_region: CrossRegionMetrics,
    draining: AtomicBool,
}

/// Where a request ran: the endpoint's region and whether it was a primary or a replica.
#[derive(Debug, Clone)]
pub struct Served {
    /// The endpoint's index in the topology snapshot.
    pub index: usize,
    pub region: RegionName,
    pub target: Target,
    pub endpoint: String,
}

impl Served {
    pub fn header_value(&self) -> String {
        format!("{}/{}", self.region, self.target.role_str())
    }
}

/// Why a request could not be served by any candidate.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Db(#[from] DbError),
    /// The request's consistency token cannot be honoured here (another database cluster).
    #[error("{0}")]
    Token(String),
}

impl App {
    pub fn new(config: Config, metrics: PrometheusHandle) -> App {
        let topology = Arc::new(Topology::from_config(&config));
        let pools = Arc::new(Pools::new(
            &topology.snapshot(),
            &config.postgres,
            &topology.tls,
        ));
        let kv = config
            .redis
            .as_ref()
            .map(|r| Arc::new(crate::kv::Kv::new(r)));
        let idempotency_schema =
            crate::idempotency::store::Schema::new(topology.snapshot().endpoints.len());
        let directory = Directory::new(&config, topology.clone(), pools.clone(), kv.clone());
        let regions = config.regions().into_iter().map(|r| r.to_string());
        let cross_region = CrossRegionMetrics::new(config.region.as_str(), regions);
        let classifier =
            ClassifyCache::with_stateless(10_000, config.postgres.stateless_functions.clone());
        let http_budget = crate::http::Budget::new(config.http.result_budget);
        for (shard, r) in &config.residency.shards {
            metrics::residency_register(shard.as_str(), r.policy.as_str());
        }
        App {
            config,
            topology,
            pools,
            directory,
            kv,
            idempotency_schema,
            idempotency_prepared: Default::default(),
            metrics,
            http_metrics: RequestMetrics::new("http"),
            wire_metrics: RequestMetrics::new("pg"),
            classifier,
            http_budget,
            cross_region,
            draining: AtomicBool::new(false),
        }
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// What `/readyz` answers; the rule and its reasons are in [`crate::topology::readiness`].
    pub fn readiness(&self) -> Readiness {
        let shards: Vec<_> = self.config.shards.iter().map(|s| s.name.clone()).collect();
        readiness(
            &self.topology.snapshot(),
            &self.config.region,
            &shards,
            self.draining.load(Ordering::SeqCst),
        )
    }

    pub fn is_ready(&self) -> bool {
        self.readiness().is_ready()
    }

    /// Candidates for a request of `intent` on `shard`, nearest first.
    pub fn candidates(
        &self,
        shard: &ShardId,
        intent: Intent,
    ) -> Result<Vec<Candidate>, RouteError> {
        let snapshot = self.topology.snapshot();
        match intent {
            Intent::Write => routing::write_candidate(&snapshot, shard).map(|c| vec![c]),
            Intent::Read => {
                let routing = &self.config.routing;
                let nearest = routing::read_candidates(
                    &snapshot,
                    shard,
                    &self.config.region,
                    routing.primary_reads,
                )?;
                Ok(routing::demote_slow(
                    &snapshot,
                    nearest,
                    routing.slow_rtt,
                    routing.max_lag,
                ))
            }
        }
    }

    /// What this sidecar does with a request for a user of `shard` under the shard's residency,
    /// counted in `homeport_residency_requests_total` when the shard is resident.
    pub fn residency(&self, shard: &ShardId) -> Decision {
        let residency = &self.config.residency;
        let decision = residency.decide(shard, &self.config.region);
        if let (Some(outcome), Some(policy)) = (decision.outcome(), residency.policy_of(shard)) {
            metrics::residency_request(shard.as_str(), policy.as_str(), outcome);
        }
        decision
    }

    /// The regional Redis for data of `shard`: none when this region is outside the shard's
    /// residency, so no response of a resident user is ever cached here.
    pub fn kv_for(&self, shard: &ShardId) -> Option<&crate::kv::Kv> {
        if self
            .config
            .residency
            .stores_here(shard, &self.config.region)
        {
            self.kv.as_deref()
        } else {
            None
        }
    }

    /// Where a request on candidate `c` runs, counting it if it crosses regions.
    pub fn served_for(&self, c: &Candidate) -> Served {
        self.note_cross_region(c.index);
        let snapshot = self.topology.snapshot();
        Served {
            index: c.index,
            region: snapshot.get(c.index).info.region.clone(),
            target: c.target,
            endpoint: self.pools.endpoint_name(c.index).to_string(),
        }
    }

    /// Counts what a token-carrying read's plan reports: one fallback per read (if it left its
    /// nearest copy) and, when it ran, how long it took to find a copy.
    pub fn ryw_report(&self, report: crate::consistency::plan::Report) {
        if let Some((reason, target)) = report.fallback {
            metrics::ryw_fallback(reason, target);
        }
        if let Some(waited) = report.waited {
            metrics::ryw_wait(waited);
        }
    }

    /// Counts a request that runs on endpoint `index` if that endpoint is in another region.
    pub fn note_cross_region(&self, index: usize) {
        let snapshot = self.topology.snapshot();
        let region = &snapshot.get(index).info.region;
        if *region != self.config.region {
            self.cross_region.record(region.as_str());
        }
    }

    /// Whether endpoint `index` is located in this sidecar's region.
    pub fn in_this_region(&self, index: usize) -> bool {
        self.topology.snapshot().get(index).info.region == self.config.region
    }

    /// Runs `work` on endpoint `index` unless the probes declare that endpoint down first; then
    /// the work is abandoned (its connection is dropped with it) and the request hears that the
    /// server became unreachable, with the outcome of a write unknown.
    pub async fn while_up<T, E: From<DbError>>(
        &self,
        index: usize,
        work: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let poll = self
            .config
            .probe
            .interval
            .min(std::time::Duration::from_millis(250));
        tokio::select! {
            biased;
            r = work => r,
            () = self.topology.down(index, poll) => Err(DbError::Lost {
                endpoint: self.pools.endpoint_name(index).to_string(),
                reason: "the probes found the server unreachable while the request was waiting for it".into(),
            }
            .into()),
        }
    }

    /// Starts trying `candidates` in order; see [`Attempts`].
    /// `postgres.identity_setting`, when configured.
    pub fn identity_setting(&self) -> Option<&str> {
        self.config.postgres.identity_setting.as_deref()
    }

    /// A connection to endpoint `index` for `user`'s statements. With `postgres.identity_setting`
    /// the connection gets that setting equal to the user first (one round trip, before anything
    /// of the request runs), so row-level security sees who asks; a connection that cannot be
    /// given it is closed rather than pooled, and nothing of the request runs on it.
    pub async fn connect(&self, index: usize, user: &UserId) -> Result<Object, DbError> {
        if let Some(name) = self.identity_setting()
            && self.pools.unnamed(index)
        {
            // Set for the server session, it would reach the pooler's next client, and the
            // request's statements may run on another backend.
            return Err(DbError::Unsupported(format!(
                "{name} (postgres.identity_setting) is not applied over HTTP behind a transaction-mode pooler (pooler = \"transaction\") yet; the wire endpoint applies it"
            )));
        }
        let client = self.pools.get(index).await?;
        let Some(name) = self.identity_setting() else {
            return Ok(client);
        };
        let set = async {
            let stmt = client.prepare_cached(SET_IDENTITY_SQL).await?;
            client.execute(&stmt, &[&name, &user.as_str()]).await
        };
        match set.await {
            Ok(_) => Ok(client),
            Err(e) => {
                drop(Object::take(client));
                Err(DbError::Unavailable {
                    endpoint: self.pools.endpoint_name(index).to_string(),
                    reason: format!(
                        "cannot set {name} (postgres.identity_setting): {}",
                        crate::db::describe(&e)
                    ),
                })
            }
        }
    }

    pub fn attempts<'a>(
        &'a self,
        candidates: Vec<Candidate>,
        intent: Intent,
        user: &'a UserId,
    ) -> Attempts<'a> {
        Attempts {
            app: self,
            user,
            candidates: candidates.into_iter(),
            intent,
            last: None,
        }
    }
}

/// Gives the identity setting its value for the rest of the server session; every HTTP request
/// sets it again on the connection it borrows.
const SET_IDENTITY_SQL: &str = "SELECT set_config($1, $2, false)";

/// Tries candidates in order. A read moves on to the next copy when a copy is unavailable or its
/// connection breaks (a read is safe to repeat); a write never does: it has exactly one
/// candidate, and a connection that breaks mid-write is reported, not retried, because the write
/// may have committed.
///
/// ```text
/// let mut attempts = app.attempts(candidates, intent, user);
/// loop {
///     let (client, served) = attempts.next().await?;
///     match work(&client).await {
///         Ok(v) => break (v, served),
///         Err(e) => attempts.failed(e)?,
///     }
/// }
/// ```
pub struct Attempts<'a> {
    app: &'a App,
    user: &'a UserId,
    candidates: std::vec::IntoIter<Candidate>,
    intent: Intent,
    last: Option<DbError>,
}

impl Attempts<'_> {
    /// A connection to the next candidate that has one to give.
    pub async fn next(&mut self) -> Result<(Object, Served), ServeError> {
        let app = self.app;
        for c in self.candidates.by_ref() {
            let client = match app.connect(c.index, self.user).await {
                Ok(client) => client,
                Err(e) => {
                    self.last = Some(e);
                    continue;
                }
            };
            let snapshot = app.topology.snapshot();
            let region = snapshot.get(c.index).info.region.clone();
            if region != app.config.region {
                app.cross_region.record(region.as_str());
            }
            let endpoint = app.pools.endpoint_name(c.index).to_string();
            return Ok((
                client,
                Served {
                    index: c.index,
                    region,
                    target: c.target,
                    endpoint,
                },
            ));
        }
        Err(match self.last.take() {
            Some(e) => e.into(),
            None => ServeError::Route(RouteError::NoCopy(ShardId::parse("none").expect("valid"))),
        })
    }

    /// Records a failure: `Ok` means the next candidate may be tried, `Err` is final.
    pub fn failed(&mut self, e: DbError) -> Result<(), ServeError> {
        match e {
            DbError::Unavailable { .. } | DbError::Lost { .. } if self.intent == Intent::Read => {
                self.last = Some(e);
                Ok(())
            }
            e => Err(e.into()),
        }
    }
}

//! `homeport dev`: a complete multi-region sandbox on one machine. For each region a PostgreSQL
//! primary (its shard), a streaming replica of every other region's primary, Redis when
//! installed, and a real `homeport serve` sidecar with a generated config. The first region's
//! cluster also holds the directory database, so its replicas carry the directory to every
//! region. With `--resident eu` the eu shard has no replica outside eu and the directory gets a
//! cluster of its own (see [`directory`]). Tests use the same [`Sandbox`] through the library.
//!
//! With a link delay, each sidecar reaches the servers of other regions through a [`link::Link`]
//! that adds that delay each way and can be cut, like a cross-region network.
//!
//! Everything listens on 127.0.0.1. Dropping the sandbox stops every process it started.

mod directory;
pub mod link;
mod pooler;
pub mod ports;
mod postgres;
mod sidecar;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::residency::Policy;
use crate::types::{RegionName, ShardId};
pub use directory::DirectoryInfo;
pub use ports::pick_ports;
pub use postgres::{PgTools, is_root};
pub use sidecar::Managed;
use sidecar::{ShardPlan, SidecarPlan};

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{0}")]
    Setup(String),
    #[error("invalid argument: {0}")]
    Argument(String),
}

/// Command-line arguments of `homeport dev`.
#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Where data, configs and logs go (default: a directory under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Region names, comma separated; region k serves HTTP on base+10k, PostgreSQL wire on
    /// base+10k+1, and the ops endpoints (/healthz, /readyz, /metrics) on base+10k+2.
    #[arg(long, default_value = "eu,us", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// recovery_min_apply_delay of every replica, e.g. 500ms.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub replica_delay: Duration,
    /// One-way delay between a sidecar and the servers of other regions, e.g. 25ms (0: direct).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub link_delay: Duration,
    /// SQL file applied to every shard primary (default: a small demo schema).
    #[arg(long)]
    pub schema: Option<PathBuf>,
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// A PgBouncer (transaction mode) in front of every server: the sidecars' data path goes
    /// through it, their probes to the server itself (`probe_url`). See docs/fleet.md.
    #[arg(long)]
    pub upstream_pooler: bool,
    /// Shards resident in their own region (repeatable or comma separated): no replica of them
    /// elsewhere, and the directory in a cluster of its own.
    #[arg(long, value_delimiter = ',')]
    pub resident: Vec<String>,
    /// What sidecars outside a resident shard's region do with its users' requests.
    #[arg(long, value_parser = ["forward", "redirect", "deny"])]
    pub residency_policy: Option<String>,
    /// Shards (cells) per region, each with its own primary and a replica in every other
    /// region; with 2 or more they are named <region>-1, <region>-2, ...
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub shards_per_region: u16,
}

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub dir: PathBuf,
    pub regions: Vec<RegionName>,
    pub replica_delay: Duration,
    /// One-way delay of the cross-region links; `None` connects sidecars to every server directly.
    pub link_delay: Option<Duration>,
    pub schema: Option<PathBuf>,
    /// Fixed sidecar ports from here; `None` picks free ports (for parallel tests).
    pub base_port: Option<u16>,
    /// The `homeport` binary the sidecars run.
    pub homeport_exe: PathBuf,
    /// Start Redis when `redis-server` is installed.
    pub redis: bool,
    /// Remove `dir` when the sandbox stops.
    pub remove_dir: bool,
    /// A PgBouncer in front of every server (`homeport dev --upstream-pooler`).
    pub upstream_pooler: bool,
    /// Shards resident in their own region.
    pub resident: Vec<RegionName>,
    /// `[residency] policy` of the sidecars (`None`: homeport's default, forward).
    pub residency_policy: Option<Policy>,
    /// Shards (cells) per region: 1 names each after its region, more `<region>-1`, ...
    pub shards_per_region: usize,
}

impl SandboxOptions {
    /// Options for a test: two or more regions, free ports, a fresh temporary directory.
    pub fn for_test(regions: &[&str], homeport_exe: impl Into<PathBuf>) -> SandboxOptions {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        SandboxOptions {
            dir: std::env::temp_dir().join(format!("homeport-test-{}-{n}", std::process::id())),
            regions: regions
                .iter()
                .map(|r| RegionName::parse(r).expect("valid test region"))
                .collect(),
            replica_delay: Duration::ZERO,
            link_delay: None,
            schema: None,
            base_port: None,
            homeport_exe: homeport_exe.into(),
            redis: true,
            remove_dir: true,
            upstream_pooler: false,
            resident: Vec::new(),
            residency_policy: None,
            shards_per_region: 1,
        }
    }
}

/// One shard (cell) of a running sandbox.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    pub name: ShardId,
    /// Where its primary is located.
    pub region: RegionName,
    pub primary_port: u16,
    /// Its replicas, by the region they are located in.
    pub replica_ports: BTreeMap<RegionName, u16>,
}

/// The shards of `regions`, in order: one per region named after it, or `per_region` named
/// `<region>-1`, `<region>-2`, ...
pub fn shard_names(regions: &[RegionName], per_region: usize) -> Vec<(ShardId, RegionName)> {
    regions
        .iter()
        .flat_map(|r| {
            (1..=per_region.max(1)).map(move |j| {
                let name = if per_region <= 1 {
                    r.to_string()
                } else {
                    format!("{r}-{j}")
                };
                (
                    ShardId::parse(&name).expect("built from a region name"),
                    r.clone(),
                )
            })
        })
        .collect()
}

/// One region of a running sandbox.
#[derive(Debug, Clone)]
pub struct RegionInfo {
    pub name: RegionName,
    pub http_port: u16,
    pub pg_port: u16,
    /// The ops listener: `/healthz`, `/readyz`, `/metrics`.
    pub ops_port: u16,
    /// Port of this region's (first) shard's primary.
    pub primary_port: u16,
    /// Replicas of *this region's (first) shard*, by the region they are located in.
    pub replica_ports: BTreeMap<RegionName, u16>,
    pub redis_port: Option<u16>,
    pub config_path: PathBuf,
}

impl RegionInfo {
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn ops_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ops_port)
    }
}

/// A running sandbox. Dropping it stops everything.
pub struct Sandbox {
    pub dir: PathBuf,
    pub regions: Vec<RegionInfo>,
    /// Every shard; a region's first shard is also described by its `RegionInfo`.
    pub shards: Vec<ShardInfo>,
    /// The directory's servers (a cluster of its own when a shard is resident).
    pub directory: Option<DirectoryInfo>,
    pg: PgTools,
    /// Data directories, replicas before primaries so shutdown is orderly.
    servers: Vec<PathBuf>,
    sidecars: Vec<Option<Managed>>,
    redis: Vec<Managed>,
    /// With `upstream_pooler`: a PgBouncer per server, and server port -> PgBouncer port.
    poolers: Vec<Managed>,
    pub pooler_ports: BTreeMap<u16, u16>,
    /// Cross-region links: (from region, server port) -> link, when a link delay is set.
    links: Vec<(RegionName, u16, link::Link)>,
    link_runtime: Option<link::Links>,
    options: SandboxOptions,
}

/// The app database and role every shard primary gets.
pub const APP_DB: &str = "app";
pub const DIRECTORY_DB: &str = "homeport_directory";

pub fn pg_url(port: u16, db: &str) -> String {
    format!("postgresql://app@127.0.0.1:{port}/{db}")
}

/// Superuser URL of a sandbox server, for tests that pause replay or inspect servers.
pub fn superuser_url(port: u16, db: &str) -> String {
    format!("postgresql://postgres@127.0.0.1:{port}/{db}")
}

impl Sandbox {
    /// Starts the whole sandbox; blocks until every sidecar is ready.
    pub fn start(options: SandboxOptions) -> Result<Sandbox, DevError> {
        if options.regions.is_empty() {
            return Err(DevError::Argument("at least one region is required".into()));
        }
        let mut unique = options.regions.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != options.regions.len() {
            return Err(DevError::Argument("region names must be unique".into()));
        }
        if let Some(r) = options.resident.iter().find(|r| !unique.contains(r)) {
            return Err(DevError::Argument(format!(
                "--resident {r}: not one of the regions ({})",
                unique
                    .iter()
                    .map(RegionName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let pg = PgTools::find()?;
        let dir = options.dir.clone();
        refuse_if_in_use(&dir)?;
        clean_previous(&pg, &dir);
        let pg_dir = dir.join("pg");
        std::fs::create_dir_all(&pg_dir)
            .map_err(|e| DevError::Setup(format!("{}: {e}", pg_dir.display())))?;
        set_mode(&dir, 0o755)?;
        pg.hand_over(&pg_dir)?;
        if pg.runs_as_postgres() {
            let ok = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--", "test", "-w"])
                .arg(&pg_dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return Err(DevError::Setup(format!(
                    "running as root: the postgres user cannot write {}; choose a --dir it can reach (e.g. under /tmp)",
                    pg_dir.display()
                )));
            }
        }
        let mut sandbox = Sandbox {
            dir: dir.clone(),
            regions: Vec::new(),
            shards: Vec::new(),
            directory: None,
            pg,
            servers: Vec::new(),
            sidecars: Vec::new(),
            redis: Vec::new(),
            poolers: Vec::new(),
            pooler_ports: BTreeMap::new(),
            links: Vec::new(),
            link_runtime: None,
            options,
        };
        let _ = std::fs::write(dir.join(PID_FILE), std::process::id().to_string());
        sandbox.start_databases()?;
        sandbox.start_sidecars()?;
        sandbox.write_endpoints()?;
        Ok(sandbox)
    }

    fn start_databases(&mut self) -> Result<(), DevError> {
        let pg = self.pg.clone();
        let pg_dir = self.dir.join("pg");
        let regions = self.options.regions.clone();
        let shards = shard_names(&regions, self.options.shards_per_region);
        let ports = pick_ports(shards.len() * regions.len())?;
        let primary_ports: Vec<u16> = ports[..shards.len()].to_vec();
        let first = regions[0].clone();
        let schema = self.options.schema.clone();
        // A resident shard's cluster must not carry the directory to other regions.
        let own_directory = !self.options.resident.is_empty();
        let directory_ports = pick_ports(regions.len())?;

        // Primaries, in parallel: initdb, configure, start, roles, databases, schema.
        let results: Vec<Result<(), DevError>> = std::thread::scope(|s| {
            let handles: Vec<_> = shards
                .iter()
                .zip(&primary_ports)
                .enumerate()
                .map(|(i, ((shard, _), &port))| {
                    let (pg, pg_dir, schema) = (&pg, &pg_dir, &schema);
                    let with_directory = i == 0 && !own_directory;
                    s.spawn(move || {
                        setup_primary(pg, pg_dir, shard, port, with_directory, schema.as_deref())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(DevError::Setup("setup thread panicked".into())))
                })
                .collect()
        });
        for (shard, _) in &shards {
            self.servers.push(pg_dir.join(format!("{shard}-primary")));
        }
        results.into_iter().collect::<Result<Vec<_>, _>>()?;
        if own_directory {
            self.servers.push(pg_dir.join("directory-primary"));
            directory::setup_cluster(&pg, &pg_dir, directory_ports[0])?;
        }

        // Replicas: one of every shard in every other region, except of resident shards; and of
        // the directory's own cluster, when it has one.
        let mut replica_jobs = Vec::new();
        let mut next_port = shards.len();
        for (si, (shard, home)) in shards.iter().enumerate() {
            if self.options.resident.contains(home) {
                continue;
            }
            for located in regions.iter().filter(|r| *r != home) {
                replica_jobs.push((si, shard.clone(), located.clone(), ports[next_port]));
                next_port += 1;
            }
        }
        let directory_jobs: Vec<(RegionName, u16)> = if own_directory {
            regions
                .iter()
                .filter(|r| **r != first)
                .cloned()
                .zip(directory_ports[1..].iter().copied())
                .collect()
        } else {
            Vec::new()
        };
        let dir_shard = directory::shard_name();
        let all_jobs: Vec<(ShardId, RegionName, u16, u16)> = replica_jobs
            .iter()
            .map(|(si, shard, located, port)| {
                (shard.clone(), located.clone(), primary_ports[*si], *port)
            })
            .chain(directory_jobs.iter().map(|(located, port)| {
                (
                    dir_shard.clone(),
                    located.clone(),
                    directory_ports[0],
                    *port,
                )
            }))
            .collect();
        let delay = self.options.replica_delay;
        let results: Vec<Result<(), DevError>> = std::thread::scope(|s| {
            let handles: Vec<_> = all_jobs
                .iter()
                .map(|(shard, located, primary_port, port)| {
                    let (pg, pg_dir) = (&pg, &pg_dir);
                    s.spawn(move || {
                        setup_replica(pg, pg_dir, shard, located, *primary_port, *port, delay)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(DevError::Setup("setup thread panicked".into())))
                })
                .collect()
        });
        for (shard, located, _, _) in &all_jobs {
            self.servers
                .insert(0, pg_dir.join(format!("{shard}-replica-{located}")));
        }
        results.into_iter().collect::<Result<Vec<_>, _>>()?;
        self.directory = Some(if own_directory {
            DirectoryInfo {
                region: first.clone(),
                primary_port: directory_ports[0],
                replica_ports: directory_jobs.into_iter().collect(),
                own_cluster: true,
            }
        } else {
            DirectoryInfo {
                region: first.clone(),
                primary_port: primary_ports[0],
                replica_ports: replica_jobs
                    .iter()
                    .filter(|(si, ..)| *si == 0)
                    .map(|(_, _, located, port)| (located.clone(), *port))
                    .collect(),
                own_cluster: false,
            }
        });

        let sidecar_ports = match self.options.base_port {
            Some(base) => (0..regions.len())
                .map(|k| {
                    let b = base + 10 * k as u16;
                    (b, b + 1, b + 2)
                })
                .collect::<Vec<_>>(),
            None => pick_ports(regions.len() * 3)?
                .chunks(3)
                .map(|c| (c[0], c[1], c[2]))
                .collect(),
        };
        let redis_bin = if self.options.redis {
            sidecar::find_redis()
        } else {
            None
        };
        for (si, (name, region)) in shards.iter().enumerate() {
            self.shards.push(ShardInfo {
                name: name.clone(),
                region: region.clone(),
                primary_port: primary_ports[si],
                replica_ports: replica_jobs
                    .iter()
                    .filter(|(i, ..)| *i == si)
                    .map(|(_, _, located, port)| (located.clone(), *port))
                    .collect(),
            });
        }
        for (k, region) in regions.iter().enumerate() {
            let first_shard = self
                .shards
                .iter()
                .find(|s| &s.region == region)
                .expect("every region has a shard")
                .clone();
            let region_dir = self.dir.join(region.as_str());
            std::fs::create_dir_all(&region_dir).map_err(|e| DevError::Setup(e.to_string()))?;
            let redis_port = match &redis_bin {
                Some(bin) => {
                    let port = pick_ports(1)?[0];
                    self.redis
                        .push(sidecar::spawn_redis(bin, port, &region_dir)?);
                    Some(port)
                }
                None => None,
            };
            self.regions.push(RegionInfo {
                name: region.clone(),
                http_port: sidecar_ports[k].0,
                pg_port: sidecar_ports[k].1,
                ops_port: sidecar_ports[k].2,
                primary_port: first_shard.primary_port,
                replica_ports: first_shard.replica_ports,
                redis_port,
                config_path: region_dir.join("homeport.toml"),
            });
        }
        for r in &self.regions {
            if let Some(port) = r.redis_port {
                wait_port(port, Duration::from_secs(10))?;
            }
        }
        Ok(())
    }

    fn plan(&self, k: usize) -> SidecarPlan<'_> {
        let region = &self.regions[k];
        let directory = self.directory();
        // The port a sidecar of `region` uses for a server: through a link when there is one.
        let direct = |port: u16| {
            self.link_to(region.name.as_str(), port)
                .map_or(port, |l| l.port)
        };
        // The data path: through the server's PgBouncer when there is one.
        let via = |port: u16| {
            self.pooler_ports
                .get(&port)
                .copied()
                .unwrap_or(direct(port))
        };
        SidecarPlan {
            region: region.name.as_str(),
            http_port: region.http_port,
            pg_port: region.pg_port,
            ops_port: region.ops_port,
            shards: self
                .shards
                .iter()
                .map(|sh| ShardPlan {
                    name: sh.name.to_string(),
                    region: sh.region.to_string(),
                    primary: pg_url(via(sh.primary_port), APP_DB),
                    replicas: sh
                        .replica_ports
                        .iter()
                        .map(|(loc, port)| (loc.to_string(), pg_url(via(*port), APP_DB)))
                        .collect(),
                    resident: self.options.resident.contains(&sh.region),
                })
                .collect(),
            directory_primary: (
                directory.region.to_string(),
                pg_url(via(directory.primary_port), DIRECTORY_DB),
            ),
            directory_replicas: directory
                .replica_ports
                .iter()
                .map(|(loc, port)| (loc.to_string(), pg_url(via(*port), DIRECTORY_DB)))
                .collect(),
            residency_policy: self.options.residency_policy.map(Policy::as_str),
            public_urls: self
                .regions
                .iter()
                .map(|r| (r.name.to_string(), r.http_url()))
                .collect(),
            redis: region.redis_port,
            consistency_key: self.dir.join("consistency.key"),
            probe_urls: self
                .pooler_ports
                .iter()
                .flat_map(|(server, pooler)| {
                    [APP_DB, DIRECTORY_DB]
                        .map(|db| (pg_url(*pooler, db), pg_url(direct(*server), db)))
                })
                .collect(),
        }
    }

    /// With a link delay: a link from every region to every server located elsewhere.
    fn start_links(&mut self) -> Result<(), DevError> {
        let Some(delay) = self.options.link_delay else {
            return Ok(());
        };
        let links = link::Links::new().map_err(|e| DevError::Setup(format!("links: {e}")))?;
        let servers: Vec<(RegionName, u16)> = self
            .shards
            .iter()
            .flat_map(|r| {
                std::iter::once((r.region.clone(), r.primary_port)).chain(
                    r.replica_ports
                        .iter()
                        .map(|(loc, port)| (loc.clone(), *port)),
                )
            })
            .chain(self.directory_servers())
            .collect();
        for from in self.regions.iter().map(|r| r.name.clone()) {
            for (located, port) in servers.iter().filter(|(loc, _)| *loc != from) {
                let l = links
                    .start(*port, delay)
                    .map_err(|e| DevError::Setup(format!("link to {located}: {e}")))?;
                self.links.push((from.clone(), *port, l));
            }
        }
        self.link_runtime = Some(links);
        Ok(())
    }

    /// The directory's servers once the databases run.
    pub fn directory(&self) -> &DirectoryInfo {
        self.directory
            .as_ref()
            .expect("the directory is set up before anything uses it")
    }

    /// The directory's own cluster's servers as (located in, port); none when it lives in a
    /// shard's cluster (those servers are the shard's).
    fn directory_servers(&self) -> impl Iterator<Item = (RegionName, u16)> + '_ {
        self.directory
            .iter()
            .filter(|d| d.own_cluster)
            .flat_map(|d| {
                std::iter::once((d.region.clone(), d.primary_port))
                    .chain(d.replica_ports.iter().map(|(l, p)| (l.clone(), *p)))
            })
    }

    /// The link a sidecar of `from` uses to reach the server on `port`, if it goes through one.
    pub fn link_to(&self, from: &str, port: u16) -> Option<&link::Link> {
        self.links
            .iter()
            .find(|(f, p, _)| f.as_str() == from && *p == port)
            .map(|(_, _, l)| l)
    }

    /// Cuts (or heals) every link into and out of `region`: a network partition of the region
    /// from its sidecar's point of view and from everyone else's.
    pub fn partition(&self, region: &str, cut: bool) {
        let located_in = |port: u16| {
            self.shards.iter().any(|r| {
                (r.region.as_str() == region && r.primary_port == port)
                    || r.replica_ports
                        .iter()
                        .any(|(loc, p)| loc.as_str() == region && *p == port)
            }) || self
                .directory_servers()
                .any(|(loc, p)| loc.as_str() == region && p == port)
        };
        for (from, port, l) in &self.links {
            if from.as_str() == region || located_in(*port) {
                if cut { l.cut() } else { l.heal() }
            }
        }
    }

    /// With `upstream_pooler`: one PgBouncer per server, on a port of its own.
    fn start_poolers(&mut self) -> Result<(), DevError> {
        if !self.options.upstream_pooler {
            return Ok(());
        }
        if self.options.link_delay.is_some() {
            return Err(DevError::Argument(
                "--upstream-pooler does not combine with --link-delay yet".into(),
            ));
        }
        let bin = pooler::find_pgbouncer().ok_or_else(|| {
            DevError::Setup("--upstream-pooler needs pgbouncer (apt-get install pgbouncer)".into())
        })?;
        let dir = self.dir.join("pgbouncer");
        std::fs::create_dir_all(&dir).map_err(|e| DevError::Setup(e.to_string()))?;
        pooler::write_users(&dir)?;
        self.pg.hand_over(&dir)?;
        let servers: Vec<(String, u16)> = self
            .shards
            .iter()
            .flat_map(|r| {
                std::iter::once((format!("{}-primary", r.name), r.primary_port)).chain(
                    r.replica_ports
                        .iter()
                        .map(|(loc, p)| (format!("{}-replica-{loc}", r.name), *p)),
                )
            })
            .collect();
        let ports = pick_ports(servers.len())?;
        for ((name, server), port) in servers.into_iter().zip(ports) {
            let ini = dir.join(format!("{name}.ini"));
            std::fs::write(&ini, pooler::config(&name, port, server, &dir))
                .map_err(|e| DevError::Setup(format!("{}: {e}", ini.display())))?;
            self.pg.hand_over(&dir)?;
            let as_postgres = self.pg.runs_as_postgres();
            self.poolers
                .push(pooler::spawn(&bin, &name, &ini, as_postgres)?);
            wait_port(port, Duration::from_secs(10))?;
            self.pooler_ports.insert(server, port);
        }
        Ok(())
    }

    fn start_sidecars(&mut self) -> Result<(), DevError> {
        self.start_links()?;
        self.start_poolers()?;
        let key: String = crate::random::bytes::<32>()
            .map_err(|e| DevError::Setup(e.to_string()))?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key_path = self.dir.join("consistency.key");
        std::fs::write(&key_path, key)
            .map_err(|e| DevError::Setup(format!("{}: {e}", key_path.display())))?;
        for k in 0..self.regions.len() {
            let text = sidecar::render_config(&self.plan(k));
            let path = self.regions[k].config_path.clone();
            std::fs::write(&path, text)
                .map_err(|e| DevError::Setup(format!("{}: {e}", path.display())))?;
            self.sidecars.push(None);
            self.start_sidecar(k)?;
        }
        Ok(())
    }

    /// Starts region `k`'s sidecar. With free ports (no `base_port`), a sidecar that could not
    /// bind because another program took one of its ports in the meantime is started again on
    /// fresh ones (see `ports`); fixed ports are the user's choice and fail with the reason.
    fn start_sidecar(&mut self, k: usize) -> Result<(), DevError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_start_sidecar(k) {
                Err(e)
                    if attempts < 4 && self.options.base_port.is_none() && self.bind_failed(k) =>
                {
                    tracing::warn!(error = %e, "sidecar port taken; retrying on fresh ports");
                    self.move_sidecar_ports(k)?;
                }
                other => return other,
            }
        }
    }

    fn try_start_sidecar(&mut self, k: usize) -> Result<(), DevError> {
        let region = &self.regions[k];
        let log = self.sidecar_log(k);
        let mut cmd = std::process::Command::new(&self.options.homeport_exe);
        cmd.arg("serve").arg("--config").arg(&region.config_path);
        let mut child =
            Managed::spawn(&format!("homeport sidecar {}", region.name), &mut cmd, &log)?;
        sidecar::wait_ready(&mut child, region.http_port, &log, Duration::from_secs(30))?;
        self.sidecars[k] = Some(child);
        Ok(())
    }

    fn sidecar_log(&self, k: usize) -> PathBuf {
        self.dir
            .join(self.regions[k].name.as_str())
            .join("homeport.log")
    }

    fn bind_failed(&self, k: usize) -> bool {
        ports::address_in_use(&std::fs::read_to_string(self.sidecar_log(k)).unwrap_or_default())
    }

    /// Gives region `k`'s sidecar fresh listener ports and rewrites its config.
    fn move_sidecar_ports(&mut self, k: usize) -> Result<(), DevError> {
        let fresh = pick_ports(3)?;
        let r = &mut self.regions[k];
        (r.http_port, r.pg_port, r.ops_port) = (fresh[0], fresh[1], fresh[2]);
        let text = sidecar::render_config(&self.plan(k));
        let path = self.regions[k].config_path.clone();
        std::fs::write(&path, text).map_err(|e| DevError::Setup(format!("{}: {e}", path.display())))
    }

    /// Stops one region's sidecar (SIGTERM, then SIGKILL after `grace`).
    pub fn stop_sidecar(&mut self, region: &str, grace: Duration) {
        if let Some(k) = self.index(region)
            && let Some(mut c) = self.sidecars[k].take()
        {
            c.stop(grace);
        }
    }

    /// Starts a stopped sidecar again with the same config.
    pub fn restart_sidecar(&mut self, region: &str) -> Result<(), DevError> {
        let k = self
            .index(region)
            .ok_or_else(|| DevError::Argument(format!("no region {region}")))?;
        self.stop_sidecar(region, Duration::from_secs(5));
        self.start_sidecar(k)
    }

    /// Starts one more `homeport serve` with the given config text (tests use this for JWT mode
    /// and other variants of a region's generated config). Stopped when the handle is dropped.
    pub fn spawn_sidecar(
        &self,
        name: &str,
        config: &str,
        http_port: u16,
    ) -> Result<Managed, DevError> {
        self.spawn_sidecar_with_env(name, config, http_port, &[])
    }

    /// [`Sandbox::spawn_sidecar`] with extra environment variables (e.g. `HOMEPORT_LOG`).
    pub fn spawn_sidecar_with_env(
        &self,
        name: &str,
        config: &str,
        http_port: u16,
        env: &[(&str, &str)],
    ) -> Result<Managed, DevError> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| DevError::Setup(e.to_string()))?;
        let path = dir.join("homeport.toml");
        std::fs::write(&path, config).map_err(|e| DevError::Setup(e.to_string()))?;
        let log = dir.join("homeport.log");
        let mut cmd = std::process::Command::new(&self.options.homeport_exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .envs(env.iter().copied());
        let mut child = Managed::spawn(name, &mut cmd, &log)?;
        sidecar::wait_ready(&mut child, http_port, &log, Duration::from_secs(30))?;
        Ok(child)
    }

    /// Stops one PostgreSQL server of the sandbox, by name: `eu-primary`, `eu-replica-us`
    /// (the replica of shard eu located in us).
    pub fn stop_server(&self, name: &str) {
        self.pg.stop(&self.dir.join("pg").join(name));
    }

    /// Promotes a replica of the sandbox (by name, e.g. `eu-replica-us`) to a primary.
    pub fn promote_server(&self, name: &str) -> Result<(), DevError> {
        self.pg.promote(&self.dir.join("pg").join(name))
    }

    /// Starts a server stopped with [`Sandbox::stop_server`] again.
    pub fn start_server(&self, name: &str) -> Result<(), DevError> {
        let pg_dir = self.dir.join("pg");
        self.pg
            .start(&pg_dir.join(name), &pg_dir.join(format!("{name}.log")))
    }

    /// Stops a region's Redis (tests of homeport without it, or losing it mid-run).
    pub fn stop_redis(&mut self, region: &str) {
        if let Some(k) = self.index(region)
            && let Some(r) = self.redis.get_mut(k)
        {
            r.stop(Duration::from_secs(2));
        }
    }

    /// Starts a region's Redis again (after [`Sandbox::stop_redis`]) on the same port, empty.
    pub fn restart_redis(&mut self, region: &str) -> Result<(), DevError> {
        let k = self
            .index(region)
            .ok_or_else(|| DevError::Argument(format!("no region {region}")))?;
        let (Some(port), Some(bin)) = (self.regions[k].redis_port, sidecar::find_redis()) else {
            return Ok(());
        };
        self.stop_redis(region);
        let dir = self.dir.join(region);
        self.redis[k] = sidecar::spawn_redis(&bin, port, &dir)?;
        wait_port(port, Duration::from_secs(10))
    }

    /// Process id of a region's sidecar, for tests that signal it.
    pub fn sidecar_pid(&self, region: &str) -> Option<u32> {
        self.index(region)
            .and_then(|k| self.sidecars[k].as_ref().map(|c| c.pid()))
    }

    fn index(&self, region: &str) -> Option<usize> {
        self.regions.iter().position(|r| r.name.as_str() == region)
    }

    pub fn region(&self, name: &str) -> &RegionInfo {
        &self.regions[self
            .index(name)
            .unwrap_or_else(|| panic!("no region {name} in the sandbox"))]
    }

    pub fn endpoints_json(&self) -> serde_json::Value {
        let regions: Vec<_> = self
            .regions
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "http": r.http_url(),
                    "ops": r.ops_url(),
                    "pg": format!("postgresql://app@127.0.0.1:{}/app", r.pg_port),
                    "config": r.config_path,
                    "primary": pg_url(r.primary_port, APP_DB),
                    "replicas": app_urls(&r.replica_ports),
                    "redis": r.redis_port.map(|p| format!("redis://127.0.0.1:{p}")),
                })
            })
            .collect();
        let shards: Vec<_> = self
            .shards
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "region": s.region,
                    "primary": pg_url(s.primary_port, APP_DB),
                    "replicas": app_urls(&s.replica_ports),
                })
            })
            .collect();
        let directory = self.directory();
        let directory_replicas: serde_json::Map<String, serde_json::Value> = directory
            .replica_ports
            .iter()
            .map(|(loc, port)| (loc.to_string(), pg_url(*port, DIRECTORY_DB).into()))
            .collect();
        json!({
            "regions": regions,
            "shards": shards,
            "directory": {
                "primary": pg_url(directory.primary_port, DIRECTORY_DB),
                "region": directory.region,
                "replicas": directory_replicas,
                "own_cluster": directory.own_cluster,
            },
            "resident": self.options.resident,
            "residency_policy": self.options.residency_policy.map(Policy::as_str),
            "superuser": "postgres",
        })
    }

    fn write_endpoints(&self) -> Result<(), DevError> {
        let path = self.dir.join("endpoints.json");
        let text = serde_json::to_string_pretty(&self.endpoints_json()).unwrap_or_default();
        std::fs::write(&path, text).map_err(|e| DevError::Setup(format!("{}: {e}", path.display())))
    }

    /// Stops everything: sidecars, Redis, replicas, primaries.
    pub fn stop(&mut self) {
        for c in self.sidecars.iter_mut() {
            if let Some(mut c) = c.take() {
                c.stop(Duration::from_secs(5));
            }
        }
        self.redis.clear();
        self.poolers.clear();
        let servers = std::mem::take(&mut self.servers);
        std::thread::scope(|s| {
            for data in &servers {
                let pg = &self.pg;
                s.spawn(move || pg.stop(data));
            }
        });
        if self.options.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Replica ports by region as app-database URLs, for endpoints.json.
fn app_urls(ports: &BTreeMap<RegionName, u16>) -> serde_json::Map<String, serde_json::Value> {
    ports
        .iter()
        .map(|(loc, port)| (loc.to_string(), pg_url(*port, APP_DB).into()))
        .collect()
}

fn setup_primary(
    pg: &PgTools,
    pg_dir: &Path,
    shard: &ShardId,
    port: u16,
    with_directory: bool,
    schema: Option<&Path>,
) -> Result<(), DevError> {
    let data = pg_dir.join(format!("{shard}-primary"));
    pg.initdb(&data)?;
    append(
        &data.join("postgresql.conf"),
        &postgres::server_conf(port, pg),
    )?;
    pg.start(&data, &pg_dir.join(format!("{shard}-primary.log")))?;
    pg.psql(
        port,
        "postgres",
        &[
            "CREATE ROLE app LOGIN",
            &format!("CREATE DATABASE {APP_DB} OWNER app"),
        ],
    )?;
    match schema {
        Some(file) => pg.psql_file(port, APP_DB, "app", file)?,
        None => pg.psql(
            port,
            APP_DB,
            &[&format!(
                "SET ROLE app; {}",
                include_str!("../../config/demo-schema.sql")
            )],
        )?,
    }
    if with_directory {
        pg.psql(
            port,
            "postgres",
            &[&format!("CREATE DATABASE {DIRECTORY_DB} OWNER app")],
        )?;
        directory::create_table(pg, port)?;
    }
    Ok(())
}

fn setup_replica(
    pg: &PgTools,
    pg_dir: &Path,
    shard: &ShardId,
    located: &RegionName,
    primary_port: u16,
    port: u16,
    delay: Duration,
) -> Result<(), DevError> {
    let name = format!("{shard}-replica-{located}");
    let data = pg_dir.join(&name);
    let slot = format!("{shard}_in_{located}").replace('-', "_");
    pg.basebackup(primary_port, &data, &slot)?;
    append(
        &data.join("postgresql.auto.conf"),
        &format!(
            "port = {port}\nrecovery_min_apply_delay = '{}ms'\n",
            delay.as_millis()
        ),
    )?;
    pg.start(&data, &pg_dir.join(format!("{name}.log")))
}

fn append(path: &Path, text: &str) -> Result<(), DevError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| DevError::Setup(format!("{}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| DevError::Setup(format!("{}: {e}", path.display())))
}

fn set_mode(dir: &Path, mode: u32) -> Result<(), DevError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| DevError::Setup(format!("{}: {e}", dir.display())))
}

const PID_FILE: &str = "homeport-dev.pid";

/// Two sandboxes in one directory would destroy each other's servers: refuse while the process
/// that wrote the pid file is still a running homeport.
fn refuse_if_in_use(dir: &Path) -> Result<(), DevError> {
    let Ok(pid) = std::fs::read_to_string(dir.join(PID_FILE)) else {
        return Ok(());
    };
    let pid = pid.trim();
    if pid == std::process::id().to_string() {
        return Ok(());
    }
    let running = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("homeport"))
        .unwrap_or(false);
    if running {
        return Err(DevError::Setup(format!(
            "another homeport dev (pid {pid}) is using {}; stop it or choose another --dir / --base-port",
            dir.display()
        )));
    }
    Ok(())
}

/// Stops servers left by an earlier run in the same directory, then wipes it.
fn clean_previous(pg: &PgTools, dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir.join("pg")) {
        for e in entries.flatten() {
            pg.stop(&e.path());
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn wait_port(port: u16, timeout: Duration) -> Result<(), DevError> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(DevError::Setup(format!(
                "nothing listens on port {port} after {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `homeport dev`: start, print, serve until SIGINT/SIGTERM, stop everything.
pub async fn run_cli(args: DevArgs) -> Result<(), DevError> {
    let regions = args
        .regions
        .iter()
        .map(|r| RegionName::parse(r.trim()).map_err(DevError::Argument))
        .collect::<Result<Vec<_>, _>>()?;
    if args
        .base_port
        .checked_add(10 * regions.len() as u16 + 1)
        .is_none()
    {
        return Err(DevError::Argument(
            "--base-port is too high for that many regions".into(),
        ));
    }
    if let Some(schema) = &args.schema
        && !schema.is_file()
    {
        return Err(DevError::Argument(format!(
            "--schema {}: no such file",
            schema.display()
        )));
    }
    let resident = args
        .resident
        .iter()
        .filter(|r| !r.trim().is_empty())
        .map(|r| RegionName::parse(r.trim()).map_err(DevError::Argument))
        .collect::<Result<Vec<_>, _>>()?;
    let residency_policy = args.residency_policy.as_deref().and_then(Policy::parse);
    let exe = std::env::current_exe()
        .map_err(|e| DevError::Setup(format!("cannot find the homeport binary: {e}")))?;
    let options = SandboxOptions {
        dir: args.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("homeport-dev-{}", args.base_port))
        }),
        regions,
        replica_delay: args.replica_delay,
        link_delay: (!args.link_delay.is_zero()).then_some(args.link_delay),
        schema: args.schema.map(|p| std::fs::canonicalize(&p).unwrap_or(p)),
        base_port: Some(args.base_port),
        homeport_exe: exe,
        redis: true,
        remove_dir: false,
        upstream_pooler: args.upstream_pooler,
        resident,
        residency_policy,
        shards_per_region: usize::from(args.shards_per_region),
    };
    let started = Instant::now();
    let sandbox = tokio::task::spawn_blocking(move || Sandbox::start(options))
        .await
        .map_err(|e| DevError::Setup(format!("sandbox setup failed: {e}")))??;
    println!(
        "homeport dev: {} region(s) ready in {:.1}s",
        sandbox.regions.len(),
        started.elapsed().as_secs_f64()
    );
    for r in &sandbox.regions {
        println!(
            "  {:<8} http {}   config {}",
            r.name.as_str(),
            r.http_url(),
            r.config_path.display()
        );
        println!(
            "  {:<8} pg   {}   (homeport's wire endpoint)",
            "",
            pg_url(r.pg_port, APP_DB)
        );
        println!(
            "  {:<8} ops  {}   (/healthz, /readyz, /metrics)",
            "",
            r.ops_url()
        );
        println!("  {:<8} primary {}", "", pg_url(r.primary_port, APP_DB));
        for (loc, port) in &r.replica_ports {
            println!("  {:<8} replica in {loc}: {}", "", pg_url(*port, APP_DB));
        }
        if sandbox.options.resident.contains(&r.name) {
            println!("  {:<8} resident in {}: no replica elsewhere", "", r.name);
        }
    }
    if sandbox.shards.len() > sandbox.regions.len() {
        for sh in &sandbox.shards {
            println!(
                "  shard {:<8} in {}: primary {}, replicas in {}",
                sh.name.as_str(),
                sh.region,
                pg_url(sh.primary_port, APP_DB),
                sh.replica_ports
                    .keys()
                    .map(RegionName::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let d = sandbox.directory();
    if d.own_cluster {
        println!(
            "  directory: its own cluster, primary {} in {}",
            pg_url(d.primary_port, DIRECTORY_DB),
            d.region
        );
    }
    println!(
        "endpoints: {}",
        sandbox.dir.join("endpoints.json").display()
    );
    println!("Ctrl-C stops everything.");
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| DevError::Setup(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| DevError::Setup(e.to_string()))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("homeport dev: stopping");
    tokio::task::spawn_blocking(move || drop(sandbox))
        .await
        .map_err(|e| DevError::Setup(e.to_string()))?;
    Ok(())
}

//! Sandbox processes that are not PostgreSQL: one `homeport serve` per region with a generated,
//! commented config file, and one Redis per region when `redis-server` is installed.

use std::fmt::Write;
use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DevError;

/// A child process that is killed when dropped.
pub struct Managed {
    pub name: String,
    child: Child,
}

impl Managed {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Managed, DevError> {
        let log_file = std::fs::File::create(log)
            .map_err(|e| DevError::Setup(format!("{}: {e}", log.display())))?;
        let err_file = log_file
            .try_clone()
            .map_err(|e| DevError::Setup(e.to_string()))?;
        // Own process group: a Ctrl-C in the terminal reaches `homeport dev` only, which then
        // stops everything in order.
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .process_group(0)
            .spawn()
            .map_err(|e| DevError::Setup(format!("cannot start {name}: {e}")))?;
        Ok(Managed {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process already exited, with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// `redis-server` on the PATH or in the usual place.
pub fn find_redis() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("redis-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/bin/redis-server")])
        .find(|p| p.exists())
}

pub fn spawn_redis(bin: &Path, port: u16, dir: &Path) -> Result<Managed, DevError> {
    Managed::spawn(
        "redis",
        Command::new(bin).args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]),
        &dir.join("redis.log"),
    )
}

/// A shard as the generated config names it.
pub struct ShardPlan {
    pub name: String,
    pub region: String,
    pub primary: String,
    /// (region the replica is located in, URL).
    pub replicas: Vec<(String, String)>,
    /// Resident in its own region (`residency = ["<region>"]`).
    pub resident: bool,
}

/// Everything needed to write one region's sidecar config.
pub struct SidecarPlan<'a> {
    pub region: &'a str,
    pub http_port: u16,
    pub pg_port: u16,
    pub ops_port: u16,
    pub shards: Vec<ShardPlan>,
    pub directory_primary: (String, String),
    pub directory_replicas: Vec<(String, String)>,
    pub redis: Option<u16>,
    /// `[residency] policy`, when not homeport's default.
    pub residency_policy: Option<&'static str>,
    /// Every region's public URL: in the sandbox, its sidecar's HTTP address.
    pub public_urls: Vec<(String, String)>,
    /// The HMAC key file every sidecar of the sandbox shares for consistency tokens.
    pub consistency_key: std::path::PathBuf,
    /// Data URL -> the server's own URL, for endpoints behind a pooler (`probe_url`).
    pub probe_urls: std::collections::BTreeMap<String, String>,
}

impl SidecarPlan<'_> {
    /// One endpoint as the config writes it: a table, with `probe_url` behind a pooler.
    fn endpoint(&self, url: &str, region: &str) -> String {
        match self.probe_urls.get(url) {
            Some(probe) => {
                format!(
                    "{{ url = \"{url}\", region = \"{region}\", probe_url = \"{probe}\", pooler = \"transaction\" }}"
                )
            }
            None => format!("{{ url = \"{url}\", region = \"{region}\" }}"),
        }
    }
}

/// The generated config: a real, commented config file a user can learn the format from.
pub fn render_config(p: &SidecarPlan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Generated by `homeport dev` for region {}. A real `homeport serve` config:",
        p.region
    );
    let _ = writeln!(
        s,
        "# see config/eu.toml in the repository for every setting with comments."
    );
    let _ = writeln!(s, "region = \"{}\"", p.region);
    let _ = writeln!(s, "shutdown_grace = \"5s\"\n");
    let _ = writeln!(s, "[http]\nlisten = \"127.0.0.1:{}\"", p.http_port);
    let _ = writeln!(
        s,
        "auth = \"trusted-header\"   # identity from the Homeport-User header"
    );
    let _ = writeln!(s, "public_url = \"http://127.0.0.1:{}\"\n", p.http_port);
    let _ = writeln!(
        s,
        "[ops]   # /healthz, /readyz and /metrics only\nlisten = \"127.0.0.1:{}\"\n",
        p.ops_port
    );
    let _ = writeln!(
        s,
        "[pg]   # the PostgreSQL wire-protocol endpoint\nlisten = \"127.0.0.1:{}\"\nmax_client_conn = 1000\npool_size = 20\n",
        p.pg_port
    );
    let _ = writeln!(
        s,
        "[postgres]\nuser = \"app\"\ndbname = \"app\"\nconnect_timeout = \"1s\"\nstatement_timeout = \"5s\"\nacquire_timeout = \"1s\"\npool_size = 16\n"
    );
    let _ = writeln!(
        s,
        "[probe]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 1\n"
    );
    for shard in &p.shards {
        let (name, region) = (&shard.name, &shard.region);
        let primary = if p.probe_urls.contains_key(&shard.primary) {
            p.endpoint(&shard.primary, region)
        } else {
            format!("\"{}\"", shard.primary)
        };
        let _ = writeln!(s, "[shards.{name}]");
        if name != region {
            let _ = writeln!(s, "region = \"{region}\"   # a cell of region {region}");
        }
        let _ = writeln!(s, "primary = [{primary}]\nreplicas = [");
        for (located, url) in &shard.replicas {
            let _ = writeln!(s, "  {},", p.endpoint(url, located));
        }
        let _ = writeln!(s, "]");
        if shard.resident {
            let _ = writeln!(
                s,
                "residency = [\"{region}\"]   # its data is stored in {region} only"
            );
        }
        let _ = writeln!(s);
    }
    if let Some(policy) = p.residency_policy {
        let _ = writeln!(
            s,
            "[residency]   # what sidecars outside a resident shard's regions do\npolicy = \"{policy}\"\n"
        );
    }
    for (region, url) in &p.public_urls {
        let _ = writeln!(s, "[regions.{region}]\npublic_url = \"{url}\"\n");
    }
    let (dir_region, dir_url) = &p.directory_primary;
    let _ = writeln!(
        s,
        "[directory]\nprimary = [{}]\nreplicas = [",
        p.endpoint(dir_url, dir_region)
    );
    for (region, url) in &p.directory_replicas {
        let _ = writeln!(s, "  {},", p.endpoint(url, region));
    }
    let _ = writeln!(
        s,
        "]\ntable = \"homeport.directory\"\nplacement = \"reject\"\ncache_ttl = \"1m\"\n"
    );
    let _ = writeln!(
        s,
        "[consistency]   # consistency tokens: one key shared by every region\nkey_file = \"{}\"\nmax_wait = \"50ms\"\n",
        p.consistency_key.display()
    );
    let _ = writeln!(
        s,
        "[idempotency]   # Idempotency-Key on HTTP writes, SET LOCAL homeport.idempotency_key on the wire\nrequire = false\nttl = \"24h\"\nlock_ttl = \"5s\"   # a crashed request's Redis lock frees this fast\ncleanup_interval = \"1m\"\n"
    );
    if let Some(port) = p.redis {
        let _ = writeln!(
            s,
            "[redis]\nurl = \"redis://127.0.0.1:{port}\"\ntimeout = \"100ms\""
        );
    }
    s
}

/// Polls `GET /readyz` until it answers 200 or the child exits or the deadline passes.
pub fn wait_ready(
    child: &mut Managed,
    port: u16,
    log: &Path,
    timeout: Duration,
) -> Result<(), DevError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.exited() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let last = tail.lines().last().unwrap_or("").to_string();
            return Err(DevError::Setup(format!(
                "{} exited ({status}) before becoming ready: {last}",
                child.name
            )));
        }
        if http_status(port, "/readyz") == Some(200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DevError::Setup(format!(
                "{} not ready after {timeout:?}; see {}",
                child.name,
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status code of a plain HTTP GET on loopback, `None` if nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

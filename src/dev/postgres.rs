//! PostgreSQL servers for the sandbox: finding the binaries, running them as an unprivileged user
//! when homeport runs as root (PostgreSQL refuses root), initdb, streaming replicas with
//! pg_basebackup, start, stop, and SQL through psql.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::DevError;

/// Where the PostgreSQL binaries are, and whether they must run as the `postgres` user.
#[derive(Debug, Clone)]
pub struct PgTools {
    bindir: PathBuf,
    as_postgres: bool,
}

impl PgTools {
    pub fn find() -> Result<PgTools, DevError> {
        let bindir = find_bindir().ok_or_else(|| {
            DevError::Setup("PostgreSQL server binaries not found: install postgresql-15 (apt-get install postgresql-15)".into())
        })?;
        Ok(PgTools {
            bindir,
            as_postgres: is_root(),
        })
    }

    pub fn runs_as_postgres(&self) -> bool {
        self.as_postgres
    }

    /// A command for a PostgreSQL binary, run as `postgres` when we are root.
    pub fn command(&self, bin: &str) -> Command {
        let path = self.bindir.join(bin);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Gives a directory to the user the servers run as.
    pub fn hand_over(&self, dir: &Path) -> Result<(), DevError> {
        if self.as_postgres {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir),
                "chown",
            )?;
        }
        Ok(())
    }

    pub fn initdb(&self, data: &Path) -> Result<(), DevError> {
        run(
            self.command("initdb").arg("-D").arg(data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]),
            "initdb",
        )
    }

    /// A streaming replica of the server on `primary_port`, with its own replication slot so the
    /// primary keeps the WAL it still needs.
    pub fn basebackup(&self, primary_port: u16, data: &Path, slot: &str) -> Result<(), DevError> {
        run(
            self.command("pg_basebackup")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary_port.to_string(),
                    "-U",
                    "postgres",
                ])
                .arg("-D")
                .arg(data)
                .args([
                    "-R",
                    "-X",
                    "stream",
                    "-C",
                    "-S",
                    slot,
                    "--checkpoint=fast",
                    "--no-sync",
                ]),
            "pg_basebackup",
        )
    }

    pub fn start(&self, data: &Path, log: &Path) -> Result<(), DevError> {
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(data)
                .arg("-l")
                .arg(log)
                .args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        )
    }

    /// Promotes a standby to primary (a new timeline) and waits until it accepts writes.
    pub fn promote(&self, data: &Path) -> Result<(), DevError> {
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(data)
                .args(["-w", "-t", "60", "promote"]),
            "pg_ctl promote",
        )
    }

    /// Stops a server if it runs; errors are ignored because cleanup must go on.
    pub fn stop(&self, data: &Path) {
        if data.join("postmaster.pid").exists() {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(data)
                .args(["-m", "fast", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Runs SQL commands through psql as the superuser, each in its own transaction (CREATE
    /// DATABASE cannot run in one); stops at the first error.
    pub fn psql(&self, port: u16, db: &str, commands: &[&str]) -> Result<(), DevError> {
        let mut cmd = Command::new(self.bindir.join("psql"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        run(
            cmd.env("PGCONNECT_TIMEOUT", "10").stdin(Stdio::null()),
            "psql",
        )
    }

    /// Runs a SQL file through psql as `user`.
    pub fn psql_file(&self, port: u16, db: &str, user: &str, file: &Path) -> Result<(), DevError> {
        run(
            Command::new(self.bindir.join("psql"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    user,
                    "-d",
                    db,
                ])
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
                .arg(file)
                .stdin(Stdio::null()),
            "psql",
        )
    }
}

/// Settings for sandbox servers: loopback only, no Unix socket (so several sandboxes and a
/// system PostgreSQL never collide), and durability traded for speed, as befits a sandbox.
/// The sandbox's server settings. `pg_stat_statements` is preloaded when the installation has
/// it, so tests and users can count the queries homeport sends (probes per second, docs/fleet.md).
pub fn server_conf(port: u16, pg: &PgTools) -> String {
    let stats = if pg.bindir.join("../lib/pg_stat_statements.so").exists() {
        "shared_preload_libraries = 'pg_stat_statements'\n"
    } else {
        ""
    };
    format!(
        "\n# homeport dev sandbox\n\
         listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = ''\n\
         max_connections = 200\n\
         shared_buffers = 32MB\n\
         fsync = off\n\
         full_page_writes = off\n\
         wal_level = replica\n\
         max_wal_senders = 16\n\
         max_replication_slots = 16\n\
         wal_keep_size = 128MB\n\
         hot_standby = on\n\
         hot_standby_feedback = on\n\
         wal_receiver_status_interval = 1s\n\
         logging_collector = off\n\
         {stats}"
    )
}

fn run(cmd: &mut Command, what: &str) -> Result<(), DevError> {
    let out = cmd
        .output()
        .map_err(|e| DevError::Setup(format!("{what}: cannot run: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    Err(DevError::Setup(format!(
        "{what} failed ({}): {last}",
        out.status
    )))
}

fn find_bindir() -> Option<PathBuf> {
    let from_env = std::env::var_os("HOMEPORT_PG_BINDIR").map(PathBuf::from);
    let mut dirs: Vec<PathBuf> = from_env.into_iter().collect();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter()
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

/// Whether this process runs as root (PostgreSQL refuses to).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

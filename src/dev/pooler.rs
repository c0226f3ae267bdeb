//! `homeport dev --upstream-pooler`: a PgBouncer in transaction mode in front of every sandbox
//! server (primaries and replicas), the topology of a fleet behind central poolers. The
//! sidecars' data path (`url`) goes through the PgBouncer, their probes (`probe_url`) go to the
//! server itself. See docs/fleet.md for what works through PgBouncer 1.18 and what does not.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::DevError;
use super::sidecar::Managed;

/// `pgbouncer` on the PATH or where Debian installs it.
pub fn find_pgbouncer() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("pgbouncer"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/pgbouncer")])
        .find(|p| p.exists())
}

/// The PgBouncer config for one server: both sandbox databases, trust on loopback, transaction
/// pooling. `options` (homeport sends `statement_timeout` that way) is ignored: PgBouncer refuses
/// startup parameters it does not track, so through it the server's own default applies.
pub fn config(name: &str, listen: u16, server: u16, dir: &Path) -> String {
    format!(
        "; PgBouncer for the sandbox server {name}, written by `homeport dev --upstream-pooler`\n\
         [databases]\n\
         app = host=127.0.0.1 port={server} dbname=app\n\
         homeport_directory = host=127.0.0.1 port={server} dbname=homeport_directory\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {listen}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {users}\n\
         pool_mode = transaction\n\
         max_client_conn = 1000\n\
         default_pool_size = 20\n\
         ignore_startup_parameters = extra_float_digits,options,statement_timeout\n\
         logfile = {log}\n\
         pidfile =\n",
        users = dir.join("userlist.txt").display(),
        log = dir.join(format!("{name}.log")).display(),
    )
}

/// Starts one PgBouncer (as `postgres` when we are root: PgBouncer refuses to run as root).
pub fn spawn(bin: &Path, name: &str, ini: &Path, as_postgres: bool) -> Result<Managed, DevError> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.arg(ini);
    let out = ini.with_extension("out");
    Managed::spawn(&format!("pgbouncer {name}"), &mut cmd, &out)
}

/// The user list PgBouncer's `trust` still needs (a user must be listed to log in).
pub fn write_users(dir: &Path) -> Result<(), DevError> {
    let path = dir.join("userlist.txt");
    std::fs::write(&path, "\"app\" \"\"\n\"postgres\" \"\"\n")
        .map_err(|e| DevError::Setup(format!("{}: {e}", path.display())))
}

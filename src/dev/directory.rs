//! Where the sandbox keeps the directory. Without resident shards it is a database in the first
//! region's shard cluster, whose replicas carry it to every region. With a resident shard that
//! would copy the shard's data to every region too (physical replication copies a whole
//! cluster), so the directory gets a cluster of its own: a primary in the first region and a
//! streaming replica of it in every other region.

use std::collections::BTreeMap;
use std::path::Path;

use super::{DIRECTORY_DB, DevError, PgTools, append, postgres};
use crate::types::RegionName;

/// The directory's servers in a running sandbox.
#[derive(Debug, Clone)]
pub struct DirectoryInfo {
    /// Where its primary is located.
    pub region: RegionName,
    pub primary_port: u16,
    /// Its replicas, by the region they are located in.
    pub replica_ports: BTreeMap<RegionName, u16>,
    /// Whether it is a cluster of its own (`directory-primary`, `directory-replica-<region>`)
    /// rather than a database in the first region's shard cluster.
    pub own_cluster: bool,
}

/// The name replicas of the directory's own cluster carry (`directory-replica-us`).
pub fn shard_name() -> crate::types::ShardId {
    crate::config::directory_shard()
}

/// initdb, start, the app role, the directory database and its table.
pub fn setup_cluster(pg: &PgTools, pg_dir: &Path, port: u16) -> Result<(), DevError> {
    let data = pg_dir.join("directory-primary");
    pg.initdb(&data)?;
    append(
        &data.join("postgresql.conf"),
        &postgres::server_conf(port, pg),
    )?;
    pg.start(&data, &pg_dir.join("directory-primary.log"))?;
    pg.psql(
        port,
        "postgres",
        &[
            "CREATE ROLE app LOGIN",
            &format!("CREATE DATABASE {DIRECTORY_DB} OWNER app"),
        ],
    )?;
    create_table(pg, port)
}

/// The directory table in the directory database on `port`.
pub fn create_table(pg: &PgTools, port: u16) -> Result<(), DevError> {
    let ddl = crate::directory::table_ddl("homeport.directory");
    pg.psql(port, DIRECTORY_DB, &[&format!("SET ROLE app; {ddl}")])
}

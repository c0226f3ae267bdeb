//! homeport: a replication-aware data-access sidecar for multi-region PostgreSQL.
//!
//! Module map (see ARCHITECTURE.md for the request walk and the invariants):
//! - [`config`]: TOML schema, validation with key paths, secrets.
//! - [`types`]: newtypes (`RegionName`, `UserId`, `Lsn`, `Intent`, `Role`).
//! - [`topology`]: endpoints, probe tasks, the lock-free snapshot request paths read.
//! - [`routing`]: pure decisions, request + snapshot -> ordered candidates.
//! - [`sql`]: lexer and conservative read-only classifier.
//! - [`metrics`]: metric names and the Prometheus recorder.

pub mod config;
pub mod metrics;
pub mod routing;
pub mod sql;
pub mod topology;
pub mod types;

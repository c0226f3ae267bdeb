//! homeport: a replication-aware data-access sidecar for multi-region PostgreSQL.
//!
//! Module map (see ARCHITECTURE.md for the request walk and the invariants):
//! - [`config`]: TOML schema, validation with key paths, secrets.
//! - [`types`]: newtypes (`RegionName`, `UserId`, `Lsn`, `Intent`, `Role`).
//! - [`topology`]: endpoints, probe tasks, the lock-free snapshot request paths read.
//! - [`routing`]: pure decisions, request + snapshot -> ordered candidates.
//! - [`sql`]: lexer and conservative read-only classifier.
//! - [`consistency`]: the signed, mergeable consistency token.
//! - [`directory`]: user -> home region (claim, caches, directory table, placement).
//! - [`idempotency`]: idempotency keys: the records in the home primary, the Redis shortcut.
//! - [`kv`]: the regional Redis, best effort (directory cache, idempotency cache and locks).
//! - [`auth`]: identity from a trusted header or a verified JWT.
//! - [`db`]: per-endpoint connection pools and database errors.
//! - [`app`]: shared sidecar state and the try-candidates-in-order data path.
//! - [`http`]: the HTTP/JSON front end.
//! - [`pgwire`]: the PostgreSQL wire-protocol front end.
//! - [`residency`]: data residency: what a sidecar outside a shard's regions does (pure).
//! - [`random`]: random bytes from the OS, failing closed.
//! - [`reload`]: config generations, SIGHUP and file-change reload.
//! - [`net`]: listener plumbing shared by the front ends.
//! - [`metrics`]: metric names and the Prometheus recorder.
//! - [`serve`], [`check`], [`dev`]: the three subcommands.

pub mod app;
pub mod auth;
pub mod check;
pub mod config;
pub mod consistency;
pub mod db;
pub mod dev;
pub mod directory;
pub mod http;
pub mod idempotency;
pub mod kv;
pub mod metrics;
pub mod net;
pub mod pgwire;
pub mod random;
pub mod reload;
pub mod residency;
pub mod routing;
pub mod serve;
pub mod sql;
pub mod topology;
pub mod types;

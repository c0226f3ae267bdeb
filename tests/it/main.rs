//! homeport's integration tests, one module per area, in one test binary (one link instead of one
//! per file). Most start a real `homeport dev` sandbox through `common` (PostgreSQL primaries and
//! streaming replicas, Redis, sidecars) on free ports, so they run in parallel.
//!
//!   cargo test --test it                   # all of them
//!   cargo test --test it wire_clients::     # one area
//!   ./scripts/test.sh identity             # through the README's test command
#![allow(clippy::unwrap_used)] // test and benchmark code: a failed unwrap is a failed run

#[path = "../common/mod.rs"]
mod common;

mod alerts_e2e;
mod cells;
mod consistency_checker;
mod consistency_tokens;
mod fleet;
mod hostile_input;
mod http_errors;
mod http_jwt;
mod http_results;
mod http_routing;
mod idempotency;
mod idempotency_prepared;
mod identity;
mod jwt_keys;
mod lag_sli;
mod ops_listener;
mod optimistic;
mod parsers_prop;
mod pool_idle;
mod pooler;
mod redis_auth;
mod residency;
mod resilience;
mod server_tls;
mod session_state;
mod soak;
mod wire_as_server;
mod wire_auth;
mod wire_clients;
mod wire_consistency;
mod wire_review;

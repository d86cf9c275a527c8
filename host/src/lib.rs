//! bulkhead: a multi-tenant agent gateway.
//!
//! See `ARCHITECTURE.md` for the codemap. Every tool call goes model → `policy` gate →
//! tenant's `sandbox`; every conversation is kept per tenant in `session`.

// `println!` panics when stdout's reader has gone away (`| head`); CLI output goes through
// `cli::outln!`, which ends the command quietly instead.
#![deny(clippy::print_stdout)]

pub mod agent;
pub mod app;
pub mod audit;
pub mod channels;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod dispatch;
pub mod fsutil;
pub mod gateway;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod quota;
pub mod routing;
pub mod sandbox;
pub mod scheduler;
pub mod session;
pub mod store;
pub mod tools;
pub mod usage;

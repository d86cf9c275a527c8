//! bulkhead: a multi-tenant agent gateway.
//!
//! See `ARCHITECTURE.md` for the codemap. Every tool call goes model → `policy` gate →
//! tenant's `sandbox`; every conversation is kept per tenant in `session`.

// `println!` panics when stdout's reader has gone away (`| head`); CLI output goes through
// `cli::outln!`, which ends the command quietly instead.
#![deny(clippy::print_stdout)]

/// Declares modules in which `unsafe` is forbidden (no inner `allow` can lift it). The workspace
/// only denies `unsafe_code`, so that `sandbox::precompiled` alone can allow it.
macro_rules! safe_modules {
    ($($name:ident),* $(,)?) => { $( #[forbid(unsafe_code)] pub mod $name; )* };
}

safe_modules!(
    agent, app, audit, channels, cli, cluster, config, crypto, dispatch, fsutil, gateway, ids, logging, metrics, model,
    policy, quota, routing, scheduler, session, store, tools, usage,
);
// Forbidden in each of its modules but `precompiled` (see sandbox/mod.rs).
pub mod sandbox;

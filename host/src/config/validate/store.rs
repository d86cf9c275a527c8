//! Pass `store`: where transcripts go (`store.mode`, `store.masterKey`) and retention.

use std::collections::BTreeMap;

use super::super::raw::{RawRetention, RawStore};
use super::super::secret::SecretRef;
use super::{Errors, one_of, secret};
use crate::ids::TenantId;

/// Where transcripts go (`store.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// The encrypted store under `stateDir`, with the audit log (needs `store.masterKey`).
    Encrypted,
    /// In memory only, no audit log: said explicitly, never assumed. Not for production.
    Memory,
}

/// Where the encrypted store keeps its data (`store.backend`).
#[derive(Debug, Clone)]
pub enum StoreBackend {
    /// Files under `stateDir` (the single-host default).
    File,
    /// A PostgreSQL database shared by several gateways (`store.url`).
    Postgres { url: SecretRef, pool_size: u32, lease_ttl: std::time::Duration },
}

/// `store.leaseSeconds` when unset, and its bounds.
pub const DEFAULT_LEASE_SECS: u64 = 15;
const LEASE_SECS: std::ops::RangeInclusive<u64> = 2..=300;

/// `store.poolSize` when unset, and its bounds.
pub const DEFAULT_POOL_SIZE: u32 = 16;
pub const MAX_POOL_SIZE: u32 = 256;

/// The encrypted session store: master key reference and retention (global and per tenant).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Files (default) or PostgreSQL; only meaningful with an encrypted store.
    pub backend: StoreBackend,
    /// Set when `store.masterKey` is (then `mode` is `Encrypted`).
    pub master_key: Option<SecretRef>,
    /// `None` when the config says neither `store.masterKey` nor `store.mode`: `serve` refuses.
    pub mode: Option<StoreMode>,
    pub retention_days: Option<u32>,
    pub tenant_retention_days: BTreeMap<TenantId, u32>,
    /// `store.cacheMb` in bytes: what the memory-only store keeps at most, or what the encrypted
    /// store's cache of open sessions may take.
    pub cache_bytes: usize,
}

/// `store.cacheMb` when unset.
pub const DEFAULT_CACHE_MB: u64 = 64;
/// Largest `store.cacheMb` accepted (64 GiB).
pub const MAX_CACHE_MB: u64 = 64 << 10;

/// Why `serve` refuses a config that names no store (shared by `serve`, `config check`, `doctor`).
pub const NO_STORE_MODE: &str = "neither store.masterKey nor store.mode is set: set store.masterKey for the \
     encrypted store and the audit log, or store: { mode: \"memory\" } to keep nothing (not for production)";

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::File,
            master_key: None,
            mode: None,
            retention_days: None,
            tenant_retention_days: BTreeMap::new(),
            cache_bytes: (DEFAULT_CACHE_MB << 20) as usize,
        }
    }
}

impl StoreConfig {
    /// How long a gateway holds a single-owner connection's lease without renewing it.
    pub fn lease_ttl(&self) -> std::time::Duration {
        match &self.backend {
            StoreBackend::Postgres { lease_ttl, .. } => *lease_ttl,
            StoreBackend::File => std::time::Duration::from_secs(DEFAULT_LEASE_SECS),
        }
    }

    /// The store `serve` opens, or why it refuses to start (fail closed: memory only when said).
    pub fn require_mode(&self) -> Result<StoreMode, &'static str> {
        self.mode.ok_or(NO_STORE_MODE)
    }
}

/// `store` and `retention`; tenants add their own retention in the `tenants` pass.
pub(super) fn store(
    errs: &mut Errors,
    warnings: &mut Vec<String>,
    raw: Option<RawStore>,
    retention: Option<&RawRetention>,
) -> StoreConfig {
    let raw_store = raw.unwrap_or_default();
    let written_mode = one_of(
        errs,
        "store.mode",
        raw_store.mode.as_deref(),
        None,
        &[("encrypted", Some(StoreMode::Encrypted)), ("memory", Some(StoreMode::Memory))],
    );
    let mode = match (written_mode, raw_store.master_key.is_some()) {
        (Some(StoreMode::Memory), true) => {
            errs.push("store.mode", "\"memory\" keeps nothing on disk, but store.masterKey is set: remove one");
            None
        }
        (Some(StoreMode::Encrypted), false) => {
            errs.push("store.masterKey", "missing key (store.mode is \"encrypted\")");
            None
        }
        (Some(StoreMode::Memory), false) => {
            warnings.push(
                "store.mode is \"memory\": not for production; transcripts and pairing approvals are lost on \
                 restart and the audit log is off"
                    .into(),
            );
            Some(StoreMode::Memory)
        }
        (_, true) => Some(StoreMode::Encrypted),
        (None, false) => None,
    };
    let backend = backend(errs, warnings, &raw_store, mode);
    let store = StoreConfig {
        backend,
        master_key: raw_store.master_key,
        mode,
        retention_days: retention_days(errs, "retention.days", retention),
        tenant_retention_days: BTreeMap::new(),
        cache_bytes: cache_bytes(errs, raw_store.cache_mb),
    };
    if let Some(k) = &store.master_key {
        secret(errs, warnings, "store.masterKey", k);
    }
    store
}

/// `store.backend`, `store.url` and `store.poolSize`: PostgreSQL holds the encrypted store only
/// (a memory-only gateway has nothing to share).
fn backend(errs: &mut Errors, warnings: &mut Vec<String>, raw: &RawStore, mode: Option<StoreMode>) -> StoreBackend {
    let written = one_of(
        errs,
        "store.backend",
        raw.backend.as_deref(),
        Some(false),
        &[("file", Some(false)), ("postgres", Some(true))],
    );
    let postgres = written == Some(true);
    if !postgres {
        if raw.url.is_some() {
            errs.push("store.url", "set only with store.backend: \"postgres\"");
        }
        if raw.pool_size.is_some() {
            errs.push("store.poolSize", "set only with store.backend: \"postgres\"");
        }
        if raw.lease_seconds.is_some() {
            errs.push("store.leaseSeconds", "set only with store.backend: \"postgres\"");
        }
        return StoreBackend::File;
    }
    if mode == Some(StoreMode::Memory) {
        errs.push("store.backend", "\"postgres\" holds the encrypted store; store.mode is \"memory\": remove one");
    }
    let pool_size = raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
    if !(2..=MAX_POOL_SIZE).contains(&pool_size) {
        errs.push("store.poolSize", format!("poolSize must be 2-{MAX_POOL_SIZE}, got {pool_size}"));
    }
    let lease = raw.lease_seconds.unwrap_or(DEFAULT_LEASE_SECS);
    if !LEASE_SECS.contains(&lease) {
        errs.push("store.leaseSeconds", format!("leaseSeconds must be 2-300, got {lease}"));
    }
    let lease_ttl = std::time::Duration::from_secs(lease.clamp(*LEASE_SECS.start(), *LEASE_SECS.end()));
    let Some(url) = raw.url.clone() else {
        errs.push("store.url", "missing the PostgreSQL URL (store.backend is \"postgres\"): { env: \"NAME\" } or { file: \"PATH\" }");
        return StoreBackend::File;
    };
    secret(errs, warnings, "store.url", &url);
    StoreBackend::Postgres { url, pool_size: pool_size.clamp(2, MAX_POOL_SIZE), lease_ttl }
}

fn cache_bytes(errs: &mut Errors, mb: Option<u64>) -> usize {
    let mb = mb.unwrap_or(DEFAULT_CACHE_MB);
    if mb == 0 || mb > MAX_CACHE_MB {
        errs.push("store.cacheMb", format!("cacheMb must be 1-{MAX_CACHE_MB} (MiB), got {mb}"));
        return (DEFAULT_CACHE_MB << 20) as usize;
    }
    (mb << 20) as usize
}

pub(super) fn retention_days(errs: &mut Errors, path: &str, r: Option<&RawRetention>) -> Option<u32> {
    let days = r?.days?;
    if days == 0 || days > 36_500 {
        errs.push(path, format!("retention must be 1-36500 days, got {days}"));
        return None;
    }
    Some(days)
}

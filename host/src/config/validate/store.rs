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

/// The encrypted session store: master key reference and retention (global and per tenant).
#[derive(Debug, Clone)]
pub struct StoreConfig {
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
            master_key: None,
            mode: None,
            retention_days: None,
            tenant_retention_days: BTreeMap::new(),
            cache_bytes: (DEFAULT_CACHE_MB << 20) as usize,
        }
    }
}

impl StoreConfig {
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
    let store = StoreConfig {
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

//! Workspace layout and disk accounting, the one place both sandbox backends use.
//!
//! Under `<stateDir>/`:
//!
//! ```text
//! workspaces/<tenant>/agents/<agent>      a call's workspace, scope "agent"
//! workspaces/<tenant>/shared              scope "shared"
//! workspaces/<tenant>/sessions/<digest>   scope "session": a keyed digest of the session key
//! wasm-modules/<tenant>/<name>.wasm       operator-installed command modules (wasm backend)
//! sandbox-scope.key                       the secret that keys session digests (0600)
//! ```
//!
//! A tenant's disk quota counts everything under `workspaces/<tenant>/` by the rule the runner
//! shares (`sandbox_runner::quota`); the disk floor refuses tool calls while the state
//! directory's filesystem is nearly full.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{SandboxCall, SandboxError};
use crate::config::SandboxScope;
use crate::ids::TenantId;
use crate::{crypto, fsutil};

/// Bytes a tenant's workspaces use, counted by the quota rule both sides share.
pub use sandbox_runner::quota::disk_usage;

/// The directory of every workspace of `tenant`.
pub fn workspaces_dir(state_dir: &Path, tenant: &str) -> PathBuf {
    state_dir.join("workspaces").join(tenant)
}

/// The directory of `tenant`'s command modules (wasm backend).
pub fn modules_dir(state_dir: &Path, tenant: &str) -> PathBuf {
    state_dir.join("wasm-modules").join(tenant)
}

/// Everything the sandboxes keep for a tenant: its workspaces and its command modules.
pub fn tenant_dirs(state_dir: &Path, tenant: &str) -> [PathBuf; 2] {
    [workspaces_dir(state_dir, tenant), modules_dir(state_dir, tenant)]
}

/// What a tenant may still write under a quota of `quota` bytes: the quota less what its
/// workspaces use now (walked on a blocking thread), never below zero.
pub async fn remaining_quota(root: PathBuf, quota: u64) -> Result<u64, SandboxError> {
    let used = tokio::task::spawn_blocking(move || disk_usage(&root))
        .await
        .map_err(|e| SandboxError::Unavailable(format!("disk usage check failed: {e}")))?;
    Ok(quota.saturating_sub(used))
}

/// Where a gateway's workspaces live, and the secret that names session workspaces.
///
/// A call's workspace is per agent, per session or shared, always inside the caller's tenant
/// (`<stateDir>/workspaces/<tenant>/...`); both backends use this. Session keys carry peer ids
/// (Telegram user ids, which are few enough to enumerate), so a session's directory — and the
/// Docker scope label made from it — is named by a keyed digest: HMAC under a per-tenant key
/// derived from a random secret only the host holds (`<stateDir>/sandbox-scope.key`, mode 0600,
/// never mounted into a sandbox). Without the secret the name cannot be linked to a peer.
#[derive(Clone)]
pub struct Workspaces {
    state_dir: PathBuf,
    /// The scope secret, or why it could not be loaded (session-scope calls then fail closed).
    secret: Result<Arc<[u8; 32]>, String>,
}

/// File name of the scope secret in the state directory.
pub const SCOPE_KEY_FILE: &str = "sandbox-scope.key";

impl Workspaces {
    /// Loads the scope secret of `state_dir`, creating it on first use.
    pub fn open(state_dir: &Path) -> Self {
        let secret = load_scope_secret(&state_dir.join(SCOPE_KEY_FILE)).map(Arc::new);
        if let Err(e) = &secret {
            tracing::error!(error = %e, "Sandbox scope key unavailable; session-scope tool calls will fail.");
        }
        Self { state_dir: state_dir.to_path_buf(), secret }
    }

    /// Workspaces named with a scope secret given (shared by a fleet of gateways) instead of
    /// the state directory's own.
    pub fn with_secret(state_dir: &Path, secret: [u8; 32]) -> Self {
        Self { state_dir: state_dir.to_path_buf(), secret: Ok(Arc::new(secret)) }
    }

    /// The directory of a tenant's workspaces.
    pub fn tenant_root(&self, tenant: &str) -> PathBuf {
        workspaces_dir(&self.state_dir, tenant)
    }

    /// A call's workspace, relative to its tenant's root (`agents/<id>`, `shared`,
    /// `sessions/<keyed digest>`).
    pub fn scope(&self, call: &SandboxCall) -> Result<PathBuf, SandboxError> {
        Ok(match call.settings.scope {
            SandboxScope::Agent => Path::new("agents").join(call.agent.as_str()),
            SandboxScope::Shared => PathBuf::from("shared"),
            SandboxScope::Session => {
                let secret = self.secret.as_ref().map_err(|_| {
                    SandboxError::Unavailable("the sandbox scope key cannot be loaded; see the gateway's log".into())
                })?;
                Path::new("sessions").join(session_digest(secret, call.tenant.as_str(), &call.session.to_string()))
            }
        })
    }

    /// The host directory that is a call's workspace.
    pub fn dir(&self, call: &SandboxCall) -> Result<PathBuf, SandboxError> {
        Ok(self.tenant_root(call.tenant.as_str()).join(self.scope(call)?))
    }
}

/// The name of a session's workspace: a keyed digest, under a key derived for this tenant from
/// the scope secret.
fn session_digest(secret: &[u8; 32], tenant: &str, session_key: &str) -> String {
    let key = crypto::derive_mac_key(secret, format!("bulkhead/sandbox/v1/scope\0{tenant}").as_bytes());
    let mut tag = crypto::mac_parts(&key, &[b"session", session_key.as_bytes()]);
    tag.truncate(32);
    tag
}

/// Reads the 32-byte scope secret, or creates it (atomically: two gateways starting at once agree).
fn load_scope_secret(path: &Path) -> Result<[u8; 32], String> {
    use ring::rand::SecureRandom;
    let read = |p: &Path| -> Result<[u8; 32], String> {
        let bytes = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        bytes.try_into().map_err(|_| format!("{} is not a 32-byte key", p.display()))
    };
    if path.exists() {
        return read(path);
    }
    if let Some(parent) = path.parent() {
        fsutil::create_private_dir(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    // The key, and a random name for the temporary file (both backends may create it at once).
    let (mut key, mut tmp_name) = ([0u8; 32], [0u8; 8]);
    let rng = ring::rand::SystemRandom::new();
    rng.fill(&mut key)
        .and_then(|()| rng.fill(&mut tmp_name))
        .map_err(|_| "the system random number generator failed".to_string())?;
    let tmp = path.with_extension(format!("tmp-{}", u64::from_be_bytes(tmp_name)));
    let mut f = fsutil::create_new_private(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    std::io::Write::write_all(&mut f, &key)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    // A hard link never replaces an existing file: whoever links first wins, the others read it.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

/// The free space of the state directory's filesystem below which tool calls are refused: a
/// tenant filling its workspace (which lives there) must not take the gateway's own state — the
/// audit log, the store — down with it.
#[derive(Clone)]
pub(crate) struct DiskFloor {
    state_dir: PathBuf,
    min_free: u64,
}

impl DiskFloor {
    pub(crate) fn new(state_dir: &Path, min_free: u64) -> Self {
        Self { state_dir: state_dir.to_path_buf(), min_free }
    }

    /// `HostDiskLow` while less than the floor is free, or when the free space is unknown.
    pub(crate) fn check(&self, tenant: &TenantId) -> Result<(), SandboxError> {
        let floor = self.min_free;
        match free_bytes(&self.state_dir) {
            Ok(f) if f >= floor => Ok(()),
            Ok(f) => {
                tracing::warn!(tenant = %tenant, free = f, floor, "Tool call refused: the state directory's filesystem is nearly full.");
                Err(SandboxError::HostDiskLow)
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "Tool call refused: free space of the state directory unknown.");
                Err(SandboxError::HostDiskLow)
            }
        }
    }
}

/// Bytes available to the gateway on the filesystem holding `dir` (or, before `dir` exists, the
/// filesystem it will be created on: its nearest existing ancestor).
pub(crate) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let on = dir.ancestors().find(|a| a.exists()).unwrap_or(dir);
    let st = rustix::fs::statvfs(on)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keeps_every_tenant_under_its_own_dirs() {
        let state = Path::new("/state");
        assert_eq!(
            tenant_dirs(state, "acme"),
            [PathBuf::from("/state/workspaces/acme"), PathBuf::from("/state/wasm-modules/acme")]
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Workspaces::open(dir.path()).tenant_root("acme"), dir.path().join("workspaces/acme"));
    }

    #[tokio::test]
    async fn remaining_quota_counts_the_tenants_files_and_never_goes_below_zero() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("acme");
        std::fs::create_dir_all(root.join("agents/bot")).unwrap();
        std::fs::write(root.join("agents/bot/f"), vec![0u8; 1000]).unwrap();
        let used = disk_usage(&root);
        assert!(used >= 1000, "{used}");
        assert_eq!(remaining_quota(root.clone(), used + 10).await, Ok(10));
        assert_eq!(remaining_quota(root.clone(), used).await, Ok(0));
        assert_eq!(remaining_quota(root, 1).await, Ok(0));
    }
}

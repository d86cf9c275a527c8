//! Sandboxes: where tools that touch files or processes run, one per tenant (never on the host).
//!
//! The host hands a policy-approved `SandboxCall` to the backend the agent is configured for. A
//! backend that is not available fails the call with `SandboxError::Unavailable`; there is no
//! fallback to running anything on the host.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sandbox_runner::protocol::{self, Failure, MAX_ARGS_BYTES, MAX_ARGS_DEPTH, Response, cap_text};

use crate::config::{SandboxBackend, SandboxConfig, WorkspaceAccess};
use crate::ids::{AgentId, SessionKey, TenantId};
use crate::tools::Tool;

#[forbid(unsafe_code)]
pub mod docker;
#[forbid(unsafe_code)]
pub mod placement;
#[forbid(unsafe_code)]
pub mod volume_archive;
#[forbid(unsafe_code)]
pub mod volume_usage;
// The one module of the crate that may use `unsafe`: `Module::deserialize` of the embedded runner.
#[allow(unsafe_code)]
mod precompiled;
#[forbid(unsafe_code)]
pub mod wasm;
#[forbid(unsafe_code)]
pub mod wasm_engine;
#[forbid(unsafe_code)]
pub mod workspace;

use workspace::DiskFloor;
pub use workspace::{SCOPE_KEY_FILE, Workspaces};

/// Limits that apply to one tool call (from policy, capped by the backend's own ceilings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolLimits {
    pub timeout: Duration,
    pub max_output_bytes: usize,
    pub workspace_access: WorkspaceAccess,
}

impl Default for ToolLimits {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), max_output_bytes: 64 * 1024, workspace_access: WorkspaceAccess::Rw }
    }
}

/// One approved tool call, addressed to the caller's sandbox.
#[derive(Debug, Clone)]
pub struct SandboxCall {
    pub tenant: TenantId,
    pub agent: AgentId,
    pub session: SessionKey,
    pub tool: Tool,
    pub args: serde_json::Value,
    pub limits: ToolLimits,
    /// The agent's sandbox settings (scope, backend limits).
    pub settings: SandboxConfig,
}

/// What a tool produced. A tool that ran and failed (file not found, non-zero exit) is an
/// output with `is_error`, not a `SandboxError`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolOutput {
    pub text: String,
    pub is_error: bool,
    pub exit_code: Option<i32>,
    pub truncated: bool,
}

/// The sandbox could not run the call. Messages are written for the model and the user to read:
/// no host paths, no secrets.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SandboxError {
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
    #[error("tool call timed out after {0:?}")]
    Timeout(Duration),
    #[error("tool call ran out of fuel (CPU budget exhausted)")]
    OutOfFuel,
    #[error("tool call exceeded its memory limit")]
    Memory,
    #[error("workspace disk quota exceeded")]
    Quota,
    #[error("invalid tool arguments: {0}")]
    InvalidArguments(String),
    #[error("sandbox protocol error: {0}")]
    Protocol(String),
    #[error("the gateway's disk is nearly full; tool calls are refused until the operator frees space")]
    HostDiskLow,
}

impl SandboxError {
    /// The kind of failure, for logs: the messages can quote a model's arguments.
    pub fn kind(&self) -> &'static str {
        match self {
            SandboxError::Unavailable(_) => "unavailable",
            SandboxError::Timeout(_) => "timeout",
            SandboxError::OutOfFuel => "out_of_fuel",
            SandboxError::Memory => "memory",
            SandboxError::Quota => "quota",
            SandboxError::InvalidArguments(_) => "invalid_arguments",
            SandboxError::Protocol(_) => "protocol",
            SandboxError::HostDiskLow => "host_disk_low",
        }
    }
}

/// A sandbox backend.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// Backend name for logs and errors (`wasm`, `docker`, ...).
    fn name(&self) -> &'static str;
    async fn call(&self, call: &SandboxCall) -> Result<ToolOutput, SandboxError>;
}

/// A backend that could not be started; every call fails closed with the reason.
pub struct Unavailable {
    pub backend: &'static str,
    pub reason: String,
}

#[async_trait]
impl Sandbox for Unavailable {
    fn name(&self) -> &'static str {
        self.backend
    }
    async fn call(&self, _call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
        Err(SandboxError::Unavailable(format!("the {} backend is not running: {}", self.backend, self.reason)))
    }
}

/// The backends of this gateway, by kind.
#[derive(Clone, Default)]
pub struct Sandboxes {
    backends: HashMap<BackendKey, Arc<dyn Sandbox>>,
    /// The free space of the state directory below which tool calls are refused.
    disk_floor: Option<DiskFloor>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct BackendKey(u8);

impl From<SandboxBackend> for BackendKey {
    fn from(b: SandboxBackend) -> Self {
        BackendKey(match b {
            SandboxBackend::Wasm => 0,
            SandboxBackend::Docker => 1,
        })
    }
}

impl Sandboxes {
    pub fn with(mut self, kind: SandboxBackend, backend: Arc<dyn Sandbox>) -> Self {
        self.backends.insert(kind.into(), backend);
        self
    }

    /// Refuses tool calls while the filesystem of `state_dir` has less than `min_free` bytes
    /// free: a tenant filling its workspace (which lives there) must not take the gateway's own
    /// state — the audit log, the store — down with it. Serving and auditing go on.
    pub fn with_disk_floor(mut self, state_dir: &Path, min_free: u64) -> Self {
        self.disk_floor = (min_free > 0).then(|| DiskFloor::new(state_dir, min_free));
        self
    }

    /// Runs a call in the agent's configured backend; a missing backend fails closed, and so
    /// does a nearly full state directory.
    pub async fn call(&self, call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
        if let Some(floor) = &self.disk_floor {
            floor.check(&call.tenant)?;
        }
        match self.backends.get(&call.settings.backend.into()) {
            Some(b) => b.call(call).await,
            None => Err(SandboxError::Unavailable(format!(
                "no {:?} sandbox backend is configured on this gateway",
                call.settings.backend
            ))),
        }
    }
}

/// A backend that is still starting (the wasm backend compiles its runner, ~¼ s): the gateway
/// accepts requests at once and tool calls wait until the backend is ready — or, if it failed to
/// start, fail closed with the reason.
pub struct Deferred {
    backend: &'static str,
    ready: tokio::sync::watch::Receiver<Option<Arc<dyn Sandbox>>>,
}

impl Deferred {
    /// Starts `make` on a blocking thread; its error becomes an `Unavailable` backend.
    pub fn spawn(
        backend: &'static str,
        make: impl FnOnce() -> Result<Arc<dyn Sandbox>, String> + Send + 'static,
    ) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::task::spawn_blocking(move || {
            let sandbox = make().unwrap_or_else(|reason| {
                tracing::error!(backend, %reason, "Sandbox backend failed to start; its tool calls will fail.");
                Arc::new(Unavailable { backend, reason })
            });
            let _ = tx.send(Some(sandbox));
        });
        Self { backend, ready: rx }
    }
}

#[async_trait]
impl Sandbox for Deferred {
    fn name(&self) -> &'static str {
        self.backend
    }
    async fn call(&self, call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
        let mut rx = self.ready.clone();
        let sandbox = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().expect("waited for Some"),
            Err(_) => return Err(SandboxError::Unavailable(format!("the {} backend did not start", self.backend))),
        };
        sandbox.call(call).await
    }
}

/// A fresh random key for one host↔runner channel (see `sandbox_runner::protocol::ChannelKey`).
pub(crate) fn channel_key() -> Result<protocol::ChannelKey, SandboxError> {
    use ring::rand::SecureRandom;
    let mut key = [0u8; protocol::KEY_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SandboxError::Unavailable("the system random number generator failed".into()))?;
    Ok(protocol::ChannelKey::new(key))
}

/// A call's timeout: the policy's, capped by the backend's ceiling and by `exec`'s `timeoutSec`.
pub fn call_timeout(call: &SandboxCall, ceiling: Duration) -> Result<Duration, SandboxError> {
    let mut timeout = call.limits.timeout.min(ceiling);
    if call.tool == Tool::Exec
        && let Some(t) = call.args.get("timeoutSec")
    {
        let secs = t
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0)
            .ok_or_else(|| SandboxError::InvalidArguments("timeoutSec must be a positive number of seconds".into()))?;
        timeout = timeout.min(Duration::from_secs_f64(secs.min(86_400.0)));
    }
    Ok(timeout)
}

/// Maps a runner response to the tool's output or a backend error; runner text is re-capped.
pub(crate) fn finish(resp: Response, max_output: usize, timeout: Duration) -> Result<ToolOutput, SandboxError> {
    match resp.failure {
        Some(Failure::Quota) => return Err(SandboxError::Quota),
        Some(Failure::InvalidArguments) => return Err(SandboxError::InvalidArguments(short(&resp.output))),
        Some(Failure::Protocol) => return Err(SandboxError::Protocol(short(&resp.output))),
        Some(Failure::Timeout) => return Err(SandboxError::Timeout(timeout)),
        Some(Failure::Memory) => return Err(SandboxError::Memory),
        None => {}
    }
    let (text, cut) = cap_text(resp.output, max_output);
    Ok(ToolOutput { text, is_error: resp.is_error, exit_code: resp.exit_code, truncated: resp.truncated || cut })
}

/// A runner- or runtime-provided message cut to one printable line.
pub(crate) fn short(s: &str) -> String {
    let line: String = s.lines().next().unwrap_or("").chars().filter(|c| !c.is_control()).take(300).collect();
    line
}

/// A call a backend may run: a sandbox tool with arguments of bounded size and depth.
pub(crate) fn check_call(call: &SandboxCall) -> Result<(), SandboxError> {
    if !matches!(call.tool, Tool::Read | Tool::Write | Tool::Edit | Tool::List | Tool::Exec) {
        return Err(SandboxError::InvalidArguments(format!("tool {} does not run in a sandbox", call.tool.name())));
    }
    check_args(&call.args)
}

/// The protocol's name for a workspace access level.
pub(crate) fn protocol_access(a: WorkspaceAccess) -> sandbox_runner::protocol::Access {
    use sandbox_runner::protocol::Access;
    match a {
        WorkspaceAccess::None => Access::None,
        WorkspaceAccess::Ro => Access::Ro,
        WorkspaceAccess::Rw => Access::Rw,
    }
}

/// One lock per tenant: calls that may grow a tenant's workspaces are serialised, so the disk
/// quota checked before each holds.
#[derive(Default)]
pub(crate) struct TenantLocks(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl TenantLocks {
    pub(crate) fn of(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(tenant.to_string()).or_default().clone()
    }
}

/// Tool arguments must be a flat-ish JSON object of bounded size.
fn check_args(args: &serde_json::Value) -> Result<(), SandboxError> {
    if !args.is_object() {
        return Err(SandboxError::InvalidArguments("tool arguments must be a JSON object".into()));
    }
    let depth = protocol::json_depth(args);
    if depth > MAX_ARGS_DEPTH {
        return Err(SandboxError::InvalidArguments(format!(
            "arguments are nested {depth} levels deep, the limit is {MAX_ARGS_DEPTH}"
        )));
    }
    let size = serde_json::to_vec(args).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_ARGS_BYTES {
        return Err(SandboxError::InvalidArguments(format!(
            "arguments are {size} bytes, the limit is {MAX_ARGS_BYTES}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxScope;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use workspace::free_bytes;

    struct Counting(AtomicUsize);

    #[async_trait]
    impl Sandbox for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        async fn call(&self, _call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(ToolOutput::default())
        }
    }

    fn call() -> SandboxCall {
        SandboxCall {
            tenant: TenantId::parse("acme").unwrap(),
            agent: AgentId::parse("bot").unwrap(),
            session: SessionKey::parse("agent:bot:api:direct:u1").unwrap(),
            tool: Tool::Exec,
            args: serde_json::json!({"command": "true"}),
            limits: ToolLimits::default(),
            settings: SandboxConfig {
                mode: crate::config::SandboxMode::All,
                scope: SandboxScope::Agent,
                backend: SandboxBackend::Wasm,
                workspace_access: WorkspaceAccess::Rw,
                wasm: crate::config::WasmSettings {
                    fuel: 1,
                    memory_bytes: 1 << 20,
                    timeout: Duration::from_secs(1),
                    disk_quota_bytes: 1 << 20,
                },
                docker: crate::config::DockerSettings::default(),
            },
        }
    }

    #[tokio::test]
    async fn tool_calls_are_refused_while_the_state_disk_is_nearly_full() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(Counting(AtomicUsize::new(0)));
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let kind = SandboxBackend::Wasm;
        // A floor above what is free: refused before any backend sees the call.
        let full = Sandboxes::default().with(kind, backend.clone()).with_disk_floor(dir.path(), free.saturating_mul(2));
        let e = full.call(&call()).await.unwrap_err();
        assert_eq!(e, SandboxError::HostDiskLow);
        assert!(e.to_string().contains("disk is nearly full"), "{e}");
        assert_eq!(backend.0.load(Ordering::SeqCst), 0);
        // A state dir not created yet is measured on the filesystem it will be created on.
        let later =
            Sandboxes::default().with(kind, backend.clone()).with_disk_floor(&dir.path().join("later/state"), 1);
        later.call(&call()).await.unwrap();
        let later = Sandboxes::default()
            .with(kind, backend.clone())
            .with_disk_floor(&dir.path().join("later/state"), free.saturating_mul(2));
        assert_eq!(later.call(&call()).await, Err(SandboxError::HostDiskLow));
        // Below the free space (and with no floor) calls go through.
        for ok in [
            Sandboxes::default().with(kind, backend.clone()).with_disk_floor(dir.path(), 1),
            Sandboxes::default().with(kind, backend.clone()).with_disk_floor(dir.path(), 0),
        ] {
            ok.call(&call()).await.unwrap();
        }
        assert_eq!(backend.0.load(Ordering::SeqCst), 3);
    }
}

//! Sandboxes: where tools that touch files or processes run, one per tenant (never on the host).
//!
//! The host hands a policy-approved `SandboxCall` to the backend the agent is configured for. A
//! backend that is not available fails the call with `SandboxError::Unavailable`; there is no
//! fallback to running anything on the host.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{SandboxBackend, SandboxConfig, WorkspaceAccess};
use crate::ids::{AgentId, SessionKey, TenantId};
use crate::tools::Tool;

pub mod wasm;

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

    /// Runs a call in the agent's configured backend; a missing backend fails closed.
    pub async fn call(&self, call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
        match self.backends.get(&call.settings.backend.into()) {
            Some(b) => b.call(call).await,
            None => Err(SandboxError::Unavailable(format!(
                "no {:?} sandbox backend is configured on this gateway",
                call.settings.backend
            ))),
        }
    }
}

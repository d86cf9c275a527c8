//! What the Docker test binaries share (`sandbox_docker`, `docker_daemon`): the image under
//! test, the daemon check that fails in CI instead of skipping, a backend over its own state
//! directory whose containers are removed on drop, and tool calls.
// Each binary uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bulkhead::config::{
    DockerSettings, SandboxBackend, SandboxConfig, SandboxMode, SandboxScope, WasmSettings, WorkspaceAccess,
};
use bulkhead::ids::{AgentId, SessionKey, TenantId};
use bulkhead::sandbox::docker::{self, DockerOptions, DockerSandbox};
use bulkhead::sandbox::{Sandbox, SandboxCall, SandboxError, ToolLimits, ToolOutput};
use bulkhead::tools::Tool;
use serde_json::{Value, json};

/// The sandbox image under test: `images/build.sh`'s default, or `$BULKHEAD_SANDBOX_IMAGE` (the
/// same variable build.sh tags with).
pub fn image() -> String {
    std::env::var("BULKHEAD_SANDBOX_IMAGE").unwrap_or_else(|_| DockerSettings::default().image)
}

/// Whether the daemon and image are there; panics when they must be (CI).
pub async fn docker_ready() -> bool {
    let required = std::env::var("BULKHEAD_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let problem = match docker::connect(None).await {
        Err(e) => Some(e),
        Ok(d) => docker::check_image(&d, &image()).await.err(),
    };
    match problem {
        None => true,
        Some(p) if required => panic!("BULKHEAD_REQUIRE_DOCKER=1 but the Docker backend cannot run: {p}"),
        Some(p) => {
            eprintln!("NOT RUN (set BULKHEAD_REQUIRE_DOCKER=1 to fail instead): {p}");
            false
        }
    }
}

/// A backend over its own state dir; its containers are removed on drop.
pub struct Env {
    _dir: tempfile::TempDir,
    pub state: PathBuf,
    pub sb: Arc<DockerSandbox>,
}

impl Env {
    pub fn new() -> Self {
        Self::with(DockerOptions::default())
    }

    pub fn with(opts: DockerOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let sb = DockerSandbox::start(&state, opts);
        Env { _dir: dir, state, sb }
    }

    pub async fn run(&self, call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
        self.sb.call(call).await
    }

    pub async fn sh(&self, tenant: &str, cmd: &str) -> ToolOutput {
        self.run(&mk(tenant, Tool::Exec, json!({ "command": cmd }))).await.unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        cleanup(&docker::gateway_label(&self.state));
    }
}

/// Removes every container of a gateway label (synchronously, usable in `Drop`).
pub fn cleanup(gateway: &str) {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={}={gateway}", docker::LABEL_GATEWAY)])
        .output();
    if let Ok(out) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker").arg("rm").arg("-f").args(&ids).output();
        }
    }
}

pub fn settings() -> SandboxConfig {
    SandboxConfig {
        mode: SandboxMode::All,
        scope: SandboxScope::Agent,
        backend: SandboxBackend::Docker,
        workspace_access: WorkspaceAccess::Rw,
        wasm: WasmSettings {
            fuel: 1,
            memory_bytes: 1 << 20,
            timeout: Duration::from_secs(1),
            disk_quota_bytes: 1 << 20,
        },
        docker: DockerSettings { timeout: Duration::from_secs(20), image: image(), ..DockerSettings::default() },
    }
}

pub fn mk(tenant: &str, tool: Tool, args: Value) -> SandboxCall {
    SandboxCall {
        tenant: TenantId::parse(tenant).unwrap(),
        agent: AgentId::parse(&format!("{tenant}-bot")).unwrap(),
        session: SessionKey::parse(&format!("agent:{tenant}-bot:telegram:direct:peer-42")).unwrap(),
        tool,
        args,
        limits: ToolLimits { timeout: Duration::from_secs(20), ..ToolLimits::default() },
        settings: settings(),
    }
}

pub fn exec(tenant: &str, cmd: &str) -> SandboxCall {
    mk(tenant, Tool::Exec, json!({ "command": cmd }))
}

/// Container ids labelled for `gateway`.
pub fn containers_of(gateway: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter", &format!("label={}={gateway}", docker::LABEL_GATEWAY)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

pub fn inspect(id: &str, format: &str) -> String {
    let out = std::process::Command::new("docker").args(["inspect", "-f", format, id]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

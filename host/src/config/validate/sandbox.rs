//! Pass `sandbox`: one agent's sandbox settings (its own keys over `agents.defaults`), the
//! wasm limits and the Docker settings. Anything that would weaken a container is refused.

use std::time::Duration;

use super::super::raw::{RawDockerSandbox, RawSandbox, RawWasmSandbox};
use super::{Errors, one_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    Off,
    NonMain,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxScope {
    Session,
    Agent,
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxBackend {
    Wasm,
    Docker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkspaceAccess {
    None,
    Ro,
    Rw,
}

#[derive(Debug, Clone)]
pub struct WasmSettings {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub timeout: Duration,
    pub disk_quota_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    pub scope: SandboxScope,
    pub backend: SandboxBackend,
    pub workspace_access: WorkspaceAccess,
    pub wasm: WasmSettings,
    /// Kept as written; the Docker backend owns its interpretation.
    pub docker: DockerSettings,
}

/// The Docker backend's settings, validated: every limit has a safe default and nothing here can
/// weaken the container's hardening (see `sandbox::docker` and SECURITY.md).
#[derive(Debug, Clone, PartialEq)]
pub struct DockerSettings {
    /// Local image the container runs (`images/build.sh` builds the default).
    pub image: String,
    /// `none`, or (only with `allowNetwork: true`) a Docker network such as `bridge`; never
    /// `host` or another container's.
    pub network: String,
    /// `uid[:gid]`, never root; `None`: the image's non-root user (65532).
    pub user: Option<String>,
    pub pids_limit: i64,
    /// Memory limit; swap is always off (`memory_swap` = `memory`).
    pub memory_bytes: i64,
    /// CPU quota in billionths of a CPU.
    pub nano_cpus: i64,
    /// `nofile` ulimit (soft = hard).
    pub nofile: i64,
    /// Size of the noexec `/tmp` tmpfs (counted against the memory limit).
    pub tmpfs_bytes: u64,
    /// OCI runtime (e.g. `runsc`); `None`: the daemon's default (runc).
    pub runtime: Option<String>,
    /// Path of a seccomp profile (JSON); `None`: Docker's default profile.
    pub seccomp_profile: Option<std::path::PathBuf>,
    /// AppArmor profile name; `None`: Docker's default (`docker-default` where AppArmor is on).
    pub apparmor_profile: Option<String>,
    /// Longest a tool call may run.
    pub timeout: Duration,
    /// A container unused this long is removed (recreated on the next call).
    pub idle: Duration,
    /// Bytes a tenant's workspaces may hold; checked before every mutating call.
    pub disk_quota_bytes: u64,
    /// Start the agent's container with the gateway (agent and shared scopes) and keep it warm.
    pub prewarm: bool,
    /// Containers one tenant may have at once (the least recently used idle one makes room).
    pub max_containers: u32,
    /// The engine the agent's tenant is pinned to (`tenants[].sandbox.engine`); `None`: placed
    /// by the hashing rule over `sandbox.docker.engines` (or the one local daemon).
    pub engine: Option<String>,
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            image: "bulkhead/sandbox:base".into(),
            network: "none".into(),
            user: None,
            pids_limit: 256,
            memory_bytes: 512 << 20,
            nano_cpus: 1_000_000_000,
            nofile: 1024,
            tmpfs_bytes: 64 << 20,
            runtime: None,
            seccomp_profile: None,
            apparmor_profile: None,
            timeout: Duration::from_secs(30),
            idle: Duration::from_secs(600),
            disk_quota_bytes: 100 << 20,
            prewarm: false,
            max_containers: 16,
            engine: None,
        }
    }
}

pub(super) fn sandbox_config(
    errs: &mut Errors,
    path: &str,
    defaults: Option<&RawSandbox>,
    agent: Option<&RawSandbox>,
) -> SandboxConfig {
    // Per-agent values override the defaults key by key; errors name where the value was written.
    fn pick<'a, T>(
        agent: Option<&'a RawSandbox>,
        defaults: Option<&'a RawSandbox>,
        path: &str,
        key: &str,
        f: impl Fn(&'a RawSandbox) -> Option<T>,
    ) -> (Option<T>, String) {
        match agent.and_then(&f) {
            Some(v) => (Some(v), format!("{path}.sandbox.{key}")),
            None => (defaults.and_then(&f), format!("agents.defaults.sandbox.{key}")),
        }
    }
    let (mode, p) = pick(agent, defaults, path, "mode", |s| s.mode.as_deref());
    let mode = one_of(
        errs,
        &p,
        mode,
        SandboxMode::All,
        &[("off", SandboxMode::Off), ("non-main", SandboxMode::NonMain), ("all", SandboxMode::All)],
    );
    let (scope, p) = pick(agent, defaults, path, "scope", |s| s.scope.as_deref());
    let scope = one_of(
        errs,
        &p,
        scope,
        SandboxScope::Agent,
        &[("session", SandboxScope::Session), ("agent", SandboxScope::Agent), ("shared", SandboxScope::Shared)],
    );
    let (backend, p) = pick(agent, defaults, path, "backend", |s| s.backend.as_deref());
    let backend = one_of(
        errs,
        &p,
        backend,
        SandboxBackend::Wasm,
        &[("wasm", SandboxBackend::Wasm), ("docker", SandboxBackend::Docker)],
    );
    let (access, p) = pick(agent, defaults, path, "workspaceAccess", |s| s.workspace_access.as_deref());
    let workspace_access = one_of(
        errs,
        &p,
        access,
        WorkspaceAccess::Rw,
        &[("none", WorkspaceAccess::None), ("ro", WorkspaceAccess::Ro), ("rw", WorkspaceAccess::Rw)],
    );
    let (a, d) = (agent.and_then(|s| s.wasm.as_ref()), defaults.and_then(|s| s.wasm.as_ref()));
    let get = |f: fn(&RawWasmSandbox) -> Option<u64>| a.and_then(f).or_else(|| d.and_then(f));
    let wasm = WasmSettings {
        fuel: get(|w| w.fuel).unwrap_or(2_000_000_000),
        memory_bytes: get(|w| w.memory_mb).unwrap_or(64) << 20,
        timeout: Duration::from_secs(get(|w| w.timeout_sec).unwrap_or(30).max(1)),
        disk_quota_bytes: get(|w| w.disk_quota_mb).unwrap_or(100) << 20,
    };
    let docker =
        docker_settings(errs, path, agent.and_then(|s| s.docker.as_ref()), defaults.and_then(|s| s.docker.as_ref()));
    SandboxConfig { mode, scope, backend, workspace_access, wasm, docker }
}

/// The Docker settings of one agent (its own keys over `agents.defaults`), validated. Anything
/// that would weaken the container is refused, not ignored.
pub(super) fn docker_settings(
    errs: &mut Errors,
    path: &str,
    agent: Option<&RawDockerSandbox>,
    defaults: Option<&RawDockerSandbox>,
) -> DockerSettings {
    let pick = |f: &dyn Fn(&RawDockerSandbox) -> bool| -> (Option<&RawDockerSandbox>, bool) {
        match agent.filter(|a| f(a)) {
            Some(a) => (Some(a), true),
            None => (defaults.filter(|d| f(d)), false),
        }
    };
    // Errors name where the value was written: the agent's own key, or the defaults'.
    let at = |own: bool, k: &str| {
        if own { format!("{path}.sandbox.docker.{k}") } else { format!("agents.defaults.sandbox.docker.{k}") }
    };
    let d = DockerSettings::default();
    let mut out = d.clone();
    macro_rules! field {
        ($f:ident) => {{
            let (src, own) = pick(&|r: &RawDockerSandbox| r.$f.is_some());
            src.and_then(|r| r.$f.clone()).map(|v| (v, own))
        }};
    }
    if let Some((v, own)) = field!(image) {
        if v.trim().is_empty() || v.len() > 256 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errs.push(at(own, "image"), format!("invalid image reference {v:?}"));
        } else {
            out.image = v;
        }
    }
    let allow_network = field!(allow_network).is_some_and(|(v, _)| v);
    if let Some((net, own)) = field!(network) {
        if net == "host" || net.starts_with("container:") {
            errs.push(
                at(own, "network"),
                format!("network {net:?} would share the host's or another container's network; refused"),
            );
        } else if net.is_empty() || !net.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            errs.push(at(own, "network"), format!("invalid network name {net:?}"));
        } else if net != "none" && !allow_network {
            errs.push(
                at(own, "network"),
                format!(
                    "network {net:?} gives the sandbox network access (the internet, the host's and other containers' \
                     services on it); refused unless allowNetwork: true is set too"
                ),
            );
        } else {
            out.network = net;
        }
    }
    if let Some((u, own)) = field!(user) {
        let (uid, gid) = u.split_once(':').unwrap_or((&u, ""));
        let numeric = |s: &str| !s.is_empty() && s.len() <= 10 && s.chars().all(|c| c.is_ascii_digit());
        if !numeric(uid) || !(gid.is_empty() || numeric(gid)) {
            errs.push(at(own, "user"), format!("user {u:?} must be numeric: \"uid\" or \"uid:gid\""));
        } else if uid.parse::<u64>().ok() == Some(0) || gid.parse::<u64>().ok() == Some(0) {
            errs.push(at(own, "user"), format!("user {u:?} is root; sandboxes never run as root"));
        } else {
            out.user = Some(u);
        }
    }
    if let Some((false, own)) = field!(read_only_root) {
        errs.push(at(own, "readOnlyRoot"), "a writable root filesystem is refused; /tmp and /workspace are writable");
    }
    if let Some((_, own)) = field!(tmpfs) {
        errs.push(at(own, "tmpfs"), "extra tmpfs mounts are not supported; size /tmp with tmpfsMb");
    }
    if let Some((caps, own)) = field!(cap_drop)
        && caps != ["ALL"]
    {
        errs.push(at(own, "capDrop"), "all capabilities are always dropped; only [\"ALL\"] is accepted");
    }
    if let Some((env, own)) = field!(env)
        && !env.is_empty()
    {
        errs.push(at(own, "env"), "environment variables are never passed into a sandbox (no secrets in containers)");
    }
    if let Some((n, own)) = field!(pids_limit) {
        if (16..=65_536).contains(&n) {
            out.pids_limit = n;
        } else {
            errs.push(at(own, "pidsLimit"), format!("pidsLimit {n} is outside 16..=65536"));
        }
    }
    if let Some((m, own)) = field!(memory) {
        match parse_size(&m) {
            Some(b) if (16 << 20..=1 << 40).contains(&b) => out.memory_bytes = b as i64,
            _ => errs.push(at(own, "memory"), format!("memory {m:?} must be a size from 16m to 1t, like \"512m\"")),
        }
    }
    if let Some((sw, own)) = field!(memory_swap)
        && parse_size(&sw) != Some(out.memory_bytes as u64)
    {
        errs.push(at(own, "memorySwap"), "swap is disabled: memorySwap, if set, must equal memory");
    }
    if let Some((c, own)) = field!(cpus) {
        if c.is_finite() && (0.01..=64.0).contains(&c) {
            out.nano_cpus = (c * 1e9) as i64;
        } else {
            errs.push(at(own, "cpus"), format!("cpus {c} is outside 0.01..=64"));
        }
    }
    if let Some((u, own)) = field!(ulimits) {
        for (name, v) in &u {
            match (name.as_str(), v.as_i64()) {
                ("nofile", Some(n)) if (64..=1_048_576).contains(&n) => out.nofile = n,
                ("nofile", _) => errs.push(at(own, "ulimits.nofile"), "nofile must be a number in 64..=1048576"),
                (other, _) => errs.push(
                    at(own, &format!("ulimits.{other}")),
                    format!("ulimit {other:?} is not supported (only nofile; processes are bounded by pidsLimit)"),
                ),
            }
        }
    }
    if let Some((p, own)) = field!(seccomp_profile) {
        match p.as_str() {
            "unconfined" => errs.push(at(own, "seccompProfile"), "seccomp \"unconfined\" is refused"),
            "default" => {}
            file => out.seccomp_profile = Some(std::path::PathBuf::from(file)),
        }
    }
    if let Some((p, own)) = field!(apparmor_profile) {
        if p == "unconfined" {
            errs.push(at(own, "apparmorProfile"), "apparmor \"unconfined\" is refused");
        } else {
            out.apparmor_profile = Some(p);
        }
    }
    if let Some((r, own)) = field!(runtime) {
        if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            errs.push(at(own, "runtime"), format!("invalid runtime name {r:?}"));
        } else {
            out.runtime = Some(r);
        }
    }
    if let Some((mb, own)) = field!(tmpfs_mb) {
        if (1..=16_384).contains(&mb) {
            out.tmpfs_bytes = mb << 20;
        } else {
            errs.push(at(own, "tmpfsMb"), format!("tmpfsMb {mb} is outside 1..=16384"));
        }
    }
    if let Some((t, own)) = field!(timeout_sec) {
        if (1..=3600).contains(&t) {
            out.timeout = Duration::from_secs(t);
        } else {
            errs.push(at(own, "timeoutSec"), format!("timeoutSec {t} is outside 1..=3600"));
        }
    }
    if let Some((t, own)) = field!(idle_sec) {
        if (10..=7 * 86_400).contains(&t) {
            out.idle = Duration::from_secs(t);
        } else {
            errs.push(at(own, "idleSec"), format!("idleSec {t} is outside 10..=604800"));
        }
    }
    if let Some((mb, _)) = field!(disk_quota_mb) {
        out.disk_quota_bytes = mb.saturating_mul(1 << 20);
    }
    if let Some((p, _)) = field!(prewarm) {
        out.prewarm = p;
    }
    if let Some((n, own)) = field!(max_containers) {
        if (1..=1024).contains(&n) {
            out.max_containers = n;
        } else {
            errs.push(at(own, "maxContainers"), format!("maxContainers {n} is outside 1..=1024"));
        }
    }
    out
}

/// `512m`, `1g`, `64MiB`, `1048576` (bytes) → bytes.
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

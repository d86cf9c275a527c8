//! Stage two: `RawConfig` → `Config`, with defaults applied and every cross-reference checked.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ConfigError;
use super::raw::*;
use super::secret::SecretRef;
use crate::ids::{AgentId, PeerKind, TenantId, validate_peer};
use crate::quota::QuotaLimits;
use crate::scheduler::TenantShare;
use crate::tools::parse_policy_name;

/// A checked config. Internal: not `Serialize`, and secrets are still references.
#[derive(Debug, Clone)]
pub struct Config {
    /// Folder that relative paths (secret files, `stateDir`) resolve against.
    pub base_dir: PathBuf,
    pub gateway: GatewayConfig,
    pub logging: LoggingConfig,
    pub state_dir: PathBuf,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub tenants: BTreeMap<TenantId, TenantConfig>,
    /// In declaration order.
    pub agents: Vec<AgentConfig>,
    pub default_agent: Option<AgentId>,
    pub bindings: Vec<Binding>,
    pub channels: ChannelsConfig,
    /// The global tool-policy layer.
    pub tools: ToolLayer,
    pub max_concurrent: usize,
    /// Policy files referenced by tenants and agents, and the keys they must be signed with.
    pub policies: PolicySettings,
    /// Scheduling share of tenants that set none.
    pub scheduling_default: TenantShare,
    /// The encrypted session store and retention.
    pub store: StoreConfig,
    /// Usage quotas: the global default and each tenant's effective limits.
    pub quotas: QuotaSettings,
    /// Tenants' own model-provider keys: tenant → provider name → key.
    pub model_keys: BTreeMap<TenantId, BTreeMap<String, SecretRef>>,
    /// Things that load but deserve the operator's attention (literal secrets, ...).
    pub warnings: Vec<String>,
}

impl Config {
    pub fn agent(&self, id: &AgentId) -> Option<&AgentConfig> {
        self.agents.iter().find(|a| &a.id == id)
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub bind: SocketAddr,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub operators: Vec<OperatorConfig>,
    pub auth_max_failures: u32,
    pub auth_window: Duration,
    pub auth_lockout: Duration,
    /// `gateway.auth.trustedProxy`, when clients come through a reverse proxy.
    pub trusted_proxy: Option<crate::gateway::TrustedProxy>,
    /// `gateway.tls`: certificate and key files (absolute), when HTTPS is configured.
    pub tls: Option<TlsFiles>,
    /// `gateway.minFreeDiskMb`: below this much free space on the state directory's filesystem
    /// tool calls are refused (the gateway keeps serving and auditing in what is left).
    pub min_free_disk_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorRole {
    Admin,
    Operator,
    Auditor,
}

#[derive(Debug, Clone)]
pub struct OperatorConfig {
    pub id: String,
    pub token: SecretRef,
    pub role: OperatorRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderApi {
    OpenAi,
    Anthropic,
    Scripted,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub api: ProviderApi,
    pub base_url: String,
    pub api_key: Option<SecretRef>,
    pub timeout: Duration,
    pub max_tokens: u32,
    /// Tenants without their own key may use `api_key`.
    pub allow_shared_key: bool,
    /// Most requests in flight per key.
    pub max_concurrent: usize,
    /// Retries of an upstream 429/529.
    pub max_retries: u32,
}

/// Quota limits: the global default and the effective limits of every tenant that sets its own.
#[derive(Debug, Clone, Default)]
pub struct QuotaSettings {
    pub default: QuotaLimits,
    pub tenants: BTreeMap<TenantId, QuotaLimits>,
}

impl QuotaSettings {
    pub fn for_tenant(&self, tenant: &TenantId) -> QuotaLimits {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub id: TenantId,
    pub name: String,
    pub api_tokens: Vec<SecretRef>,
    pub tools: ToolLayer,
    pub share: TenantShare,
    /// Declared in `tenants` (rather than implied by an agent without a `tenant` key).
    pub explicit: bool,
}

/// Where transcripts go (`store.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// The encrypted store under `stateDir`, with the audit log (needs `store.masterKey`).
    Encrypted,
    /// In memory only, no audit log: said explicitly, never assumed. Not for production.
    Memory,
}

/// The encrypted session store: master key reference and retention (global and per tenant).
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// Set when `store.masterKey` is (then `mode` is `Encrypted`).
    pub master_key: Option<SecretRef>,
    /// `None` when the config says neither `store.masterKey` nor `store.mode`: `serve` refuses.
    pub mode: Option<StoreMode>,
    pub retention_days: Option<u32>,
    pub tenant_retention_days: BTreeMap<TenantId, u32>,
}

/// One layer of tool policy as written (names validated, not yet expanded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolLayer {
    pub allow: Option<Vec<String>>,
    pub deny: Vec<String>,
}

/// Policy files named in the config (read and checked by `policy::PolicyEngine::load`).
#[derive(Debug, Clone, Default)]
pub struct PolicySettings {
    pub require_signature: bool,
    /// Trusted Ed25519 public keys.
    pub trusted_keys: Vec<[u8; 32]>,
    pub tenant_files: BTreeMap<TenantId, PolicyRef>,
    pub defaults_file: Option<PolicyRef>,
    pub agent_files: BTreeMap<AgentId, PolicyRef>,
}

/// Why `serve` refuses a config that names no store (shared by `serve`, `config check`, `doctor`).
pub const NO_STORE_MODE: &str = "neither store.masterKey nor store.mode is set: set store.masterKey for the \
     encrypted store and the audit log, or store: { mode: \"memory\" } to keep nothing (not for production)";

impl StoreConfig {
    /// The store `serve` opens, or why it refuses to start (fail closed: memory only when said).
    pub fn require_mode(&self) -> Result<StoreMode, &'static str> {
        self.mode.ok_or(NO_STORE_MODE)
    }
}

impl PolicySettings {
    /// Every policy file reference: tenants', then `agents.defaults`', then agents'.
    pub fn refs(&self) -> impl Iterator<Item = &PolicyRef> {
        self.tenant_files.values().chain(self.defaults_file.iter()).chain(self.agent_files.values())
    }
}

/// A reference to a policy file: as written, resolved against the config's folder, and the key
/// path it was written at (for error messages and `policy explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    pub written: String,
    pub path: PathBuf,
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct ModelRef {
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub name: Option<String>,
    pub emoji: Option<String>,
    pub avatar: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub id: AgentId,
    pub tenant: TenantId,
    pub display_name: String,
    pub identity: Identity,
    pub model: ModelRef,
    pub system_prompt: Option<String>,
    pub max_tool_rounds: u32,
    pub workspace: Option<PathBuf>,
    pub sandbox: SandboxConfig,
    pub tools: ToolLayer,
    pub defaults_tools: ToolLayer,
}

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
        }
    }
}

/// Routes inbound chat traffic to an agent. Most specific wins: peer > guild/team > account > channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub agent: AgentId,
    pub channel: String,
    pub account_id: Option<String>,
    pub peer: Option<(PeerKind, String)>,
    pub guild_id: Option<String>,
    pub team_id: Option<String>,
}

impl Binding {
    /// Higher is more specific.
    pub fn specificity(&self) -> u8 {
        if self.peer.is_some() {
            3
        } else if self.guild_id.is_some() || self.team_id.is_some() {
            2
        } else if self.account_id.is_some() {
            1
        } else {
            0
        }
    }
}

/// Chat channels present in the config. Adapters read their own block.
#[derive(Debug, Clone, Default)]
pub struct ChannelsConfig {
    /// Enabled chat channels, by name.
    pub enabled: Vec<&'static str>,
    pub webchat_enabled: bool,
    /// Accounts per channel (the implicit `default` account when none are listed).
    pub accounts: BTreeMap<&'static str, BTreeSet<String>>,
    /// Telegram bots to poll (empty when the channel is absent or disabled).
    pub telegram: Vec<crate::channels::telegram::config::TelegramAccount>,
}

/// Names of chat channels the schema knows.
pub const CHANNELS: [&str; 7] = ["discord", "slack", "telegram", "whatsapp", "signal", "imessage", "webchat"];

const DEFAULT_BIND: &str = "127.0.0.1:7878";

/// Errors of a validation pass, each with its key path (adapters' passes use it too).
pub(crate) struct Errors(pub(crate) Vec<ConfigError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::at(path, message));
    }
}

pub(crate) fn one_of<T: Copy>(
    errs: &mut Errors,
    path: &str,
    raw: Option<&str>,
    default: T,
    choices: &[(&str, T)],
) -> T {
    let Some(raw) = raw else { return default };
    match choices.iter().find(|(name, _)| *name == raw) {
        Some((_, v)) => *v,
        None => {
            let names: Vec<_> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            errs.push(path, format!("invalid value {raw:?}: expected one of {}", names.join(", ")));
            default
        }
    }
}

fn tool_layer(errs: &mut Errors, path: &str, raw: Option<&RawToolPolicy>) -> ToolLayer {
    let Some(raw) = raw else { return ToolLayer::default() };
    let mut check = |list: &Option<Vec<String>>, key: &str| {
        for (i, name) in list.iter().flatten().enumerate() {
            if let Err(e) = parse_policy_name(name) {
                errs.push(format!("{path}.{key}[{i}]"), e);
            }
        }
    };
    check(&raw.allow, "allow");
    check(&raw.deny, "deny");
    ToolLayer { allow: raw.allow.clone(), deny: raw.deny.clone().unwrap_or_default() }
}

fn policy_ref(errs: &mut Errors, base: &Path, key: String, raw: Option<&String>) -> Option<PolicyRef> {
    let written = raw?;
    if written.trim().is_empty() {
        errs.push(key, "empty policy file path");
        return None;
    }
    Some(PolicyRef { written: written.clone(), path: base.join(written), key })
}

fn secret(errs: &mut Errors, warnings: &mut Vec<String>, path: &str, s: &SecretRef) {
    let _ = errs;
    if s.is_literal() {
        warnings.push(format!("{path}: literal secret in the config; use {{ env: \"NAME\" }} or {{ file: \"PATH\" }}"));
    }
}

fn retention_days(errs: &mut Errors, path: &str, r: Option<&RawRetention>) -> Option<u32> {
    let days = r?.days?;
    if days == 0 || days > 36_500 {
        errs.push(path, format!("retention must be 1-36500 days, got {days}"));
        return None;
    }
    Some(days)
}

/// `gateway.tls`: both files or neither; with `required`, no plaintext on a non-loopback address.
fn tls_files(errs: &mut Errors, tls: Option<&RawTls>, bind: SocketAddr, base: &Path) -> Option<TlsFiles> {
    let tls = tls?;
    let files = match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => Some(TlsFiles { cert: base.join(c), key: base.join(k) }),
        (Some(_), None) => {
            errs.push("gateway.tls.key", "missing key: a certificate needs its private key");
            None
        }
        (None, Some(_)) => {
            errs.push("gateway.tls.cert", "missing key: a private key needs its certificate");
            None
        }
        (None, None) => None,
    };
    if tls.required == Some(true)
        && files.is_none()
        && !bind.ip().is_loopback()
        && tls.cert.is_none() == tls.key.is_none()
    {
        errs.push(
            "gateway.tls.required",
            format!(
                "plaintext HTTP on the non-loopback address {bind} is refused; set gateway.tls.cert and gateway.tls.key, or bind to 127.0.0.1"
            ),
        );
    }
    files
}

/// `gateway.auth.trustedProxy`: a header name and at least one proxy address or CIDR range.
fn trusted_proxy(errs: &mut Errors, raw: Option<&RawTrustedProxy>) -> Option<crate::gateway::TrustedProxy> {
    let raw = raw?;
    let path = "gateway.auth.trustedProxy";
    let header = match raw.header.as_deref().map(|h| axum::http::HeaderName::try_from(h.to_ascii_lowercase())) {
        None => {
            errs.push(format!("{path}.header"), "missing key (for example \"x-forwarded-for\")");
            None
        }
        Some(Err(_)) => {
            errs.push(format!("{path}.header"), "not a valid HTTP header name");
            None
        }
        Some(Ok(h)) => Some(h),
    };
    let mut from = Vec::new();
    for (i, entry) in raw.from.iter().flatten().enumerate() {
        let net = entry.parse::<ipnet::IpNet>().or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(net) => from.push(net.trunc()),
            Err(_) => errs.push(
                format!("{path}.from[{i}]"),
                format!("invalid address {entry:?}: expected an IP address or CIDR range such as \"10.0.0.0/8\""),
            ),
        }
    }
    if raw.from.as_ref().is_none_or(|f| f.is_empty()) {
        errs.push(format!("{path}.from"), "list the proxy's addresses; the header is believed only from them");
    }
    Some(crate::gateway::TrustedProxy { header: header?, from })
}

/// Checks a raw config and applies defaults. `base` resolves relative paths.
pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors(Vec::new());
    let mut warnings = Vec::new();

    // gateway
    let g = raw.gateway.unwrap_or_default();
    let bind_text = g.bind.as_deref().unwrap_or(DEFAULT_BIND);
    let bind = match bind_text {
        "loopback" => DEFAULT_BIND.parse().ok(),
        other => other.parse::<SocketAddr>().ok(),
    };
    let bind = bind.unwrap_or_else(|| {
        errs.push(
            "gateway.bind",
            format!("invalid address {bind_text:?}: expected IP:PORT such as \"127.0.0.1:7878\""),
        );
        DEFAULT_BIND.parse().expect("default bind parses")
    });
    let mut operators = Vec::new();
    for (i, op) in g.operators.iter().flatten().enumerate() {
        let path = format!("gateway.operators[{i}]");
        let role = one_of(
            &mut errs,
            &format!("{path}.role"),
            op.role.as_deref(),
            // Least privilege when unsaid: read-only.
            OperatorRole::Auditor,
            &[("admin", OperatorRole::Admin), ("operator", OperatorRole::Operator), ("auditor", OperatorRole::Auditor)],
        );
        let id = op.id.clone().unwrap_or_else(|| {
            errs.push(format!("{path}.id"), "missing key");
            String::new()
        });
        if !id.is_empty() && operators.iter().any(|o: &OperatorConfig| o.id == id) {
            errs.push(
                format!("{path}.id"),
                format!("operator id {id:?} is used twice; audit records name operators by id"),
            );
        }
        match &op.token {
            Some(t) => {
                secret(&mut errs, &mut warnings, &format!("{path}.token"), t);
                operators.push(OperatorConfig { id, token: t.clone(), role });
            }
            None => errs.push(format!("{path}.token"), "missing key"),
        }
    }
    let auth = g.auth.unwrap_or_default();
    let max_body_bytes = g.max_body_bytes.unwrap_or(1 << 20);
    if !(1024..=64 << 20).contains(&max_body_bytes) {
        errs.push("gateway.maxBodyBytes", "must be between 1024 and 67108864");
    }
    let min_free_disk_mb = g.min_free_disk_mb.unwrap_or(256);
    if min_free_disk_mb > 1 << 30 {
        errs.push("gateway.minFreeDiskMb", format!("minFreeDiskMb {min_free_disk_mb} is more than 1073741824"));
    }
    let gateway = GatewayConfig {
        min_free_disk_bytes: min_free_disk_mb.min(1 << 30) << 20,
        bind,
        max_body_bytes: max_body_bytes as usize,
        shutdown_grace: Duration::from_secs(g.shutdown_grace_sec.unwrap_or(10)),
        operators,
        auth_max_failures: auth.max_failures.unwrap_or(10).max(1),
        auth_window: Duration::from_secs(auth.window_sec.unwrap_or(60).max(1)),
        auth_lockout: Duration::from_secs(auth.lockout_sec.unwrap_or(300)),
        trusted_proxy: trusted_proxy(&mut errs, auth.trusted_proxy.as_ref()),
        tls: tls_files(&mut errs, g.tls.as_ref(), bind, base),
    };

    let l = raw.logging.unwrap_or_default();
    let logging = LoggingConfig {
        format: one_of(
            &mut errs,
            "logging.format",
            l.format.as_deref(),
            LogFormat::Text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        ),
        level: l.level.unwrap_or_else(|| "info".into()),
    };

    let state_dir = base.join(raw.state_dir.as_deref().unwrap_or(".bulkhead"));
    let raw_store = raw.store.unwrap_or_default();
    let written_mode = one_of(
        &mut errs,
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
    let mut store = StoreConfig {
        master_key: raw_store.master_key,
        mode,
        retention_days: retention_days(&mut errs, "retention.days", raw.retention.as_ref()),
        tenant_retention_days: BTreeMap::new(),
    };
    if let Some(k) = &store.master_key {
        secret(&mut errs, &mut warnings, "store.masterKey", k);
    }

    // models
    let mut providers = BTreeMap::new();
    for (name, p) in raw.models.and_then(|m| m.providers).unwrap_or_default() {
        let path = format!("models.providers.{name}");
        if name.is_empty() || name.contains('/') {
            errs.push(&path, "provider names may not be empty or contain '/'");
        }
        let api = match p.api.as_deref() {
            None => {
                errs.push(format!("{path}.api"), "missing key (\"openai\", \"anthropic\" or \"scripted\")");
                ProviderApi::Scripted
            }
            Some(a) => one_of(
                &mut errs,
                &format!("{path}.api"),
                Some(a),
                ProviderApi::Scripted,
                &[
                    ("openai", ProviderApi::OpenAi),
                    ("anthropic", ProviderApi::Anthropic),
                    ("scripted", ProviderApi::Scripted),
                ],
            ),
        };
        let default_url = match api {
            ProviderApi::OpenAi => "https://api.openai.com/v1",
            ProviderApi::Anthropic => "https://api.anthropic.com/v1",
            ProviderApi::Scripted => "",
        };
        let base_url = p.base_url.clone().unwrap_or_else(|| default_url.to_string());
        if api != ProviderApi::Scripted && !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            errs.push(format!("{path}.baseUrl"), format!("invalid URL {base_url:?}: expected http:// or https://"));
        }
        if let Some(k) = &p.api_key {
            secret(&mut errs, &mut warnings, &format!("{path}.apiKey"), k);
        }
        providers.insert(
            name.clone(),
            ProviderConfig {
                name,
                api,
                base_url: base_url.trim_end_matches('/').to_string(),
                api_key: p.api_key,
                timeout: Duration::from_secs(p.timeout_sec.unwrap_or(120).max(1)),
                max_tokens: p.max_tokens.unwrap_or(4096),
                allow_shared_key: p.allow_shared_key.unwrap_or(true),
                max_concurrent: provider_limit(
                    &mut errs,
                    &format!("{path}.maxConcurrent"),
                    p.max_concurrent,
                    16,
                    1..=1024,
                ),
                max_retries: provider_limit(&mut errs, &format!("{path}.maxRetries"), p.max_retries, 3, 0..=10) as u32,
            },
        );
    }
    if providers.is_empty() {
        // With no providers configured, the offline scripted provider is the one model there is.
        providers.insert(
            "scripted".into(),
            ProviderConfig {
                name: "scripted".into(),
                api: ProviderApi::Scripted,
                base_url: String::new(),
                api_key: None,
                timeout: Duration::from_secs(30),
                max_tokens: 4096,
                allow_shared_key: true,
                max_concurrent: 1024,
                max_retries: 0,
            },
        );
    }

    // global tools
    let tools = tool_layer(&mut errs, "tools", raw.tools.as_ref());

    // policy files and their trust
    let mut policies = PolicySettings::default();
    let p = raw.policies.unwrap_or_default();
    policies.require_signature = p.require_signature.unwrap_or(false);
    for (i, k) in p.trusted_keys.iter().flatten().enumerate() {
        match crate::policy::signature::parse_public_key(k) {
            Ok(key) => policies.trusted_keys.push(key),
            Err(e) => errs.push(format!("policies.trustedKeys[{i}]"), e),
        }
    }
    if policies.require_signature && p.trusted_keys.as_ref().is_none_or(|k| k.is_empty()) {
        errs.push("policies.trustedKeys", "requireSignature is true but no trusted keys are listed");
    }
    // scheduling
    let default_share = share(&mut errs, "scheduling", raw.scheduling.as_ref(), TenantShare::default());

    // tenants
    let mut tenants = BTreeMap::new();
    for (i, t) in raw.tenants.iter().flatten().enumerate() {
        let path = format!("tenants[{i}]");
        let Some(id_raw) = &t.id else {
            errs.push(format!("{path}.id"), "missing key");
            continue;
        };
        let id = match TenantId::parse(id_raw) {
            Ok(id) => id,
            Err(e) => {
                errs.push(format!("{path}.id"), e);
                continue;
            }
        };
        for (j, tok) in t.api_tokens.iter().flatten().enumerate() {
            secret(&mut errs, &mut warnings, &format!("{path}.apiTokens[{j}]"), tok);
        }
        let layer = tool_layer(&mut errs, &format!("{path}.tools"), t.tools.as_ref());
        let tenant_share = share(&mut errs, &format!("{path}.scheduling"), t.scheduling.as_ref(), default_share);
        if let Some(days) = retention_days(&mut errs, &format!("{path}.retention.days"), t.retention.as_ref()) {
            store.tenant_retention_days.insert(id.clone(), days);
        }
        if tenants.contains_key(&id) {
            errs.push(format!("{path}.id"), format!("duplicate tenant id {:?}", id.as_str()));
            continue;
        }
        if let Some(r) = policy_ref(&mut errs, base, format!("{path}.policy"), t.policy.as_ref()) {
            policies.tenant_files.insert(id.clone(), r);
        }
        tenants.insert(
            id.clone(),
            TenantConfig {
                name: t.name.clone().unwrap_or_else(|| id.to_string()),
                id,
                api_tokens: t.api_tokens.clone().unwrap_or_default(),
                tools: layer,
                share: tenant_share,
                explicit: true,
            },
        );
    }

    // agents
    let agents_raw = raw.agents.unwrap_or_default();
    let defaults = agents_raw.defaults.unwrap_or_default();
    let default_model = defaults.model.clone();
    let max_concurrent = defaults.max_concurrent.unwrap_or(4);
    if max_concurrent == 0 || max_concurrent > 1024 {
        errs.push("agents.defaults.maxConcurrent", "must be between 1 and 1024");
    }
    let defaults_tools = tool_layer(&mut errs, "agents.defaults.tools", defaults.tools.as_ref());
    policies.defaults_file = policy_ref(&mut errs, base, "agents.defaults.policy".into(), defaults.policy.as_ref());
    let mut agents: Vec<AgentConfig> = Vec::new();
    // Agent id → its tenant: every cross-reference below is a lookup, so validation stays linear.
    let mut agent_tenants: HashMap<AgentId, TenantId> = HashMap::new();
    let mut default_agent = None;
    for (i, a) in agents_raw.list.iter().flatten().enumerate() {
        let path = format!("agents.list[{i}]");
        let Some(id_raw) = &a.id else {
            errs.push(format!("{path}.id"), "missing key");
            continue;
        };
        let id = match AgentId::parse(id_raw) {
            Ok(id) => id,
            Err(e) => {
                errs.push(format!("{path}.id"), e);
                continue;
            }
        };
        if agent_tenants.contains_key(&id) {
            errs.push(format!("{path}.id"), format!("duplicate agent id {:?}", id.as_str()));
            continue;
        }
        let tenant = match &a.tenant {
            Some(t) => match TenantId::parse(t) {
                Ok(t) if tenants.get(&t).is_some_and(|x: &TenantConfig| x.explicit) => t,
                Ok(t) => {
                    errs.push(
                        format!("{path}.tenant"),
                        format!("unknown tenant {:?} (declare it in tenants)", t.as_str()),
                    );
                    continue;
                }
                Err(e) => {
                    errs.push(format!("{path}.tenant"), e);
                    continue;
                }
            },
            // An agent without a tenant is its own tenant, so single-tenant configs need no new keys.
            None => {
                let t = TenantId::parse(id.as_str()).expect("agent ids are valid tenant ids");
                if tenants.get(&t).is_some_and(|x| x.explicit) {
                    errs.push(
                        format!("{path}.tenant"),
                        format!(
                            "agent {:?} has no tenant key but a declared tenant has its id; set tenant explicitly",
                            id.as_str()
                        ),
                    );
                    continue;
                }
                tenants.entry(t.clone()).or_insert_with(|| TenantConfig {
                    id: t.clone(),
                    name: t.to_string(),
                    api_tokens: Vec::new(),
                    tools: ToolLayer::default(),
                    share: default_share,
                    explicit: false,
                });
                t
            }
        };
        let model_text = a.model.clone().or_else(|| default_model.clone()).unwrap_or_else(|| {
            if providers.contains_key("scripted") { "scripted/scripted".into() } else { String::new() }
        });
        let model = match model_text.split_once('/') {
            Some((p, m)) if providers.contains_key(p) && !m.is_empty() => {
                ModelRef { provider: p.into(), model: m.into() }
            }
            Some((p, _)) if !providers.contains_key(p) => {
                errs.push(format!("{path}.model"), format!("unknown provider {p:?} in model {model_text:?}"));
                ModelRef { provider: p.into(), model: String::new() }
            }
            _ => {
                errs.push(
                    format!("{path}.model"),
                    format!("invalid model {model_text:?}: expected \"provider/model\""),
                );
                ModelRef { provider: String::new(), model: String::new() }
            }
        };
        let sandbox = sandbox_config(&mut errs, &path, defaults.sandbox.as_ref(), a.sandbox.as_ref());
        if sandbox.backend == SandboxBackend::Docker && sandbox.docker.network != "none" {
            warnings.push(format!(
                "{path}.sandbox.docker.network: agent {:?} runs with Docker network {:?}: its commands can reach the \
                 network; use \"none\" unless it must",
                id.as_str(),
                sandbox.docker.network
            ));
        }
        let layer = tool_layer(&mut errs, &format!("{path}.tools"), a.tools.as_ref());
        if let Some(r) = policy_ref(&mut errs, base, format!("{path}.policy"), a.policy.as_ref()) {
            policies.agent_files.insert(id.clone(), r);
        }
        let identity = a.identity.as_ref().map(|i| Identity {
            name: i.name.clone(),
            emoji: i.emoji.clone(),
            avatar: i.avatar.clone(),
        });
        let identity = identity.unwrap_or_default();
        let display_name = identity.name.clone().or_else(|| a.name.clone()).unwrap_or_else(|| id.to_string());
        if a.default == Some(true) {
            if default_agent.is_some() {
                errs.push(format!("{path}.default"), "more than one agent has default: true");
            } else {
                default_agent = Some(id.clone());
            }
        }
        let rounds = a.max_tool_rounds.or(defaults.max_tool_rounds).unwrap_or(8);
        if rounds == 0 || rounds > 64 {
            errs.push(format!("{path}.maxToolRounds"), "must be between 1 and 64");
        }
        agent_tenants.insert(id.clone(), tenant.clone());
        agents.push(AgentConfig {
            id,
            tenant,
            display_name,
            identity,
            model,
            system_prompt: a.system_prompt.clone().or_else(|| defaults.system_prompt.clone()),
            max_tool_rounds: rounds,
            workspace: a.workspace.as_ref().or(defaults.workspace.as_ref()).map(PathBuf::from),
            sandbox,
            tools: layer,
            defaults_tools: defaults_tools.clone(),
        });
    }
    let tenants_with_agents: HashSet<&TenantId> = agent_tenants.values().collect();
    for t in tenants.values() {
        if t.explicit && !tenants_with_agents.contains(&t.id) {
            warnings.push(format!("tenant {:?} has no agents", t.id.as_str()));
        }
    }

    // channels
    let mut channels = channels_config(&mut errs, &mut warnings, raw.channels.unwrap_or_default());

    // bindings
    let mut bindings: Vec<Binding> = Vec::new();
    let mut first_with_match = HashMap::new();
    for (i, b) in raw.bindings.iter().flatten().enumerate() {
        let path = format!("bindings[{i}]");
        let agent = match b.agent_id.as_deref().map(AgentId::parse) {
            None => {
                errs.push(format!("{path}.agentId"), "missing key");
                continue;
            }
            Some(Err(e)) => {
                errs.push(format!("{path}.agentId"), e);
                continue;
            }
            Some(Ok(a)) if agent_tenants.contains_key(&a) => a,
            Some(Ok(a)) => {
                errs.push(format!("{path}.agentId"), format!("unknown agent {:?}", a.as_str()));
                continue;
            }
        };
        let Some(m) = &b.match_ else {
            errs.push(format!("{path}.match"), "missing key");
            continue;
        };
        let Some(channel) = m.channel.as_deref() else {
            errs.push(format!("{path}.match.channel"), "missing key");
            continue;
        };
        let Some(channel) = CHANNELS.iter().find(|c| **c == channel).copied() else {
            errs.push(
                format!("{path}.match.channel"),
                format!("unknown channel {channel:?}: expected one of {}", CHANNELS.join(", ")),
            );
            continue;
        };
        if channel == "webchat" {
            errs.push(
                format!("{path}.match.channel"),
                "the web chat is routed by tenant token and agent id, not by bindings; this binding can never match",
            );
            continue;
        }
        if !channels.enabled.contains(&channel) {
            errs.push(
                format!("{path}.match.channel"),
                format!("channel {channel:?} is not configured or is disabled, so this binding can never match"),
            );
        }
        if let Some(acc) = &m.account_id
            && acc != "*"
            && channels.accounts.get(channel).is_some_and(|set| !set.contains(acc))
        {
            errs.push(
                format!("{path}.match.accountId"),
                format!("channel {channel:?} has no account {acc:?}, so this binding can never match"),
            );
        }
        if m.guild_id.is_some() && channel != "discord" {
            errs.push(format!("{path}.match.guildId"), format!("guildId applies to discord only, not {channel:?}"));
        }
        if m.team_id.is_some() && channel != "slack" {
            errs.push(format!("{path}.match.teamId"), format!("teamId applies to slack only, not {channel:?}"));
        }
        let peer = match &m.peer {
            None => None,
            Some(p) => {
                let kind = match p.kind.as_deref().map(|k| (k, PeerKind::parse(k))) {
                    Some((_, Some(k))) => Some(k),
                    Some((k, None)) => {
                        errs.push(
                            format!("{path}.match.peer.kind"),
                            format!("invalid value {k:?}: expected \"direct\", \"group\" or \"channel\""),
                        );
                        None
                    }
                    None => {
                        errs.push(format!("{path}.match.peer.kind"), "missing key");
                        None
                    }
                };
                let id = match p.id.as_deref() {
                    Some(id) if id == "*" || validate_peer(id).is_ok() => Some(id.to_string()),
                    Some(id) => {
                        errs.push(format!("{path}.match.peer.id"), format!("invalid peer id {id:?}"));
                        None
                    }
                    None => {
                        errs.push(format!("{path}.match.peer.id"), "missing key");
                        None
                    }
                };
                kind.zip(id)
            }
        };
        let binding = Binding {
            agent,
            channel: channel.to_string(),
            account_id: m.account_id.clone(),
            peer,
            guild_id: m.guild_id.clone(),
            team_id: m.team_id.clone(),
        };
        let key = (
            binding.channel.clone(),
            binding.account_id.clone(),
            binding.peer.clone(),
            binding.guild_id.clone(),
            binding.team_id.clone(),
        );
        if let Some(j) = first_with_match.get(&key) {
            errs.push(&path, format!("same match as bindings[{j}], so this binding can never match"));
        } else {
            first_with_match.insert(key, i);
        }
        bindings.push(binding);
    }

    let (quotas, model_keys) =
        quotas_and_keys(&mut errs, &mut warnings, (raw.quotas.as_ref(), raw.tenants.as_deref()), &providers, &agents);

    one_tenant_per_account(&mut errs, &mut channels.telegram, &bindings, &agent_tenants, default_agent.as_ref());

    let errors = errs.0;
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        base_dir: base.to_path_buf(),
        gateway,
        logging,
        state_dir,
        providers,
        tenants,
        agents,
        default_agent,
        bindings,
        channels,
        tools,
        max_concurrent: max_concurrent as usize,
        policies,
        scheduling_default: default_share,
        store,
        quotas,
        model_keys,
        warnings,
    })
}

/// A bot account belongs to one tenant: every binding that can take its traffic (and the
/// default agent, when some of it may match no binding) must lead to agents of one tenant, so a
/// broad binding can never carry one tenant's chats to another tenant's agent. Records that
/// tenant on the account (where its chat inbox lives).
fn one_tenant_per_account(
    errs: &mut Errors,
    accounts: &mut [crate::channels::telegram::config::TelegramAccount],
    bindings: &[Binding],
    agent_tenants: &HashMap<AgentId, TenantId>,
    default_agent: Option<&AgentId>,
) {
    /// What the bindings of one account key (or of every account: no key or `*`) reach.
    #[derive(Default)]
    struct Reach<'a> {
        tenants: BTreeSet<&'a str>,
        catch_all: bool,
    }
    /// Tenants named in one error; more only repeat the point.
    const SHOWN: usize = 5;
    let tenant_of = |id: &AgentId| agent_tenants.get(id).map(|t| t.as_str());
    // One pass over the bindings, then one lookup per account: linear in the config's size.
    let mut every = Reach::default();
    let mut by_account: HashMap<&str, Reach> = HashMap::new();
    for b in bindings.iter().filter(|b| b.channel == "telegram") {
        let reach = match b.account_id.as_deref() {
            None | Some("*") => &mut every,
            Some(a) => by_account.entry(a).or_default(),
        };
        reach.tenants.extend(tenant_of(&b.agent));
        reach.catch_all |= b.specificity() <= 1;
    }
    for acc in accounts {
        let own = by_account.get(acc.id.as_str());
        // Past SHOWN + 1 of the shared tenants the answer and the message are the same.
        let mut tenants: BTreeSet<&str> = every.tenants.iter().take(SHOWN + 1).copied().collect();
        tenants.extend(own.iter().flat_map(|r| r.tenants.iter().copied()));
        let catch_all = every.catch_all || own.is_some_and(|r| r.catch_all);
        if !catch_all && let Some(t) = default_agent.and_then(tenant_of) {
            tenants.insert(t);
        }
        if tenants.len() == 1 {
            acc.tenant = tenants.first().and_then(|t| TenantId::parse(t).ok());
        }
        if tenants.len() > 1 {
            let mut list: Vec<&str> = tenants.iter().take(SHOWN).copied().collect();
            if tenants.len() > SHOWN {
                list.push("and others");
            }
            errs.push(
                format!("channels.telegram.accounts.{}", acc.id),
                format!(
                    "its traffic can reach agents of tenants {}; a bot belongs to one tenant: bind it with accountId {:?} to that tenant's agents only",
                    list.join(", "),
                    acc.id
                ),
            );
        }
    }
}

fn provider_limit(
    errs: &mut Errors,
    path: &str,
    raw: Option<u32>,
    default: usize,
    range: std::ops::RangeInclusive<u32>,
) -> usize {
    match raw {
        None => default,
        Some(v) if range.contains(&v) => v as usize,
        Some(_) => {
            errs.push(path, format!("must be between {} and {}", range.start(), range.end()));
            default
        }
    }
}

fn quota_limits(errs: &mut Errors, path: &str, raw: Option<&RawQuotas>, default: QuotaLimits) -> QuotaLimits {
    let Some(raw) = raw else { return default };
    let mut out = default;
    let mut check = |key: &str, v: Option<u64>, max: u64, slot: &mut Option<u64>| {
        if let Some(v) = v {
            if (1..=max).contains(&v) {
                *slot = Some(v);
            } else {
                errs.push(format!("{path}.{key}"), format!("must be between 1 and {max}"));
            }
        }
    };
    check("messagesPerMinute", raw.messages_per_minute.map(u64::from), 1_000_000, &mut out.messages_per_minute);
    check("modelTokensPerDay", raw.model_tokens_per_day, 1 << 50, &mut out.model_tokens_per_day);
    check("toolCallsPerMinute", raw.tool_calls_per_minute.map(u64::from), 1_000_000, &mut out.tool_calls_per_minute);
    check("sandboxSecondsPerDay", raw.sandbox_seconds_per_day, 86_400 * 1024, &mut out.sandbox_seconds_per_day);
    out
}

/// Quotas (global default, per tenant) and tenants' own provider keys. A tenant whose agent uses
/// a provider that does not share the operator's key must bring its own (fail closed).
fn quotas_and_keys(
    errs: &mut Errors,
    warnings: &mut Vec<String>,
    (global, raw_tenants): (Option<&RawQuotas>, Option<&[RawTenant]>),
    providers: &BTreeMap<String, ProviderConfig>,
    agents: &[AgentConfig],
) -> (QuotaSettings, BTreeMap<TenantId, BTreeMap<String, SecretRef>>) {
    let mut quotas =
        QuotaSettings { default: quota_limits(errs, "quotas", global, QuotaLimits::default()), ..Default::default() };
    let mut keys: BTreeMap<TenantId, BTreeMap<String, SecretRef>> = BTreeMap::new();
    let mut tenant_index = BTreeMap::new();
    for (i, t) in raw_tenants.into_iter().flatten().enumerate() {
        let path = format!("tenants[{i}]");
        let Some(id) = t.id.as_deref().and_then(|id| TenantId::parse(id).ok()) else { continue };
        tenant_index.entry(id.clone()).or_insert(i);
        if t.quotas.is_some() {
            let limits = quota_limits(errs, &format!("{path}.quotas"), t.quotas.as_ref(), quotas.default);
            quotas.tenants.insert(id.clone(), limits);
        }
        for (name, key) in t.model_keys.iter().flatten() {
            let kpath = format!("{path}.modelKeys.{name}");
            match providers.get(name) {
                None => errs.push(&kpath, format!("unknown provider {name:?}")),
                Some(p) if p.api == ProviderApi::Scripted => {
                    errs.push(&kpath, format!("provider {name:?} is scripted and takes no key"))
                }
                Some(_) => {
                    secret(errs, warnings, &kpath, key);
                    keys.entry(id.clone()).or_default().insert(name.clone(), key.clone());
                }
            }
        }
    }
    for (i, a) in agents.iter().enumerate() {
        let Some(p) = providers.get(&a.model.provider) else { continue };
        let own = keys.get(&a.tenant).is_some_and(|k| k.contains_key(&p.name));
        if p.api != ProviderApi::Scripted && !p.allow_shared_key && !own {
            let fix = match tenant_index.get(&a.tenant) {
                Some(j) => format!("add tenants[{j}].modelKeys.{}", p.name),
                None => format!("declare tenant {:?} with modelKeys.{}", a.tenant.as_str(), p.name),
            };
            errs.push(
                format!("agents.list[{i}].model"),
                format!(
                    "provider {:?} does not share the operator's key (allowSharedKey: false) and tenant {:?} has no key of its own: {fix}",
                    p.name,
                    a.tenant.as_str()
                ),
            );
        }
    }
    (quotas, keys)
}

fn share(errs: &mut Errors, path: &str, raw: Option<&RawScheduling>, default: TenantShare) -> TenantShare {
    let Some(raw) = raw else { return default };
    let mut out = default;
    if let Some(w) = raw.weight {
        if (1..=1000).contains(&w) {
            out.weight = w;
        } else {
            errs.push(format!("{path}.weight"), "must be between 1 and 1000");
        }
    }
    if let Some(p) = raw.priority {
        if p <= 9 {
            out.priority = p;
        } else {
            errs.push(format!("{path}.priority"), "must be between 0 and 9");
        }
    }
    if let Some(c) = raw.max_concurrent {
        if (1..=1024).contains(&c) {
            out.max_concurrent = c as usize;
        } else {
            errs.push(format!("{path}.maxConcurrent"), "must be between 1 and 1024");
        }
    }
    if let Some(q) = raw.max_queued {
        if q <= 100_000 {
            out.max_queued = q as usize;
        } else {
            errs.push(format!("{path}.maxQueued"), "must be at most 100000");
        }
    }
    out
}

fn sandbox_config(
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
fn docker_settings(
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
fn parse_size(s: &str) -> Option<u64> {
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

fn channels_config(errs: &mut Errors, warnings: &mut Vec<String>, raw: RawChannels) -> ChannelsConfig {
    let mut out = ChannelsConfig {
        webchat_enabled: raw.webchat.as_ref().and_then(|w| w.enabled).unwrap_or(true),
        ..Default::default()
    };
    let dm_policies = [("pairing", ()), ("allowlist", ()), ("open", ()), ("disabled", ())];
    let group_policies = [("allowlist", ()), ("open", ()), ("disabled", ())];
    if let Some(d) = &raw.defaults {
        one_of(errs, "channels.defaults.dmPolicy", d.dm_policy.as_deref(), (), &dm_policies);
        one_of(errs, "channels.defaults.groupPolicy", d.group_policy.as_deref(), (), &group_policies);
    }
    let list: [(&'static str, Option<&RawChannel>); 6] = [
        ("discord", raw.discord.as_ref()),
        ("slack", raw.slack.as_ref()),
        ("telegram", raw.telegram.as_ref()),
        ("whatsapp", raw.whatsapp.as_ref()),
        ("signal", raw.signal.as_ref()),
        ("imessage", raw.imessage.as_ref()),
    ];
    for (name, ch) in list {
        let Some(ch) = ch else { continue };
        let check = |errs: &mut Errors, warnings: &mut Vec<String>, path: String, c: &RawChannel| {
            one_of(errs, &format!("{path}.dmPolicy"), c.dm_policy.as_deref(), (), &dm_policies);
            one_of(errs, &format!("{path}.groupPolicy"), c.group_policy.as_deref(), (), &group_policies);
            if c.dm_policy.as_deref() == Some("open") && !c.allow_from.iter().flatten().any(|x| x == "*") {
                errs.push(
                    format!("{path}.allowFrom"),
                    "dmPolicy \"open\" requires allowFrom: [\"*\"] so the choice is explicit",
                );
            }
            let only = |key: &str, set: bool, platforms: &[&str], errs: &mut Errors| {
                if set && !platforms.contains(&name) {
                    errs.push(format!("{path}.{key}"), format!("{key} does not apply to {name}"));
                }
            };
            only("guilds", c.guilds.is_some(), &["discord"], errs);
            only("appToken", c.app_token.is_some(), &["slack"], errs);
            only("signingSecret", c.signing_secret.is_some(), &["slack"], errs);
            only("mode", c.mode.is_some(), &["slack"], errs);
            only("groups", c.groups.is_some(), &["telegram", "whatsapp", "signal", "imessage"], errs);
            only("channels", c.channels.is_some(), &["slack"], errs);
            only("apiUrl", c.api_url.is_some(), &["telegram"], errs);
            only("dbPath", c.db_path.is_some(), &["imessage"], errs);
            for (key, s) in [
                ("token", &c.token),
                ("botToken", &c.bot_token),
                ("appToken", &c.app_token),
                ("signingSecret", &c.signing_secret),
                ("webhookSecret", &c.webhook_secret),
            ] {
                if let Some(s) = s {
                    secret(errs, warnings, &format!("{path}.{key}"), s);
                }
            }
        };
        let path = format!("channels.{name}");
        check(errs, warnings, path.clone(), ch);
        let mut accounts = BTreeSet::new();
        for (acc, c) in ch.accounts.iter().flatten() {
            let p = format!("{path}.accounts.{acc}");
            if c.accounts.is_some() {
                errs.push(format!("{p}.accounts"), "accounts cannot be nested");
            }
            check(errs, warnings, p, c);
            if c.enabled != Some(false) {
                accounts.insert(acc.clone());
            }
        }
        if accounts.is_empty() {
            accounts.insert(ch.default_account.clone().unwrap_or_else(|| "default".into()));
        }
        if ch.enabled != Some(false) {
            out.enabled.push(name);
            out.accounts.insert(name, accounts);
        }
    }
    if out.webchat_enabled {
        out.enabled.push("webchat");
    }
    if let Some(tg) = raw.telegram.as_ref().filter(|t| t.enabled != Some(false)) {
        out.telegram = crate::channels::telegram::config::accounts(errs, raw.defaults.as_ref(), tg);
    }
    out
}

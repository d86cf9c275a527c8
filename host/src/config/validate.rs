//! Stage two: `RawConfig` → `Config`, with defaults applied and every cross-reference checked.
//!
//! `validate` runs named passes in order, each in `validate/<pass>.rs` beside the typed settings
//! it produces: `gateway` (and `logging`), `store`, `providers`, `policy` (tool layers, policy
//! files and their keys), `tenants`, `agents` (with `sandbox` for each agent), `channels` (with each
//! adapter's own pass),
//! `bindings`, then `tenants::quotas_and_keys` and the one-tenant-per-account check, which need
//! everything before them. Every pass pushes to one `Errors` collector and goes on, so all errors
//! come back at once, each with its key path.

mod agents;
mod bindings;
mod channels;
mod engines;
mod gateway;
mod policy;
mod providers;
mod sandbox;
mod store;
mod tenants;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use super::channels::ChannelsConfig;
pub use agents::{AgentConfig, Identity, ModelRef};
pub use bindings::Binding;
pub use engines::{EngineConfig, EngineTls, EnginesConfig, Endpoint, MAX_ENGINES};
pub use gateway::{GatewayConfig, LogFormat, LoggingConfig, OperatorConfig, OperatorRole, TlsFiles};
pub use policy::{PolicyRef, PolicySettings, ToolLayer};
pub use providers::{ProviderApi, ProviderConfig};
pub use sandbox::{
    DockerSettings, SandboxBackend, SandboxConfig, SandboxMode, SandboxScope, WasmSettings, WorkspaceAccess,
};
pub use store::{NO_STORE_MODE, StoreBackend, StoreConfig, StoreMode};
pub use tenants::{QuotaSettings, TenantConfig};

use super::ConfigError;
use super::raw::*;
use super::secret::SecretRef;
use crate::ids::{AgentId, TenantId};
use crate::scheduler::TenantShare;

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
    /// `sandbox.docker.engines`: the Docker engines tenants are placed on; `None`, the one local
    /// daemon (each agent's Docker settings carry its tenant's `sandbox.engine`).
    pub engines: Option<EnginesConfig>,
    /// Things that load but deserve the operator's attention (literal secrets, ...).
    pub warnings: Vec<String>,
    /// Agent id → its place in `agents` (ids are unique): a request names its agent, and a
    /// lookup must not cost a scan of every configured agent.
    agent_index: HashMap<AgentId, usize>,
}

impl Config {
    pub fn agent(&self, id: &AgentId) -> Option<&AgentConfig> {
        self.agent_index.get(id).and_then(|&i| self.agents.get(i))
    }
}

/// Names of chat channels the schema knows.
pub const CHANNELS: [&str; 7] = ["discord", "slack", "telegram", "whatsapp", "signal", "imessage", "webchat"];

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

/// The id at `path`: `None`, with the error pushed, when it is missing or invalid.
fn required_id<T>(
    errs: &mut Errors,
    path: String,
    raw: Option<&str>,
    parse: fn(&str) -> Result<T, String>,
) -> Option<T> {
    match raw.map(parse) {
        None => {
            errs.push(path, "missing key");
            None
        }
        Some(Err(e)) => {
            errs.push(path, e);
            None
        }
        Some(Ok(id)) => Some(id),
    }
}

pub(crate) fn secret(errs: &mut Errors, warnings: &mut Vec<String>, path: &str, s: &SecretRef) {
    let _ = errs;
    if s.is_literal() {
        warnings.push(format!("{path}: literal secret in the config; use {{ env: \"NAME\" }} or {{ file: \"PATH\" }}"));
    }
}

/// Checks a raw config and applies defaults. `base` resolves relative paths.
pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors(Vec::new());
    let mut warnings = Vec::new();

    let gateway = gateway::gateway(&mut errs, &mut warnings, raw.gateway, base);
    let logging = gateway::logging(&mut errs, raw.logging);
    let state_dir = base.join(raw.state_dir.as_deref().unwrap_or(".bulkhead"));
    let mut store = store::store(&mut errs, &mut warnings, raw.store, raw.retention.as_ref());
    let providers = providers::providers(&mut errs, &mut warnings, raw.models);
    let tools = policy::tool_layer(&mut errs, "tools", raw.tools.as_ref());
    let mut policies = policy::policies(&mut errs, raw.policies);
    let default_share = tenants::share(&mut errs, "scheduling", raw.scheduling.as_ref(), TenantShare::default());
    let mut tenants = tenants::tenants(
        &mut errs,
        &mut warnings,
        raw.tenants.as_ref(),
        base,
        default_share,
        (&mut store, &mut policies),
    );
    let agents::Agents { agents, agent_tenants, default_agent, max_concurrent } = agents::agents(
        &mut errs,
        &mut warnings,
        raw.agents,
        base,
        &providers,
        default_share,
        (&mut tenants, &mut policies),
    );
    let (engines, pins) = engines::engines(&mut errs, raw.sandbox.as_ref(), raw.tenants.as_ref(), base);
    let mut agents = agents;
    for a in agents.iter_mut() {
        a.sandbox.docker.engine = pins.get(&a.tenant).cloned();
        if engines.is_some() && a.sandbox.backend == SandboxBackend::Docker && a.sandbox.docker.user.is_some() {
            errs.push(
                "sandbox.docker.engines",
                format!(
                    "agent {:?} sets sandbox.docker.user: with several engines, workspaces are Docker volumes owned \
                     by the image's sandbox user (65532), so no other user can be set",
                    a.id.as_str()
                ),
            );
        }
    }
    let mut channels = channels::channels(&mut errs, &mut warnings, raw.channels.unwrap_or_default());
    let bindings = bindings::bindings(&mut errs, raw.bindings, &agent_tenants, &channels);
    let (quotas, model_keys) = tenants::quotas_and_keys(
        &mut errs,
        &mut warnings,
        (raw.quotas.as_ref(), raw.tenants.as_deref()),
        &providers,
        &agents,
    );
    channels::one_tenant_per_account(&mut errs, &mut channels, &bindings, &agent_tenants, default_agent.as_ref());

    let errors = errs.0;
    if !errors.is_empty() {
        return Err(errors);
    }
    let agent_index = agents.iter().enumerate().map(|(i, a)| (a.id.clone(), i)).collect();
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
        max_concurrent,
        policies,
        scheduling_default: default_share,
        store,
        quotas,
        model_keys,
        engines,
        warnings,
        agent_index,
    })
}

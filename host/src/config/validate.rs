//! Stage two: `RawConfig` → `Config`, with defaults applied and every cross-reference checked.
//!
//! `validate` runs named passes in order, each in `validate/<pass>.rs` beside the typed settings
//! it produces: `gateway` (and `logging`), `store`, `providers`, `policy` (tool layers, policy
//! files and their keys), `tenants`, `agents` (with `sandbox` for each agent), the channels,
//! `bindings`, then `tenants::quotas_and_keys` and the one-tenant-per-account check, which need
//! everything before them. Every pass pushes to one `Errors` collector and goes on, so all errors
//! come back at once, each with its key path.

mod agents;
mod bindings;
mod gateway;
mod policy;
mod providers;
mod sandbox;
mod store;
mod tenants;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub use agents::{AgentConfig, Identity, ModelRef};
pub use bindings::Binding;
pub use gateway::{GatewayConfig, LogFormat, LoggingConfig, OperatorConfig, OperatorRole, TlsFiles};
pub use policy::{PolicyRef, PolicySettings, ToolLayer};
pub use providers::{ProviderApi, ProviderConfig};
pub use sandbox::{
    DockerSettings, SandboxBackend, SandboxConfig, SandboxMode, SandboxScope, WasmSettings, WorkspaceAccess,
};
pub use store::{NO_STORE_MODE, StoreConfig, StoreMode};
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
    /// Things that load but deserve the operator's attention (literal secrets, ...).
    pub warnings: Vec<String>,
}

impl Config {
    pub fn agent(&self, id: &AgentId) -> Option<&AgentConfig> {
        self.agents.iter().find(|a| &a.id == id)
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

fn secret(errs: &mut Errors, warnings: &mut Vec<String>, path: &str, s: &SecretRef) {
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
    let mut channels = channels_config(&mut errs, &mut warnings, raw.channels.unwrap_or_default());
    let bindings = bindings::bindings(&mut errs, raw.bindings, &agent_tenants, &channels);
    let (quotas, model_keys) = tenants::quotas_and_keys(
        &mut errs,
        &mut warnings,
        (raw.quotas.as_ref(), raw.tenants.as_deref()),
        &providers,
        &agents,
    );
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
        max_concurrent,
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

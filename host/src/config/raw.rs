//! The config file as written: JSON5, camelCase, every struct closed to unknown keys.
//!
//! Nothing here is trusted or cross-checked; `validate` turns a `RawConfig` into a `Config`.
//! The shape is a compatible superset of OpenClaw's (`agents.list`, `bindings`, `channels`,
//! `sandbox.mode/scope`, `tools.allow/deny`), so an OpenClaw operator's config reads naturally.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::secret::SecretRef;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawConfig {
    #[serde(rename = "$schema")]
    pub schema: Option<String>,
    pub gateway: Option<RawGateway>,
    pub state_dir: Option<String>,
    pub models: Option<RawModels>,
    pub tenants: Option<Vec<RawTenant>>,
    pub agents: Option<RawAgents>,
    pub bindings: Option<Vec<RawBinding>>,
    pub channels: Option<RawChannels>,
    /// The global tool-policy layer.
    pub tools: Option<RawToolPolicy>,
    pub logging: Option<RawLogging>,
    /// Default scheduling share of every tenant.
    pub scheduling: Option<RawScheduling>,
    /// The encrypted session store (master key).
    pub store: Option<RawStore>,
    /// Global default retention of sessions.
    pub retention: Option<RawRetention>,
    /// Policy-file settings: signatures and trusted keys.
    pub policies: Option<RawPolicies>,
    /// Default quotas of every tenant (each tenant may override key by key).
    pub quotas: Option<RawQuotas>,
    /// The folder of drop-in tenant files (`*.json5`, one tenant each), relative to this file;
    /// default `tenants.d` (ignored when absent).
    pub tenants_dir: Option<String>,
    /// Gateway-wide sandbox settings: the Docker engines tenants are placed on.
    pub sandbox: Option<RawGatewaySandbox>,
}

/// `sandbox`: what the whole gateway's sandboxes share (agents' own settings are in `agents`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawGatewaySandbox {
    pub docker: Option<RawDockerEngines>,
}

/// `sandbox.docker`: several Docker engines; absent, the one local daemon as before.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawDockerEngines {
    pub engines: Option<Vec<RawEngine>>,
    /// Serve a tenant whose engine is down on the next engine of its order (default false:
    /// its tool calls fail until its engine is back).
    pub failover: Option<bool>,
    /// Seconds between health checks of every engine (default 5).
    pub health_check_sec: Option<u64>,
}

/// One Docker engine: `unix:///path` or `tcp://host:port` with mutual TLS.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawEngine {
    pub name: Option<String>,
    pub endpoint: Option<String>,
    /// Relative share of tenants (default 100).
    pub weight: Option<u32>,
    pub tls: Option<RawEngineTls>,
}

/// Mutual TLS to a TCP engine: PEM files, relative to the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawEngineTls {
    /// The CA that signed the engine's certificate.
    pub ca: Option<String>,
    /// The gateway's client certificate and its private key.
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `tenants[].sandbox`: where this tenant's sandboxes run.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTenantSandbox {
    /// The engine (a `sandbox.docker.engines[].name`) this tenant is placed on, instead of the
    /// hashing rule.
    pub engine: Option<String>,
}

/// Usage quotas of a tenant. Absent keys are unlimited (or inherit the global `quotas`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawQuotas {
    /// Turns accepted per minute (token bucket: bursts up to this many).
    pub messages_per_minute: Option<u32>,
    /// Model tokens (input + output) per UTC day.
    pub model_tokens_per_day: Option<u64>,
    /// Tool calls per minute (token bucket).
    pub tool_calls_per_minute: Option<u32>,
    /// Wall-clock seconds of sandbox tool calls per UTC day.
    pub sandbox_seconds_per_day: Option<u64>,
}

/// `policies`: how policy files referenced by tenants and agents are trusted.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPolicies {
    /// Refuse to start unless every referenced policy file carries a valid signature.
    pub require_signature: Option<bool>,
    /// Ed25519 public keys (`ed25519:` + 64 hex digits) whose signatures are accepted.
    pub trusted_keys: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawStore {
    /// The operator's master key (an age identity), `{ file: ".." }` or `{ env: ".." }`.
    pub master_key: Option<SecretRef>,
    /// `"encrypted"` (needs `masterKey`; implied by it) or `"memory"` (nothing kept, no audit
    /// log: for demos and tests). `serve` refuses a config that sets neither.
    pub mode: Option<String>,
    /// MiB of conversations kept in memory: the whole memory-only store, or the encrypted
    /// store's open sessions (default 64).
    pub cache_mb: Option<u64>,
    /// `"file"` (default: under `stateDir`) or `"postgres"` (shared by several gateways).
    pub backend: Option<String>,
    /// The PostgreSQL connection URL (`backend: "postgres"`), `{ env: ".." }` or `{ file: ".." }`.
    pub url: Option<SecretRef>,
    /// Connections each gateway keeps to PostgreSQL (default 16).
    pub pool_size: Option<u32>,
    /// Seconds a gateway holds a bot's connection lease without renewing it (default 15): a
    /// dead gateway's bots are taken over within about this long.
    pub lease_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRetention {
    /// Sessions whose last message is older than this many days are deleted.
    pub days: Option<u32>,
}

/// A tenant's share of the gateway's run slots.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawScheduling {
    pub weight: Option<u32>,
    pub priority: Option<u8>,
    pub max_concurrent: Option<u32>,
    pub max_queued: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawGateway {
    pub bind: Option<String>,
    /// Largest accepted HTTP request body.
    pub max_body_bytes: Option<u64>,
    /// How long in-flight runs may take to finish after SIGTERM.
    pub shutdown_grace_sec: Option<u64>,
    /// Tokens for `/metrics` and, later, `/admin/`.
    pub operators: Option<Vec<RawOperator>>,
    pub auth: Option<RawAuthThrottle>,
    pub tls: Option<RawTls>,
    /// Tool calls are refused while the state directory's filesystem has less free space.
    pub min_free_disk_mb: Option<u64>,
}

/// `gateway.tls`: serve HTTPS (rustls) from PEM files; `required` refuses plaintext on a
/// non-loopback address.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain (leaf first), relative to the config file.
    pub cert: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), relative to the config file.
    pub key: Option<String>,
    pub required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawOperator {
    pub id: Option<String>,
    pub token: Option<SecretRef>,
    pub role: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawAuthThrottle {
    pub max_failures: Option<u32>,
    pub window_sec: Option<u64>,
    pub lockout_sec: Option<u64>,
    /// A reverse proxy whose client-address header tells clients apart.
    pub trusted_proxy: Option<RawTrustedProxy>,
}

/// `gateway.auth.trustedProxy`: the header is believed only on connections from `from`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTrustedProxy {
    pub header: Option<String>,
    /// Addresses or CIDR ranges of the proxy.
    pub from: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawLogging {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawModels {
    pub providers: Option<BTreeMap<String, RawProvider>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawProvider {
    /// `openai`, `anthropic` or `scripted`.
    pub api: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<SecretRef>,
    pub timeout_sec: Option<u64>,
    pub max_tokens: Option<u32>,
    /// Whether tenants without their own key (`tenants[].modelKeys`) may use `apiKey`. Default true.
    pub allow_shared_key: Option<bool>,
    /// Most requests in flight at once per key (the operator's key and each tenant's own).
    pub max_concurrent: Option<u32>,
    /// Retries of an upstream 429/529 (honouring `Retry-After`, else backoff with jitter).
    pub max_retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTenant {
    pub id: Option<String>,
    pub name: Option<String>,
    pub api_tokens: Option<Vec<SecretRef>>,
    pub tools: Option<RawToolPolicy>,
    /// A policy file (relative to the config's folder): the tenant layer, narrowed by `tools`.
    pub policy: Option<String>,
    pub scheduling: Option<RawScheduling>,
    pub retention: Option<RawRetention>,
    /// This tenant's quotas; unset keys inherit the global `quotas`.
    pub quotas: Option<RawQuotas>,
    /// The tenant's own provider keys, by provider name (billing isolation).
    pub model_keys: Option<BTreeMap<String, SecretRef>>,
    pub sandbox: Option<RawTenantSandbox>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawAgents {
    pub defaults: Option<RawAgentDefaults>,
    pub list: Option<Vec<RawAgent>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawAgentDefaults {
    pub model: Option<String>,
    /// Global cap on concurrent runs (OpenClaw's main lane).
    pub max_concurrent: Option<u32>,
    pub max_tool_rounds: Option<u32>,
    pub system_prompt: Option<String>,
    pub sandbox: Option<RawSandbox>,
    pub tools: Option<RawToolPolicy>,
    pub workspace: Option<String>,
    /// A policy file for every agent (the agents.defaults layer), narrowed by `tools`.
    pub policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawAgent {
    pub id: Option<String>,
    pub tenant: Option<String>,
    pub default: Option<bool>,
    pub name: Option<String>,
    pub workspace: Option<String>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    pub max_tool_rounds: Option<u32>,
    pub identity: Option<RawIdentity>,
    pub sandbox: Option<RawSandbox>,
    pub tools: Option<RawToolPolicy>,
    /// A policy file for this agent (the agent layer), narrowed by `tools`.
    pub policy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawIdentity {
    pub name: Option<String>,
    pub emoji: Option<String>,
    pub avatar: Option<String>,
    pub theme: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawSandbox {
    /// `off` | `non-main` | `all`.
    pub mode: Option<String>,
    /// `session` | `agent` | `shared` (shared within one tenant, never across tenants).
    pub scope: Option<String>,
    /// `wasm` | `docker`.
    pub backend: Option<String>,
    /// `none` | `ro` | `rw`.
    pub workspace_access: Option<String>,
    pub docker: Option<RawDockerSandbox>,
    pub wasm: Option<RawWasmSandbox>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawDockerSandbox {
    pub image: Option<String>,
    pub network: Option<String>,
    /// Must be `true` for any `network` but `none` (a network gives the sandbox egress).
    pub allow_network: Option<bool>,
    pub user: Option<String>,
    pub read_only_root: Option<bool>,
    pub tmpfs: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub pids_limit: Option<i64>,
    pub memory: Option<String>,
    pub memory_swap: Option<String>,
    pub cpus: Option<f64>,
    pub ulimits: Option<serde_json::Map<String, serde_json::Value>>,
    pub seccomp_profile: Option<String>,
    pub apparmor_profile: Option<String>,
    pub runtime: Option<String>,
    // Docker backend lifecycle and sizing (see `DockerSettings`).
    pub tmpfs_mb: Option<u64>,
    pub timeout_sec: Option<u64>,
    pub idle_sec: Option<u64>,
    pub disk_quota_mb: Option<u64>,
    pub prewarm: Option<bool>,
    pub max_containers: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawWasmSandbox {
    pub fuel: Option<u64>,
    pub memory_mb: Option<u64>,
    pub timeout_sec: Option<u64>,
    pub disk_quota_mb: Option<u64>,
}

/// One tool-policy layer: `allow` (non-empty = only these), `deny` (always wins).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawToolPolicy {
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawBinding {
    pub agent_id: Option<String>,
    pub comment: Option<String>,
    #[serde(rename = "match")]
    pub match_: Option<RawMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawMatch {
    pub channel: Option<String>,
    pub account_id: Option<String>,
    pub peer: Option<RawPeer>,
    pub guild_id: Option<String>,
    pub team_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPeer {
    pub kind: Option<String>,
    pub id: Option<String>,
}

/// Every channel the seed lists. Only those with an adapter in this build can be enabled; a
/// disabled block of another is kept (its platform keys unchecked) so a config can name it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawChannels {
    pub defaults: Option<RawChannelDefaults>,
    pub discord: Option<RawChannel>,
    pub slack: Option<RawChannel>,
    pub telegram: Option<RawChannel>,
    pub whatsapp: Option<RawChannel>,
    pub signal: Option<RawChannel>,
    pub imessage: Option<RawChannel>,
    pub webchat: Option<RawWebchat>,
}

impl RawChannels {
    /// The chat channels' blocks, by name.
    pub fn blocks(&self) -> [(&'static str, Option<&RawChannel>); 6] {
        [
            ("discord", self.discord.as_ref()),
            ("slack", self.slack.as_ref()),
            ("telegram", self.telegram.as_ref()),
            ("whatsapp", self.whatsapp.as_ref()),
            ("signal", self.signal.as_ref()),
            ("imessage", self.imessage.as_ref()),
        ]
    }

    /// The block of a chat channel by name (`None`: the name is not a chat channel).
    pub fn block_mut(&mut self, name: &str) -> Option<&mut Option<RawChannel>> {
        Some(match name {
            "discord" => &mut self.discord,
            "slack" => &mut self.slack,
            "telegram" => &mut self.telegram,
            "whatsapp" => &mut self.whatsapp,
            "signal" => &mut self.signal,
            "imessage" => &mut self.imessage,
            _ => return None,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawChannelDefaults {
    pub dm_policy: Option<String>,
    pub group_policy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawWebchat {
    pub enabled: Option<bool>,
}

/// The fields every chat channel shares (OpenClaw's vocabulary). Everything else in the block
/// (credentials, endpoints, platform rules such as Discord's `guilds`) is the platform's own:
/// collected in `platform` and checked by its adapter's validation pass, which names unknown keys
/// as the closed types do.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawChannel {
    pub enabled: Option<bool>,
    pub dm_policy: Option<String>,
    pub allow_from: Option<Vec<String>>,
    pub group_policy: Option<String>,
    pub group_allow_from: Option<Vec<String>>,
    pub require_mention: Option<bool>,
    pub text_chunk_limit: Option<u32>,
    pub history_limit: Option<u32>,
    pub default_account: Option<String>,
    pub accounts: Option<BTreeMap<String, RawChannel>>,
    /// Groups by the platform's group id (Telegram, WhatsApp, Signal, iMessage).
    pub groups: Option<BTreeMap<String, RawGroup>>,
    /// The platform's own keys, for its adapter.
    #[serde(flatten)]
    pub platform: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawGroup {
    pub enabled: Option<bool>,
    pub require_mention: Option<bool>,
    pub allow_from: Option<Vec<String>>,
    pub tools: Option<RawToolPolicy>,
}

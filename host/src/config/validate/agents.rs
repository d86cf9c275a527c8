//! Pass `agents`: `agents.defaults` and `agents.list` — tenant, model, sandbox, tools, policy
//! file, identity. An agent without a tenant key becomes its own (implicit) tenant.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::super::raw::RawAgents;
use super::policy::{PolicySettings, ToolLayer, policy_ref, tool_layer};
use super::sandbox::{SandboxBackend, SandboxConfig, sandbox_config};
use super::{Errors, ProviderConfig, TenantConfig, required_id};
use crate::ids::{AgentId, TenantId};
use crate::scheduler::TenantShare;

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

/// What the `agents` pass found.
pub(super) struct Agents {
    /// In declaration order.
    pub agents: Vec<AgentConfig>,
    /// Agent id → its tenant: every later cross-reference is a lookup, so validation stays linear.
    pub agent_tenants: HashMap<AgentId, TenantId>,
    pub default_agent: Option<AgentId>,
    /// `agents.defaults.maxConcurrent`.
    pub max_concurrent: usize,
}

/// `agents`: adds implicit tenants to `tenants` and the agents' policy files to `policies`.
pub(super) fn agents(
    errs: &mut Errors,
    warnings: &mut Vec<String>,
    raw: Option<RawAgents>,
    base: &Path,
    providers: &BTreeMap<String, ProviderConfig>,
    default_share: TenantShare,
    (tenants, policies): (&mut BTreeMap<TenantId, TenantConfig>, &mut PolicySettings),
) -> Agents {
    let agents_raw = raw.unwrap_or_default();
    let defaults = agents_raw.defaults.unwrap_or_default();
    let default_model = defaults.model.clone();
    let max_concurrent = defaults.max_concurrent.unwrap_or(4);
    if max_concurrent == 0 || max_concurrent > 1024 {
        errs.push("agents.defaults.maxConcurrent", "must be between 1 and 1024");
    }
    let defaults_tools = tool_layer(errs, "agents.defaults.tools", defaults.tools.as_ref());
    policies.defaults_file = policy_ref(errs, base, "agents.defaults.policy".into(), defaults.policy.as_ref());
    let mut agents: Vec<AgentConfig> = Vec::new();
    // Agent id → its tenant: every cross-reference below is a lookup, so validation stays linear.
    let mut agent_tenants: HashMap<AgentId, TenantId> = HashMap::new();
    let mut default_agent = None;
    for (i, a) in agents_raw.list.iter().flatten().enumerate() {
        let path = format!("agents.list[{i}]");
        let Some(id) = required_id(errs, format!("{path}.id"), a.id.as_deref(), AgentId::parse) else { continue };
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
        let sandbox = sandbox_config(errs, &path, defaults.sandbox.as_ref(), a.sandbox.as_ref());
        if sandbox.backend == SandboxBackend::Docker && sandbox.docker.network != "none" {
            warnings.push(format!(
                "{path}.sandbox.docker.network: agent {:?} runs with Docker network {:?}: its commands can reach the \
                 network; use \"none\" unless it must",
                id.as_str(),
                sandbox.docker.network
            ));
        }
        let layer = tool_layer(errs, &format!("{path}.tools"), a.tools.as_ref());
        if let Some(r) = policy_ref(errs, base, format!("{path}.policy"), a.policy.as_ref()) {
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
    Agents { agents, agent_tenants, default_agent, max_concurrent: max_concurrent as usize }
}

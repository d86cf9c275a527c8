//! The policy engine: config and policy files → each agent's effective tools, and the reason for
//! every decision.
//!
//! Layers, top to bottom: built-in defaults → global (`tools`) → tenant (policy file, then
//! `tenants[].tools`) → agents.defaults (policy file, then `tools`) → agent (policy file, then
//! `tools`) → sandbox (mode and workspace access). A layer can only narrow:
//! - `deny` always wins, at every layer;
//! - a non-empty `allow` means "only these"; the allowed set is the intersection of every `allow`
//!   written; `*`, groups and aliases expand through the tool catalog;
//! - built-in default: when no layer writes an `allow`, every tool except the session tools is
//!   allowed (session tools are opt-in: a layer must allow them by name, group or `*`);
//! - `sandbox.mode: "off"` removes every tool that needs a sandbox; `workspaceAccess` below `rw`
//!   removes `write`/`edit`, and `none` removes `read`/`list`.
//!
//! Decisions are computed once per agent at load; a call is a map lookup on the exact name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{AgentConfig, Config, PolicyRef, SandboxMode, ToolLayer, WorkspaceAccess};
use crate::dispatch::shown_name;
use crate::ids::{AgentId, TenantId};
use crate::policy::file::{self, LimitRule, PolicyFile, workspace_access_name};
use crate::policy::signature::{self, hex};
use crate::policy::{Decision, PolicyGate};
use crate::sandbox::ToolLimits;
use crate::tools::{GROUPS, Tool, parse_policy_name};

/// Where a decision was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LayerKind {
    /// The tool catalog: the requested name is not exactly a tool.
    Catalog,
    Builtin,
    Global,
    Tenant,
    AgentDefaults,
    Agent,
    /// A policy file checked on its own (`policy test` cases without an agent).
    File,
    Sandbox,
}

impl LayerKind {
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Catalog => "catalog",
            LayerKind::Builtin => "builtin",
            LayerKind::Global => "global",
            LayerKind::Tenant => "tenant",
            LayerKind::AgentDefaults => "agents.defaults",
            LayerKind::Agent => "agent",
            LayerKind::File => "file",
            LayerKind::Sandbox => "sandbox",
        }
    }
}

/// One name in an `allow` or `deny` list, expanded, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: usize,
    pub written: String,
    pub tools: Vec<Tool>,
}

/// One layer as the engine applies it.
#[derive(Debug, Clone)]
pub struct Layer {
    pub kind: LayerKind,
    /// `config` or the policy file's name.
    pub origin: String,
    /// The policy file, when the layer comes from one.
    pub file: Option<PathBuf>,
    /// Key path of the tool lists inside `origin` (`tools`, `agents.list[0].tools`).
    pub key: String,
    /// `None` (or empty when written) = no restriction.
    pub allow: Option<Vec<Entry>>,
    pub deny: Vec<Entry>,
    pub limits: Vec<LimitRule>,
}

fn entries(names: &[String]) -> Vec<Entry> {
    names
        .iter()
        .enumerate()
        // Names were validated at load; one that does not parse expands to nothing.
        .map(|(index, n)| Entry {
            index,
            written: n.clone(),
            tools: parse_policy_name(n).map(|p| p.tools()).unwrap_or_default(),
        })
        .collect()
}

impl Layer {
    pub fn new(kind: LayerKind, origin: &str, key: &str, tools: &ToolLayer, limits: &[LimitRule]) -> Layer {
        Layer {
            kind,
            origin: origin.to_string(),
            file: None,
            key: key.to_string(),
            allow: tools.allow.as_deref().filter(|a| !a.is_empty()).map(entries),
            deny: entries(&tools.deny),
            limits: limits.to_vec(),
        }
    }

    fn from_file(kind: LayerKind, f: &PolicyFile) -> Layer {
        let mut l = Layer::new(kind, &f.name, "tools", &f.tools, &f.limits);
        l.file = Some(f.path.clone());
        l
    }

    fn is_empty(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty() && self.limits.is_empty()
    }

    fn at(&self, list: &str, e: &Entry) -> String {
        format!("{}#{}.{list}[{}]", self.origin, self.key, e.index)
    }
}

/// Every layer that applies to one agent, top first, plus its sandbox settings.
#[derive(Debug, Clone)]
pub struct Chain {
    pub layers: Vec<Layer>,
    pub sandbox_mode: SandboxMode,
    pub workspace_access: WorkspaceAccess,
    /// Where `workspace_access` was set.
    pub sandbox_source: String,
}

impl Chain {
    /// A policy file on its own: built-in defaults → this file, sandboxed with `rw` access.
    pub fn for_file(f: &PolicyFile) -> Chain {
        Chain {
            layers: vec![Layer::from_file(LayerKind::File, f)],
            sandbox_mode: SandboxMode::All,
            workspace_access: WorkspaceAccess::Rw,
            sandbox_source: "builtin#sandbox".into(),
        }
    }
}

/// The outcome for one tool, with the layer, the exact place and the reason that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The tool, when allowed.
    pub tool: Option<Tool>,
    pub limits: ToolLimits,
    pub layer: LayerKind,
    /// `file#key.path[index]` of the deciding rule.
    pub at: String,
    pub why: String,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.tool.is_some()
    }
    /// One line naming layer, place and reason, as logged and shown by `policy explain`.
    pub fn rule(&self) -> String {
        format!("[{}] {}: {}", self.layer.name(), self.at, self.why)
    }
}

fn is_opt_in(tool: Tool) -> bool {
    GROUPS.iter().any(|(g, members)| *g == "group:sessions" && members.contains(&tool))
}

/// The workspace access a tool needs to do anything useful.
fn required_access(tool: Tool) -> WorkspaceAccess {
    match tool {
        Tool::Write | Tool::Edit => WorkspaceAccess::Rw,
        Tool::Read | Tool::List => WorkspaceAccess::Ro,
        _ => WorkspaceAccess::None,
    }
}

/// Decides one tool for a chain.
pub fn decide(chain: &Chain, tool: Tool) -> Verdict {
    // Timeout and output cap: the smallest value any layer sets, else the default (a default,
    // not a ceiling: a policy may raise it, within the bounds a policy file accepts). Workspace
    // access: the sandbox's setting is a ceiling that policy can only lower.
    let mut limits = ToolLimits { workspace_access: chain.workspace_access, ..ToolLimits::default() };
    let (mut timeout, mut max_output) = (None, None);
    let mut access_at = chain.sandbox_source.clone();
    for layer in &chain.layers {
        for r in layer.limits.iter().filter(|r| r.tools.contains(&tool)) {
            timeout = timeout.into_iter().chain(r.timeout).min();
            max_output = max_output.into_iter().chain(r.max_output_bytes).min();
            if let Some(a) = r.workspace_access
                && a < limits.workspace_access
            {
                limits.workspace_access = a;
                access_at = format!("{}#limits.{}", layer.origin, r.key);
            }
        }
    }
    limits.timeout = timeout.unwrap_or(limits.timeout);
    limits.max_output_bytes = max_output.unwrap_or(limits.max_output_bytes);
    let deny =
        |layer: LayerKind, at: String, why: String| Verdict { tool: None, limits: limits.clone(), layer, at, why };
    let mut granted_by: Option<(LayerKind, String, String)> = None;
    for layer in &chain.layers {
        if let Some(e) = layer.deny.iter().find(|e| e.tools.contains(&tool)) {
            return deny(layer.kind, layer.at("deny", e), format!("{:?} denies {}", e.written, tool.name()));
        }
        if let Some(allow) = &layer.allow {
            match allow.iter().find(|e| e.tools.contains(&tool)) {
                Some(e) => {
                    granted_by =
                        Some((layer.kind, layer.at("allow", e), format!("{:?} allows {}", e.written, tool.name())))
                }
                None => {
                    return deny(
                        layer.kind,
                        format!("{}#{}.allow", layer.origin, layer.key),
                        format!("the allow list does not include {}", tool.name()),
                    );
                }
            }
        }
    }
    if granted_by.is_none() && is_opt_in(tool) {
        return deny(
            LayerKind::Builtin,
            "builtin#defaults".into(),
            format!("session tools are opt-in and no allow list names {}", tool.name()),
        );
    }
    if tool.needs_sandbox() && chain.sandbox_mode == SandboxMode::Off {
        return deny(
            LayerKind::Sandbox,
            chain.sandbox_source.clone(),
            format!("sandbox.mode is \"off\" and {} never runs on the host", tool.name()),
        );
    }
    if limits.workspace_access < required_access(tool) {
        let layer = if access_at == chain.sandbox_source { LayerKind::Sandbox } else { chain_kind(chain, &access_at) };
        return deny(
            layer,
            access_at,
            format!(
                "workspaceAccess {:?} does not permit {}",
                workspace_access_name(limits.workspace_access),
                tool.name()
            ),
        );
    }
    let (layer, at, why) = granted_by.unwrap_or_else(|| {
        (
            LayerKind::Builtin,
            "builtin#defaults".into(),
            format!("no allow list is written, so {} is allowed by default", tool.name()),
        )
    });
    Verdict { tool: Some(tool), limits, layer, at, why }
}

fn chain_kind(chain: &Chain, at: &str) -> LayerKind {
    chain.layers.iter().find(|l| at.starts_with(&format!("{}#", l.origin))).map_or(LayerKind::Sandbox, |l| l.kind)
}

/// The verdict for a name exactly as a model sent it: anything that is not exactly a tool name
/// (case, whitespace, Unicode look-alikes, aliases, groups, empty, long) is denied.
pub fn decide_name(chain_verdicts: &BTreeMap<Tool, Verdict>, requested: &str) -> Verdict {
    match Tool::from_exact_name(requested).and_then(|t| chain_verdicts.get(&t)) {
        Some(v) => v.clone(),
        None => Verdict {
            tool: None,
            limits: ToolLimits::default(),
            layer: LayerKind::Catalog,
            at: "builtin#tools".into(),
            why: format!("{:?} is not exactly the name of a tool", shown_name(requested)),
        },
    }
}

/// The effective policy of one agent.
#[derive(Debug, Clone)]
pub struct AgentPolicy {
    pub agent: AgentId,
    pub tenant: TenantId,
    pub chain: Chain,
    /// One verdict per tool in the catalog.
    pub verdicts: BTreeMap<Tool, Verdict>,
    /// `sha256:` + hex of `canonical()`.
    pub digest: String,
}

impl AgentPolicy {
    pub fn new(agent: AgentId, tenant: TenantId, chain: Chain) -> AgentPolicy {
        let verdicts: BTreeMap<Tool, Verdict> = Tool::ALL.into_iter().map(|t| (t, decide(&chain, t))).collect();
        let mut p = AgentPolicy { agent, tenant, chain, verdicts, digest: String::new() };
        p.digest =
            format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, p.canonical().as_bytes()).as_ref()));
        p
    }

    pub fn allowed(&self) -> Vec<Tool> {
        self.verdicts.values().filter_map(|v| v.tool).collect()
    }

    pub fn decide(&self, requested: &str) -> Verdict {
        decide_name(&self.verdicts, requested)
    }

    /// The canonical form the digest covers: the effect, not the text. One line per allowed tool,
    /// sorted by name, with its limits; agents with the same effective policy share a digest.
    ///
    /// ```text
    /// bulkhead-effective-policy v1
    /// exec timeout_ms=30000 max_output_bytes=65536 workspace_access=rw
    /// ```
    pub fn canonical(&self) -> String {
        let mut lines: Vec<String> = self
            .verdicts
            .values()
            .filter_map(|v| {
                v.tool.map(|t| {
                    format!(
                        "{} timeout_ms={} max_output_bytes={} workspace_access={}",
                        t.name(),
                        v.limits.timeout.as_millis(),
                        v.limits.max_output_bytes,
                        workspace_access_name(v.limits.workspace_access)
                    )
                })
            })
            .collect();
        lines.sort();
        let mut out = String::from("bulkhead-effective-policy v1\n");
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out
    }

    /// Whether one of this agent's layers comes from `path`.
    pub fn uses_file(&self, path: &Path) -> bool {
        let want = std::fs::canonicalize(path).ok();
        self.chain
            .layers
            .iter()
            .filter_map(|l| l.file.as_deref())
            .any(|f| f == path || (want.is_some() && std::fs::canonicalize(f).ok() == want))
    }
}

/// Every agent's effective policy: the gate the dispatcher asks.
#[derive(Debug, Clone, Default)]
pub struct PolicyEngine {
    agents: BTreeMap<AgentId, AgentPolicy>,
}

impl PolicyEngine {
    /// Reads every policy file the config names, checks signatures when
    /// `policies.requireSignature` is set, and builds every agent's policy. Errors name the
    /// config key, the file and the reason; all of them are returned at once. Call at startup
    /// (and on reload): an `Err` means the gateway must not start.
    pub fn load(config: &Config) -> Result<PolicyEngine, Vec<String>> {
        let mut errors = Vec::new();
        let mut files: BTreeMap<PathBuf, PolicyFile> = BTreeMap::new();
        let s = &config.policies;
        let refs: Vec<&PolicyRef> =
            s.tenant_files.values().chain(s.defaults_file.iter()).chain(s.agent_files.values()).collect();
        for r in refs {
            if files.contains_key(&r.path) {
                continue;
            }
            match file::load(&r.written, &r.path) {
                Ok(f) => {
                    if s.require_signature
                        && let Err(e) = signature::verify_file(&r.path, &s.trusted_keys)
                    {
                        errors.push(format!("{}: {e}", r.key));
                        continue;
                    }
                    files.insert(r.path.clone(), f);
                }
                Err(es) => errors.extend(es.into_iter().map(|e| format!("{}: {e}", r.key))),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let engine = PolicyEngine::build(config, &files);
        for p in engine.agents.values() {
            let allowed: Vec<&str> = p.allowed().iter().map(|t| t.name()).collect();
            tracing::info!(tenant = %p.tenant, agent = %p.agent, digest = %p.digest, tools = ?allowed, "Policy loaded.");
        }
        Ok(engine)
    }

    /// Builds from a config and its already-loaded policy files (keyed by resolved path). A
    /// reference to a file missing from `files` contributes nothing; `load` guarantees there is none.
    pub fn build(config: &Config, files: &BTreeMap<PathBuf, PolicyFile>) -> PolicyEngine {
        let agents = config
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (a.id.clone(), AgentPolicy::new(a.id.clone(), a.tenant.clone(), chain_for(config, files, i, a)))
            })
            .collect();
        PolicyEngine { agents }
    }

    pub fn agent(&self, id: &AgentId) -> Option<&AgentPolicy> {
        self.agents.get(id)
    }

    pub fn agents(&self) -> impl Iterator<Item = &AgentPolicy> {
        self.agents.values()
    }
}

fn chain_for(config: &Config, files: &BTreeMap<PathBuf, PolicyFile>, index: usize, a: &AgentConfig) -> Chain {
    let s = &config.policies;
    let file_layer =
        |kind, r: Option<&PolicyRef>| r.and_then(|r| files.get(&r.path)).map(|f| Layer::from_file(kind, f));
    let no_limits: &[LimitRule] = &[];
    let tenant_tools = config.tenants.get(&a.tenant).map(|t| t.tools.clone()).unwrap_or_default();
    let layers = [
        Some(Layer::new(LayerKind::Global, "config", "tools", &config.tools, no_limits)),
        file_layer(LayerKind::Tenant, s.tenant_files.get(&a.tenant)),
        Some(Layer::new(
            LayerKind::Tenant,
            "config",
            &format!("tenants[id={}].tools", a.tenant),
            &tenant_tools,
            no_limits,
        )),
        file_layer(LayerKind::AgentDefaults, s.defaults_file.as_ref()),
        Some(Layer::new(LayerKind::AgentDefaults, "config", "agents.defaults.tools", &a.defaults_tools, no_limits)),
        file_layer(LayerKind::Agent, s.agent_files.get(&a.id)),
        Some(Layer::new(LayerKind::Agent, "config", &format!("agents.list[{index}].tools"), &a.tools, no_limits)),
    ];
    Chain {
        layers: layers.into_iter().flatten().filter(|l| !l.is_empty()).collect(),
        sandbox_mode: a.sandbox.mode,
        workspace_access: a.sandbox.workspace_access,
        sandbox_source: format!("config#agents.list[{index}].sandbox"),
    }
}

impl PolicyGate for PolicyEngine {
    fn offered(&self, agent: &AgentId) -> Vec<Tool> {
        self.agents.get(agent).map(AgentPolicy::allowed).unwrap_or_default()
    }

    fn check(&self, agent: &AgentId, requested: &str) -> Decision {
        let Some(p) = self.agents.get(agent) else {
            return Decision::Deny {
                reason: "this agent has no tool policy".into(),
                rule: format!("[catalog] builtin#agents: unknown agent {:?}", agent.as_str()),
            };
        };
        let v = p.decide(requested);
        match v.tool {
            Some(tool) => Decision::Allow { tool, limits: v.limits.clone(), rule: v.rule() },
            None if v.layer == LayerKind::Catalog => Decision::Deny {
                reason: format!(
                    "{:?} is not a tool name; call one of the offered tools by its exact name",
                    shown_name(requested)
                ),
                rule: v.rule(),
            },
            None => Decision::Deny {
                reason: format!("tool {requested} is not allowed for this agent ({} policy)", v.layer.name()),
                rule: v.rule(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;

    use super::*;
    use crate::config::{SandboxBackend, load_str};
    use crate::dispatch::{Caller, Dispatcher, SessionSender};
    use crate::ids::{PeerKind, SessionKey};
    use crate::sandbox::{Sandbox, SandboxCall, SandboxError, Sandboxes, ToolOutput};
    use crate::session::{MemoryStore, Message, SessionStore, TenantSessions, ToolCall};

    const UNTRUSTED: &str = r#"{ tools: { allow: ["read", "list"], deny: ["group:runtime", "group:sessions", "write", "edit"] },
        limits: { "*": { workspaceAccess: "ro", timeoutSec: 10, maxOutputBytes: 32768 } } }"#;

    /// A config in a temporary folder, with `policies/untrusted.json5` beside it.
    fn setup(config: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/untrusted.json5"), UNTRUSTED).unwrap();
        let cfg = load_str(config, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
        (dir, cfg)
    }

    fn engine(config: &str) -> PolicyEngine {
        let (_dir, cfg) = setup(config);
        PolicyEngine::load(&cfg).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    fn names(tools: Vec<Tool>) -> Vec<&'static str> {
        tools.into_iter().map(Tool::name).collect()
    }

    #[test]
    fn default_policy_locks_down_session_tools() {
        let e = engine("{ agents: { list: [ { id: \"a\" } ] } }");
        assert_eq!(names(e.offered(&id("a"))), ["exec", "read", "write", "edit", "list"]);
        for t in ["sessions_list", "sessions_history", "sessions_send"] {
            let d = e.check(&id("a"), t);
            assert!(!d.is_allow() && d.rule().starts_with("[builtin] builtin#defaults"), "{t}: {d:?}");
        }
        assert!(e.check(&id("a"), "exec").rule().starts_with("[builtin]"));
    }

    #[test]
    fn an_explicit_allow_opts_in_to_session_tools() {
        let e = engine("{ agents: { list: [ { id: \"a\", tools: { allow: [\"group:sessions\"] } } ] } }");
        assert_eq!(names(e.offered(&id("a"))), ["sessions_list", "sessions_history", "sessions_send"]);
        assert_eq!(
            e.check(&id("a"), "sessions_send").rule(),
            "[agent] config#agents.list[0].tools.allow[0]: \"group:sessions\" allows sessions_send"
        );
    }

    #[test]
    fn seed_sample_denies_what_it_says() {
        let e = engine(
            r#"{ agents: { list: [ { id: "a", tools: { allow: ["read", "exec"], deny: ["sessions_list", "sessions_send"] } } ] } }"#,
        );
        assert_eq!(names(e.offered(&id("a"))), ["exec", "read"]);
        assert_eq!(
            e.check(&id("a"), "write").rule(),
            "[agent] config#agents.list[0].tools.allow: the allow list does not include write"
        );
    }

    #[test]
    fn every_decision_names_layer_file_and_rule() {
        let e = engine(
            r#"{ tools: { deny: ["edit"] },
                 tenants: [ { id: "t", policy: "policies/untrusted.json5", tools: { deny: ["list"] } } ],
                 agents: { list: [ { id: "a", tenant: "t" } ] } }"#,
        );
        let rule = |t: &str| e.check(&id("a"), t).rule().to_string();
        assert_eq!(rule("edit"), "[global] config#tools.deny[0]: \"edit\" denies edit");
        assert_eq!(rule("exec"), "[tenant] policies/untrusted.json5#tools.deny[0]: \"group:runtime\" denies exec");
        assert_eq!(rule("list"), "[tenant] config#tenants[id=t].tools.deny[0]: \"list\" denies list");
        assert_eq!(rule("read"), "[tenant] policies/untrusted.json5#tools.allow[0]: \"read\" allows read");
        assert_eq!(rule("EXEC"), "[catalog] builtin#tools: \"EXEC\" is not exactly the name of a tool");
    }

    #[test]
    fn limits_come_from_policy_and_only_narrow() {
        let e = engine(
            r#"{ tenants: [ { id: "t", policy: "policies/untrusted.json5" } ],
                 agents: { list: [ { id: "a", tenant: "t" } ] } }"#,
        );
        match e.check(&id("a"), "read") {
            Decision::Allow { tool, limits, .. } => {
                assert_eq!(tool, Tool::Read);
                assert_eq!(limits.timeout, std::time::Duration::from_secs(10));
                assert_eq!(limits.max_output_bytes, 32768);
                assert_eq!(limits.workspace_access, WorkspaceAccess::Ro);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn limits_take_the_smallest_value_any_layer_sets() {
        let (dir, _) = setup("{}");
        std::fs::write(
            dir.path().join("policies/long.json5"),
            r#"{ limits: { exec: { timeoutSec: 600 }, "*": { maxOutputBytes: 1000 } } }"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("policies/short.json5"),
            r#"{ limits: { "group:runtime": { timeoutSec: 60, maxOutputBytes: 5000 } } }"#,
        )
        .unwrap();
        let cfg = load_str(
            r#"{ tenants: [ { id: "t", policy: "policies/long.json5" } ],
                 agents: { list: [ { id: "a", tenant: "t" }, { id: "b", tenant: "t", policy: "policies/short.json5" } ] } }"#,
            dir.path(),
        )
        .unwrap();
        let e = PolicyEngine::load(&cfg).unwrap();
        let limits = |a: &str, t: &str| match e.check(&id(a), t) {
            Decision::Allow { limits, .. } => limits,
            d => panic!("{d:?}"),
        };
        assert_eq!(limits("a", "exec").timeout, std::time::Duration::from_secs(600));
        assert_eq!(limits("a", "exec").max_output_bytes, 1000);
        assert_eq!(limits("a", "read").timeout, ToolLimits::default().timeout);
        assert_eq!(limits("b", "exec").timeout, std::time::Duration::from_secs(60));
        assert_eq!(limits("b", "exec").max_output_bytes, 1000);
    }

    #[test]
    fn workspace_access_and_sandbox_mode_narrow() {
        let e = engine(
            r#"{ agents: { list: [
                { id: "ro", sandbox: { workspaceAccess: "ro" } },
                { id: "none", sandbox: { workspaceAccess: "none" } },
                { id: "off", sandbox: { mode: "off" }, tools: { allow: ["*"] } } ] } }"#,
        );
        assert_eq!(names(e.offered(&id("ro"))), ["exec", "read", "list"]);
        assert_eq!(
            e.check(&id("ro"), "write").rule(),
            "[sandbox] config#agents.list[0].sandbox: workspaceAccess \"ro\" does not permit write"
        );
        assert_eq!(names(e.offered(&id("none"))), ["exec"]);
        assert_eq!(names(e.offered(&id("off"))), ["sessions_list", "sessions_history", "sessions_send"]);
        assert!(e.check(&id("off"), "exec").rule().contains("sandbox.mode is \"off\""));
    }

    #[test]
    fn bypass_attempts_are_denied() {
        let e = engine(r#"{ agents: { list: [ { id: "a", tools: { allow: ["*"], deny: ["bash", "group:fs"] } } ] } }"#);
        let long = "exec".repeat(10_000);
        let attempts = [
            "exec", // denied through its alias "bash"
            "read", // member of the denied group:fs
            "write",
            "EXEC",
            "Exec",
            "ｅxec",        // fullwidth
            "exec\u{200b}", // zero-width space
            "\u{200b}exec",
            " exec",
            "exec ",
            "exec\0",
            "exec\n",
            "bash", // an alias is never a callable name
            "shell",
            "group:runtime", // nor a group
            "*",
            "",
            long.as_str(),
            r#"{"name":"exec"}"#, // a tool name inside arguments
            "sessions_list\u{0}",
            "SESSIONS_LIST",
        ];
        for name in attempts {
            let d = e.check(&id("a"), name);
            assert!(!d.is_allow(), "{name:?} was allowed");
            if let Decision::Deny { reason, .. } = d {
                assert!(reason.len() < 200, "refusal not bounded for {:?}", &name[..name.len().min(20)]);
            }
        }
        // The positive pair: the exact names of allowed tools pass.
        assert!(e.check(&id("a"), "sessions_list").is_allow());
        assert!(!e.offered(&id("a")).contains(&Tool::Exec));
        // An unknown agent gets nothing.
        assert!(e.offered(&id("nobody")).is_empty());
        assert!(!e.check(&id("nobody"), "sessions_list").is_allow());
    }

    #[test]
    fn digest_covers_the_effect_not_the_text() {
        let e = engine(
            r#"{ agents: { list: [
                { id: "a", tools: { allow: ["group:fs"] } },
                { id: "b", tools: { allow: ["read", "write", "edit", "ls"] } },
                { id: "c", tools: { allow: ["group:fs"], deny: ["write"] } } ] } }"#,
        );
        let d = |a: &str| e.agent(&id(a)).unwrap().digest.clone();
        assert_eq!(d("a"), d("b"));
        assert_ne!(d("a"), d("c"));
        assert!(d("a").starts_with("sha256:") && d("a").len() == 7 + 64);
        assert!(
            e.agent(&id("c")).unwrap().canonical().starts_with("bulkhead-effective-policy v1\nedit timeout_ms=30000")
        );
    }

    #[test]
    fn load_errors_name_the_key_and_the_file() {
        let (_dir, cfg) = setup(
            r#"{ tenants: [ { id: "t", policy: "policies/missing.json5" } ],
                 agents: { list: [ { id: "a", tenant: "t", policy: "policies/bad.json5" } ] } }"#,
        );
        std::fs::write(cfg.base_dir.join("policies/bad.json5"), r#"{ tools: { deny: ["exce"] } }"#).unwrap();
        let errors = PolicyEngine::load(&cfg).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("tenants[0].policy: policy file policies/missing.json5: cannot read"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("agents.list[0].policy: policy file policies/bad.json5: tools.deny[0]:"),
            "{errors:?}"
        );
        assert!(errors[1].contains("did you mean \"exec\""));
    }

    #[test]
    fn require_signature_refuses_unsigned_modified_and_untrusted_files() {
        let (key, public) = signature::generate_key().unwrap();
        let (other_key, _) = signature::generate_key().unwrap();
        let config = format!(
            r#"{{ policies: {{ requireSignature: true, trustedKeys: ["{}"] }},
                 tenants: [ {{ id: "t", policy: "policies/untrusted.json5" }} ],
                 agents: {{ list: [ {{ id: "a", tenant: "t" }} ] }} }}"#,
            signature::format_public_key(&public)
        );
        let (dir, cfg) = setup(&config);
        let policy = dir.path().join("policies/untrusted.json5");
        let sig = signature::sig_path(&policy);
        let load_err = || PolicyEngine::load(&cfg).unwrap_err().join("\n");

        assert!(
            load_err().contains("tenants[0].policy: policy file") && load_err().contains("unsigned"),
            "{}",
            load_err()
        );

        std::fs::write(&sig, signature::sign(UNTRUSTED.as_bytes(), "k", &key).unwrap()).unwrap();
        assert!(PolicyEngine::load(&cfg).is_ok());

        std::fs::write(&policy, UNTRUSTED.replace("\"list\"]", "\"list\", \"exec\"]")).unwrap();
        assert!(load_err().contains("untrusted.json5: signature does not match"), "{}", load_err());

        std::fs::write(&sig, signature::sign(std::fs::read(&policy).unwrap().as_slice(), "k", &other_key).unwrap())
            .unwrap();
        assert!(load_err().contains("which is not a trusted key"), "{}", load_err());
    }

    #[test]
    fn policy_config_keys_are_checked() {
        let errors = load_str(
            r#"{ policies: { requireSignature: true, trustedKeys: ["ed25519:xyz"] },
                 tenants: [ { id: "t", policy: " " } ],
                 agents: { list: [ { id: "a", tenant: "t", policy: "" } ] } }"#,
            Path::new("."),
        )
        .unwrap_err();
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(shown.iter().any(|e| e.starts_with("policies.trustedKeys[0]: invalid public key")), "{shown:?}");
        assert!(shown.iter().any(|e| e == "tenants[0].policy: empty policy file path"), "{shown:?}");
        assert!(shown.iter().any(|e| e == "agents.list[0].policy: empty policy file path"), "{shown:?}");
        let errors = load_str("{ policies: { requireSignature: true } }", Path::new(".")).unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "policies.trustedKeys: requireSignature is true but no trusted keys are listed"
        );
        let errors = load_str("{ policies: { requireSignatures: true } }", Path::new(".")).unwrap_err();
        assert!(errors[0].to_string().contains("requireSignatures"), "{errors:?}");
    }

    #[test]
    fn agents_defaults_policy_file_is_a_layer() {
        let e = engine(r#"{ agents: { defaults: { policy: "policies/untrusted.json5" }, list: [ { id: "a" } ] } }"#);
        assert_eq!(names(e.offered(&id("a"))), ["read", "list"]);
        assert!(
            e.check(&id("a"), "exec").rule().starts_with("[agents.defaults] policies/untrusted.json5#tools.deny[0]")
        );
    }

    // ---- laws -------------------------------------------------------------------------------

    const POOL: &[&str] = &[
        "*",
        "group:fs",
        "group:runtime",
        "group:sessions",
        "group:web",
        "exec",
        "bash",
        "read",
        "write",
        "edit",
        "ls",
        "sessions_list",
        "sessions_history",
        "sessions_send",
    ];

    fn arb_names() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(proptest::sample::select(POOL).prop_map(String::from), 0..4)
    }

    fn arb_layer() -> impl Strategy<Value = ToolLayer> {
        (proptest::option::of(arb_names()), arb_names()).prop_map(|(allow, deny)| ToolLayer { allow, deny })
    }

    const KINDS: [LayerKind; 4] = [LayerKind::Global, LayerKind::Tenant, LayerKind::AgentDefaults, LayerKind::Agent];

    fn chain(layers: &[ToolLayer], mode: SandboxMode) -> Chain {
        Chain {
            layers: layers.iter().zip(KINDS).map(|(l, k)| Layer::new(k, "config", k.name(), l, &[])).collect(),
            sandbox_mode: mode,
            workspace_access: WorkspaceAccess::Rw,
            sandbox_source: "config#sandbox".into(),
        }
    }

    fn allowed(c: &Chain) -> Vec<Tool> {
        Tool::ALL.into_iter().filter(|t| decide(c, *t).allowed()).collect()
    }

    fn expand(names: &[String]) -> Vec<Tool> {
        names.iter().flat_map(|n| parse_policy_name(n).unwrap().tools()).collect()
    }

    proptest! {
        #[test]
        fn a_lower_layer_never_grants_what_a_higher_layer_denies(layers in proptest::collection::vec(arb_layer(), 1..=4)) {
            let got = allowed(&chain(&layers, SandboxMode::All));
            for l in &layers {
                for t in expand(&l.deny) {
                    prop_assert!(!got.contains(&t), "{t:?} allowed although denied by {l:?}");
                }
                if let Some(a) = l.allow.as_ref().filter(|a| !a.is_empty()) {
                    let a = expand(a);
                    prop_assert!(got.iter().all(|t| a.contains(t)), "{got:?} escapes the allow list {a:?}");
                }
            }
        }

        #[test]
        fn adding_a_deny_never_widens(
            layers in proptest::collection::vec(arb_layer(), 1..=4),
            at in 0usize..4,
            name in proptest::sample::select(POOL),
        ) {
            let before = allowed(&chain(&layers, SandboxMode::All));
            let mut more = layers.clone();
            let i = at % more.len();
            more[i].deny.push(name.to_string());
            let after = allowed(&chain(&more, SandboxMode::All));
            prop_assert!(after.iter().all(|t| before.contains(t)), "{before:?} → {after:?}");
            prop_assert!(after.iter().all(|t| !parse_policy_name(name).unwrap().tools().contains(t)));
        }

        #[test]
        fn sandbox_off_never_offers_a_sandbox_tool(layers in proptest::collection::vec(arb_layer(), 1..=4)) {
            let on = allowed(&chain(&layers, SandboxMode::All));
            let off = allowed(&chain(&layers, SandboxMode::Off));
            prop_assert!(off.iter().all(|t| !t.needs_sandbox() && on.contains(t)));
        }

        #[test]
        fn only_exact_names_of_allowed_tools_pass(name in "\\PC{0,24}") {
            let p = AgentPolicy::new(id("a"), TenantId::parse("t").unwrap(), chain(&[ToolLayer { allow: Some(vec!["*".into()]), deny: vec![] }], SandboxMode::All));
            let v = p.decide(&name);
            prop_assert_eq!(v.allowed(), Tool::from_exact_name(&name).is_some());
        }
    }

    // ---- the gate in the dispatcher --------------------------------------------------------

    #[derive(Default)]
    struct Spy(Mutex<Vec<(Tool, ToolLimits)>>);

    #[async_trait::async_trait]
    impl Sandbox for Spy {
        fn name(&self) -> &'static str {
            "spy"
        }
        async fn call(&self, call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
            self.0.lock().unwrap().push((call.tool, call.limits.clone()));
            Ok(ToolOutput { text: "ran".into(), ..Default::default() })
        }
    }

    #[derive(Default)]
    struct Sent(Mutex<Vec<SessionKey>>);

    #[async_trait::async_trait]
    impl SessionSender for Sent {
        async fn send(&self, target: SessionKey, _message: String) -> Result<(), String> {
            self.0.lock().unwrap().push(target);
            Ok(())
        }
    }

    fn call(name: &str, args: serde_json::Value) -> ToolCall {
        ToolCall { id: "c1".into(), name: name.into(), arguments: args }
    }

    #[tokio::test]
    async fn denied_calls_never_reach_the_sandbox() {
        let (_dir, cfg) = setup(
            r#"{ tenants: [ { id: "t", policy: "policies/untrusted.json5" } ],
                 agents: { list: [ { id: "a", tenant: "t" } ] } }"#,
        );
        let spy = Arc::new(Spy::default());
        let d = Dispatcher {
            gate: Arc::new(PolicyEngine::load(&cfg).unwrap()),
            sandboxes: Sandboxes::default().with(SandboxBackend::Wasm, spy.clone()),
            audit: crate::audit::Audit::off(),
        };
        let agent = cfg.agent(&id("a")).unwrap();
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        let sessions = TenantSessions::new(agent.tenant.clone(), store);
        let session = SessionKey::new(id("a"), "api", PeerKind::Direct, "u").unwrap();
        let sender = Sent::default();
        let caller = Caller { agent, sessions: &sessions, session: &session, started_by_send: false, sender: &sender };
        let args = serde_json::json!({ "command": "id", "path": "x", "content": "y" });
        for name in ["exec", "write", "edit", "EXEC", "bash", " exec", "ｅxec", "exec\u{200b}", "", "sessions_send"] {
            let out = d.dispatch(&caller, &call(name, args.clone())).await;
            assert!(out.is_error && out.text.starts_with("denied: "), "{name:?}: {out:?}");
        }
        assert!(spy.0.lock().unwrap().is_empty(), "a denied call reached the sandbox");
        assert!(sender.0.lock().unwrap().is_empty());
        // The positive pair: an allowed call reaches the sandbox, with the policy's limits.
        let out = d.dispatch(&caller, &call("read", serde_json::json!({ "path": "x" }))).await;
        assert_eq!(out.text, "ran");
        let calls = spy.0.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, Tool::Read);
        assert_eq!(calls[0].1.workspace_access, WorkspaceAccess::Ro);
        assert_eq!(names(d.offered(agent)), ["read", "list"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decisions_and_outcomes_are_audited_and_an_unwritable_audit_log_refuses_calls() {
        use crate::audit::{Audit, LogWriter, Scope, read_records};
        let (dir, cfg) = setup(
            r#"{ tenants: [ { id: "t" } ],
                 agents: { list: [ { id: "a", tenant: "t", tools: { allow: ["read"] } } ] } }"#,
        );
        let master = crate::store::MasterKey::generate("test".into());
        let audit_dir = dir.path().join("audit");
        let spy = Arc::new(Spy::default());
        let dispatcher = |audit: Audit| Dispatcher {
            gate: Arc::new(PolicyEngine::load(&cfg).unwrap()),
            sandboxes: Sandboxes::default().with(SandboxBackend::Wasm, spy.clone()),
            audit,
        };
        let agent = cfg.agent(&id("a")).unwrap();
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        let sessions = TenantSessions::new(agent.tenant.clone(), store);
        let session = SessionKey::new(id("a"), "api", PeerKind::Direct, "peer-42").unwrap();
        let sender = Sent::default();
        let caller = Caller { agent, sessions: &sessions, session: &session, started_by_send: false, sender: &sender };

        let writer = LogWriter::open(&audit_dir, &master).unwrap();
        let keys = writer.keys().clone();
        let audit = Audit::start(writer).unwrap();
        let d = dispatcher(audit.clone());
        assert_eq!(d.dispatch(&caller, &call("read", serde_json::json!({ "path": "x" }))).await.text, "ran");
        assert!(d.dispatch(&caller, &call("exec", serde_json::json!({ "command": "id" }))).await.is_error);
        audit.close().await;
        let scope = Scope::Tenant(agent.tenant.clone());
        let recs = read_records(&std::fs::read(scope.log_path(&audit_dir)).unwrap(), &keys, &scope, None).unwrap();
        let kinds: Vec<(&str, &str)> =
            recs.iter().map(|r| (r["kind"].as_str().unwrap(), r["tool"].as_str().unwrap())).collect();
        assert_eq!(kinds, [("tool.decision", "read"), ("tool.outcome", "read"), ("tool.decision", "exec")]);
        assert_eq!((recs[0]["allowed"].as_bool(), recs[2]["allowed"].as_bool()), (Some(true), Some(false)));
        assert_eq!(recs[1]["sandbox"], "wasm");
        assert!(!recs.iter().any(|r| r.to_string().contains("peer-42")), "no peer id in a record");

        // A log that no longer verifies takes no record: the allowed call never reaches the sandbox.
        let path = scope.log_path(&audit_dir);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        spy.0.lock().unwrap().clear();
        let audit = Audit::start(LogWriter::open(&audit_dir, &master).unwrap()).unwrap();
        let d = dispatcher(audit.clone());
        let out = d.dispatch(&caller, &call("read", serde_json::json!({ "path": "x" }))).await;
        assert!(out.is_error && out.text.contains("audit log is unavailable"), "{out:?}");
        assert!(spy.0.lock().unwrap().is_empty(), "an unaudited call reached the sandbox");
        audit.close().await;
    }

    #[tokio::test]
    async fn session_tools_see_only_the_callers_tenant_whatever_the_policy() {
        let (_dir, cfg) = setup(
            r#"{ tenants: [ { id: "ta" }, { id: "tb" } ],
                 agents: { list: [ { id: "a", tenant: "ta", tools: { allow: ["*"] } }, { id: "b", tenant: "tb" } ] } }"#,
        );
        let d = Dispatcher {
            gate: Arc::new(PolicyEngine::load(&cfg).unwrap()),
            sandboxes: Sandboxes::default(),
            audit: crate::audit::Audit::off(),
        };
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        let a_sessions = TenantSessions::new(TenantId::parse("ta").unwrap(), store.clone());
        let b_sessions = TenantSessions::new(TenantId::parse("tb").unwrap(), store);
        let a_key = SessionKey::new(id("a"), "api", PeerKind::Direct, "alice").unwrap();
        let a_other = SessionKey::new(id("a"), "api", PeerKind::Direct, "carol").unwrap();
        let b_key = SessionKey::new(id("b"), "api", PeerKind::Direct, "bob").unwrap();
        a_sessions.append(&a_other, &[Message::User { text: "hello from carol".into() }]).await.unwrap();
        b_sessions.append(&b_key, &[Message::User { text: "tenant b secret".into() }]).await.unwrap();
        let sender = Sent::default();
        let agent = cfg.agent(&id("a")).unwrap();
        let caller = Caller { agent, sessions: &a_sessions, session: &a_key, started_by_send: false, sender: &sender };

        let list = d.dispatch(&caller, &call("sessions_list", serde_json::json!({}))).await;
        assert!(list.text.contains("carol") && !list.text.contains("bob"), "{list:?}");
        let own = d
            .dispatch(&caller, &call("sessions_history", serde_json::json!({ "sessionKey": a_other.to_string() })))
            .await;
        assert!(own.text.contains("hello from carol"), "{own:?}");
        let other = d
            .dispatch(&caller, &call("sessions_history", serde_json::json!({ "sessionKey": b_key.to_string() })))
            .await;
        let missing_key = SessionKey::new(id("b"), "api", PeerKind::Direct, "nobody").unwrap();
        let missing = d
            .dispatch(&caller, &call("sessions_history", serde_json::json!({ "sessionKey": missing_key.to_string() })))
            .await;
        assert!(other.is_error && !other.text.contains("secret"));
        assert_eq!(other.text, missing.text, "another tenant's session must look like one that does not exist");
        let send = d
            .dispatch(
                &caller,
                &call("sessions_send", serde_json::json!({ "sessionKey": b_key.to_string(), "message": "hi" })),
            )
            .await;
        assert!(send.is_error && send.text == missing.text, "{send:?}");
        assert!(sender.0.lock().unwrap().is_empty());
        let send_own = d
            .dispatch(
                &caller,
                &call("sessions_send", serde_json::json!({ "sessionKey": a_other.to_string(), "message": "hi" })),
            )
            .await;
        assert_eq!(send_own.text, "message queued");
    }
}

//! The policy engine: config and policy files → each agent's effective tools, and the reason for
//! every decision.
//!
//! Layers, top to bottom: built-in defaults → global (`tools`) → tenant (policy file, then
//! `tenants[].tools`) → agents.defaults (policy file, then `tools`) → agent (policy file, then
//! `tools`) → sandbox (mode and workspace access). A layer can only narrow:
//! - `deny` always wins, at every layer;
//! - an `allow` list means "only these" (an empty one allows nothing); the allowed set is the
//!   intersection of every `allow` written; `*`, groups and aliases expand through the tool catalog;
//! - built-in default: deny. When no layer writes an `allow`, the agent has no tools at all;
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
use crate::policy::signature;
use crate::policy::{Decision, PolicyGate};
use crate::sandbox::ToolLimits;
use crate::tools::{Tool, parse_policy_name};

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
    /// `None` = this layer grants nothing and restricts nothing; `Some(empty)` allows nothing.
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
            allow: tools.allow.as_deref().map(entries),
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
                    let why = if allow.is_empty() {
                        format!("the allow list is empty, so it allows nothing ({} included)", tool.name())
                    } else {
                        format!("the allow list does not include {}", tool.name())
                    };
                    return deny(layer.kind, format!("{}#{}.allow", layer.origin, layer.key), why);
                }
            }
        }
    }
    // Default deny: a tool no allow list grants is not a tool this agent has.
    let Some((layer, at, why)) = granted_by else {
        return deny(
            LayerKind::Builtin,
            "builtin#defaults".into(),
            format!("default deny: no allow list is written, so {} is not allowed", tool.name()),
        );
    };
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
        p.digest = format!("sha256:{}", crate::crypto::sha256_hex(p.canonical().as_bytes(), 32));
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

    /// Whether some layer of this agent writes an `allow` list (without one it has no tools).
    pub fn writes_an_allow_list(&self) -> bool {
        self.chain.layers.iter().any(|l| l.allow.is_some())
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
    /// `policies.requireSignature` is set, builds every agent's policy and runs every file's
    /// embedded test cases. Errors name the config key, the file and the reason (and the failing
    /// case); all of them are returned at once. Call at startup (and on reload): an `Err` means
    /// the gateway must not start.
    pub fn load(config: &Config) -> Result<PolicyEngine, Vec<String>> {
        let (engine, files) = PolicyEngine::load_files(config)?;
        // A policy file's own cases are part of it: one that fails refuses the start.
        let mut errors = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for r in config.policies.refs() {
            let Some(f) = files.get(&r.path).filter(|_| seen.insert(&r.path)) else { continue };
            for case in &f.tests {
                if let Err(e) = engine.check_case(f, case) {
                    errors.push(format!("{}: policy file {}: {e}", r.key, f.name));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        for p in engine.agents.values() {
            let allowed: Vec<&str> = p.allowed().iter().map(|t| t.name()).collect();
            tracing::info!(tenant = %p.tenant, agent = %p.agent, digest = %p.digest, tools = ?allowed, "Policy loaded.");
        }
        Ok(engine)
    }

    /// `load` without running the files' cases (for `policy test` and `policy explain`, which
    /// report failing cases themselves), with the files read, keyed by resolved path.
    pub fn load_files(config: &Config) -> Result<(PolicyEngine, BTreeMap<PathBuf, PolicyFile>), Vec<String>> {
        let mut errors = Vec::new();
        let mut files: BTreeMap<PathBuf, PolicyFile> = BTreeMap::new();
        let s = &config.policies;
        for r in s.refs() {
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
        Ok((PolicyEngine::build(config, &files), files))
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

    /// What `config check`, `doctor` and `serve` warn about: agents that get no tools because
    /// no layer writes an `allow` list (default deny).
    pub fn warnings(&self) -> Vec<String> {
        self.agents
            .values()
            .filter(|p| !p.writes_an_allow_list())
            .map(|p| {
                format!(
                    "agent {:?} has no tools: no layer writes tools.allow, and nothing is allowed by default",
                    p.agent.as_str()
                )
            })
            .collect()
    }

    /// Runs one embedded case of policy file `f`: without an agent against the file alone, with
    /// one against that agent's effective policy here (the agent must use the file). `Ok` is the
    /// verdict when it matches the expectation; `Err` says why the case fails.
    pub fn check_case(&self, f: &PolicyFile, case: &file::TestCase) -> Result<Verdict, String> {
        let label = format!(
            "tests[{}] {:?} ({})",
            case.index,
            shown_name(&case.tool),
            case.agent.as_ref().map_or("file alone".to_string(), |a| format!("agent {a}"))
        );
        let verdict = match &case.agent {
            None => file_alone(f).decide(&case.tool),
            Some(agent) => {
                let p = self.agent(agent).ok_or_else(|| format!("{label}: unknown agent {:?}", agent.as_str()))?;
                if !p.uses_file(&f.path) {
                    return Err(format!("{label}: agent {:?} does not use this policy file", agent.as_str()));
                }
                p.decide(&case.tool)
            }
        };
        if verdict.allowed() == case.expect_allow {
            return Ok(verdict);
        }
        let name = |allow: bool| if allow { "allow" } else { "deny" };
        let note = case.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
        Err(format!(
            "{label}: expected {}, got {} by {}{note}",
            name(case.expect_allow),
            name(verdict.allowed()),
            verdict.rule()
        ))
    }

    pub fn agents(&self) -> impl Iterator<Item = &AgentPolicy> {
        self.agents.values()
    }
}

fn chain_for(config: &Config, files: &BTreeMap<PathBuf, PolicyFile>, index: usize, a: &AgentConfig) -> Chain {
    let s = &config.policies;
    let file_layer =
        |kind, r: Option<&PolicyRef>| r.and_then(|r| files.get(&r.path)).map(|f| Layer::from_file(kind, f));
    // A config layer that writes nothing adds nothing: skipped before its key is even spelled
    // (start-up builds one chain per agent).
    let config_layer = |kind, key: &dyn Fn() -> String, tools: &ToolLayer| {
        (tools.allow.is_some() || !tools.deny.is_empty()).then(|| Layer::new(kind, "config", &key(), tools, &[]))
    };
    let no_tools = ToolLayer::default();
    let tenant_tools = config.tenants.get(&a.tenant).map_or(&no_tools, |t| &t.tools);
    let layers = [
        config_layer(LayerKind::Global, &|| "tools".into(), &config.tools),
        file_layer(LayerKind::Tenant, s.tenant_files.get(&a.tenant)),
        config_layer(LayerKind::Tenant, &|| format!("tenants[id={}].tools", a.tenant), tenant_tools),
        file_layer(LayerKind::AgentDefaults, s.defaults_file.as_ref()),
        config_layer(LayerKind::AgentDefaults, &|| "agents.defaults.tools".into(), &a.defaults_tools),
        file_layer(LayerKind::Agent, s.agent_files.get(&a.id)),
        config_layer(LayerKind::Agent, &|| format!("agents.list[{index}].tools"), &a.tools),
    ];
    Chain {
        layers: layers.into_iter().flatten().filter(|l| !l.is_empty()).collect(),
        sandbox_mode: a.sandbox.mode,
        workspace_access: a.sandbox.workspace_access,
        sandbox_source: format!("config#agents.list[{index}].sandbox"),
    }
}

/// A policy file on its own, as its cases without an agent see it.
pub fn file_alone(f: &PolicyFile) -> AgentPolicy {
    AgentPolicy::new(
        AgentId::parse("policy-test").expect("valid id"),
        TenantId::parse("policy-test").expect("valid id"),
        Chain::for_file(f),
    )
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
    fn default_deny_grants_nothing_without_an_allow_list() {
        let e = engine(
            r#"{ tools: { deny: ["edit"] },
                 agents: { list: [ { id: "a" }, { id: "b", tools: { allow: [] } }, { id: "c", tools: { allow: ["read"] } } ] } }"#,
        );
        assert!(e.offered(&id("a")).is_empty(), "no allow list anywhere: no tools");
        for t in Tool::ALL {
            let d = e.check(&id("a"), t.name());
            assert!(!d.is_allow(), "{t:?}: {d:?}");
            // `edit` is denied by the global deny first; the rest by the default.
            if t != Tool::Edit {
                assert!(d.rule().starts_with("[builtin] builtin#defaults: default deny"), "{t:?}: {d:?}");
            }
        }
        // `allow: []` is an allow list that names nothing: it allows nothing.
        assert!(e.offered(&id("b")).is_empty());
        assert_eq!(
            e.check(&id("b"), "read").rule(),
            "[agent] config#agents.list[1].tools.allow: the allow list is empty, so it allows nothing (read included)"
        );
        assert_eq!(names(e.offered(&id("c"))), ["read"]);
        // `config check` names the agent that gets nothing by default (not the one that chose it).
        assert_eq!(
            e.warnings(),
            ["agent \"a\" has no tools: no layer writes tools.allow, and nothing is allowed by default"]
        );
    }

    #[test]
    fn a_policy_file_whose_own_cases_fail_refuses_the_load() {
        let (dir, _) = setup("{}");
        std::fs::write(
            dir.path().join("policies/lax.json5"),
            r#"{ tools: { allow: ["group:fs"] },
                 tests: [ { tool: "read", expect: "allow" }, { tool: "write", expect: "deny", note: "meant read-only" },
                          { agent: "a", tool: "list", expect: "deny" }, { agent: "ghost", tool: "read", expect: "deny" } ] }"#,
        )
        .unwrap();
        let cfg = load_str(
            r#"{ tenants: [ { id: "t", policy: "policies/lax.json5" } ], agents: { list: [ { id: "a", tenant: "t" } ] } }"#,
            dir.path(),
        )
        .unwrap();
        let errors = PolicyEngine::load(&cfg).unwrap_err();
        assert_eq!(
            errors,
            [
                "tenants[0].policy: policy file policies/lax.json5: tests[1] \"write\" (file alone): expected deny, got allow by [file] policies/lax.json5#tools.allow[0]: \"group:fs\" allows write (meant read-only)",
                "tenants[0].policy: policy file policies/lax.json5: tests[2] \"list\" (agent a): expected deny, got allow by [tenant] policies/lax.json5#tools.allow[0]: \"group:fs\" allows list",
                "tenants[0].policy: policy file policies/lax.json5: tests[3] \"read\" (agent ghost): unknown agent \"ghost\"",
            ]
        );
        // The same file without its failing cases loads.
        std::fs::write(
            dir.path().join("policies/lax.json5"),
            r#"{ tools: { allow: ["group:fs"] }, tests: [ { tool: "read", expect: "allow" }, { agent: "a", tool: "exec", expect: "deny" } ] }"#,
        )
        .unwrap();
        assert!(PolicyEngine::load(&cfg).is_ok());
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
            r#"{ tools: { allow: ["group:fs", "exec"] }, tenants: [ { id: "t", policy: "policies/long.json5" } ],
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
                { id: "ro", sandbox: { workspaceAccess: "ro" }, tools: { allow: ["group:fs", "exec"] } },
                { id: "none", sandbox: { workspaceAccess: "none" }, tools: { allow: ["group:fs", "exec"] } },
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
            crate::crypto::format_public_key(&public)
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

    // ---- laws ----------------------------------------------------------------------------
    //
    // Layers are written as a config and policy files and go through the real path: JSON5 →
    // validated `Config` → `PolicyEngine::load`, exactly as `serve` builds its gate.

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

    fn arb_layer() -> impl Strategy<Value = Option<ToolLayer>> {
        proptest::option::of(
            (proptest::option::of(arb_names()), arb_names()).prop_map(|(allow, deny)| ToolLayer { allow, deny }),
        )
    }

    /// Where a layer is written: global `tools`, the tenant's file and `tools`, the defaults'
    /// file and `tools`, the agent's file and `tools` (top first, as the engine applies them).
    const SLOTS: usize = 7;
    const FILE_SLOTS: [(usize, &str); 3] = [(1, "tenant"), (3, "defaults"), (5, "agent")];

    fn arb_layers() -> impl Strategy<Value = Vec<Option<ToolLayer>>> {
        proptest::collection::vec(arb_layer(), SLOTS)
    }

    fn tools_json(l: &ToolLayer) -> String {
        let allow = l.allow.as_ref().map(|a| format!("allow: {}, ", serde_json::json!(a))).unwrap_or_default();
        format!("{{ {allow}deny: {} }}", serde_json::json!(l.deny))
    }

    /// The config (and policy files) holding `layers`, loaded through the real path; the allowed
    /// tools of its one agent.
    fn allowed_via_config(layers: &[Option<ToolLayer>], mode: &str) -> Vec<Tool> {
        let dir = tempfile::tempdir().unwrap();
        let key = |i: usize, key: &str| match &layers[i] {
            Some(l) => format!("{key}: {}, ", tools_json(l)),
            None => String::new(),
        };
        let policy = |i: usize, name: &str| match &layers[i] {
            Some(l) => {
                std::fs::write(dir.path().join(format!("{name}.json5")), format!("{{ tools: {} }}", tools_json(l)))
                    .unwrap();
                format!("policy: \"{name}.json5\", ")
            }
            None => String::new(),
        };
        let [t_file, d_file, a_file] = FILE_SLOTS.map(|(i, name)| policy(i, name));
        let config = format!(
            r#"{{ {global}
                 tenants: [ {{ id: "t", {t_file}{t_tools} }} ],
                 agents: {{ defaults: {{ {d_file}{d_tools} }},
                            list: [ {{ id: "a", tenant: "t", sandbox: {{ mode: "{mode}" }}, {a_file}{a_tools} }} ] }} }}"#,
            global = key(0, "tools"),
            t_tools = key(2, "tools"),
            d_tools = key(4, "tools"),
            a_tools = key(6, "tools"),
        );
        let cfg = load_str(&config, dir.path()).unwrap_or_else(|e| panic!("{config}: {e:?}"));
        PolicyEngine::load(&cfg).unwrap_or_else(|e| panic!("{config}: {e:?}")).offered(&id("a"))
    }

    fn expand(names: &[String]) -> Vec<Tool> {
        names.iter().flat_map(|n| parse_policy_name(n).unwrap().tools()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn a_lower_layer_never_grants_what_a_higher_layer_denies(layers in arb_layers()) {
            let got = allowed_via_config(&layers, "all");
            for l in layers.iter().flatten() {
                for t in expand(&l.deny) {
                    prop_assert!(!got.contains(&t), "{t:?} allowed although denied by {l:?}");
                }
                if let Some(a) = &l.allow {
                    let a = expand(a);
                    prop_assert!(got.iter().all(|t| a.contains(t)), "{got:?} escapes the allow list {a:?}");
                }
            }
            // Default deny: without an allow list somewhere, nothing at all.
            if layers.iter().flatten().all(|l| l.allow.is_none()) {
                prop_assert!(got.is_empty(), "{got:?} granted with no allow list written");
            }
        }

        #[test]
        fn adding_a_deny_never_widens(
            layers in arb_layers(),
            at in 0..SLOTS,
            name in proptest::sample::select(POOL),
        ) {
            let before = allowed_via_config(&layers, "all");
            let mut more = layers.clone();
            more[at].get_or_insert_with(ToolLayer::default).deny.push(name.to_string());
            let after = allowed_via_config(&more, "all");
            prop_assert!(after.iter().all(|t| before.contains(t)), "{before:?} → {after:?}");
            prop_assert!(after.iter().all(|t| !parse_policy_name(name).unwrap().tools().contains(t)));
        }

        #[test]
        fn sandbox_off_never_offers_a_sandbox_tool(layers in arb_layers()) {
            let on = allowed_via_config(&layers, "all");
            let off = allowed_via_config(&layers, "off");
            prop_assert!(off.iter().all(|t| !t.needs_sandbox() && on.contains(t)), "{on:?} → {off:?}");
        }
    }

    /// Look-alikes of ASCII letters (Cyrillic, Greek, Latin small capitals), by the letter.
    const CONFUSABLES: &[(char, &[char])] = &[
        ('a', &['а', 'ɑ', 'α']),
        ('c', &['с', 'ϲ']),
        ('d', &['ԁ']),
        ('e', &['е', 'ё', 'ҽ']),
        ('h', &['һ']),
        ('i', &['і', 'ı', 'ɩ']),
        ('l', &['ӏ', 'ⅼ', 'ǀ']),
        ('o', &['о', 'ο', 'σ']),
        ('r', &['г']),
        ('s', &['ѕ']),
        ('t', &['т']),
        ('x', &['х', 'χ']),
        ('y', &['у']),
        ('_', &['‗', '＿', '-']),
    ];

    /// Invisible or unusual spacing characters.
    const SPACES: &[char] = &[
        ' ', '\t', '\n', '\r', '\0', '\u{a0}', '\u{200b}', '\u{200c}', '\u{200d}', '\u{2060}', '\u{feff}', '\u{3000}',
    ];

    fn real_names() -> Vec<&'static str> {
        Tool::ALL.iter().map(|t| t.name()).collect()
    }

    /// Something a model might send instead of the exact name of a real tool: the name with its
    /// case changed, with spacing inserted, with a look-alike or fullwidth character, or an
    /// alias or group (which policy lists accept and calls never do), also with its case changed.
    fn near_misses() -> impl Strategy<Value = String> {
        use proptest::sample::{Index, select};
        let case = (select(real_names()), proptest::collection::vec(any::<bool>(), 16), any::<Index>()).prop_map(
            |(name, flips, at)| {
                let at = at.index(name.len());
                let at = (at..name.len()).chain(0..at).find(|&i| name.as_bytes()[i].is_ascii_alphabetic()).unwrap();
                name.char_indices()
                    .map(|(i, c)| if i == at || flips[i % flips.len()] { c.to_ascii_uppercase() } else { c })
                    .collect::<String>()
            },
        );
        let spaced = (select(real_names()), any::<Index>(), select(SPACES)).prop_map(|(name, at, sp)| {
            let at = at.index(name.len() + 1);
            format!("{}{sp}{}", &name[..at], &name[at..])
        });
        let confusable = (select(real_names()), any::<Index>(), any::<Index>(), any::<bool>()).prop_map(
            |(name, at, pick, fullwidth)| {
                let at = at.index(name.len());
                let c = name.as_bytes()[at] as char;
                let look = match CONFUSABLES.iter().find(|(k, _)| *k == c) {
                    Some((_, alts)) if !fullwidth => *pick.get(alts),
                    // Fullwidth forms exist for every printable ASCII character.
                    _ => char::from_u32(c as u32 - 0x21 + 0xFF01).unwrap(),
                };
                format!("{}{look}{}", &name[..at], &name[at + 1..])
            },
        );
        let policy_only: Vec<&str> = crate::tools::ALIASES
            .iter()
            .map(|(a, _)| *a)
            .chain(crate::tools::GROUPS.iter().map(|(g, _)| *g))
            .chain(["*"])
            .collect();
        let alias = (select(policy_only), any::<bool>())
            .prop_map(|(n, upper)| if upper { n.to_ascii_uppercase() } else { n.to_string() });
        prop_oneof![case, spaced, confusable, alias]
    }

    #[test]
    fn only_exact_names_of_allowed_tools_pass() {
        let e = engine(r#"{ agents: { list: [ { id: "a", tools: { allow: ["*"] } } ] } }"#);
        // The positive pair: every real name passes exactly as it is spelled.
        for t in Tool::ALL {
            assert!(e.check(&id("a"), t.name()).is_allow(), "{t:?}");
        }
        proptest!(ProptestConfig::with_cases(2048), |(name in near_misses())| {
            prop_assert!(Tool::from_exact_name(&name).is_none(), "{name:?} is a real name");
            let d = e.check(&id("a"), &name);
            prop_assert!(!d.is_allow(), "{name:?} was allowed: {d:?}");
            prop_assert!(d.rule().starts_with("[catalog] builtin#tools"), "{name:?}: {d:?}");
        });
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

    /// A dispatcher over the config's policies whose wasm backend records what reaches it.
    fn spy_dispatcher(cfg: &Config) -> (Dispatcher, Arc<Spy>) {
        let spy = Arc::new(Spy::default());
        let d = Dispatcher {
            gate: Arc::new(PolicyEngine::load(cfg).unwrap()),
            sandboxes: Sandboxes::default().with(SandboxBackend::Wasm, spy.clone()),
            audit: crate::audit::Audit::off(),
        };
        (d, spy)
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
        let (d, spy) = spy_dispatcher(&cfg);
        let agent = cfg.agent(&id("a")).unwrap();
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        let sessions = TenantSessions::new(agent.tenant.clone(), store);
        let session = SessionKey::new(id("a"), "api", PeerKind::Direct, "u").unwrap();
        let sender = Sent::default();
        let caller = Caller { agent, sessions: &sessions, session: &session, sent_by: None, sender: &sender };
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
        assert_eq!(names(d.offered(agent, None)), ["read", "list"]);
    }

    #[tokio::test]
    async fn a_missing_or_failed_backend_fails_closed_and_nothing_runs_on_the_host() {
        let (dir, cfg) = setup(r#"{ agents: { list: [ { id: "a", tools: { allow: ["exec", "write"] } } ] } }"#);
        let marker = dir.path().join("ran-on-the-host");
        let failed = crate::sandbox::Deferred::spawn("wasm", || Err("the runner did not compile".into()));
        let agent = cfg.agent(&id("a")).unwrap();
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        let sessions = TenantSessions::new(agent.tenant.clone(), store);
        let session = SessionKey::new(id("a"), "api", PeerKind::Direct, "u").unwrap();
        let sender = Sent::default();
        let caller = Caller { agent, sessions: &sessions, session: &session, sent_by: None, sender: &sender };
        let touch = serde_json::json!({ "command": format!("touch {}", marker.display()) });
        let write = serde_json::json!({ "path": marker.display().to_string(), "content": "x" });
        for (backends, why) in [
            (Sandboxes::default(), "sandbox unavailable: no Wasm sandbox backend is configured on this gateway"),
            (
                Sandboxes::default().with(SandboxBackend::Wasm, Arc::new(failed)),
                "sandbox unavailable: the wasm backend is not running: the runner did not compile",
            ),
        ] {
            let d = Dispatcher {
                gate: Arc::new(PolicyEngine::load(&cfg).unwrap()),
                sandboxes: backends,
                audit: crate::audit::Audit::off(),
            };
            for c in [call("exec", touch.clone()), call("write", write.clone())] {
                let out = d.dispatch(&caller, &c).await;
                assert!(out.is_error, "{out:?}");
                assert_eq!(out.text, why);
            }
        }
        assert!(!marker.exists(), "a tool ran on the host");
    }

    #[tokio::test]
    async fn a_turn_started_by_sessions_send_has_only_the_tools_its_sender_has() {
        let (_dir, cfg) = setup(
            r#"{ tenants: [ { id: "t" } ], agents: { list: [
                 { id: "doer", tenant: "t", tools: { allow: ["exec", "read", "group:sessions"] } },
                 { id: "talker", tenant: "t", tools: { allow: ["group:sessions", "read"] } } ] } }"#,
        );
        let (d, spy) = spy_dispatcher(&cfg);
        let doer = cfg.agent(&id("doer")).unwrap();
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        let sessions = TenantSessions::new(doer.tenant.clone(), store);
        let session = SessionKey::new(id("doer"), "api", PeerKind::Direct, "victim").unwrap();
        let by = crate::dispatch::SentBy {
            agent: id("talker"),
            session: SessionKey::new(id("talker"), "api", PeerKind::Direct, "attacker").unwrap(),
        };
        let sender = Sent::default();
        let own = Caller { agent: doer, sessions: &sessions, session: &session, sent_by: None, sender: &sender };
        let sent = Caller { sent_by: Some(&by), ..own };
        // Offered: the intersection, without sessions_send (such a turn may not send on).
        assert_eq!(
            names(d.offered(doer, None)),
            ["exec", "read", "sessions_list", "sessions_history", "sessions_send"]
        );
        assert_eq!(names(d.offered(doer, Some(&by))), ["read", "sessions_list", "sessions_history"]);
        let exec = call("exec", serde_json::json!({ "command": "id" }));
        let out = d.dispatch(&sent, &exec).await;
        assert_eq!(out.text, "denied: tool exec is not allowed for agent talker, whose message started this turn");
        assert!(spy.0.lock().unwrap().is_empty(), "the borrowed call reached the sandbox");
        let nested =
            call("sessions_send", serde_json::json!({ "sessionKey": "agent:doer:api:direct:x", "message": "m" }));
        assert!(
            d.dispatch(&sent, &nested).await.text.contains("cannot be used from a turn that sessions_send started")
        );
        assert!(sender.0.lock().unwrap().is_empty());
        // The positive pairs: what both have runs; the doer's own user still has exec.
        assert_eq!(d.dispatch(&sent, &call("read", serde_json::json!({ "path": "x" }))).await.text, "ran");
        assert_eq!(d.dispatch(&own, &exec).await.text, "ran");
        assert_eq!(spy.0.lock().unwrap().iter().map(|(t, _)| *t).collect::<Vec<_>>(), [Tool::Read, Tool::Exec]);
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
        let caller = Caller { agent, sessions: &sessions, session: &session, sent_by: None, sender: &sender };

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
        let caller = Caller { agent, sessions: &a_sessions, session: &a_key, sent_by: None, sender: &sender };

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

//! The policy engine against a tiny reference model of its rule: a call names a tool exactly or
//! is denied; `deny` wins at every layer; every `allow` list written must include the tool, and
//! without one nothing is allowed; the sandbox mode and workspace access only take away.
#![no_main]

use arbitrary::Arbitrary;
use bulkhead::config::{SandboxMode, ToolLayer, WorkspaceAccess};
use bulkhead::ids::{AgentId, TenantId};
use bulkhead::policy::engine::{Chain, Layer};
use bulkhead::policy::{AgentPolicy, LayerKind};
use libfuzzer_sys::fuzz_target;

/// The model's own catalog: name, runs in the sandbox, workspace access it needs (0 none, 1 ro,
/// 2 rw). Written out here, not taken from the engine's.
const TOOLS: [(&str, bool, u8); 8] = [
    ("exec", true, 0),
    ("read", true, 1),
    ("write", true, 2),
    ("edit", true, 2),
    ("list", true, 1),
    ("sessions_list", false, 0),
    ("sessions_history", false, 0),
    ("sessions_send", false, 0),
];
const GROUPS: [(&str, &[&str]); 4] = [
    ("group:fs", &["read", "write", "edit", "list"]),
    ("group:runtime", &["exec"]),
    ("group:sessions", &["sessions_list", "sessions_history", "sessions_send"]),
    ("group:web", &[]),
];
const ALIASES: [(&str, &str); 3] = [("bash", "exec"), ("shell", "exec"), ("ls", "list")];

/// A name as written in an `allow` or `deny` list.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Written {
    Tool(u8),
    Group(u8),
    Alias(u8),
    All,
    /// Written in capitals (lists fold case; calls do not).
    Upper(u8),
}

impl Written {
    fn text(self) -> String {
        match self {
            Written::Tool(i) => TOOLS[i as usize % 8].0.into(),
            Written::Group(i) => GROUPS[i as usize % 4].0.into(),
            Written::Alias(i) => ALIASES[i as usize % 3].0.into(),
            Written::All => "*".into(),
            Written::Upper(i) => TOOLS[i as usize % 8].0.to_ascii_uppercase(),
        }
    }

    fn covers(self, tool: &str) -> bool {
        match self {
            Written::Tool(i) | Written::Upper(i) => TOOLS[i as usize % 8].0 == tool,
            Written::Group(i) => GROUPS[i as usize % 4].1.contains(&tool),
            Written::Alias(i) => ALIASES[i as usize % 3].1 == tool,
            Written::All => true,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct LayerSpec {
    kind: u8,
    allow: Option<Vec<Written>>,
    deny: Vec<Written>,
}

/// A name as a model sends it in a call.
#[derive(Arbitrary, Debug)]
enum Call {
    Exact(u8),
    Written(Written),
    Padded(u8),
    Any(String),
}

impl Call {
    fn text(&self) -> String {
        match self {
            Call::Exact(i) => TOOLS[*i as usize % 8].0.into(),
            Call::Written(w) => w.text(),
            Call::Padded(i) => format!(" {} ", TOOLS[*i as usize % 8].0),
            Call::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    layers: Vec<LayerSpec>,
    sandbox_off: bool,
    access: u8,
    calls: Vec<Call>,
}

fn reference(input: &Input, name: &str) -> bool {
    let Some(&(tool, sandboxed, needs)) = TOOLS.iter().find(|t| t.0 == name) else { return false };
    let denied = input.layers.iter().any(|l| l.deny.iter().any(|w| w.covers(tool)));
    let allows: Vec<&Vec<Written>> = input.layers.iter().filter_map(|l| l.allow.as_ref()).collect();
    let allowed = !allows.is_empty() && allows.iter().all(|a| a.iter().any(|w| w.covers(tool)));
    !denied && allowed && !(sandboxed && input.sandbox_off) && input.access % 3 >= needs
}

const KINDS: [LayerKind; 4] = [LayerKind::Global, LayerKind::Tenant, LayerKind::AgentDefaults, LayerKind::Agent];

fuzz_target!(|input: Input| {
    let texts = |ws: &[Written]| ws.iter().map(|w| w.text()).collect::<Vec<_>>();
    let layers = input
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let tools = ToolLayer { allow: l.allow.as_deref().map(texts), deny: texts(&l.deny) };
            Layer::new(KINDS[l.kind as usize % 4], "config", &format!("layers[{i}].tools"), &tools, &[])
        })
        .collect();
    let chain = Chain {
        layers,
        sandbox_mode: if input.sandbox_off { SandboxMode::Off } else { SandboxMode::All },
        workspace_access: [WorkspaceAccess::None, WorkspaceAccess::Ro, WorkspaceAccess::Rw][input.access as usize % 3],
        sandbox_source: "config#sandbox".into(),
    };
    let policy = AgentPolicy::new(
        AgentId::parse("fuzz-agent").expect("agent id"),
        TenantId::parse("acme").expect("tenant id"),
        chain,
    );
    let mut calls: Vec<String> = input.calls.iter().map(Call::text).collect();
    calls.extend(TOOLS.iter().map(|t| t.0.to_string()));
    for name in calls {
        let verdict = policy.decide(&name);
        assert_eq!(verdict.allowed(), reference(&input, &name), "{name:?}: {}", verdict.rule());
        if let Some(tool) = verdict.tool {
            assert_eq!(tool.name(), name, "allowed under another name");
        }
    }
});

//! The policy gate every tool call passes before it can reach a sandbox.
//!
//! A deny is a normal outcome (a `Decision`), not an error. The gate is asked twice: once for
//! the set of tools offered to the model, and again for every call the model makes.
//! `PolicyEngine` (in `engine`) is the gate built from the config and the files in `policies/`.

pub mod engine;
pub mod file;
pub mod signature;

pub use engine::{AgentPolicy, LayerKind, PolicyEngine, Verdict};
pub use file::PolicyFile;

use crate::ids::AgentId;
use crate::sandbox::ToolLimits;
use crate::tools::Tool;

/// The outcome of checking one requested tool name for one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { tool: Tool, limits: ToolLimits, rule: String },
    Deny { reason: String, rule: String },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
    pub fn rule(&self) -> &str {
        match self {
            Decision::Allow { rule, .. } | Decision::Deny { rule, .. } => rule,
        }
    }
}

/// Decides which tools an agent may use.
pub trait PolicyGate: Send + Sync {
    /// The tools offered to the model for this agent.
    fn offered(&self, agent: &AgentId) -> Vec<Tool>;
    /// Re-checks a name exactly as the model sent it.
    fn check(&self, agent: &AgentId, requested: &str) -> Decision;
}

/// Denies everything (fail closed): the gate used until a policy engine is configured.
pub struct DenyAll;

impl PolicyGate for DenyAll {
    fn offered(&self, _agent: &AgentId) -> Vec<Tool> {
        Vec::new()
    }
    fn check(&self, _agent: &AgentId, requested: &str) -> Decision {
        Decision::Deny { reason: format!("tool {requested:?} is not allowed"), rule: "deny-all".into() }
    }
}

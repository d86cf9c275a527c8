//! Pass `policies`: the tool-policy layers written in the config, the policy files it names and
//! the keys they must be signed with. Tenants and agents add their own files in their passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::super::raw::{RawPolicies, RawToolPolicy};
use super::Errors;
use crate::ids::{AgentId, TenantId};
use crate::tools::parse_policy_name;

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

/// `policies`: whether files must be signed, and by which keys.
pub(super) fn policies(errs: &mut Errors, raw: Option<RawPolicies>) -> PolicySettings {
    let mut policies = PolicySettings::default();
    let p = raw.unwrap_or_default();
    policies.require_signature = p.require_signature.unwrap_or(false);
    for (i, k) in p.trusted_keys.iter().flatten().enumerate() {
        match crate::crypto::parse_public_key(k) {
            Ok(key) => policies.trusted_keys.push(key),
            Err(e) => errs.push(format!("policies.trustedKeys[{i}]"), e),
        }
    }
    if policies.require_signature && p.trusted_keys.as_ref().is_none_or(|k| k.is_empty()) {
        errs.push("policies.trustedKeys", "requireSignature is true but no trusted keys are listed");
    }
    policies
}

pub(super) fn tool_layer(errs: &mut Errors, path: &str, raw: Option<&RawToolPolicy>) -> ToolLayer {
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

pub(super) fn policy_ref(errs: &mut Errors, base: &Path, key: String, raw: Option<&String>) -> Option<PolicyRef> {
    let written = raw?;
    if written.trim().is_empty() {
        errs.push(key, "empty policy file path");
        return None;
    }
    Some(PolicyRef { written: written.clone(), path: base.join(written), key })
}

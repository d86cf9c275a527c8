//! Policy files (`policies/*.json5`): one tool layer, per-tool limits and embedded test cases.
//!
//! A policy file is what an auditor reads. Its shape:
//! ```json5
//! {
//!   description: "what this policy is for",
//!   tools: { allow: ["group:fs"], deny: ["write", "edit"] },   // same rules as config `tools`
//!   limits: { "*": { workspaceAccess: "ro" }, exec: { timeoutSec: 30, maxOutputBytes: 65536 } },
//!   tests: [ { tool: "read", expect: "allow" }, { agent: "acme-support", tool: "exec", expect: "deny" } ],
//! }
//! ```
//! Names in `tools` and `limits` are validated with the tool catalog at load (a typo is an error
//! with a "did you mean"); names in `tests` are checked exactly as a model's call would be.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{RawToolPolicy, ToolLayer, WorkspaceAccess};
use crate::ids::AgentId;
use crate::tools::{Tool, parse_policy_name};

/// Longest accepted per-tool timeout.
const MAX_TIMEOUT_SEC: u64 = 3600;
/// Largest accepted per-tool output cap.
const MAX_OUTPUT_BYTES: u64 = 16 << 20;
/// Largest policy file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPolicyFile {
    description: Option<String>,
    tools: Option<RawToolPolicy>,
    limits: Option<BTreeMap<String, RawLimits>>,
    tests: Option<Vec<RawCase>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawLimits {
    timeout_sec: Option<u64>,
    max_output_bytes: Option<u64>,
    workspace_access: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCase {
    agent: Option<String>,
    tool: Option<String>,
    expect: Option<String>,
    note: Option<String>,
}

/// A checked policy file.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    /// The name shown in decisions and errors (the path as written in the config or on the
    /// command line).
    pub name: String,
    pub path: PathBuf,
    pub description: Option<String>,
    pub tools: ToolLayer,
    pub limits: Vec<LimitRule>,
    pub tests: Vec<TestCase>,
}

/// `limits.<name>`: caps for the tools `name` stands for. Every matching rule applies; the
/// smallest value wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRule {
    /// The key as written (`"*"`, `"group:fs"`, `"exec"`).
    pub key: String,
    pub tools: Vec<Tool>,
    pub timeout: Option<Duration>,
    pub max_output_bytes: Option<usize>,
    pub workspace_access: Option<WorkspaceAccess>,
}

/// One embedded case: `tool` is checked exactly as a model's call would be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    pub index: usize,
    /// With an agent, the case runs against that agent's effective policy in the config (the
    /// agent must use this file); without, against this file alone.
    pub agent: Option<AgentId>,
    pub tool: String,
    pub expect_allow: bool,
    pub note: Option<String>,
}

pub fn parse_workspace_access(raw: &str) -> Option<WorkspaceAccess> {
    match raw {
        "none" => Some(WorkspaceAccess::None),
        "ro" => Some(WorkspaceAccess::Ro),
        "rw" => Some(WorkspaceAccess::Rw),
        _ => None,
    }
}

pub fn workspace_access_name(a: WorkspaceAccess) -> &'static str {
    match a {
        WorkspaceAccess::None => "none",
        WorkspaceAccess::Ro => "ro",
        WorkspaceAccess::Rw => "rw",
    }
}

/// Reads and checks a policy file; every error names the file (and the key or line).
pub fn load(name: &str, path: &Path) -> Result<PolicyFile, Vec<String>> {
    let meta = std::fs::metadata(path).map_err(|e| vec![format!("policy file {name}: cannot read: {e}")])?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(vec![format!("policy file {name}: larger than {MAX_FILE_BYTES} bytes")]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("policy file {name}: cannot read: {e}")])?;
    parse(name, path, &text)
}

/// Checks policy file text. `name` prefixes every error.
pub fn parse(name: &str, path: &Path, text: &str) -> Result<PolicyFile, Vec<String>> {
    crate::config::nesting::check(text).map_err(|deep| vec![format!("policy file {name}: invalid JSON5: {deep}")])?;
    let value: serde_json::Value = json5::from_str(text).map_err(|e| {
        let at = e.position().map(|p| format!(" (line {}, column {})", p.line + 1, p.column + 1)).unwrap_or_default();
        let msg = e.to_string();
        let msg = msg.rsplit_once(" at ").map(|(m, _)| m.to_string()).unwrap_or(msg);
        vec![format!("policy file {name}{at}: invalid JSON5: {msg}")]
    })?;
    let raw: RawPolicyFile = serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        let msg = e.into_inner().to_string().replace("struct Raw", "object ");
        vec![format!("policy file {name}: {key}: {msg}")]
    })?;
    let mut errors = Vec::new();
    let mut names_ok = |list: &Option<Vec<String>>, key: &str| {
        for (i, n) in list.iter().flatten().enumerate() {
            if let Err(e) = parse_policy_name(n) {
                errors.push(format!("policy file {name}: tools.{key}[{i}]: {e}"));
            }
        }
    };
    let tools = raw.tools.unwrap_or_default();
    names_ok(&tools.allow, "allow");
    names_ok(&tools.deny, "deny");
    let tools = ToolLayer { allow: tools.allow, deny: tools.deny.unwrap_or_default() };

    let mut limits = Vec::new();
    for (key, l) in raw.limits.unwrap_or_default() {
        let at = format!("policy file {name}: limits.{key}");
        let members = match parse_policy_name(&key) {
            Ok(n) => n.tools(),
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                continue;
            }
        };
        if let Some(t) = l.timeout_sec
            && !(1..=MAX_TIMEOUT_SEC).contains(&t)
        {
            errors.push(format!("{at}.timeoutSec: must be between 1 and {MAX_TIMEOUT_SEC}"));
        }
        if let Some(b) = l.max_output_bytes
            && !(1..=MAX_OUTPUT_BYTES).contains(&b)
        {
            errors.push(format!("{at}.maxOutputBytes: must be between 1 and {MAX_OUTPUT_BYTES}"));
        }
        let access = match l.workspace_access.as_deref() {
            None => None,
            Some(a) => match parse_workspace_access(a) {
                Some(a) => Some(a),
                None => {
                    errors.push(format!(
                        "{at}.workspaceAccess: invalid value {a:?}: expected \"none\", \"ro\" or \"rw\""
                    ));
                    None
                }
            },
        };
        limits.push(LimitRule {
            key,
            tools: members,
            timeout: l.timeout_sec.map(Duration::from_secs),
            max_output_bytes: l.max_output_bytes.map(|b| b as usize),
            workspace_access: access,
        });
    }

    let mut tests = Vec::new();
    for (i, c) in raw.tests.unwrap_or_default().into_iter().enumerate() {
        let at = format!("policy file {name}: tests[{i}]");
        let agent = match c.agent.as_deref().map(AgentId::parse) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => {
                errors.push(format!("{at}.agent: {e}"));
                continue;
            }
        };
        let Some(tool) = c.tool else {
            errors.push(format!("{at}.tool: missing key"));
            continue;
        };
        let expect_allow = match c.expect.as_deref() {
            Some("allow") => true,
            Some("deny") => false,
            Some(other) => {
                errors.push(format!("{at}.expect: invalid value {other:?}: expected \"allow\" or \"deny\""));
                continue;
            }
            None => {
                errors.push(format!("{at}.expect: missing key (\"allow\" or \"deny\")"));
                continue;
            }
        };
        tests.push(TestCase { index: i, agent, tool, expect_allow, note: c.note });
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PolicyFile {
        name: name.to_string(),
        path: path.to_path_buf(),
        description: raw.description,
        tools,
        limits,
        tests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<PolicyFile, Vec<String>> {
        parse("p.json5", Path::new("p.json5"), text)
    }

    #[test]
    fn a_full_file_parses() {
        let f = check(
            r#"// header
            { description: "d", tools: { allow: ["group:fs", "bash"], deny: ["write"] },
              limits: { "*": { workspaceAccess: "ro" }, exec: { timeoutSec: 5, maxOutputBytes: 100 } },
              tests: [ { tool: "read", expect: "allow" }, { agent: "a1", tool: "EXEC", expect: "deny", note: "n" } ] }"#,
        )
        .unwrap();
        assert_eq!(f.tools.deny, vec!["write"]);
        assert_eq!(f.limits.len(), 2);
        assert_eq!(f.limits[0].tools.len(), Tool::ALL.len());
        assert_eq!(f.limits[1].timeout, Some(Duration::from_secs(5)));
        assert_eq!(f.tests[1].agent, Some(AgentId::parse("a1").unwrap()));
        assert!(!f.tests[1].expect_allow);
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = check(r#"{ tools: { deny: ["exce"] } }"#).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("policy file p.json5: tools.deny[0]:") && e[0].contains("did you mean \"exec\""),
            "{e:?}"
        );
        let e = check("{ tools: { deny: [ } }").unwrap_err();
        assert!(e[0].contains("p.json5 (line 1") && e[0].contains("invalid JSON5"), "{e:?}");
        let e = check(r#"{ tols: {} }"#).unwrap_err();
        assert!(e[0].contains("unknown field `tols`"), "{e:?}");
        let e = check(
            r#"{ limits: { nope: {}, exec: { timeoutSec: 0, workspaceAccess: "w" } }, tests: [ { tool: "x", expect: "maybe" }, { expect: "allow" } ] }"#,
        )
        .unwrap_err();
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(e.iter().all(|m| m.starts_with("policy file p.json5: ")));
    }

    #[test]
    fn missing_file_is_named() {
        let e = load("policies/none.json5", Path::new("/nonexistent/none.json5")).unwrap_err();
        assert!(e[0].starts_with("policy file policies/none.json5: cannot read"), "{e:?}");
    }
}

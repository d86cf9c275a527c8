//! The catalog of built-in tools: names, groups, aliases and the JSON schemas offered to models.
//!
//! This is the one place that knows which tool names exist. Config validation, the policy engine
//! and the call-time gate all ask it, so a name is either a tool here or it is nothing.

use serde_json::{Value, json};

/// A built-in tool. Names follow the other gateways so prompts and habits carry over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tool {
    Exec,
    Read,
    Write,
    Edit,
    List,
    SessionsList,
    SessionsHistory,
    SessionsSend,
}

impl Tool {
    pub const ALL: [Tool; 8] = [
        Tool::Exec,
        Tool::Read,
        Tool::Write,
        Tool::Edit,
        Tool::List,
        Tool::SessionsList,
        Tool::SessionsHistory,
        Tool::SessionsSend,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Exec => "exec",
            Tool::Read => "read",
            Tool::Write => "write",
            Tool::Edit => "edit",
            Tool::List => "list",
            Tool::SessionsList => "sessions_list",
            Tool::SessionsHistory => "sessions_history",
            Tool::SessionsSend => "sessions_send",
        }
    }

    /// Exact lookup, as done for a model's call: no folding, no aliases, no trimming.
    pub fn from_exact_name(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Tools that touch files or processes; they run only inside the tenant's sandbox.
    pub fn needs_sandbox(self) -> bool {
        !matches!(self, Tool::SessionsList | Tool::SessionsHistory | Tool::SessionsSend)
    }

    /// Whether the tool can change the workspace (matters for `workspaceAccess: ro`).
    pub fn writes_workspace(self) -> bool {
        matches!(self, Tool::Write | Tool::Edit | Tool::Exec)
    }

    pub fn description(self) -> &'static str {
        match self {
            Tool::Exec => "Run a shell command in the sandboxed workspace and return its output.",
            Tool::Read => "Read a text file from the workspace, optionally a range of lines.",
            Tool::Write => "Create or overwrite a file in the workspace.",
            Tool::Edit => "Replace one exact, unique occurrence of oldText with newText in a workspace file.",
            Tool::List => "List the entries of a workspace directory.",
            Tool::SessionsList => "List the conversations of this tenant.",
            Tool::SessionsHistory => "Read the recent messages of one of this tenant's conversations.",
            Tool::SessionsSend => "Send a message into another of this tenant's conversations.",
        }
    }

    /// JSON Schema of the arguments, as offered to the model.
    pub fn parameters(self) -> Value {
        let string = json!({ "type": "string" });
        let int = json!({ "type": "integer", "minimum": 0 });
        let (props, required): (Value, &[&str]) = match self {
            Tool::Exec => (json!({ "command": string, "timeoutSec": int }), &["command"]),
            Tool::Read => (json!({ "path": string, "offset": int, "limit": int }), &["path"]),
            Tool::Write => (json!({ "path": string, "content": string }), &["path", "content"]),
            Tool::Edit => {
                (json!({ "path": string, "oldText": string, "newText": string }), &["path", "oldText", "newText"])
            }
            Tool::List => (json!({ "path": string }), &[]),
            Tool::SessionsList => (json!({}), &[]),
            Tool::SessionsHistory => (json!({ "sessionKey": string, "limit": int }), &["sessionKey"]),
            Tool::SessionsSend => (json!({ "sessionKey": string, "message": string }), &["sessionKey", "message"]),
        };
        json!({ "type": "object", "properties": props, "required": required, "additionalProperties": false })
    }
}

/// Named groups usable in policy lists. `group:web` is reserved: it is a valid name with no
/// members yet, so policies written for later versions still load.
pub const GROUPS: &[(&str, &[Tool])] = &[
    ("group:fs", &[Tool::Read, Tool::Write, Tool::Edit, Tool::List]),
    ("group:runtime", &[Tool::Exec]),
    ("group:sessions", &[Tool::SessionsList, Tool::SessionsHistory, Tool::SessionsSend]),
    ("group:web", &[]),
];

/// Names other gateways use for our tools.
pub const ALIASES: &[(&str, Tool)] = &[("bash", Tool::Exec), ("shell", Tool::Exec), ("ls", Tool::List)];

/// What a name in a policy list stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyName {
    /// `*`: every tool.
    All,
    Group(&'static str, &'static [Tool]),
    Tool(Tool),
}

impl PolicyName {
    pub fn tools(&self) -> Vec<Tool> {
        match self {
            PolicyName::All => Tool::ALL.to_vec(),
            PolicyName::Group(_, members) => members.to_vec(),
            PolicyName::Tool(t) => vec![*t],
        }
    }
}

/// Longest name accepted in a policy list.
const MAX_NAME_LEN: usize = 64;

/// Parses a name written in a config or policy file. Strict: ASCII only, folded to lowercase,
/// characters `[a-z0-9_:*-]`, and it must be a tool, an alias, a group or `*`.
pub fn parse_policy_name(raw: &str) -> Result<PolicyName, String> {
    if raw.is_empty() {
        return Err("empty tool name".into());
    }
    if raw.len() > MAX_NAME_LEN {
        return Err(format!("tool name longer than {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = raw.chars().find(|c| !(c.is_ascii_alphanumeric() || "_:*-".contains(*c))) {
        return Err(format!("invalid character {c:?} in tool name {raw:?} (allowed: a-z 0-9 _ : * -)"));
    }
    let name = raw.to_ascii_lowercase();
    if name == "*" {
        return Ok(PolicyName::All);
    }
    if let Some((g, members)) = GROUPS.iter().find(|(g, _)| *g == name) {
        return Ok(PolicyName::Group(g, members));
    }
    if let Some(t) = Tool::from_exact_name(&name) {
        return Ok(PolicyName::Tool(t));
    }
    if let Some((_, t)) = ALIASES.iter().find(|(a, _)| *a == name) {
        return Ok(PolicyName::Tool(*t));
    }
    let mut msg = format!("unknown tool or group {raw:?}");
    if let Some(s) = did_you_mean(&name) {
        msg.push_str(&format!(" (did you mean {s:?}?)"));
    }
    Err(msg)
}

/// Every name a policy may use, for suggestions.
pub fn known_names() -> impl Iterator<Item = &'static str> {
    Tool::ALL.iter().map(|t| t.name()).chain(GROUPS.iter().map(|(g, _)| *g)).chain(ALIASES.iter().map(|(a, _)| *a))
}

fn did_you_mean(name: &str) -> Option<&'static str> {
    known_names().map(|k| (edit_distance(name, k), k)).filter(|(d, k)| *d <= 2.max(k.len() / 4)).min().map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_groups_and_aliases() {
        assert_eq!(parse_policy_name("EXEC").unwrap(), PolicyName::Tool(Tool::Exec));
        assert_eq!(parse_policy_name("bash").unwrap(), PolicyName::Tool(Tool::Exec));
        assert_eq!(parse_policy_name("group:fs").unwrap().tools().len(), 4);
        assert_eq!(parse_policy_name("*").unwrap(), PolicyName::All);
    }

    #[test]
    fn strictness_and_suggestions() {
        assert!(parse_policy_name("exce").unwrap_err().contains("did you mean \"exec\""));
        for bad in ["", " exec", "ｅxec", "exec\u{200b}", "group:nope", &"x".repeat(65)] {
            assert!(parse_policy_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Tool::from_exact_name("EXEC"), None);
    }
}

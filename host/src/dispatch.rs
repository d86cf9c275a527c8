//! The tool pipeline: model tool call → policy gate → (session tools on the host, scoped to the
//! caller's tenant | the tenant's sandbox) → capped, sanitised result → model.
//!
//! This is the only code that runs a tool. Every call is re-checked here, whatever the model was
//! offered, and every decision is emitted as a policy event and chained into the tenant's audit
//! log before the tool runs; the outcome is chained before the model sees it. If the audit log
//! cannot take a record, the call fails closed.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::audit::{Actor, Audit, Event, Scope};
use crate::config::{AgentConfig, SandboxBackend, SandboxMode};
use crate::ids::{AgentId, SessionKey};
use crate::policy::{Decision, PolicyGate};
use crate::sandbox::{SandboxCall, Sandboxes, ToolLimits, ToolOutput};
use crate::session::{Message, TenantSessions, ToolCall};
use crate::tools::Tool;

/// Largest serialised tool arguments accepted from a model.
pub const MAX_ARGS_BYTES: usize = 256 * 1024;
/// Deepest nesting accepted in tool arguments.
pub const MAX_ARGS_DEPTH: usize = 32;
/// Longest tool name echoed back in a refusal or a log line.
const MAX_SHOWN_NAME: usize = 64;

/// A structured record of one policy decision, logged and chained into the tenant's audit log.
#[derive(Debug, Clone)]
pub struct PolicyEvent<'a> {
    pub tenant: &'a str,
    pub agent: &'a str,
    pub session: &'a SessionKey,
    pub tool: String,
    pub allowed: bool,
    pub rule: &'a str,
    session_tenant: &'a crate::ids::TenantId,
}

impl PolicyEvent<'_> {
    /// Logs the decision and appends it to the tenant's audit log (waiting until it is on disk).
    async fn emit(&self, audit: &Audit) -> Result<(), crate::audit::AuditError> {
        // A known tool by its name and rule; any other name is the model's text, and so is the
        // rule that refuses it (it quotes the name): only its length is logged.
        let known = Tool::from_exact_name(&self.tool);
        tracing::info!(
            target: "bulkhead::policy",
            tenant = self.tenant,
            agent = self.agent,
            // The channel only: a session key names the peer, which stays out of logs.
            channel = self.session.channel(),
            tool = known.map_or("unknown", Tool::name),
            name_len = self.tool.chars().count(),
            decision = if self.allowed { "allow" } else { "deny" },
            rule = if known.is_some() { self.rule } else { "not a tool" },
            "Tool call decided."
        );
        if !audit.is_on() {
            return Ok(());
        }
        let scope = Scope::Tenant(self.session_tenant.clone());
        let event = Event::ToolDecision {
            agent: self.agent.to_string(),
            channel: self.session.channel().to_string(),
            session: audit.digest(&scope, "session", self.session.to_string().as_bytes()),
            tool: self.tool.clone(),
            allowed: self.allowed,
            rule: self.rule.to_string(),
        };
        audit.append(scope, Actor::Agent(self.agent.to_string()), event).await.map(|_| ())
    }
}

/// Host-side session tools need to start runs in other sessions; the agent loop provides this.
#[async_trait::async_trait]
pub trait SessionSender: Send + Sync {
    /// Queues `message` as a new turn in `target` (already checked to be the caller's tenant's).
    async fn send(&self, target: SessionKey, message: String) -> Result<(), String>;
}

/// What a tool call did, for usage metering and metrics: no content, no arguments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallReport {
    /// The policy denied the call.
    pub denied: bool,
    /// The call went to the sandbox: its wall-clock time, and whether the backend failed to run it.
    pub sandbox: Option<(std::time::Duration, bool)>,
}

pub struct Dispatcher {
    pub gate: Arc<dyn PolicyGate>,
    pub sandboxes: Sandboxes,
    /// Where decisions and outcomes are chained (`Audit::off()` records nothing).
    pub audit: Audit,
}

/// The session (and its agent) whose `sessions_send` started a run. A run it started never has
/// a tool its sender does not have: the sender's tools are a ceiling on the target's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentBy {
    pub agent: AgentId,
    pub session: SessionKey,
}

/// Who is calling: the agent, its tenant's session handle and the session the call comes from.
pub struct Caller<'a> {
    pub agent: &'a AgentConfig,
    pub sessions: &'a TenantSessions,
    pub session: &'a SessionKey,
    /// Set when this run was itself started by `sessions_send`: its tools are the intersection
    /// of this agent's and the sender's, and it may not send further.
    pub sent_by: Option<&'a SentBy>,
    pub sender: &'a dyn SessionSender,
}

impl Dispatcher {
    /// The tools to offer the model for this agent (in a run `sent_by` started: only those the
    /// sender has too, and never `sessions_send`, which such a run may not use).
    pub fn offered(&self, agent: &AgentConfig, sent_by: Option<&SentBy>) -> Vec<Tool> {
        let senders = sent_by.map(|by| self.gate.offered(&by.agent));
        self.gate
            .offered(&agent.id)
            .into_iter()
            .filter(|t| !(t.needs_sandbox() && agent.sandbox.mode == SandboxMode::Off))
            .filter(|t| senders.as_ref().is_none_or(|s| s.contains(t) && *t != Tool::SessionsSend))
            .collect()
    }

    /// The gate's decision for a call, exactly as named. In a run started by `sessions_send`
    /// the sender must be allowed the tool too, and the narrower limits of the two apply.
    fn decide(&self, caller: &Caller<'_>, name: &str) -> Decision {
        let decision = self.gate.check(&caller.agent.id, name);
        let (Some(by), Decision::Allow { tool, limits, rule }) = (caller.sent_by, &decision) else {
            return decision;
        };
        match self.gate.check(&by.agent, name) {
            Decision::Allow { limits: theirs, .. } => Decision::Allow {
                tool: *tool,
                limits: narrower(limits, &theirs),
                rule: format!("{rule}; [sender] agent {} is allowed {} too", by.agent, tool.name()),
            },
            Decision::Deny { rule: theirs, .. } => Decision::Deny {
                reason: format!(
                    "tool {} is not allowed for agent {}, whose message started this turn",
                    tool.name(),
                    by.agent
                ),
                rule: format!("[sender] agent {}: {theirs}", by.agent),
            },
        }
    }

    pub async fn dispatch(&self, caller: &Caller<'_>, call: &ToolCall) -> ToolOutput {
        self.dispatch_reported(caller, call).await.0
    }

    /// `dispatch`, also reporting what happened for metering.
    pub async fn dispatch_reported(&self, caller: &Caller<'_>, call: &ToolCall) -> (ToolOutput, CallReport) {
        let mut report = CallReport::default();
        let shown = shown_name(&call.name);
        let decision = self.decide(caller, &call.name);
        let emitted = PolicyEvent {
            tenant: caller.agent.tenant.as_str(),
            agent: caller.agent.id.as_str(),
            session: caller.session,
            tool: shown.clone(),
            allowed: decision.is_allow(),
            rule: decision.rule(),
            session_tenant: &caller.agent.tenant,
        }
        .emit(&self.audit)
        .await;
        if let Err(e) = emitted {
            tracing::error!(tenant = %caller.agent.tenant, error = %e, "Tool call refused: the audit log cannot record it.");
            return (refusal(AUDIT_UNAVAILABLE.into()), report);
        }
        let (tool, limits) = match decision {
            Decision::Allow { tool, limits, .. } => (tool, limits),
            Decision::Deny { reason, .. } => {
                report.denied = true;
                return (refusal(format!("denied: {reason}")), report);
            }
        };
        if let Err(e) = check_arguments(&call.arguments) {
            return (refusal(format!("invalid arguments for {}: {e}", tool.name())), report);
        }
        let started = Instant::now();
        let sandbox_name = if tool.needs_sandbox() {
            match caller.agent.sandbox.backend {
                SandboxBackend::Wasm => "wasm",
                SandboxBackend::Docker => "docker",
            }
        } else {
            "host"
        };
        let mut out = if tool.needs_sandbox() {
            if caller.agent.sandbox.mode == SandboxMode::Off {
                // Never a fallback to the host: without a sandbox these tools do not exist.
                let text = format!("denied: {} needs a sandbox and sandboxing is off for this agent", tool.name());
                return (refusal(text), report);
            }
            let sandbox_call = SandboxCall {
                tenant: caller.agent.tenant.clone(),
                agent: caller.agent.id.clone(),
                session: caller.session.clone(),
                tool,
                args: call.arguments.clone(),
                limits: limits.clone(),
                settings: caller.agent.sandbox.clone(),
            };
            let result = self.sandboxes.call(&sandbox_call).await;
            report.sandbox = Some((started.elapsed(), result.is_err()));
            match result {
                Ok(out) => out,
                Err(e) => {
                    // The error's text may quote the model's arguments: its kind only.
                    tracing::warn!(tenant = %caller.agent.tenant, agent = %caller.agent.id, tool = tool.name(), error = e.kind(), "Sandbox call failed.");
                    refusal(e.to_string())
                }
            }
        } else {
            session_tool(caller, tool, &call.arguments).await
        };
        tracing::debug!(tenant = %caller.agent.tenant, tool = tool.name(), elapsed_ms = started.elapsed().as_millis() as u64, "Tool call finished.");
        let (text, cut) = cap_output(&out.text, limits.max_output_bytes);
        out.truncated |= cut;
        out.text = text;
        if self.audit.is_on() {
            let scope = Scope::Tenant(caller.agent.tenant.clone());
            let args = serde_json::to_vec(&call.arguments).unwrap_or_default();
            let event = Event::ToolOutcome {
                agent: caller.agent.id.to_string(),
                channel: caller.session.channel().to_string(),
                session: self.audit.digest(&scope, "session", caller.session.to_string().as_bytes()),
                tool: tool.name().to_string(),
                args_digest: self.audit.digest(&scope, "args", &args),
                sandbox: sandbox_name.to_string(),
                duration_ms: started.elapsed().as_millis() as u64,
                exit_code: out.exit_code,
                is_error: out.is_error,
                truncated: out.truncated,
            };
            if let Err(e) = self.audit.append(scope, Actor::Agent(caller.agent.id.to_string()), event).await {
                tracing::error!(tenant = %caller.agent.tenant, error = %e, "Tool result withheld: the audit log cannot record it.");
                return (refusal(AUDIT_UNAVAILABLE.into()), report);
            }
        }
        (out, report)
    }
}

/// What the model is told when the audit log cannot take a record (white-label wording).
const AUDIT_UNAVAILABLE: &str = "refused: the audit log is unavailable, so no tool can run";

/// The tighter of two sets of limits, field by field.
fn narrower(a: &ToolLimits, b: &ToolLimits) -> ToolLimits {
    ToolLimits {
        timeout: a.timeout.min(b.timeout),
        max_output_bytes: a.max_output_bytes.min(b.max_output_bytes),
        workspace_access: a.workspace_access.min(b.workspace_access),
    }
}

fn refusal(text: String) -> ToolOutput {
    ToolOutput { text, is_error: true, exit_code: None, truncated: false }
}

/// A tool name as it may appear in a refusal or log: bounded, control characters made visible.
pub fn shown_name(name: &str) -> String {
    let mut s: String = name.chars().take(MAX_SHOWN_NAME).flat_map(char::escape_debug).collect();
    if name.chars().count() > MAX_SHOWN_NAME {
        s.push('…');
    }
    s
}

fn check_arguments(args: &Value) -> Result<(), String> {
    if !args.is_object() {
        return Err("arguments must be a JSON object".into());
    }
    if depth(args) > MAX_ARGS_DEPTH {
        return Err(format!("arguments nested deeper than {MAX_ARGS_DEPTH} levels"));
    }
    let size = serde_json::to_vec(args).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_ARGS_BYTES {
        return Err(format!("arguments larger than {MAX_ARGS_BYTES} bytes"));
    }
    Ok(())
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Caps tool output at `max` bytes (on a character boundary) and neutralises terminal control
/// sequences: every control character other than newline and tab is replaced.
pub fn cap_output(text: &str, max: usize) -> (String, bool) {
    let mut out = String::with_capacity(text.len().min(max));
    let mut truncated = false;
    for c in text.chars() {
        let c = if c.is_control() && c != '\n' && c != '\t' { '\u{FFFD}' } else { c };
        if out.len() + c.len_utf8() > max {
            truncated = true;
            break;
        }
        out.push(c);
    }
    if truncated {
        out.push_str("\n[output truncated]");
    }
    (out, truncated)
}

fn str_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, String> {
    args.get(key).and_then(Value::as_str).ok_or_else(|| format!("missing string argument {key:?}"))
}

fn ok(text: String) -> ToolOutput {
    ToolOutput { text, ..Default::default() }
}

/// `sessions_*`: run on the host against the caller's tenant only. A key of another tenant, or
/// of no session at all, gets the same answer.
async fn session_tool(caller: &Caller<'_>, tool: Tool, args: &Value) -> ToolOutput {
    const NOT_FOUND: &str = "session not found";
    let result: Result<ToolOutput, String> = async {
        match tool {
            Tool::SessionsList => {
                let list = caller.sessions.list().await.map_err(|e| e.to_string())?;
                let lines: Vec<String> = list.iter().map(|s| format!("{} ({} messages)", s.key, s.messages)).collect();
                Ok(ok(if lines.is_empty() { "no sessions".into() } else { lines.join("\n") }))
            }
            Tool::SessionsHistory => {
                let key = SessionKey::parse(str_arg(args, "sessionKey")?).map_err(|_| NOT_FOUND.to_string())?;
                if !caller.sessions.exists(&key).await.map_err(|e| e.to_string())? {
                    return Err(NOT_FOUND.into());
                }
                let limit = args.get("limit").and_then(Value::as_u64).unwrap_or(20).min(200) as usize;
                let msgs = caller.sessions.history(&key, Some(limit)).await.map_err(|e| e.to_string())?;
                let lines: Vec<String> = msgs
                    .iter()
                    .filter(|m| !matches!(m, Message::ToolResult { .. }))
                    .map(|m| match m {
                        Message::FromSession { from, text } => format!("session {from}: {text}"),
                        m => format!("{}: {}", m.role(), m.text()),
                    })
                    .collect();
                Ok(ok(lines.join("\n")))
            }
            Tool::SessionsSend => {
                if caller.sent_by.is_some() {
                    return Err("sessions_send cannot be used from a turn that sessions_send started".into());
                }
                let key = SessionKey::parse(str_arg(args, "sessionKey")?).map_err(|_| NOT_FOUND.to_string())?;
                let message = str_arg(args, "message")?.to_string();
                if message.trim().is_empty() {
                    return Err("message is empty".into());
                }
                if &key == caller.session || !caller.sessions.exists(&key).await.map_err(|e| e.to_string())? {
                    return Err(NOT_FOUND.into());
                }
                caller.sender.send(key, message).await?;
                Ok(ok("message queued".into()))
            }
            other => Err(format!("{} is not a host tool", other.name())),
        }
    }
    .await;
    result.unwrap_or_else(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_and_escapes_neutralised() {
        let (s, cut) = cap_output("ok\x1b[31mred\x07\n", 100);
        assert!(!cut);
        assert_eq!(s, "ok\u{FFFD}[31mred\u{FFFD}\n");
        let (s, cut) = cap_output(&"é".repeat(10), 5);
        assert!(cut);
        assert!(s.starts_with("éé\n[output truncated]"));
    }

    #[test]
    fn argument_limits() {
        assert!(check_arguments(&serde_json::json!("x")).is_err());
        let mut deep = serde_json::json!({});
        for _ in 0..40 {
            deep = serde_json::json!({ "a": deep });
        }
        assert!(check_arguments(&deep).unwrap_err().contains("nested"));
        assert!(check_arguments(&serde_json::json!({"content": "x".repeat(MAX_ARGS_BYTES)})).is_err());
        assert!(check_arguments(&serde_json::json!({"path": "a"})).is_ok());
        assert_eq!(shown_name("exec\u{200b}"), "exec\\u{200b}");
    }
}

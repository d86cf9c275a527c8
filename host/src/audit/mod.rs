//! The tamper-evident audit trail: one log per tenant and one host-wide (operator) log of
//! security events, each record sealed and chained to the previous one with HMAC-SHA256, with
//! Ed25519-signed checkpoints that can be anchored outside the host.
//!
//! Layout under `<stateDir>/audit/` (directories 0700, files 0600):
//!
//! ```text
//! keys.age                 key-encryption key + checkpoint signing key, age-wrapped to the master key
//! lock                     held by the process that appends (the gateway, or a CLI command)
//! host.log                 the operator log (auth failures, admin actions, tenant deletion,
//!                          and the anchors of the tenant logs' heads)
//! host.key                 host.log's random key, sealed with the key-encryption key
//! host.checkpoint          the latest signed checkpoint of host.log
//! tenants/<id>.log         a tenant's log (tool decisions and outcomes, policy loads, export, ...)
//! tenants/<id>.key         its random key (deleted with the tenant)
//! tenants/<id>.checkpoint  its latest signed checkpoint (written after its anchor in host.log)
//! ```
//!
//! A log is text, one record per line: `<seq> <mac> <sealed>`. `sealed` is the record's JSON,
//! encrypted with ChaCha20-Poly1305 (the store's record sealing, bound to the log and position),
//! so no agent id, tool name or digest is readable at rest; `mac` is
//! HMAC-SHA256(chain key, previous mac ‖ seq ‖ sealed), so any change, deletion, reordering or
//! insertion breaks the chain at a sequence number `audit verify` names. Every checkpoint of a
//! tenant log is anchored in the host chain first, so a tenant log cut, rolled back or deleted
//! falls behind its high-water mark (see [`anchors`]). Records hold no message content; sessions
//! and client addresses appear only as keyed digests.
//!
//! To append, call [`Audit::append`] (waits until the record is on disk) or [`Audit::record`]
//! (waits only for queue space): `audit.append(Scope::Tenant(id), Actor::System, Event::...)`.
//! New event kinds are new [`Event`] variants.

pub mod anchors;
mod chain;
mod keys;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use anchors::{Anchor, Anchors};
pub use chain::{Broken, Checkpoint, Mark, Verified, read_marked, read_records, verify_log, verify_marked};
pub use keys::{AuditKeys, LogKey};
pub use reader::{AuditReader, LogReport};
pub use writer::{Audit, AuditError, AuditOpenError, LogWriter, Receipt, read_checkpoint};

use crate::config::Config;
use crate::ids::TenantId;

/// Records between two automatic checkpoints of a log.
pub const CHECKPOINT_EVERY: u64 = 256;

/// Which log a record goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The operator log: host-wide events.
    Host,
    Tenant(TenantId),
}

impl Scope {
    /// The name bound into every MAC, seal and checkpoint of this log.
    pub fn name(&self) -> String {
        match self {
            Scope::Host => "host".to_string(),
            Scope::Tenant(t) => format!("tenant:{t}"),
        }
    }

    pub fn log_path(&self, dir: &Path) -> PathBuf {
        match self {
            Scope::Host => dir.join("host.log"),
            Scope::Tenant(t) => dir.join("tenants").join(format!("{t}.log")),
        }
    }

    pub fn checkpoint_path(&self, dir: &Path) -> PathBuf {
        self.log_path(dir).with_extension("checkpoint")
    }

    /// The log's random key, sealed with the audit key-encryption key.
    pub fn key_path(&self, dir: &Path) -> PathBuf {
        self.log_path(dir).with_extension("key")
    }

    /// The log a scope name (`host`, `tenant:<id>`) names.
    pub fn parse(name: &str) -> Option<Scope> {
        match name.strip_prefix("tenant:") {
            Some(t) => TenantId::parse(t).ok().filter(|id| id.as_str() == t).map(Scope::Tenant),
            None => (name == "host").then_some(Scope::Host),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl From<&TenantId> for Scope {
    fn from(t: &TenantId) -> Self {
        Scope::Tenant(t.clone())
    }
}

/// Where a config's audit logs live.
pub fn audit_dir(config: &Config) -> PathBuf {
    config.state_dir.join("audit")
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The gateway itself (start, policy loads, sandbox lifecycle).
    System,
    /// An agent acting for its tenant (tool calls).
    Agent(String),
    /// An operator through the admin API, by configured operator id.
    Operator(String),
    /// A command-line invocation on the host.
    Cli,
    /// An unauthenticated client (auth failures).
    Anonymous,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::System => f.write_str("system"),
            Actor::Agent(a) => write!(f, "agent:{a}"),
            Actor::Operator(o) => write!(f, "operator:{o}"),
            Actor::Cli => f.write_str("cli"),
            Actor::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// An agent whose effective policy changed in a reload, with its new digest (`None`: removed).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyChange {
    pub agent: String,
    pub digest: Option<String>,
}

/// A security event. Every field is metadata: no message content, no secret, and no session key
/// or client address except as a keyed digest (see [`AuditKeys::digest`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Event {
    /// The gateway started with a config (digest of the file's bytes).
    #[serde(rename = "gateway.start")]
    GatewayStart { config_digest: String, tenants: usize, agents: usize, tls: bool },
    #[serde(rename = "gateway.stop")]
    GatewayStop {},
    /// A reloaded config was applied (refused reloads change nothing and are not recorded here;
    /// the admin request that asked for one is). `policies` lists agents whose effective policy
    /// digest changed, added agents included; `accounts` the chat accounts restarted.
    #[serde(rename = "config.reload")]
    ConfigReload {
        config_digest: String,
        trigger: String,
        tenants_added: Vec<String>,
        tenants_removed: Vec<String>,
        tenants_changed: Vec<String>,
        policies: Vec<PolicyChange>,
        accounts: Vec<String>,
    },
    /// An agent's effective policy was loaded.
    #[serde(rename = "policy.load")]
    PolicyLoad { agent: String, digest: String },
    /// The gate decided a tool call (before it runs).
    #[serde(rename = "tool.decision")]
    ToolDecision { agent: String, channel: String, session: String, tool: String, allowed: bool, rule: String },
    /// An allowed tool call finished.
    #[serde(rename = "tool.outcome")]
    ToolOutcome {
        agent: String,
        channel: String,
        session: String,
        tool: String,
        args_digest: String,
        sandbox: String,
        duration_ms: u64,
        exit_code: Option<i32>,
        is_error: bool,
        truncated: bool,
    },
    /// A sandbox backend became ready or failed.
    #[serde(rename = "sandbox.lifecycle")]
    SandboxLifecycle { backend: String, state: String },
    /// A sandbox container was started for an agent of the tenant (Docker backend).
    #[serde(rename = "sandbox.container")]
    SandboxContainer { agent: String, scope: String, state: String },
    /// A bearer token was rejected (or the client was throttled).
    #[serde(rename = "auth.failure")]
    AuthFailure { surface: String, client: String, reason: String },
    /// An admin API request, allowed or not.
    #[serde(rename = "admin.action")]
    AdminAction { operator: String, role: String, method: String, path: String, status: u16, outcome: String },
    /// An operator approved or denied a chat user's pairing request (the user as a keyed digest).
    #[serde(rename = "pairing.decision")]
    PairingDecision { channel: String, account: String, sender: String, approved: bool },
    #[serde(rename = "tenant.export")]
    TenantExport { sessions: usize, messages: usize, audit_records: u64 },
    /// A tenant's data was crypto-shredded; its log's final state is kept here.
    #[serde(rename = "tenant.delete")]
    TenantDelete { tenant: String, final_seq: u64, final_head: String },
    #[serde(rename = "key.rotate")]
    KeyRotate { sessions: usize },
    /// The master key was replaced; every tenant key and the audit keys were re-wrapped.
    #[serde(rename = "key.rotateMaster")]
    MasterKeyRotate { tenants: usize },
    /// A tenant log's head at a checkpoint, anchored in the host log: the high-water mark that
    /// log may never go behind (see [`anchors`]).
    #[serde(rename = "log.anchor")]
    LogAnchor { log: String, log_seq: u64, head: String },
    /// An operator moved a tenant log that fails verification (or is behind its mark) aside
    /// as evidence, with its checkpoint and key; its mark is cleared and a new log begins.
    #[serde(rename = "log.reset")]
    LogReset { log: String, anchored_seq: u64, evidence: String },
    /// A crash left an incomplete (never acknowledged) record; it was cut off when the log reopened.
    #[serde(rename = "log.tornTail")]
    TornTail { after_seq: u64, bytes: usize },
}

/// A record as sealed into the log.
#[derive(Serialize)]
struct RecordBody<'a> {
    seq: u64,
    ts: String,
    scope: String,
    actor: String,
    #[serde(flatten)]
    event: &'a Event,
}

/// The current time as RFC 3339 UTC with milliseconds (`2026-11-25T16:40:00.123Z`).
pub fn now_utc() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format_utc(d.as_millis() as u64)
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC.
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// Checks a `--since` value: a UTC date or date-time prefix such as `2026-11-25` or
/// `2026-11-25T16:40`. Records compare by their timestamp text, which sorts chronologically.
pub fn parse_since(s: &str) -> Result<String, String> {
    let pattern = "0000-00-00T00:00:00.000Z";
    let ok = s.len() >= 10
        && s.len() <= pattern.len()
        && s.bytes().zip(pattern.bytes()).all(|(c, p)| if p == b'0' { c.is_ascii_digit() } else { c == p });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("invalid --since {s:?}: expected a UTC date such as 2026-11-25 or 2026-11-25T16:40:00"))
    }
}

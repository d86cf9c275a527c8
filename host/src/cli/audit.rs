//! `bulkhead audit ...`: verify the audit chains, show records to auditors, export checkpoints.

use std::path::{Path, PathBuf};

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::audit::{AuditReader, Scope, audit_dir, parse_since, read_checkpoint};
use crate::config::Config;
use crate::ids::TenantId;
use crate::store::MasterKey;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Verify audit logs: names the first bad sequence number of each log that fails
    Verify {
        /// Only this tenant's log (default: the host log and every tenant log)
        #[arg(long, value_name = "ID")]
        tenant: Option<String>,
        /// A checkpoint kept outside the host (`audit checkpoint`, `GET /admin/audit`): the log
        /// it names must still reach its sequence number with its head
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
    /// Print a log's records (verified first)
    Show {
        /// The tenant whose log to show
        #[arg(long, value_name = "ID", required_unless_present = "host", conflicts_with = "host")]
        tenant: Option<String>,
        /// Show the host (operator) log instead
        #[arg(long)]
        host: bool,
        /// Only records at or after this UTC time (2026-11-25 or 2026-11-25T16:40:00)
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Write a fresh signed checkpoint of a log for anchoring outside the host (gateway stopped;
    /// while it runs, use `GET /admin/audit`)
    Checkpoint {
        #[arg(long, value_name = "ID")]
        tenant: Option<String>,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Move a tenant's audit log that fails verification aside as evidence (under
    /// `audit/evidence/`), recorded in the host log; the tenant then starts a new log (gateway
    /// stopped)
    Reset {
        #[arg(long, value_name = "ID")]
        tenant: String,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
}

pub fn run(cmd: AuditCommand, source: &ConfigSource) -> i32 {
    let config = match source.load(false) {
        Ok(c) => c,
        Err(e) => {
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    match cmd {
        AuditCommand::Verify { tenant, checkpoint } => verify(&config, tenant.as_deref(), checkpoint.as_deref()),
        AuditCommand::Show { tenant, since, json, .. } => show(&config, tenant.as_deref(), since.as_deref(), json),
        AuditCommand::Checkpoint { tenant, out } => checkpoint(&config, tenant.as_deref(), &out),
        AuditCommand::Reset { tenant, yes } => reset(&config, &tenant, yes),
    }
}

fn scope_arg(tenant: Option<&str>) -> Result<Scope, i32> {
    match tenant {
        None => Ok(Scope::Host),
        Some(t) => TenantId::parse(t).map(Scope::Tenant).map_err(|_| {
            eprintln!("error: invalid tenant id {t:?}");
            EXIT_INVALID
        }),
    }
}

/// The audit directory, read-only (no lock: verification may run beside the gateway).
fn reader(config: &Config) -> Result<AuditReader, i32> {
    let Some(reference) = &config.store.master_key else {
        eprintln!("error: store.masterKey is not configured, so this host keeps no audit log");
        return Err(EXIT_INVALID);
    };
    let master = MasterKey::load(reference, &config.base_dir, &config.state_dir).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_INVALID
    })?;
    AuditReader::open(&audit_dir(config), &master).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_FAILURE
    })
}

/// Whether a tenant has stored conversations: then the gateway that served them wrote its audit
/// log (policy loads at start, tool decisions), so a missing log means a deleted one.
fn has_conversations(config: &Config, scope: &Scope) -> bool {
    matches!(scope, Scope::Tenant(t) if crate::store::has_sessions(config, t))
}

/// `audit verify`: exit 0 when every log verifies, 1 when one does not (each failure names the
/// log and its first bad sequence number), 2 on bad arguments or keys.
pub fn verify(config: &Config, tenant: Option<&str>, checkpoint_file: Option<&Path>) -> i32 {
    let reader = match reader(config) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let dir = audit_dir(config);
    let external = match checkpoint_file.map(read_checkpoint).transpose() {
        Ok(cp) => cp.flatten(),
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    if let (Some(path), None) = (checkpoint_file, &external) {
        eprintln!("error: {} does not exist", path.display());
        return EXIT_INVALID;
    }
    let scopes = match (&external, tenant) {
        (Some(cp), _) => match (Scope::parse(&cp.scope), tenant.map(|t| scope_arg(Some(t)))) {
            (Some(s), None) => vec![s],
            (Some(s), Some(Ok(t))) if s == t => vec![s],
            (Some(s), Some(Ok(t))) => {
                eprintln!("error: the checkpoint is for log {s}, not {t}");
                return EXIT_INVALID;
            }
            (_, Some(Err(code))) => return code,
            (None, _) => {
                eprintln!("error: the checkpoint names an unknown log {:?}", cp.scope);
                return EXIT_INVALID;
            }
        },
        (None, Some(t)) => match scope_arg(Some(t)) {
            Ok(s) => vec![s],
            Err(code) => return code,
        },
        (None, None) => {
            let mut scopes = reader.scopes();
            for t in config.tenants.keys() {
                let s = Scope::Tenant(t.clone());
                if !scopes.contains(&s) && has_conversations(config, &s) {
                    scopes.push(s);
                }
            }
            scopes
        }
    };
    let mut failed = false;
    for scope in scopes {
        let result = reader.verify(&scope, external.as_ref()).result.and_then(|ok| {
            if !scope.log_path(&dir).exists() && has_conversations(config, &scope) {
                Err("FAILED: the log is missing although the tenant has stored conversations (deleted?)".to_string())
            } else {
                Ok(ok)
            }
        });
        match result {
            Ok(msg) => outln!("{scope}: {msg}"),
            Err(msg) => {
                failed = true;
                outln!("{scope}: {msg}");
            }
        }
    }
    if failed { EXIT_FAILURE } else { EXIT_OK }
}

/// `audit show`: records of one log, verified first.
pub fn show(config: &Config, tenant: Option<&str>, since: Option<&str>, as_json: bool) -> i32 {
    let since = match since.map(parse_since).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let scope = match scope_arg(tenant) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let reader = match reader(config) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let records = match reader.records(&scope) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}; run `bulkhead audit verify`");
            return EXIT_FAILURE;
        }
    };
    for r in records {
        let ts = r["ts"].as_str().unwrap_or_default();
        if since.as_deref().is_some_and(|s| ts < s) {
            continue;
        }
        if as_json {
            outln!("{r}");
            continue;
        }
        let mut line = format!(
            "#{} {ts} {} {}",
            r["seq"],
            r["actor"].as_str().unwrap_or_default(),
            r["kind"].as_str().unwrap_or_default()
        );
        if let Some(obj) = r.as_object() {
            for (k, v) in obj {
                if !matches!(k.as_str(), "seq" | "ts" | "actor" | "kind" | "scope") {
                    line.push_str(&format!(" {k}={v}"));
                }
            }
        }
        outln!("{line}");
    }
    EXIT_OK
}

/// `audit checkpoint --out FILE`: a fresh signed checkpoint (takes the audit lock).
pub fn checkpoint(config: &Config, tenant: Option<&str>, out: &Path) -> i32 {
    let scope = match scope_arg(tenant) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut w = match super::open_audit(config) {
        Ok(w) => w,
        Err(code) => return code,
    };
    match w.checkpoint(&scope).and_then(|cp| {
        std::fs::write(out, cp.to_text()).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        Ok(cp)
    }) {
        Ok(cp) => {
            outln!("wrote a checkpoint of {scope} at record {} to {} (signed by {})", cp.seq, out.display(), cp.key);
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

/// `audit reset --tenant ID`: moves a refused tenant log aside as evidence (takes the audit lock).
pub fn reset(config: &Config, tenant: &str, yes: bool) -> i32 {
    let Ok(Scope::Tenant(id)) = scope_arg(Some(tenant)) else { return EXIT_INVALID };
    if !yes
        && !super::confirm(
            &format!(
                "Move the audit log of tenant {tenant} aside and start a new one? This is recorded in the host log. Type the tenant id to confirm: "
            ),
            tenant,
        )
    {
        return EXIT_INVALID;
    }
    let mut w = match super::open_audit(config) {
        Ok(w) => w,
        Err(code) => return code,
    };
    match w.reset_tenant(&id, &crate::audit::Actor::Cli) {
        Ok((receipt, evidence)) => {
            outln!(
                "moved the audit log of tenant {tenant} to {} (host record {}); the tenant starts a new log",
                evidence.display(),
                receipt.seq
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

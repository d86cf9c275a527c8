//! `bulkhead audit ...`: verify the audit chains, show records to auditors, export checkpoints.

use std::path::{Path, PathBuf};

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::audit::{
    AuditKeys, Checkpoint, LogWriter, Scope, audit_dir, parse_since, read_checkpoint, read_records, verify_log,
};
use crate::config::Config;
use crate::ids::TenantId;
use crate::store::{MasterKey, hex};

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

/// The audit keys, read-only (no lock: verification may run beside the gateway).
fn keys(config: &Config) -> Result<AuditKeys, i32> {
    let Some(reference) = &config.store.master_key else {
        eprintln!("error: store.masterKey is not configured, so this host keeps no audit log");
        return Err(EXIT_INVALID);
    };
    let master = MasterKey::load(reference, &config.base_dir, &config.state_dir).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_INVALID
    })?;
    AuditKeys::load(&audit_dir(config), &master, false).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_FAILURE
    })
}

fn read_log(path: &Path) -> Result<Vec<u8>, String> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The scope a checkpoint names.
fn scope_of(cp: &Checkpoint) -> Option<Scope> {
    match cp.scope.strip_prefix("tenant:") {
        Some(t) => TenantId::parse(t).ok().map(Scope::Tenant),
        None => (cp.scope == "host").then_some(Scope::Host),
    }
}

/// Every log on disk: the host log and each tenant log.
fn all_scopes(dir: &Path) -> Vec<Scope> {
    let mut scopes = vec![Scope::Host];
    if let Ok(entries) = std::fs::read_dir(dir.join("tenants")) {
        let mut tenants: Vec<Scope> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let id = name.strip_suffix(".log").or_else(|| name.strip_suffix(".checkpoint"))?.to_string();
                TenantId::parse(&id).ok().filter(|t| t.as_str() == id).map(Scope::Tenant)
            })
            .collect();
        tenants.sort();
        tenants.dedup();
        scopes.extend(tenants);
    }
    scopes
}

/// Whether a tenant has stored conversations: then the gateway that served them wrote its audit
/// log (policy loads at start, tool decisions), so a missing log means a deleted one.
fn has_conversations(config: &Config, scope: &Scope) -> bool {
    matches!(scope, Scope::Tenant(t) if crate::store::has_sessions(config, t))
}

/// `audit verify`: exit 0 when every log verifies, 1 when one does not (each failure names the
/// log and its first bad sequence number), 2 on bad arguments or keys.
pub fn verify(config: &Config, tenant: Option<&str>, checkpoint_file: Option<&Path>) -> i32 {
    let keys = match keys(config) {
        Ok(k) => k,
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
        (Some(cp), _) => match (scope_of(cp), tenant.map(|t| scope_arg(Some(t)))) {
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
            let mut scopes = all_scopes(&dir);
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
        let result = (|| -> Result<String, String> {
            if !scope.log_path(&dir).exists() && has_conversations(config, &scope) {
                return Err("FAILED: the log is missing although the tenant has stored conversations (deleted?)".into());
            }
            let bytes = read_log(&scope.log_path(&dir))?;
            let (cp, origin) = match &external {
                Some(cp) => (Some(cp.clone()), "given"),
                None => (read_checkpoint(&scope.checkpoint_path(&dir))?, "stored"),
            };
            if let Some(cp) = &cp {
                cp.check(&keys.public_key(), &scope).map_err(|e| format!("{origin} checkpoint refused: {e}"))?;
            }
            let v = verify_log(&bytes, &keys, &scope, cp.as_ref())
                .map_err(|b| format!("FAILED at record {}: {}", b.seq, b.reason))?;
            let mut msg = format!("ok: {} records, head {}", v.records, hex(&v.head));
            if let Some(cp) = cp {
                msg.push_str(&format!("; matches the {origin} checkpoint at record {} ({})", cp.seq, cp.ts));
            } else {
                msg.push_str("; no checkpoint (a truncated tail would not be detected)");
            }
            if v.torn_bytes > 0 {
                msg.push_str(&format!(
                    "; warning: {} bytes of an unacknowledged record after record {} (torn by a crash; cut on the next append)",
                    v.torn_bytes, v.records
                ));
            }
            Ok(msg)
        })();
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
    let keys = match keys(config) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let bytes = match read_log(&scope.log_path(&audit_dir(config))) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    let records = match read_records(&bytes, &keys, &scope, None) {
        Ok(r) => r,
        Err(b) => {
            eprintln!(
                "error: log {scope} fails verification at record {}: {}; run `bulkhead audit verify`",
                b.seq, b.reason
            );
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
    let mut w = match LogWriter::open_config(config) {
        Ok(Some(w)) => w,
        Ok(None) => {
            eprintln!("error: store.masterKey is not configured, so this host keeps no audit log");
            return EXIT_INVALID;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
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

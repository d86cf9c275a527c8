//! `bulkhead tenant ...`: the tenant data lifecycle.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::audit::{Actor, Event, LogWriter, Scope, read_records};
use crate::ids::TenantId;
use crate::store::ExportSummary;

/// `tenant list`: tenants with their agents and token counts (never the tokens).
pub fn list(source: &ConfigSource, as_json: bool) -> i32 {
    let config = match source.load(true) {
        Ok(c) => c,
        Err(e) => {
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    let rows = summary(&config);
    if as_json {
        outln!("{}", serde_json::Value::Array(rows));
    } else {
        for r in rows {
            outln!(
                "{}\t{}\tagents: {}\ttokens: {}",
                r["id"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or(""),
                r["agents"],
                r["apiTokens"]
            );
        }
    }
    EXIT_OK
}

/// Tenants with their agents and token counts (never the tokens): `tenant list` and
/// `GET /admin/tenants`.
pub fn summary(config: &crate::config::Config) -> Vec<serde_json::Value> {
    let mut agents_of: std::collections::HashMap<&TenantId, Vec<&str>> = std::collections::HashMap::new();
    for a in &config.agents {
        agents_of.entry(&a.tenant).or_default().push(a.id.as_str());
    }
    config
        .tenants
        .values()
        .map(|t| {
            let agents = agents_of.remove(&t.id).unwrap_or_default();
            serde_json::json!({ "id": t.id.as_str(), "name": t.name, "agents": agents, "apiTokens": t.api_tokens.len() })
        })
        .collect()
}

/// `tenant export ID --out FILE`: the tenant's decrypted archive (JSON Lines, see docs/store.md).
/// The file is written 0600 through a temp file beside it; it may not lie inside the state dir.
pub fn export(source: &ConfigSource, id: &str, out: &Path) -> i32 {
    let Some((config, tenant)) = super::load_with_tenant(source, id) else { return EXIT_INVALID };
    if is_inside(out, &config.state_dir) {
        eprintln!(
            "error: --out {} lies inside the state directory; an export is plaintext, write it elsewhere",
            out.display()
        );
        return EXIT_INVALID;
    }
    let (rt, store) = match super::open_durable(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !rt.block_on(store.tenants()).unwrap_or_default().contains(&tenant) {
        eprintln!("error: tenant {id:?} has no data in the store");
        return EXIT_FAILURE;
    }
    let mut audit = match super::open_audit(&config) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.partial", out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let result = (|| -> Result<ExportSummary, String> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        // With several engines the workspaces are volumes there: unpacked into a private
        // directory of the state dir first (removed afterwards), then written alike.
        let fetched = match &config.engines {
            Some(engines) => Some(FetchedWorkspaces::fetch(&config, engines, tenant.as_str())?),
            None => None,
        };
        let workspace = match &fetched {
            Some(f) => f.dir.clone(),
            None => crate::sandbox::workspace::workspaces_dir(&config.state_dir, tenant.as_str()),
        };
        let sessions = rt.block_on(store.read_tenant(&tenant)).map_err(|e| e.to_string())?;
        let mut summary =
            crate::store::write_export(&tenant, &sessions, Some(&workspace), &mut w).map_err(|e| e.to_string())?;
        if let Some(f) = &fetched {
            summary.skipped.extend(f.skipped.iter().cloned());
        }
        drop(fetched);
        export_audit(&mut audit, &tenant, &summary, &mut w)?;
        let f = w.into_inner().map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.sync_all().map_err(|e| format!("cannot sync {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, out).map_err(|e| format!("cannot rename to {}: {e}", out.display()))?;
        Ok(summary)
    })();
    match result {
        Ok(s) => {
            outln!(
                "exported tenant {id}: {} sessions, {} messages, {} workspace files to {}",
                s.sessions,
                s.messages,
                s.files,
                out.display()
            );
            if !s.skipped.is_empty() {
                eprintln!("warning: special files in the workspace were not exported: {}", s.skipped.join(", "));
            }
            if s.problems > 0 {
                eprintln!(
                    "warning: {} integrity problem(s) found; the affected sessions hold their readable prefix and a \"problems\" list",
                    s.problems
                );
            }
            EXIT_OK
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            eprintln!("error: export of tenant {id:?} failed: {e}");
            EXIT_FAILURE
        }
    }
}

/// Records the export in the tenant's audit log, then appends that log to the export: a line
/// `{"type":"audit", "log", "checkpoint", "records"}` and one `{"type":"auditRecord", ...}` per
/// record (verified and decrypted; sessions and clients appear as keyed digests).
fn export_audit(
    audit: &mut LogWriter,
    tenant: &TenantId,
    summary: &ExportSummary,
    out: &mut dyn std::io::Write,
) -> Result<(), String> {
    let scope = Scope::Tenant(tenant.clone());
    let (records, _) = audit.head(&scope)?;
    let event =
        Event::TenantExport { sessions: summary.sessions, messages: summary.messages, audit_records: records + 1 };
    audit.append(&scope, &Actor::Cli, &event).map_err(|e| e.to_string())?;
    let checkpoint = audit.checkpoint(&scope)?;
    let bytes = std::fs::read(scope.log_path(audit.dir())).map_err(|e| format!("cannot read the audit log: {e}"))?;
    let records = read_records(&bytes, audit.keys(), &scope, None)
        .map_err(|b| format!("the audit log fails verification at record {}: {}", b.seq, b.reason))?;
    let write = |out: &mut dyn std::io::Write, v: serde_json::Value| {
        writeln!(out, "{v}").map_err(|e| format!("cannot write the export: {e}"))
    };
    write(
        out,
        serde_json::json!({ "type": "audit", "log": scope.name(), "checkpoint": checkpoint, "records": records.len() }),
    )?;
    for mut r in records {
        if let Some(o) = r.as_object_mut() {
            o.insert("type".into(), "auditRecord".into());
        }
        write(out, r)?;
    }
    Ok(())
}

/// `tenant delete ID [--yes]`: crypto-shredding of the tenant's stored data.
pub fn delete(source: &ConfigSource, id: &str, yes: bool) -> i32 {
    let Some((config, tenant)) = super::load_with_tenant(source, id) else { return EXIT_INVALID };
    if !yes
        && !super::confirm(
            &format!(
                "Delete every stored conversation of tenant {id}? This cannot be undone. Type the tenant id to confirm: "
            ),
            id,
        )
    {
        return EXIT_INVALID;
    }
    let (rt, store) = match super::open_durable(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut audit = match super::open_audit(&config) {
        Ok(w) => w,
        Err(code) => return code,
    };
    // The tenant's sandbox containers go first, so nothing writes to its workspaces meanwhile.
    if let Err(e) = remove_tenant_containers(&config, id) {
        eprintln!("error: {e}");
        return EXIT_FAILURE;
    }
    let deleted = rt.block_on(store.delete_tenant(&tenant));
    // The tenant's sandbox files go too (workspaces are plaintext by necessity; see SECURITY.md).
    let mut removed_files = false;
    for dir in crate::sandbox::workspace::tenant_dirs(&config.state_dir, tenant.as_str()) {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => removed_files = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                eprintln!("error: cannot remove {}: {e}", dir.display());
                return EXIT_FAILURE;
            }
        }
    }
    match deleted.map(|d| d || removed_files) {
        Ok(true) => {
            // The tenant's own log goes with it; the host log keeps that it happened, and its final state.
            if let Err(e) = audit.remove_tenant(&tenant, &Actor::Cli) {
                eprintln!("error: the tenant's data is deleted, but the audit record failed: {e}");
                return EXIT_FAILURE;
            }
            outln!("deleted tenant {id}: its key is destroyed and its stored data removed");
            if config.tenants.contains_key(&tenant) {
                outln!("note: {id} is still in the config; the next start gives it a new, empty store");
            }
            EXIT_OK
        }
        Ok(false) => {
            eprintln!("error: tenant {id:?} has no data in the store");
            EXIT_FAILURE
        }
        Err(e) => {
            eprintln!("error: deleting tenant {id:?} failed: {e}");
            EXIT_FAILURE
        }
    }
}

/// A tenant's workspace volumes, unpacked from every engine into a private directory of the
/// state dir (removed when dropped). An engine that cannot be reached fails the export: an
/// export missing a workspace would look complete.
struct FetchedWorkspaces {
    dir: std::path::PathBuf,
    skipped: Vec<String>,
}

impl FetchedWorkspaces {
    fn fetch(config: &crate::config::Config, engines: &crate::config::EnginesConfig, tenant: &str) -> Result<Self, String> {
        use crate::sandbox::{docker, placement};
        let nonce = crate::crypto::sha256_hex(format!("{}/{:?}", std::process::id(), std::time::SystemTime::now()).as_bytes(), 8);
        let dir = config.state_dir.join(format!(".export-{nonce}"));
        crate::fsutil::create_private_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut me = Self { dir, skipped: Vec::new() };
        let agents: Vec<_> = config
            .agents
            .iter()
            .filter(|a| a.tenant.as_str() == tenant && a.sandbox.backend == crate::config::SandboxBackend::Docker)
            .collect();
        let image = agents.first().map(|a| a.sandbox.docker.image.clone()).unwrap_or_else(|| crate::config::DockerSettings::default().image);
        let pin = agents.first().and_then(|a| a.sandbox.docker.engine.as_deref());
        let cands: Vec<_> =
            engines.engines.iter().map(|e| placement::Candidate { name: &e.name, weight: e.weight }).collect();
        let gateway = docker::volume_owner(config);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        // The tenant's own engine first: a scope found on several (after failover) is taken from it.
        let mut taken: Vec<String> = Vec::new();
        for i in placement::order(tenant, pin, &cands) {
            let e = &engines.engines[i];
            let at = |err: String| format!("engine {}: {err}", e.name);
            let (scopes, unpacked) = rt.block_on(async {
                let d = docker::connect_endpoint(&e.endpoint).await?;
                docker::fetch_volumes(&d, &gateway, tenant, &image, &me.dir, &taken).await
            }).map_err(at)?;
            me.skipped.extend(unpacked.skipped);
            taken.extend(scopes);
        }
        Ok(me)
    }
}

impl Drop for FetchedWorkspaces {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the tenant's Docker sandbox containers of this gateway — and, with several engines,
/// its workspace volumes — on every engine. An unreachable daemon is an error only when some
/// agent uses the Docker backend (otherwise there cannot be any); with several engines every
/// engine must be reachable, so no volume of the tenant is left behind unnoticed.
fn remove_tenant_containers(config: &crate::config::Config, tenant: &str) -> Result<(), String> {
    use crate::sandbox::docker;
    let uses_docker = config.agents.iter().any(|a| a.sandbox.backend == crate::config::SandboxBackend::Docker);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let gateway = docker::gateway_label(&config.state_dir);
    // In a fleet every gateway's containers of the tenant go, and the fleet's volumes.
    let (fleet, volumes) = (docker::Fleet::of(config).is_some(), docker::volume_owner(config));
    if let Some(engines) = &config.engines {
        return rt.block_on(async {
            for e in &engines.engines {
                let at = |err: String| format!("engine {}: {err}; nothing was deleted from the store", e.name);
                let d = docker::connect_endpoint(&e.endpoint).await.map_err(at)?;
                let n = match fleet {
                    true => docker::remove_tenant_containers_of_fleet(&d, tenant).await.map_err(at)?,
                    false => docker::remove_containers(&d, &gateway, Some(tenant)).await.map_err(at)?,
                };
                let v = docker::remove_volumes(&d, &volumes, tenant).await.map_err(at)?;
                if n + v > 0 {
                    outln!("removed {n} sandbox container(s) and {v} workspace volume(s) of tenant {tenant} on engine {}", e.name);
                }
            }
            Ok(())
        });
    }
    let result = rt.block_on(async {
        let docker = docker::connect(None).await?;
        docker::remove_containers(&docker, &gateway, Some(tenant)).await
    });
    match result {
        Ok(0) => Ok(()),
        Ok(n) => {
            outln!("removed {n} sandbox container(s) of tenant {tenant}");
            Ok(())
        }
        Err(e) if uses_docker => Err(format!("cannot remove the sandbox containers of tenant {tenant:?}: {e}")),
        Err(_) => Ok(()),
    }
}

/// Whether `path` (which may not exist yet) lies under `dir`.
fn is_inside(path: &Path, dir: &Path) -> bool {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let parent = parent.canonicalize().unwrap_or_else(|_| abs(parent));
    let dir = dir.canonicalize().unwrap_or_else(|_| abs(dir));
    parent.starts_with(dir)
}

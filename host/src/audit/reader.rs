//! Reading the audit directory without the lock (beside a running gateway): every log verified
//! against its checkpoint and, for a tenant log, its high-water mark in the host chain; records
//! for `audit show`. What `audit verify` reports is decided here; the CLI only prints it.

use std::path::{Path, PathBuf};

use super::{
    Anchors, AuditKeys, Broken, Checkpoint, Mark, Scope, Verified, read_checkpoint, read_marked, verify_marked,
};
use crate::crypto::hex;
use crate::store::MasterKey;

/// A read-only view of an audit directory.
pub struct AuditReader {
    dir: PathBuf,
    keys: AuditKeys,
    /// The host log as verified against its stored checkpoint, with the marks it holds.
    host: Result<(Verified, Anchors), String>,
}

/// The result of verifying one log: `Ok` with a summary, or `Err` naming what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReport {
    pub scope: Scope,
    pub result: Result<String, String>,
}

fn read_log(path: &Path) -> Result<Vec<u8>, String> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn failed(b: Broken) -> String {
    format!("FAILED at record {}: {}", b.seq, b.reason)
}

impl AuditReader {
    /// Opens `dir` with the master key (no lock; the keys must exist).
    pub fn open(dir: &Path, master: &MasterKey) -> Result<Self, String> {
        let keys = AuditKeys::load(dir, master, false)?;
        let host = Self::read_host(dir, &keys);
        Ok(Self { dir: dir.to_path_buf(), keys, host })
    }

    fn read_host(dir: &Path, keys: &AuditKeys) -> Result<(Verified, Anchors), String> {
        let bytes = read_log(&Scope::Host.log_path(dir))?;
        let cp = Self::stored_checkpoint(dir, keys, &Scope::Host)?;
        let marks: Vec<Mark> = cp.as_ref().map(Mark::of_checkpoint).into_iter().collect();
        let mut anchors = Anchors::default();
        let v = verify_marked(&bytes, keys, &Scope::Host, &marks, &mut |seq, json| anchors.visit(seq, json))
            .map_err(failed)?;
        Ok((v, anchors))
    }

    /// A log's stored checkpoint, if any, checked against this host's signing key.
    fn stored_checkpoint(dir: &Path, keys: &AuditKeys, scope: &Scope) -> Result<Option<Checkpoint>, String> {
        let cp = read_checkpoint(&scope.checkpoint_path(dir))?;
        if let Some(cp) = &cp {
            cp.check(&keys.public_key(), scope).map_err(|e| format!("stored checkpoint refused: {e}"))?;
        }
        Ok(cp)
    }

    pub fn keys(&self) -> &AuditKeys {
        &self.keys
    }

    /// Every log there is or should be: the host log, each tenant log, checkpoint or key on disk,
    /// and each tenant log the host chain holds a mark of (a deleted log is still listed).
    pub fn scopes(&self) -> Vec<Scope> {
        let mut scopes = vec![Scope::Host];
        let mut tenants: Vec<Scope> = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("tenants")) {
            tenants.extend(entries.flatten().filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let (id, _) = name.rsplit_once('.')?;
                Scope::parse(&format!("tenant:{id}"))
            }));
        }
        if let Ok((_, anchors)) = &self.host {
            tenants.extend(anchors.tenants().cloned().map(Scope::Tenant));
        }
        tenants.sort();
        tenants.dedup();
        scopes.extend(tenants);
        scopes
    }

    /// Verifies one log: against `external` (a checkpoint kept off the host) when given, else
    /// against its stored checkpoint; a tenant log also against its anchor in the host log; the
    /// host log also against every stored tenant checkpoint (each must be anchored in it).
    pub fn verify(&self, scope: &Scope, external: Option<&Checkpoint>) -> LogReport {
        LogReport { scope: scope.clone(), result: self.verify_inner(scope, external) }
    }

    fn verify_inner(&self, scope: &Scope, external: Option<&Checkpoint>) -> Result<String, String> {
        let (cp, origin) = match external {
            Some(cp) => {
                cp.check(&self.keys.public_key(), scope).map_err(|e| format!("given checkpoint refused: {e}"))?;
                (Some(cp.clone()), "given")
            }
            None => (Self::stored_checkpoint(&self.dir, &self.keys, scope)?, "stored"),
        };
        let path = scope.log_path(&self.dir);
        let bytes = read_log(&path)?;
        let v = match scope {
            Scope::Host => {
                let (stored, anchors) = self.host.clone()?;
                let v = match external {
                    Some(_) => {
                        let marks: Vec<Mark> = cp.iter().map(Mark::of_checkpoint).collect();
                        verify_marked(&bytes, &self.keys, scope, &marks, &mut |_, _| {}).map_err(failed)?
                    }
                    None => stored,
                };
                for s in self.scopes() {
                    if let Scope::Tenant(t) = &s {
                        let tcp = Self::stored_checkpoint(&self.dir, &self.keys, &s).ok().flatten();
                        if let Some(problem) = anchors.unanchored(t, tcp.as_ref()) {
                            return Err(format!("FAILED: {problem}"));
                        }
                    }
                }
                v
            }
            Scope::Tenant(_) => {
                let anchors = match &self.host {
                    Ok((_, a)) => a,
                    Err(e) => {
                        return Err(format!(
                            "FAILED: its high-water mark is unknown because the host log fails verification ({e})"
                        ));
                    }
                };
                let marks = anchors.marks(scope, cp.as_ref()).map_err(|e| format!("FAILED: {e}"))?;
                verify_marked(&bytes, &self.keys, scope, &marks, &mut |_, _| {}).map_err(|b| {
                    let gone = if path.exists() { "" } else { "the log file does not exist; " };
                    format!("FAILED at record {}: {gone}{}", b.seq, b.reason)
                })?
            }
        };
        let mut msg = format!("ok: {} records, head {}", v.records, hex(&v.head));
        if let Some(cp) = &cp {
            msg.push_str(&format!("; matches the {origin} checkpoint at record {} ({})", cp.seq, cp.ts));
        }
        if let Scope::Tenant(t) = scope
            && let Ok((_, anchors)) = &self.host
            && let Some(a) = anchors.get(t)
        {
            msg.push_str(&format!(
                "; reaches its anchor in the host log at record {} (host record {})",
                a.seq, a.host_seq
            ));
        } else if cp.is_none() {
            msg.push_str(if *scope == Scope::Host {
                "; no checkpoint (a truncated tail would not be detected)"
            } else {
                "; no checkpoint and no anchor yet (a truncated tail would not be detected)"
            });
        }
        if v.torn_bytes > 0 {
            msg.push_str(&format!(
                "; warning: {} bytes of an unacknowledged record after record {} (torn by a crash; cut on the next append)",
                v.torn_bytes, v.records
            ));
        }
        Ok(msg)
    }

    /// A log's records, verified like [`AuditReader::verify`] (stored checkpoint and anchor).
    pub fn records(&self, scope: &Scope) -> Result<Vec<serde_json::Value>, String> {
        let cp = Self::stored_checkpoint(&self.dir, &self.keys, scope)?;
        let marks = match scope {
            Scope::Host => {
                self.host.as_ref().map_err(|e| format!("log host {e}"))?;
                cp.iter().map(Mark::of_checkpoint).collect()
            }
            Scope::Tenant(_) => {
                let (_, anchors) = self.host.as_ref().map_err(|e| {
                    format!("log {scope}: its high-water mark is unknown because the host log fails verification ({e})")
                })?;
                anchors.marks(scope, cp.as_ref()).map_err(|e| format!("log {scope}: {e}"))?
            }
        };
        let bytes = read_log(&scope.log_path(&self.dir))?;
        read_marked(&bytes, &self.keys, scope, &marks)
            .map_err(|b| format!("log {scope} fails verification at record {}: {}", b.seq, b.reason))
    }
}

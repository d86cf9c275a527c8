//! `tenant export`: a tenant's decrypted archive, JSON Lines (format in `docs/store.md`):
//! a header, each session and its messages, the tenant's workspace files, and an `end` line with
//! the counts (a missing `end` line means a truncated archive).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine as _;
use serde_json::json;

use super::{EncryptedStore, SessionRead, now_ms};
use crate::ids::TenantId;
use crate::session::StoreError;

/// What `tenant export` wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub sessions: usize,
    pub messages: usize,
    pub problems: usize,
    pub files: usize,
    /// Entries of the workspace that were not exported (special files), by path.
    pub skipped: Vec<String>,
}

fn line(out: &mut dyn Write, v: serde_json::Value) -> Result<(), StoreError> {
    writeln!(out, "{v}").map_err(|e| StoreError::Io(format!("cannot write the export: {e}")))
}

impl EncryptedStore {
    /// Writes a tenant's decrypted archive: its sessions and, when given, the files of its
    /// workspace directory.
    pub fn export_tenant(
        &self,
        t: &TenantId,
        workspace: Option<&Path>,
        out: &mut dyn Write,
    ) -> Result<ExportSummary, StoreError> {
        write_export(t, &self.read_tenant(t)?, workspace, out)
    }
}

/// Writes a tenant's decrypted archive from its sessions as read (either backend) and, when
/// given, the files of its workspace directory.
pub fn write_export(
    t: &TenantId,
    sessions: &[SessionRead],
    workspace: Option<&Path>,
    out: &mut dyn Write,
) -> Result<ExportSummary, StoreError> {
    line(out, json!({"type": "bulkhead-export", "version": 1, "tenant": t.as_str(), "exportedAtMs": now_ms()}))?;
    let mut summary = ExportSummary::default();
    for s in sessions {
        summary.sessions += 1;
        summary.problems += s.problems.len();
        line(
            out,
            json!({"type": "session", "session": s.key, "createdMs": s.created_ms,
                "messages": s.records.len(), "problems": s.problems}),
        )?;
        for (seq, r) in s.records.iter().enumerate() {
            summary.messages += 1;
            let mut v = serde_json::to_value(&r.msg).map_err(|e| StoreError::Io(e.to_string()))?;
            if let Some(obj) = v.as_object_mut() {
                obj.insert("type".into(), "message".into());
                obj.insert("session".into(), s.key.clone().into());
                obj.insert("seq".into(), seq.into());
                obj.insert("ts".into(), r.ts.into());
            }
            line(out, v)?;
        }
    }
    if let Some(dir) = workspace.filter(|d| d.is_dir()) {
        export_files(dir, Path::new(""), out, &mut summary)?;
    }
    line(
        out,
        json!({"type": "end", "sessions": summary.sessions, "messages": summary.messages,
            "problems": summary.problems, "files": summary.files, "skipped": summary.skipped}),
    )?;
    Ok(summary)
}

/// Writes the regular files and symbolic links under `dir`, depth first in name order. Links
/// are recorded, never followed (a sandbox may plant a link to a host file); FIFOs, sockets and
/// devices are listed in `skipped` (opening one could block or read a device).
fn export_files(dir: &Path, rel: &Path, out: &mut dyn Write, summary: &mut ExportSummary) -> Result<(), StoreError> {
    let io = |what: &str, p: &Path, e: std::io::Error| StoreError::Io(format!("{what} {}: {e}", p.display()));
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .map_err(|e| io("cannot list", dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io("cannot list", dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(&path).map_err(|e| io("cannot stat", &path, e))?;
        let mut v = path_fields(&rel);
        let ft = meta.file_type();
        if ft.is_dir() {
            export_files(&path, &rel, out, summary)?;
            continue;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| io("cannot read link", &path, e))?;
            v["type"] = "symlink".into();
            v["target"] = target.to_string_lossy().into_owned().into();
        } else if ft.is_file() {
            // A sandbox may swap the file for a link or a FIFO after the lstat above: open
            // without following links or blocking, and check what was opened.
            let opened =
                fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path);
            let mut f = match opened {
                Ok(f) => f,
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    summary.skipped.push(rel.to_string_lossy().into_owned());
                    continue;
                }
                Err(e) => return Err(io("cannot open", &path, e)),
            };
            if !f.metadata().map_err(|e| io("cannot stat", &path, e))?.is_file() {
                summary.skipped.push(rel.to_string_lossy().into_owned());
                continue;
            }
            let mut data = Vec::with_capacity(meta.len() as usize);
            f.read_to_end(&mut data).map_err(|e| io("cannot read", &path, e))?;
            v["type"] = "file".into();
            v["size"] = data.len().into();
            v["mode"] = format!("{:04o}", meta.permissions().mode() & 0o7777).into();
            match String::from_utf8(data) {
                Ok(text) => {
                    v["encoding"] = "utf8".into();
                    v["data"] = text.into();
                }
                Err(e) => {
                    v["encoding"] = "base64".into();
                    v["data"] = base64::engine::general_purpose::STANDARD.encode(e.into_bytes()).into();
                }
            }
        } else {
            summary.skipped.push(rel.to_string_lossy().into_owned());
            continue;
        }
        summary.files += 1;
        line(out, v)?;
    }
    Ok(())
}

/// `path` as text; a name that is not UTF-8 also gets its exact bytes in `pathBase64`.
fn path_fields(rel: &Path) -> serde_json::Value {
    let mut v = json!({ "path": rel.to_string_lossy() });
    if rel.to_str().is_none() {
        v["pathBase64"] = base64::engine::general_purpose::STANDARD.encode(rel.as_os_str().as_bytes()).into();
    }
    v
}

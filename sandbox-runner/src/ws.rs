//! The workspace as the runner sees it: path confinement, access mode and the disk budget.

use std::path::{Component, Path, PathBuf};

use sandbox_runner::protocol::{Access, ENTRY_COST_BYTES, WORKSPACE_DIR};

/// Longest path argument accepted.
pub const MAX_PATH_BYTES: usize = 4096;

/// Why a tool did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// An ordinary failure (missing file, bad option); reported to the model as a tool error.
    Failed(String),
    /// The arguments do not fit the tool.
    Invalid(String),
    /// The call would grow the workspace past the tenant's disk quota.
    Quota(String),
}

pub type ToolResult<T> = Result<T, ToolError>;

pub fn failed<T>(msg: impl Into<String>) -> ToolResult<T> {
    Err(ToolError::Failed(msg.into()))
}

/// The workspace root, the access mode and what this call has added to the disk so far.
pub struct Ws {
    root: PathBuf,
    access: Access,
    budget: Option<u64>,
    added: u64,
}

impl Ws {
    pub fn new(root: PathBuf, access: Access, budget: Option<u64>) -> Self {
        Self { root, access, budget, added: 0 }
    }

    /// Resolves a workspace-relative path lexically; `..` may not climb above the root and
    /// absolute paths must lie under `/workspace`. Symlinks are resolved by the sandbox itself
    /// (WASI refuses to follow one out of the preopened directory).
    pub fn resolve(&self, raw: &str) -> ToolResult<PathBuf> {
        if raw.len() > MAX_PATH_BYTES {
            return Err(ToolError::Invalid(format!("path of {} bytes is longer than {MAX_PATH_BYTES}", raw.len())));
        }
        if raw.contains('\0') {
            return Err(ToolError::Invalid(format!("path {raw:?} contains a NUL byte")));
        }
        let rel = match raw.strip_prefix(WORKSPACE_DIR) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/'),
            _ if raw.starts_with('/') => return failed(format!("path {raw:?} is outside the workspace")),
            _ => raw,
        };
        let mut out = self.root.clone();
        let mut depth = 0usize;
        for c in Path::new(rel).components() {
            match c {
                Component::Normal(n) => {
                    out.push(n);
                    depth += 1;
                }
                Component::CurDir => {}
                Component::ParentDir if depth > 0 => {
                    out.pop();
                    depth -= 1;
                }
                _ => return failed(format!("path {raw:?} is outside the workspace")),
            }
        }
        Ok(out)
    }

    /// How a path is shown to the model: relative to the workspace.
    pub fn show(&self, p: &Path) -> String {
        match p.strip_prefix(&self.root) {
            Ok(r) if r.as_os_str().is_empty() => ".".into(),
            Ok(r) => r.display().to_string(),
            Err(_) => p.display().to_string(),
        }
    }

    /// The workspace directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn access(&self) -> Access {
        self.access
    }

    /// Bytes this call may still add (`None`: unlimited).
    pub fn budget_left(&self) -> Option<u64> {
        self.budget.map(|b| b.saturating_sub(self.added))
    }

    pub fn is_root(&self, p: &Path) -> bool {
        p == self.root
    }

    pub fn can_read(&self) -> ToolResult<()> {
        match self.access {
            Access::None => failed("this agent has no workspace access"),
            _ => Ok(()),
        }
    }

    pub fn can_write(&self) -> ToolResult<()> {
        match self.access {
            Access::None => failed("this agent has no workspace access"),
            Access::Ro => failed("the workspace is read-only for this agent"),
            Access::Rw => Ok(()),
        }
    }

    /// Charges `bytes` of new content plus `entries` new files or directories to the budget.
    pub fn charge(&mut self, bytes: u64, entries: u64) -> ToolResult<()> {
        let want = bytes.saturating_add(entries.saturating_mul(ENTRY_COST_BYTES));
        let total = self.added.saturating_add(want);
        if let Some(budget) = self.budget
            && total > budget
        {
            return Err(ToolError::Quota(format!(
                "workspace disk quota exceeded: this would add {want} bytes with {} bytes left",
                budget.saturating_sub(self.added)
            )));
        }
        self.added = total;
        Ok(())
    }

    /// Writes a file, creating parent directories, after charging the growth to the budget.
    pub fn write_file(&mut self, path: &Path, data: &[u8], append: bool) -> ToolResult<()> {
        self.can_write()?;
        if self.is_root(path) {
            return failed("cannot write to the workspace root");
        }
        let old = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => return failed(format!("{}: is a directory", self.show(path))),
            Ok(m) => Some(m.len()),
            Err(_) => None,
        };
        let mut new_dirs = 0;
        let mut anc = path.parent();
        while let Some(a) = anc {
            if a.starts_with(&self.root) && !a.exists() {
                new_dirs += 1;
                anc = a.parent();
            } else {
                break;
            }
        }
        let new_len = if append { old.unwrap_or(0) + data.len() as u64 } else { data.len() as u64 };
        self.charge(new_len.saturating_sub(old.unwrap_or(0)), new_dirs + u64::from(old.is_none()))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| self.io(parent, e))?;
        }
        let res = if append {
            use std::io::Write;
            std::fs::OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| f.write_all(data))
        } else {
            std::fs::write(path, data)
        };
        res.map_err(|e| self.io(path, e))
    }

    /// An I/O error as the model should read it: the workspace path and a plain reason.
    pub fn io(&self, path: &Path, e: std::io::Error) -> ToolError {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
            std::io::ErrorKind::AlreadyExists => "already exists".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            // WASI's ENOTCAPABLE (76): the path leaves the preopened workspace (e.g. via a symlink).
            _ if cfg!(target_os = "wasi") && e.raw_os_error() == Some(76) => {
                "permission denied: outside the workspace".to_string()
            }
            _ => e.to_string(),
        };
        ToolError::Failed(format!("{}: {why}", self.show(path)))
    }
}

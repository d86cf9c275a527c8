//! File-system helpers for everything that keeps state (store, audit, usage, sandbox keys):
//! private permissions, fsync, atomic replacement, exclusive locks. Imports no other module of the
//! crate.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `path` (and missing parents) with mode 0700, and fsyncs the parent.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    // `recursive` applies the mode to every created level; make sure of the leaf.
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Fsyncs a directory so that renames and creations inside it are durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Flushes every dirty page and inode of the file system that holds `path` (`syncfs(2)`): one
/// call instead of an fsync per file, for checkpoints that made many files and directories.
pub fn sync_fs(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    rustix::fs::syncfs(&dir).map_err(io::Error::from)
}

/// Opens a new file with mode 0600; fails if it exists.
pub fn create_new_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// Writes `bytes` to `path` atomically: a 0600 temp file beside it, fsync, rename, fsync the dir.
/// The temp file holds exactly `bytes`, so a caller that passes ciphertext never puts plaintext
/// on disk.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent"))?;
    let tmp = atomic_temp(path)?;
    let _ = fs::remove_file(&tmp);
    let mut f = create_new_private(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// The temp file `write_atomic` writes `path` through (what a crash during it leaves).
pub fn atomic_temp(path: &Path) -> io::Result<PathBuf> {
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent"))?;
    let name = path.file_name().ok_or_else(|| io::Error::other("path has no file name"))?;
    Ok(dir.join(format!(".{}.tmp", name.to_string_lossy())))
}

/// The permission bits of a path, if it exists.
pub fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// Removes a file if it exists.
/// Looked up first: an unlink takes its directory's lock exclusively even when there is nothing
/// to remove, and the store's hot paths (a new conversation, a pack's first use) remove what is
/// almost never there.
pub fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
        return Ok(());
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes a directory tree if it exists.
pub fn remove_dir_all_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Opens (creating, 0600) the lock file `path` and takes its exclusive lock for as long as the
/// returned file lives; `None` when another process holds it.
pub fn lock_exclusive(path: &Path) -> io::Result<Option<File>> {
    let lock = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
    Ok(lock.try_lock().is_ok().then_some(lock))
}

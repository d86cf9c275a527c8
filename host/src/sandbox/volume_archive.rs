//! Unpacks the archive an engine sends of a workspace volume (`GET /containers/{id}/archive`)
//! into a private directory, so `tenant export` writes volumes exactly as it writes workspace
//! directories.
//!
//! The archive's content is the tenant's: only directories, regular files, hard links to files
//! already unpacked and symbolic links are kept, every path must stay inside the target (no
//! absolute paths, no `..`), files are created without following links and never replace
//! anything, and symbolic links are made last, so no later entry can be written through one.
//! Anything else (devices, FIFOs) is listed as skipped.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// What an unpack did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: usize,
    pub skipped: Vec<String>,
}

/// Unpacks `archive` (whose entries start with `strip/`, the archived directory's own name)
/// into `into`, which must exist and be empty.
pub fn unpack(archive: impl Read, strip: &str, into: &Path) -> Result<Unpacked, String> {
    let mut out = Unpacked::default();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut ar = tar::Archive::new(archive);
    let entries = ar.entries().map_err(|e| format!("unreadable archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("unreadable archive: {e}"))?;
        let raw = entry.path().map_err(|e| format!("unreadable archive entry: {e}"))?.into_owned();
        let Some(rel) = inside(&raw, strip) else {
            out.skipped.push(raw.to_string_lossy().into_owned());
            continue;
        };
        let shown = rel.to_string_lossy().into_owned();
        if rel.as_os_str().is_empty() {
            continue;
        }
        let dest = into.join(&rel);
        if !parents_are_dirs(into, &rel) {
            out.skipped.push(shown);
            continue;
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o600) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                match fs::create_dir(&dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && is_dir(&dest) => {}
                    Err(e) => return Err(format!("cannot create {shown}: {}", e.kind())),
                }
                let _ = fs::set_permissions(&dest, fs::Permissions::from_mode(0o700));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut f = create(&dest).map_err(|e| format!("cannot create {shown}: {}", e.kind()))?;
                std::io::copy(&mut entry, &mut f).map_err(|e| format!("cannot write {shown}: {}", e.kind()))?;
                f.flush().map_err(|e| format!("cannot write {shown}: {}", e.kind()))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).map_err(|e| e.kind().to_string())?;
                out.files += 1;
            }
            tar::EntryType::Link => {
                // A second name of a file already unpacked: copied, if it is one.
                let target = entry.link_name().ok().flatten().and_then(|t| inside(&t, strip));
                let source =
                    target.map(|t| into.join(t)).filter(|s| fs::symlink_metadata(s).is_ok_and(|m| m.is_file()));
                match source {
                    Some(src) => {
                        let mut from =
                            fs::File::open(&src).map_err(|e| format!("cannot read {shown}: {}", e.kind()))?;
                        let mut f = create(&dest).map_err(|e| format!("cannot create {shown}: {}", e.kind()))?;
                        std::io::copy(&mut from, &mut f).map_err(|e| format!("cannot write {shown}: {}", e.kind()))?;
                        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                            .map_err(|e| e.kind().to_string())?;
                        out.files += 1;
                    }
                    None => out.skipped.push(shown),
                }
            }
            tar::EntryType::Symlink => match entry.link_name().ok().flatten() {
                Some(t) => links.push((dest, t.into_owned())),
                None => out.skipped.push(shown),
            },
            _ => out.skipped.push(shown),
        }
    }
    for (dest, target) in links {
        // Recorded as a link by the export (never followed); made only where nothing is.
        let rel = dest.strip_prefix(into).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        if !parents_are_dirs(into, Path::new(&rel)) || std::os::unix::fs::symlink(&target, &dest).is_err() {
            out.skipped.push(rel);
        } else {
            out.files += 1;
        }
    }
    Ok(out)
}

/// `raw` below `strip/`, as a relative path of normal components only.
fn inside(raw: &Path, strip: &str) -> Option<PathBuf> {
    let mut comps = raw.components().peekable();
    while matches!(comps.peek(), Some(Component::CurDir)) {
        comps.next();
    }
    match comps.next() {
        Some(Component::Normal(first)) if first == strip => {}
        _ => return None,
    }
    let mut rel = PathBuf::new();
    for c in comps {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(rel)
}

/// Whether every parent of `rel` under `root` is a real directory (not a link).
fn parents_are_dirs(root: &Path, rel: &Path) -> bool {
    let mut at = root.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for c in parents.iter().take(parents.len().saturating_sub(1)) {
        at.push(c);
        if !is_dir(&at) {
            return false;
        }
    }
    true
}

fn is_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// A new file, never through a link and never over anything.
fn create(p: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o640);
        h.set_entry_type(tar::EntryType::Regular);
        // Raw names: `append_data` would refuse the hostile ones this test needs.
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn special(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, link: Option<&str>) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(kind);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }

    #[test]
    fn files_dirs_and_links_are_kept_and_nothing_gets_out() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let escape = outside.path().join("pwned");
        let data = archive(|b| {
            special(b, "workspace/", tar::EntryType::Directory, None);
            special(b, "workspace/a/", tar::EntryType::Directory, None);
            file(b, "workspace/a/f.txt", b"hello");
            special(b, "workspace/a/g", tar::EntryType::Link, Some("workspace/a/f.txt"));
            // A link to outside, then a file "through" it: the file is not written anywhere.
            special(b, "workspace/out", tar::EntryType::Symlink, Some(outside.path().to_str().unwrap()));
            file(b, "workspace/out/pwned", b"x");
            file(b, "workspace/../pwned", b"x");
            file(b, "/etc/pwned", b"x");
            file(b, "other/f", b"x");
            special(b, "workspace/fifo", tar::EntryType::Fifo, None);
        });
        let u = unpack(&data[..], "workspace", dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("a/f.txt")).unwrap(), b"hello");
        assert_eq!(fs::metadata(dir.path().join("a/f.txt")).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read(dir.path().join("a/g")).unwrap(), b"hello");
        assert!(fs::symlink_metadata(dir.path().join("out")).unwrap().file_type().is_symlink());
        assert!(!escape.exists(), "a file was written through a link");
        assert_eq!(u.files, 3);
        for s in ["workspace/../pwned", "/etc/pwned", "other/f", "fifo"] {
            assert!(u.skipped.iter().any(|x| x == s), "{s} not skipped: {:?}", u.skipped);
        }
        // The file under the link was refused too: the link did not exist yet, so "out" was
        // not a directory when it came.
        assert!(u.skipped.iter().any(|x| x == "out/pwned"), "{:?}", u.skipped);
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}

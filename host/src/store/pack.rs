//! Packs: where a conversation's metadata and its first segment of records live (format 3), so
//! a new conversation creates no file.
//!
//! A tenant's sessions are spread over `PACKS` files by the first byte of their session id
//! (`sessions/<xx>.pack`, a keyed hash, so evenly). A pack is `PACK_MAGIC` followed by entries in
//! the journal's format (`journal::encode`: session id ‖ sealed metadata or nothing ‖ first
//! sequence number ‖ sealed frames). A session's first entry carries its sealed metadata; every
//! append of records below `records_per_segment` adds one entry; records past it go to segment
//! files in `sessions/<sid>/`, as in format 2. Entries are appended without an fsync: the
//! journal holds the same bytes until a checkpoint has flushed the pack.
//!
//! In memory a pack is an index (session id → where its entries lie), built by one read of the
//! file on first use and kept up to date by appends. Indexes are held in a cache bounded by the
//! number of sessions they name (`PackCache`), so memory does not grow with the conversations
//! served. Deleting a session rewrites its pack without it (atomically: temp file, fsync,
//! rename), so its metadata, and with it its data key, leaves the disk.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::journal;
use super::lru::Lru;
use crate::fsutil;
use crate::ids::TenantId;

pub(super) const PACK_MAGIC: &[u8; 8] = b"BHPAK01\n";
/// Packs per tenant (one per value of a session id's first byte).
pub(super) const PACKS: usize = 256;
/// What one indexed session costs in memory: how `store.cacheMiB` bounds the pack indexes.
pub(super) const INDEXED_SESSION_BYTES: usize = 160;

/// The pack of a session id: its first byte.
pub(super) fn pack_of(sid: &str) -> u8 {
    sid.get(..2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0)
}

pub(super) fn pack_name(index: u8) -> String {
    format!("{index:02x}.pack")
}

/// Where one entry of a session lies in its pack.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunk {
    /// Offset of the entry's length prefix, and the entry's whole length.
    pub at: u64,
    pub len: u32,
    pub first_seq: u64,
    pub records: u32,
    pub meta: bool,
}

/// One pack, as indexed in memory.
pub(super) struct Pack {
    path: PathBuf,
    loaded: bool,
    /// Open for appends and reads (none until the first entry is written).
    file: Option<File>,
    /// Where the next entry goes (the end of the last whole one).
    end: u64,
    sessions: HashMap<String, Vec<Chunk>>,
    /// The pack is damaged (a malformed entry): it is neither appended to nor rewritten, and its
    /// sessions do not open (fail closed; export names it).
    problem: Option<String>,
    /// Sessions indexed by every pack of the cache.
    indexed: Arc<AtomicUsize>,
}

impl Drop for Pack {
    fn drop(&mut self) {
        self.indexed.fetch_sub(self.sessions.len(), Ordering::Relaxed);
    }
}

impl Pack {
    fn new(path: PathBuf, indexed: Arc<AtomicUsize>) -> Self {
        Self { path, loaded: false, file: None, end: 0, sessions: HashMap::new(), problem: None, indexed }
    }

    /// Reads the pack's file into the index (once). A torn tail (an entry whose write a crash
    /// cut, never acknowledged: the journal replay has already put back what was) is cut off.
    pub(super) fn load(&mut self) -> io::Result<()> {
        if self.loaded {
            return Ok(());
        }
        // What an interrupted rewrite left (the pack itself is whole: the rename did not happen).
        let tmp = fsutil::atomic_temp(&self.path)?;
        fsutil::remove_file_if_exists(&tmp)?;
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.index(&[]);
                self.file = None;
                self.loaded = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.index(&bytes);
        // A file shorter than its header (a creation a crash cut) is one too: it gets its header.
        if self.problem.is_none() && ((self.end as usize) < bytes.len() || self.end < PACK_MAGIC.len() as u64) {
            tracing::warn!(pack = %self.path.display(), at = self.end, "Cut a torn write off the end of a session pack (an unacknowledged append).");
            let f = OpenOptions::new().write(true).open(&self.path)?;
            if self.end < PACK_MAGIC.len() as u64 {
                f.set_len(0)?;
                (&f).write_all(PACK_MAGIC)?;
                self.end = PACK_MAGIC.len() as u64;
            } else {
                f.set_len(self.end)?;
            }
            f.sync_all()?;
        }
        self.file = Some(OpenOptions::new().read(true).append(true).open(&self.path)?);
        self.loaded = true;
        Ok(())
    }

    /// Replaces the index with what `bytes` (the whole file) holds.
    fn index(&mut self, bytes: &[u8]) {
        self.indexed.fetch_sub(self.sessions.len(), Ordering::Relaxed);
        self.sessions.clear();
        let scanned = journal::scan(bytes, PACK_MAGIC);
        self.problem = scanned.problem.map(|why| format!("session pack {}: {why}", self.path.display()));
        self.end = scanned.end as u64;
        for e in &scanned.entries {
            let records = match super::format::frames_in(e.body.frames) {
                Ok(f) => f.len() as u32,
                Err(why) => {
                    let at = e.at;
                    self.problem = Some(format!("session pack {}: the entry at byte {at}: {why}", self.path.display()));
                    self.end = e.at as u64;
                    break;
                }
            };
            let chunk = Chunk {
                at: e.at as u64,
                len: e.len as u32,
                first_seq: e.body.first_seq,
                records,
                meta: e.body.meta.is_some(),
            };
            self.sessions.entry(e.body.sid.to_string()).or_default().push(chunk);
        }
        self.indexed.fetch_add(self.sessions.len(), Ordering::Relaxed);
    }

    pub(super) fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Where a session's entries lie, in file order (none: the pack does not hold it).
    pub(super) fn chunks(&self, sid: &str) -> &[Chunk] {
        self.sessions.get(sid).map_or(&[], Vec::as_slice)
    }

    /// The session ids the pack holds.
    pub(super) fn sids(&self) -> impl Iterator<Item = &String> {
        self.sessions.keys()
    }

    /// Reads one entry of the pack.
    pub(super) fn read(&self, chunk: &Chunk) -> io::Result<Vec<u8>> {
        let file = self.file.as_ref().ok_or_else(|| io::Error::other("the pack is not open"))?;
        let mut bytes = vec![0u8; chunk.len as usize];
        file.read_exact_at(&mut bytes, chunk.at)?;
        Ok(bytes)
    }

    /// Appends one encoded entry (`journal::encode`) of `sid`; returns where the pack ended
    /// before it, for `undo`. Not durable until a checkpoint (the journal holds it meanwhile).
    pub(super) fn append(&mut self, sid: &str, entry: &[u8], first_seq: u64, records: u32, meta: bool) -> io::Result<u64> {
        if let Some(why) = &self.problem {
            return Err(io::Error::other(why.clone()));
        }
        let before = self.end;
        if self.file.is_none() {
            let mut f = OpenOptions::new().read(true).append(true).create_new(true).mode(0o600).open(&self.path)?;
            f.write_all(PACK_MAGIC)?;
            self.end = PACK_MAGIC.len() as u64;
            self.file = Some(f);
        }
        let at = self.end;
        let mut file = self.file.as_ref().expect("opened above");
        let written = file.write_all(entry);
        if let Err(e) = written {
            self.cut(before);
            return Err(e);
        }
        self.end += entry.len() as u64;
        let chunks = self.sessions.entry(sid.to_string()).or_insert_with(|| {
            self.indexed.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        });
        chunks.push(Chunk { at, len: entry.len() as u32, first_seq, records, meta });
        Ok(before)
    }

    /// Takes back the last append of `sid` (its commit failed: it was never acknowledged).
    pub(super) fn undo(&mut self, sid: &str, before: u64) {
        if let Some(chunks) = self.sessions.get_mut(sid) {
            chunks.retain(|c| c.at < before);
            if chunks.is_empty() {
                self.sessions.remove(sid);
                self.indexed.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.cut(before);
    }

    fn cut(&mut self, before: u64) {
        let cut = if before < PACK_MAGIC.len() as u64 {
            // The append created the pack: it goes (a pack without its header would be damaged).
            self.file = None;
            Some(fsutil::remove_file_if_exists(&self.path))
        } else {
            self.file.as_ref().map(|f| f.set_len(before))
        };
        if !matches!(cut, Some(Ok(()))) {
            // The bytes could not be taken back: reread the file at the next use (a torn tail,
            // or an entry that is in the journal only if it was acknowledged).
            self.loaded = false;
            self.file = None;
        }
        self.end = before;
    }

    /// Removes every entry of `sids` from the pack, durably: the pack is rewritten without them
    /// (temp file, fsync, rename, fsync of the directory), or removed when nothing is left.
    /// Returns how many of them it held.
    pub(super) fn remove(&mut self, sids: &[&str]) -> io::Result<usize> {
        let held = sids.iter().filter(|s| self.sessions.contains_key(**s)).count();
        if held == 0 {
            return Ok(0);
        }
        if let Some(why) = &self.problem {
            return Err(io::Error::other(format!("{why}; export the tenant and restore or delete it")));
        }
        let bytes = fs::read(&self.path)?;
        let scanned = journal::scan(&bytes[..(self.end as usize).min(bytes.len())], PACK_MAGIC);
        let mut kept = PACK_MAGIC.to_vec();
        for e in &scanned.entries {
            if !sids.contains(&e.body.sid) {
                kept.extend_from_slice(&bytes[e.at..e.at + e.len]);
            }
        }
        let dir = self.path.parent().expect("sessions dir").to_path_buf();
        // Until the rewrite is done, the next use rereads whatever the disk holds.
        self.file = None;
        self.loaded = false;
        if kept.len() == PACK_MAGIC.len() {
            fsutil::remove_file_if_exists(&self.path)?;
            fsutil::sync_dir(&dir)?;
            self.index(&[]);
        } else {
            fsutil::write_atomic(&self.path, &kept)?;
            self.file = Some(OpenOptions::new().read(true).append(true).open(&self.path)?);
            self.index(&kept);
        }
        self.loaded = true;
        Ok(held)
    }
}

pub(super) type PackSlot = Arc<Mutex<Pack>>;

/// The packs in use, bounded by the number of sessions their indexes name: past the bound the
/// least recently used idle packs are dropped (and reread from disk when used again).
pub(super) struct PackCache {
    max_indexed: usize,
    indexed: Arc<AtomicUsize>,
    lru: Lru<(TenantId, u8), Mutex<Pack>>,
}

impl PackCache {
    pub(super) fn new(max_indexed: usize) -> Self {
        Self { max_indexed: max_indexed.max(PACKS), indexed: Arc::default(), lru: Lru::new() }
    }

    /// The pack `index` of tenant `t`, whose sessions directory is `dir` (not yet loaded when new).
    pub(super) fn slot(&mut self, t: &TenantId, index: u8, dir: &Path) -> PackSlot {
        let indexed = self.indexed.clone();
        let max = self.max_indexed;
        self.lru.get(
            (t.clone(), index),
            || Mutex::new(Pack::new(dir.join(pack_name(index)), indexed.clone())),
            |_| indexed.load(Ordering::Relaxed) > max,
        )
    }

    pub(super) fn remove_tenant(&mut self, t: &TenantId) {
        self.lru.retain(|(tt, _)| tt != t);
    }

    #[cfg(test)]
    pub(super) fn indexed(&self) -> usize {
        self.indexed.load(Ordering::Relaxed)
    }
}

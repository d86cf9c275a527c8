//! A tenant's journal: where an append becomes durable.
//!
//! An append writes its sealed records (and, for a new session, its sealed metadata) to the
//! session's own files without an fsync, then the same bytes as one entry to the tenant's
//! journal (`Journal::write`), and is acknowledged once an `fdatasync` of the journal that started
//! after it has succeeded (`Written::sync`). The tenant's writer thread (`writer.rs`) writes a
//! batch of appends, then syncs once; the sync is also shared with any other caller meanwhile
//! (`sync::GroupCommit`). So a turn costs a share of one fsync, not three or four, and concurrent
//! conversations commit together.
//!
//! Every second (and when the store closes) a checkpoint closes the journal's generation (the next
//! append starts a new one), flushes the file system (`syncfs`: every session file and directory
//! written since), and removes the old generation. Opening the store replays what is left (a crash or power loss before a
//! checkpoint): records missing from a session's files are appended again, after they
//! authenticate, so no acknowledged turn is lost even when the page cache was.
//!
//! Layout: `tenants/<tenant>/journal/<generation>.log`, each `JOURNAL_MAGIC` followed by entries
//! `u32 LE body length ‖ body`, body = session id (32 hex digits) ‖ `u32 LE` length of the sealed
//! metadata (0: none) ‖ metadata ‖ `u64 LE` sequence number of the first record ‖ frames (as in
//! a segment). Everything in it is already sealed: the journal holds no plaintext and adds no key.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::sync::GroupCommit;
use crate::fsutil;
use crate::ids::TenantId;

pub(super) const JOURNAL_MAGIC: &[u8; 8] = b"BHJRN01\n";
/// A generation this large is checkpointed without waiting for the interval.
pub(super) const CHECKPOINT_BYTES: u64 = 16 << 20;
/// How often a journal with entries is checkpointed (`StoreOptions::checkpoint_every`).
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
const SID_LEN: usize = 32;
/// Largest entry accepted when reading (a bound on what a corrupted length can ask for).
const MAX_ENTRY_BYTES: usize = 256 << 20;

/// One append as the journal holds it.
#[derive(Debug, PartialEq)]
pub(super) struct Entry {
    pub sid: String,
    pub meta: Option<Vec<u8>>,
    pub first_seq: u64,
    /// Sealed frames, as in a segment (without the segment header).
    pub frames: Vec<u8>,
}

pub(super) fn encode(sid: &str, meta: Option<&[u8]>, first_seq: u64, frames: &[u8]) -> Vec<u8> {
    let meta = meta.unwrap_or_default();
    let body = SID_LEN + 4 + meta.len() + 8 + frames.len();
    let mut out = Vec::with_capacity(4 + body);
    out.extend_from_slice(&(body as u32).to_le_bytes());
    out.extend_from_slice(sid.as_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(frames);
    out
}

/// What one generation file holds: its entries, in order, up to a torn tail (an append that was
/// never acknowledged) or the first malformed entry (`problem`).
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub entries: Vec<Entry>,
    pub problem: Option<String>,
}

pub(super) fn parse(bytes: &[u8]) -> Parsed {
    let scanned = scan(bytes, JOURNAL_MAGIC);
    let entries = scanned.entries.iter().map(|e| e.body.to_entry()).collect();
    Parsed { entries, problem: scanned.problem }
}

/// Where one entry lies in a file of entries (a journal generation or a pack), and its fields.
#[derive(Debug)]
pub(super) struct EntryAt<'a> {
    /// Offset of its length prefix.
    pub at: usize,
    /// Its whole length, prefix included.
    pub len: usize,
    pub body: Body<'a>,
}

/// An entry's fields, borrowed.
#[derive(Debug)]
pub(super) struct Body<'a> {
    pub sid: &'a str,
    pub meta: Option<&'a [u8]>,
    pub first_seq: u64,
    pub frames: &'a [u8],
}

impl Body<'_> {
    pub(super) fn to_entry(&self) -> Entry {
        Entry {
            sid: self.sid.to_string(),
            meta: self.meta.map(<[u8]>::to_vec),
            first_seq: self.first_seq,
            frames: self.frames.to_vec(),
        }
    }
}

/// What a file of entries holds: its entries, the end of the last whole one, and the first
/// malformed entry (`problem`). A torn tail (incomplete or zero-filled) ends the scan without a
/// problem: it was never acknowledged.
#[derive(Debug, Default)]
pub(super) struct Scanned<'a> {
    pub entries: Vec<EntryAt<'a>>,
    pub end: usize,
    pub problem: Option<String>,
}

/// Scans a file of entries that starts with `magic`.
pub(super) fn scan<'a>(bytes: &'a [u8], magic: &[u8; 8]) -> Scanned<'a> {
    let mut out = Scanned::default();
    if bytes.len() < magic.len() {
        return out; // a file whose header write was torn holds nothing acknowledged
    }
    if &bytes[..magic.len()] != magic {
        out.problem = Some("the header is not of this kind of bulkhead file".into());
        return out;
    }
    let mut pos = magic.len();
    out.end = pos;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < 4 || rest.iter().all(|b| *b == 0) {
            break; // torn (or zero-filled) tail
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if !(SID_LEN + 12..=MAX_ENTRY_BYTES).contains(&len) {
            out.problem = Some(format!("an entry length at byte {pos} is out of range"));
            break;
        }
        let Some(body) = rest.get(4..4 + len) else { break }; // torn tail
        match parse_body(body) {
            Ok(body) => out.entries.push(EntryAt { at: pos, len: 4 + len, body }),
            Err(why) => {
                out.problem = Some(format!("the entry at byte {pos}: {why}"));
                break;
            }
        }
        pos += 4 + len;
        out.end = pos;
    }
    out
}

/// The fields of one entry's body (without its length prefix).
pub(super) fn parse_body(body: &[u8]) -> Result<Body<'_>, &'static str> {
    if body.len() < SID_LEN + 12 {
        return Err("it is too short");
    }
    let sid = &body[..SID_LEN];
    if !sid.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) {
        return Err("its session id is malformed");
    }
    let rest = &body[SID_LEN..];
    let meta_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let rest = &rest[4..];
    if rest.len() < meta_len + 8 {
        return Err("its metadata length is out of range");
    }
    let (meta, rest) = rest.split_at(meta_len);
    let first_seq = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
    Ok(Body {
        sid: std::str::from_utf8(sid).expect("ascii"),
        meta: (meta_len > 0).then_some(meta),
        first_seq,
        frames: &rest[8..],
    })
}

fn generation_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:016x}.log"))
}

/// The generation files in `dir`, oldest first (none when the directory does not exist).
pub(super) fn generations(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(index) = name.strip_suffix(".log").and_then(|n| u64::from_str_radix(n, 16).ok()) {
            out.push((index, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// One generation file open for appends.
struct Generation {
    path: PathBuf,
    file: File,
    commits: GroupCommit,
}

impl Generation {
    /// Creates generation `index` and makes its name durable (appends acknowledged through it
    /// must survive a power loss before the next checkpoint).
    fn create(dir: &Path, index: u64) -> io::Result<Self> {
        let path = generation_path(dir, index);
        let mut file = fsutil::create_new_private(&path)?;
        file.write_all(JOURNAL_MAGIC)?;
        file.sync_all()?;
        fsutil::sync_dir(dir)?;
        Ok(Self { path, file, commits: GroupCommit::default() })
    }
}

/// Entries written to one generation, durable once `sync` returns `Ok`.
pub(super) struct Written {
    generation: Arc<Generation>,
    #[cfg(test)]
    probe: Arc<SyncProbe>,
}

impl Written {
    /// Returns once an `fdatasync` of the generation that started after this call has succeeded
    /// (shared with every other caller meanwhile: `GroupCommit`).
    pub(super) fn sync(&self) -> io::Result<()> {
        let g = &self.generation;
        g.commits.commit(|| {
            #[cfg(test)]
            {
                self.probe.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if self.probe.fail.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(io::Error::other("injected fsync failure"));
                }
            }
            g.file.sync_data()
        })
    }

    /// Whether two writes went to the same generation (one sync covers both).
    pub(super) fn same(&self, other: &Written) -> bool {
        Arc::ptr_eq(&self.generation, &other.generation)
    }
}

/// Tests: counts a journal's fsyncs, and makes them fail.
#[cfg(test)]
#[derive(Default)]
pub(super) struct SyncProbe {
    pub syncs: std::sync::atomic::AtomicUsize,
    pub fail: std::sync::atomic::AtomicBool,
}

struct State {
    /// The generation the next one created gets.
    next_index: u64,
    /// The generation appends go to; created by the first append after a start or a checkpoint
    /// (a store with 10,000 idle tenants creates no file at start).
    current: Option<Arc<Generation>>,
    /// Bytes of entries in the current generation.
    bytes: u64,
    /// When the current generation got its first entry.
    since: Option<Instant>,
    /// A write failed part-way: the next append starts a new generation, so a torn entry is only
    /// ever a generation's tail.
    broken: bool,
    /// Sessions with entries in the current generation, and in generations being checkpointed
    /// (or whose checkpoint failed): deleting one of them waits for a checkpoint first.
    touched: HashSet<String>,
    sealing: HashSet<String>,
    /// Generations no longer appended to, not yet removed.
    done: Vec<PathBuf>,
    /// The tenant's tree was deleted or replaced: appends are refused.
    retired: bool,
    /// An fsync failed and no checkpoint has succeeded since: writes wait for one (`sync_failed`).
    unflushed_failure: bool,
}

/// A tenant's journal.
pub(super) struct Journal {
    dir: PathBuf,
    /// Where `syncfs` is called (the tenant's directory: on the file system of its sessions).
    fs_root: PathBuf,
    state: Mutex<State>,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
    #[cfg(test)]
    pub(super) probe: Arc<SyncProbe>,
}

impl Journal {
    /// The journal at `dir`, whose next generation is `next_index` (the older ones replayed and
    /// removed). Creates nothing on disk until the first append.
    pub(super) fn start(dir: &Path, fs_root: &Path, next_index: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            fs_root: fs_root.to_path_buf(),
            state: Mutex::new(State {
                next_index,
                current: None,
                bytes: 0,
                since: None,
                broken: false,
                touched: HashSet::new(),
                sealing: HashSet::new(),
                done: Vec::new(),
                retired: false,
                unflushed_failure: false,
            }),
            checkpointing: Mutex::new(()),
            #[cfg(test)]
            probe: Arc::default(),
        }
    }

    /// Writes one entry (`encode`d) of session `sid` without waiting for it to be durable: it is
    /// once `Written::sync` has returned `Ok` (shared with every append that arrived meanwhile;
    /// the writer thread writes a batch of entries, then syncs once). The caller has already
    /// written the same bytes to the session's files; when the sync fails it undoes them, as
    /// nothing was acknowledged.
    pub(super) fn write(&self, sid: &str, entry: &[u8]) -> io::Result<Written> {
        if self.state.lock().expect("journal lock").unflushed_failure {
            self.flush_after_failure().map_err(|e| {
                io::Error::new(e.kind(), format!("an fsync of the journal failed and the checkpoint after it too: {e}"))
            })?;
        }
        let mut s = self.state.lock().expect("journal lock");
        if s.retired {
            return Err(io::Error::other("the tenant's store was replaced or deleted meanwhile"));
        }
        let generation = match &s.current {
            Some(g) if !s.broken => g.clone(),
            _ => {
                fsutil::create_private_dir(&self.dir)?;
                let g = Arc::new(Generation::create(&self.dir, s.next_index)?);
                s.next_index += 1;
                if let Some(old) = s.current.replace(g.clone()) {
                    s.done.push(old.path.clone());
                }
                s.broken = false;
                g
            }
        };
        if let Err(e) = (&generation.file).write_all(entry) {
            s.broken = true;
            return Err(e);
        }
        s.bytes += entry.len() as u64;
        s.since.get_or_insert_with(Instant::now);
        s.touched.insert(sid.to_string());
        Ok(Written {
            generation,
            #[cfg(test)]
            probe: self.probe.clone(),
        })
    }

    /// After a failed fsync whose appends the caller has undone in the session files: the failed
    /// entries are still in a generation, and a later fsync may make them durable, where a replay
    /// would apply them in place of what is acknowledged after them. So nothing more is written
    /// until a checkpoint has flushed the undone files and removed those generations (tried
    /// now, and again by each write until it succeeds).
    pub(super) fn sync_failed(&self) {
        self.state.lock().expect("journal lock").unflushed_failure = true;
        if let Err(e) = self.flush_after_failure() {
            tracing::error!(journal = %self.dir.display(), error = %e, "The checkpoint after a failed journal fsync failed; appends are refused until one succeeds.");
        }
    }

    fn flush_after_failure(&self) -> io::Result<()> {
        self.checkpoint()?;
        self.state.lock().expect("journal lock").unflushed_failure = false;
        Ok(())
    }

    /// Whether the journal is large enough, or has held entries long enough, for a checkpoint.
    pub(super) fn due(&self, now: Instant, every: Duration) -> bool {
        let s = self.state.lock().expect("journal lock");
        !s.retired && (s.bytes >= CHECKPOINT_BYTES || s.since.is_some_and(|t| now.duration_since(t) >= every))
    }

    /// Makes everything the journal holds durable in the session files and removes it: the
    /// next append starts a new generation, the file system is flushed, and the older generations
    /// are removed.
    pub(super) fn checkpoint(&self) -> io::Result<()> {
        let _one = self.checkpointing.lock().expect("checkpoint lock");
        let (done, sealing) = {
            let mut s = self.state.lock().expect("journal lock");
            if s.retired || (s.current.is_none() && s.done.is_empty() && s.sealing.is_empty()) {
                return Ok(());
            }
            if let Some(old) = s.current.take() {
                s.done.push(old.path.clone());
            }
            s.bytes = 0;
            s.since = None;
            s.broken = false;
            let touched = std::mem::take(&mut s.touched);
            s.sealing.extend(touched);
            (std::mem::take(&mut s.done), s.sealing.clone())
        };
        // Every entry of the old generations was written to its session's files before it was
        // written to the journal, so this flush makes all of them durable there.
        let flushed = fsutil::sync_fs(&self.fs_root).and_then(|()| {
            for path in &done {
                fsutil::remove_file_if_exists(path)?;
            }
            fsutil::sync_dir(&self.dir)
        });
        let mut s = self.state.lock().expect("journal lock");
        match flushed {
            Ok(()) => {
                s.sealing.retain(|sid| !sealing.contains(sid));
                Ok(())
            }
            Err(e) => {
                // Kept for the next checkpoint (or the replay at the next open).
                s.done.extend(done);
                Err(e)
            }
        }
    }

    /// Returns once no generation still holds entries of `sid` (before a deletion: a replay
    /// must never bring a deleted session back). The caller holds the session's lock.
    pub(super) fn settle(&self, sid: &str) -> io::Result<()> {
        loop {
            let pending = {
                let s = self.state.lock().expect("journal lock");
                !s.retired && (s.touched.contains(sid) || s.sealing.contains(sid))
            };
            if !pending {
                return Ok(());
            }
            self.checkpoint()?;
        }
    }

    /// Checkpoints and refuses every later append (the tenant's tree is about to be deleted or
    /// replaced). The checkpoint's error is returned, but the journal is retired either way.
    pub(super) fn retire(&self) -> io::Result<()> {
        let flushed = self.checkpoint();
        let _one = self.checkpointing.lock().expect("checkpoint lock");
        self.state.lock().expect("journal lock").retired = true;
        flushed
    }
}

/// Every tenant's journal, and the checkpoints of the thread that `run`s them.
pub(super) struct Journals {
    map: RwLock<HashMap<TenantId, Arc<Journal>>>,
    every: Duration,
    stop: Mutex<bool>,
    wake: Condvar,
    /// Tests: stop without the closing checkpoints (what a crash leaves).
    #[cfg(test)]
    pub(super) crash: std::sync::atomic::AtomicBool,
}

impl Journals {
    pub(super) fn new(every: Duration) -> Self {
        Self {
            map: RwLock::default(),
            every,
            stop: Mutex::new(false),
            wake: Condvar::new(),
            #[cfg(test)]
            crash: Default::default(),
        }
    }

    /// Checkpoints every journal now (`EncryptedStore::checkpoint`).
    pub(super) fn checkpoint_all(&self) -> io::Result<()> {
        let all: Vec<Arc<Journal>> = self.map.read().expect("journals lock").values().cloned().collect();
        all.iter().try_for_each(|j| j.checkpoint())
    }

    pub(super) fn get(&self, t: &TenantId) -> Option<Arc<Journal>> {
        self.map.read().expect("journals lock").get(t).cloned()
    }

    pub(super) fn insert(&self, t: TenantId, j: Journal) {
        self.map.write().expect("journals lock").insert(t, Arc::new(j));
    }

    pub(super) fn remove(&self, t: &TenantId) -> Option<Arc<Journal>> {
        self.map.write().expect("journals lock").remove(t)
    }

    /// The checkpoint thread: every journal that is due, until `stop`, then every journal once
    /// more (the store closes with its journals empty).
    pub(super) fn run(&self) {
        let mut stop = self.stop.lock().expect("journals lock");
        loop {
            stop = self.wake.wait_timeout(stop, (self.every / 4).min(CHECKPOINT_INTERVAL)).expect("journals lock").0;
            let stopping = *stop;
            drop(stop);
            #[cfg(test)]
            if stopping && self.crash.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            // Only the due journals are taken out of the map (a wake comes four times a second,
            // and most tenants' journals are idle).
            let due: Vec<(TenantId, Arc<Journal>)> = self
                .map
                .read()
                .expect("journals lock")
                .iter()
                .filter(|(_, j)| stopping || j.due(now, self.every))
                .map(|(t, j)| (t.clone(), j.clone()))
                .collect();
            for (t, j) in due {
                if let Err(e) = j.checkpoint() {
                    tracing::warn!(tenant = %t, error = %e, "A store checkpoint failed; the journal keeps every acknowledged turn and the next checkpoint retries.");
                }
            }
            if stopping {
                return;
            }
            stop = self.stop.lock().expect("journals lock");
        }
    }

    pub(super) fn stop(&self) {
        *self.stop.lock().expect("journals lock") = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_torn_tail_is_not_an_entry() {
        let sid = "0123456789abcdef0123456789abcdef";
        let mut bytes = JOURNAL_MAGIC.to_vec();
        bytes.extend(encode(sid, Some(b"sealed meta"), 0, b"frames"));
        bytes.extend(encode(sid, None, 1, b"more"));
        let whole = parse(&bytes);
        assert_eq!(whole.problem, None);
        assert_eq!(
            whole.entries,
            vec![
                Entry { sid: sid.into(), meta: Some(b"sealed meta".to_vec()), first_seq: 0, frames: b"frames".to_vec() },
                Entry { sid: sid.into(), meta: None, first_seq: 1, frames: b"more".to_vec() },
            ]
        );
        for cut in JOURNAL_MAGIC.len()..bytes.len() {
            let p = parse(&bytes[..cut]);
            assert_eq!(p.problem, None, "cut at {cut}");
            assert!(p.entries.len() < 2, "cut at {cut}");
        }
        let mut zeroed = bytes.clone();
        zeroed.extend([0u8; 100]);
        assert_eq!(parse(&zeroed).entries.len(), 2);
    }

    #[test]
    fn a_malformed_entry_is_a_problem_not_a_panic() {
        let mut bytes = JOURNAL_MAGIC.to_vec();
        bytes.extend(encode("not a session id, not a session!", None, 0, b""));
        assert!(parse(&bytes).problem.unwrap().contains("session id"));
        let mut bytes = JOURNAL_MAGIC.to_vec();
        bytes.extend(u32::MAX.to_le_bytes());
        assert!(parse(&bytes).problem.unwrap().contains("out of range"));
        let mut bad_meta = encode("0123456789abcdef0123456789abcdef", Some(b"m"), 0, b"");
        bad_meta[4 + SID_LEN..4 + SID_LEN + 4].copy_from_slice(&1000u32.to_le_bytes());
        let mut bytes = JOURNAL_MAGIC.to_vec();
        bytes.extend(bad_meta);
        assert!(parse(&bytes).problem.unwrap().contains("metadata"));
        assert!(parse(b"NOTAJRNL....").problem.unwrap().contains("header"));
        assert!(parse_body(b"short").is_err());
    }
}

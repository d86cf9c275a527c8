//! The encrypted per-tenant session store: transcripts at rest, sealed to each tenant's age key.
//!
//! Layout under `<stateDir>/store/` (every directory 0700, every file 0600; see `docs/store.md`):
//!
//! ```text
//! store.age                      marker, age-encrypted to the master key (detects a wrong key)
//! lock                           held by the process that has the store open
//! tenants/<tenant>/identity.age  the tenant's age identity, encrypted to the master key + MAC
//! tenants/<tenant>/journal/<generation>.log    appends since the last checkpoint (journal.rs)
//! tenants/<tenant>/sessions/<xx>.pack          format 3: the sessions whose id starts with byte
//!                                              xx: sealed meta and segment 0's records (pack.rs)
//! tenants/<tenant>/sessions/<sid>/00000001.seg records 1024-2047, ... (long sessions only)
//! tenants/<tenant>/sessions/<sid>.ses          format 2 (older sessions, and those a key
//!                                              rotation rewrites): sealed meta, then segment 0
//! tenants/<tenant>/sessions/<sid>/meta.age     format 1 (older sessions): meta in its own file
//! ```
//!
//! `<sid>` is a keyed hash of the session key, so no session key or peer id appears in a name.
//! An append seals the new records (ChaCha20-Poly1305, random nonce, associated data = tenant,
//! session id and position), writes them as one entry to the session's pack (or open segment),
//! and commits the same bytes to the tenant's journal with an fdatasync shared by concurrent
//! appends: O(turn), no file per new conversation, a share of one fsync per append.

mod export;
pub use export::write_export;
mod format;
mod journal;
mod keys;
mod lru;
mod pack;
pub mod postgres;
mod sync;
#[cfg(test)]
mod tests;
mod writer;
#[cfg(test)]
mod suite;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};

pub use export::ExportSummary;
pub use format::{Record, RecordMessage, RecordToolCall};
use format::{SEGMENT_MAGIC, split_frames};
use keys::TenantKeys;
use lru::Lru;
use pack::{PackCache, PackSlot};
pub use keys::{MasterKey, MasterKeyError};

use crate::config::Config;
use crate::crypto::{RecordKey, hex, random, unhex};
use crate::fsutil;
use crate::ids::{SessionKey, TenantId};
use crate::session::{Message, SessionStore, SessionSummary, StoreError};

/// Records per segment file; a full segment is never written again.
pub const DEFAULT_RECORDS_PER_SEGMENT: u64 = 1024;

/// What one cached open session costs (its state, its data key, its open segment file, in the
/// kernel too, and up to `RECENT_BYTES` of its last messages): how `store.cacheMiB` becomes a
/// number of sessions.
pub const CACHED_SESSION_BYTES: usize = 10 << 10;

/// Tuning knobs (tests use small segments and caches).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub records_per_segment: u64,
    /// Sessions kept open (state, data key, segment file) at once; the least recently used idle
    /// ones are closed past it and reopened from disk when used again.
    pub max_cached_sessions: usize,
    /// Sessions named by the pack indexes held in memory at once (least recently used idle
    /// packs are dropped past it, and reread when used again).
    pub max_indexed_sessions: usize,
    /// How long a journal keeps entries before a checkpoint flushes them into the session files.
    pub checkpoint_every: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            records_per_segment: DEFAULT_RECORDS_PER_SEGMENT,
            max_cached_sessions: crate::session::DEFAULT_CACHE_BYTES / 4 * 3 / CACHED_SESSION_BYTES,
            max_indexed_sessions: crate::session::DEFAULT_CACHE_BYTES / 4 / pack::INDEXED_SESSION_BYTES,
            checkpoint_every: journal::CHECKPOINT_INTERVAL,
        }
    }
}

impl StoreOptions {
    /// The options for a cache of `cache_bytes` (`store.cacheMiB`): three quarters for open
    /// sessions, one for pack indexes.
    pub fn with_cache_bytes(cache_bytes: usize) -> Self {
        Self {
            max_cached_sessions: (cache_bytes / 4 * 3 / CACHED_SESSION_BYTES).max(1),
            max_indexed_sessions: cache_bytes / 4 / pack::INDEXED_SESSION_BYTES,
            ..Self::default()
        }
    }
}

/// Why the store could not be opened. Opening never overwrites anything on failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error(
        "store.masterKey is not configured, but {root} holds an encrypted store; configure the master key that created it"
    )]
    NoMasterKey { root: String },
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    #[error("the master key ({origin}) does not open the store at {root} (wrong master key?); nothing was changed")]
    WrongMasterKey { origin: String, root: String },
    #[error("{path} has mode {mode:04o}: it must not be accessible by group or others; run `chmod 700 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("the store at {root} is in use by another bulkhead process (is the gateway running?)")]
    Locked { root: String },
    #[error("the store at {root} has tenant data but no store.age marker; refusing to open it")]
    MissingMarker { root: String },
    #[error("tenant {tenant:?}: {reason}; nothing was changed")]
    Tenant { tenant: String, reason: String },
    #[error("store at {path}: {what}: {error}")]
    Io { path: String, what: &'static str, error: io::Error },
    /// The PostgreSQL backend cannot be used (never names the URL: it may hold a password).
    #[error("the session store database: {0}")]
    Database(String),
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> StoreOpenError + 'a {
    move |error| StoreOpenError::Io { path: path.display().to_string(), what, error }
}

fn store_io(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Retention: how many days a session is kept after its last message, by tenant.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub default_days: Option<u32>,
    pub per_tenant: BTreeMap<TenantId, u32>,
}

impl Retention {
    pub fn from_config(config: &Config) -> Self {
        Self { default_days: config.store.retention_days, per_tenant: config.store.tenant_retention_days.clone() }
    }
    pub fn days_for(&self, tenant: &TenantId) -> Option<u32> {
        self.per_tenant.get(tenant).copied().or(self.default_days)
    }
}

/// One session's content as read from disk.
#[derive(Debug, Clone)]
pub struct SessionRead {
    pub key: String,
    pub created_ms: u64,
    /// The readable records, in order: everything, or the prefix before the first problem.
    pub records: Vec<Record>,
    /// Integrity problems found (empty when the session verified).
    pub problems: Vec<String>,
    /// A torn tail (an unacknowledged partial write) was skipped.
    pub torn_tail: bool,
}

impl SessionRead {
    /// A session that cannot be read at all (its metadata fails verification).
    fn unreadable(problem: String) -> Self {
        Self { key: String::new(), created_ms: 0, records: Vec::new(), problems: vec![problem], torn_tail: false }
    }
}

/// The plaintext inside a session's `meta.age`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetaFile {
    v: u32,
    tenant: String,
    sid: String,
    key: String,
    created_ms: u64,
    data_key: String,
    mac: String,
}

/// The plaintext inside `store.age`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StoreMarker {
    format: String,
    v: u32,
    mac: String,
}

struct OpenMeta {
    key: String,
    created_ms: u64,
    data: RecordKey,
}

/// How a session lies on disk.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    /// Since format 3: the metadata and segment 0's records are entries of one of the tenant's
    /// packs, `sessions/<xx>.pack` (`pack.rs`): a new conversation creates no file. Segments 1
    /// and later (a session past `records_per_segment` records) in `sessions/<sid>/`.
    Pack,
    /// Format 2 (still read and appended to): one file per conversation, `sessions/<sid>.ses` = `SESSION_MAGIC` ‖ `u32 LE`
    /// meta length ‖ sealed meta ‖ segment 0's frames (`header` bytes before them); segments 1
    /// and later (a session past `records_per_segment` records) in `sessions/<sid>/`.
    File { header: usize },
    /// Format 1 (still read and appended to): `sessions/<sid>/meta.age` and every segment there.
    Dir,
}

/// What is known about one session while the store is open.
struct SessionState {
    loaded: bool,
    meta: Option<OpenMeta>,
    layout: Layout,
    next_seq: u64,
    updated_ms: u64,
    /// The segment open for appends and its index.
    tail: Option<(u64, File)>,
    /// The last messages this process appended (`Recent`).
    recent: Recent,
}

impl SessionState {
    fn empty() -> Self {
        Self {
            loaded: false,
            meta: None,
            layout: Layout::Dir,
            next_seq: 0,
            updated_ms: 0,
            tail: None,
            recent: Recent::default(),
        }
    }
}

/// What a cached open session keeps of its last messages (`RECENT_BYTES` at most): what this
/// process appended since it loaded the session, so a turn reads its context from memory, not
/// by a hop to a blocking thread, a read of its pack and a decryption. It holds exactly the
/// last records before `next_seq`, all acknowledged (a load starts it empty).
#[derive(Default)]
struct Recent {
    messages: std::collections::VecDeque<Message>,
    bytes: usize,
}

/// The bound on `Recent` per session (part of `CACHED_SESSION_BYTES`).
const RECENT_BYTES: usize = 2 << 10;

impl Recent {
    /// Keeps acknowledged `messages`, dropping the oldest past the bound.
    fn push(&mut self, messages: &[Message]) {
        for m in messages {
            self.bytes += crate::session::message_bytes(m);
            self.messages.push_back(m.clone());
        }
        while self.bytes > RECENT_BYTES
            && let Some(m) = self.messages.pop_front()
        {
            self.bytes -= crate::session::message_bytes(&m);
        }
    }

    /// The last `limit` messages (all when `None`) of a session whose next record is `next_seq`,
    /// when they are all kept.
    fn last(&self, limit: Option<usize>, next_seq: u64) -> Option<Vec<Message>> {
        let kept_from = next_seq.checked_sub(self.messages.len() as u64)?;
        let from = limit.map_or(0, |l| next_seq.saturating_sub(l as u64));
        if from < kept_from {
            return None;
        }
        Some(self.messages.iter().skip((from - kept_from) as usize).cloned().collect())
    }
}

type SessionSlot = Arc<Mutex<SessionState>>;
type SlotId = (TenantId, String);

/// The open sessions, bounded: past `max` entries the least recently used idle one is dropped
/// (closing its segment file).
struct SessionCache {
    max: usize,
    lru: Lru<SlotId, Mutex<SessionState>>,
}

impl SessionCache {
    fn new(max: usize) -> Self {
        Self { max: max.max(1), lru: Lru::new() }
    }

    fn slot(&mut self, id: SlotId) -> SessionSlot {
        let max = self.max;
        self.lru.get(id, || Mutex::new(SessionState::empty()), |len| len > max)
    }

    fn remove_tenant(&mut self, t: &TenantId) {
        self.lru.retain(|(tt, _)| tt != t);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lru.len()
    }
}

struct Inner {
    root: PathBuf,
    master: MasterKey,
    opts: StoreOptions,
    rng: SystemRandom,
    tenants: RwLock<HashMap<TenantId, Arc<TenantKeys>>>,
    sessions: Mutex<SessionCache>,
    /// The pack indexes in use (bounded by the sessions they name).
    packs: Mutex<PackCache>,
    /// Each tenant's journal (where appends become durable) and the checkpoint thread's state.
    journals: Arc<journal::Journals>,
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Each tenant's writer thread, while it has appends.
    writers: writer::Writers,
    _lock: File,
}

impl Drop for Inner {
    /// The store closes with its journals checkpointed (so it reopens without a replay).
    fn drop(&mut self) {
        self.journals.stop();
        if let Some(thread) = self.checkpointer.lock().expect("checkpointer lock").take() {
            let _ = thread.join();
        }
    }
}

/// The encrypted store. Cheap to clone; one per process (it holds the store lock).
#[derive(Clone)]
pub struct EncryptedStore {
    inner: Arc<Inner>,
}

/// Where the store lives for a config.
/// The durable store a gateway opened: files under `stateDir`, or the shared database. The
/// operations here are those besides `SessionStore` (retention, export, crypto-shredding).
#[derive(Clone)]
pub enum Durable {
    File(EncryptedStore),
    Postgres(postgres::PgStore),
}

impl Durable {
    /// Opens the durable store the config names (the master key loaded and checked first).
    pub async fn open(config: &Config) -> Result<Self, StoreOpenError> {
        let crate::config::StoreBackend::Postgres { url, pool_size, .. } = &config.store.backend else {
            return EncryptedStore::open(config).map(Durable::File);
        };
        let master = config_master(config)?;
        let url = url
            .resolve(&config.base_dir)
            .map_err(|why| StoreOpenError::Database(format!("store.url cannot be read: {why}")))?;
        let db = crate::cluster::Db::connect(&url, *pool_size, crate::cluster::gateway_id())
            .await
            .map_err(|e| StoreOpenError::Database(e.to_string()))?;
        let tenants: Vec<TenantId> = config.tenants.keys().cloned().collect();
        let store = postgres::PgStore::open(db, master, &tenants)
            .await
            .map_err(|e| StoreOpenError::Database(e.to_string()))?;
        Ok(Durable::Postgres(store))
    }

    pub fn sessions(&self) -> Arc<dyn SessionStore> {
        match self {
            Durable::File(s) => Arc::new(s.clone()),
            Durable::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// The shared database, when there is one.
    pub fn db(&self) -> Option<&crate::cluster::Db> {
        match self {
            Durable::File(_) => None,
            Durable::Postgres(s) => Some(s.db()),
        }
    }

    pub async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        match self {
            Durable::File(s) => Ok(s.tenants()),
            Durable::Postgres(s) => s.tenants().await,
        }
    }

    pub async fn apply_retention(
        &self,
        retention: Retention,
        now: SystemTime,
    ) -> Result<Vec<(TenantId, usize)>, StoreError> {
        match self {
            Durable::File(s) => {
                let s = s.clone();
                blocking(move || s.apply_retention(&retention, now)).await
            }
            Durable::Postgres(s) => s.apply_retention(&retention, now).await,
        }
    }

    pub async fn read_tenant(&self, t: &TenantId) -> Result<Vec<SessionRead>, StoreError> {
        match self {
            Durable::File(s) => {
                let (s, t) = (s.clone(), t.clone());
                blocking(move || s.read_tenant(&t)).await
            }
            Durable::Postgres(s) => s.read_tenant(t).await,
        }
    }

    pub async fn delete_tenant(&self, t: &TenantId) -> Result<bool, StoreError> {
        match self {
            Durable::File(s) => {
                let (s, t) = (s.clone(), t.clone());
                blocking(move || s.delete_tenant(&t)).await
            }
            Durable::Postgres(s) => s.delete_tenant(t).await,
        }
    }
}

/// The master key a config names, loaded and checked (the encrypted store refuses without one).
pub fn config_master(config: &Config) -> Result<MasterKey, StoreOpenError> {
    let Some(reference) = &config.store.master_key else {
        return Err(StoreOpenError::NoMasterKey { root: store_root(config).display().to_string() });
    };
    Ok(MasterKey::load(reference, &config.base_dir, &config.state_dir)?)
}

pub fn store_root(config: &Config) -> PathBuf {
    config.state_dir.join("store")
}

/// Whether a tenant has sessions on disk (without opening the store: no key, no lock needed).
pub fn has_sessions(config: &Config, tenant: &TenantId) -> bool {
    let sessions = store_root(config).join("tenants").join(tenant.as_str()).join("sessions");
    fs::read_dir(sessions).is_ok_and(|mut d| d.next().is_some())
}

impl EncryptedStore {
    /// Opens the store of a config: loads and checks the master key, creates missing tenant
    /// identities, and refuses (changing nothing) on a missing or wrong key or loose permissions.
    pub fn open(config: &Config) -> Result<Self, StoreOpenError> {
        let root = store_root(config);
        let master = config_master(config)?;
        let tenants: Vec<TenantId> = config.tenants.keys().cloned().collect();
        Self::open_at(&root, master, &tenants, StoreOptions::with_cache_bytes(config.store.cache_bytes))
    }

    /// Opens (creating if needed) the store at `root` for `tenants`.
    pub fn open_at(
        root: &Path,
        master: MasterKey,
        tenants: &[TenantId],
        opts: StoreOptions,
    ) -> Result<Self, StoreOpenError> {
        let opts = StoreOptions { records_per_segment: opts.records_per_segment.max(1), ..opts };
        if let Some(parent) = root.parent()
            && !parent.exists()
        {
            fsutil::create_private_dir(parent).map_err(io_err(parent, "cannot create the state directory"))?;
        }
        fsutil::create_private_dir(root).map_err(io_err(root, "cannot create the store directory"))?;
        check_private(root)?;
        let lock_path = root.join("lock");
        let lock = fsutil::lock_exclusive(&lock_path)
            .map_err(io_err(&lock_path, "cannot open the lock file"))?
            .ok_or_else(|| StoreOpenError::Locked { root: root.display().to_string() })?;
        let tenants_dir = root.join("tenants");
        check_marker(root, &master)?;
        fsutil::create_private_dir(&tenants_dir).map_err(io_err(&tenants_dir, "cannot create"))?;
        check_private(&tenants_dir)?;
        recover_tenant_dirs(&tenants_dir).map_err(io_err(&tenants_dir, "cannot finish an interrupted operation"))?;
        recover_master_rotation(&tenants_dir, &master)
            .map_err(io_err(&tenants_dir, "cannot finish an interrupted master-key rotation"))?;

        let mut loaded = HashMap::new();
        // Tenants on disk (configured or not: export and delete must reach removed tenants too).
        let entries = fs::read_dir(&tenants_dir).map_err(io_err(&tenants_dir, "cannot list"))?;
        for entry in entries {
            let entry = entry.map_err(io_err(&tenants_dir, "cannot list"))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let Ok(id) = TenantId::parse(&name) else { continue };
            if id.as_str() != name {
                continue;
            }
            let dir = entry.path();
            check_private(&dir)?;
            let id_path = dir.join("identity.age");
            if !id_path.exists() {
                continue; // handled below if configured
            }
            let bytes = fs::read(&id_path).map_err(io_err(&id_path, "cannot read"))?;
            let keys = TenantKeys::unwrap(&name, &master, &bytes)
                .map_err(|reason| StoreOpenError::Tenant { tenant: name.clone(), reason })?;
            loaded.insert(id, Arc::new(keys));
        }
        for t in tenants {
            if !loaded.contains_key(t) {
                loaded.insert(t.clone(), Arc::new(create_identity(&tenants_dir, &master, t)?));
            }
        }
        let cache = SessionCache::new(opts.max_cached_sessions);
        let packs = PackCache::new(opts.max_indexed_sessions);
        let journals = Arc::new(journal::Journals::new(opts.checkpoint_every));
        let store = Self {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                master,
                opts,
                rng: SystemRandom::new(),
                tenants: RwLock::new(loaded),
                sessions: Mutex::new(cache),
                packs: Mutex::new(packs),
                journals: journals.clone(),
                checkpointer: Mutex::new(None),
                writers: writer::Writers::default(),
                _lock: lock,
            }),
        };
        for t in store.tenants() {
            let keys = store.keys(&t).map_err(|e| StoreOpenError::Tenant { tenant: t.to_string(), reason: e.to_string() })?;
            let j = store.replay_journal(&t, &keys)?;
            journals.insert(t, j);
        }
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || journals.run())
            .map_err(io_err(root, "cannot start the checkpoint thread"))?;
        *store.inner.checkpointer.lock().expect("checkpointer lock") = Some(thread);
        Ok(store)
    }

    /// Checkpoints every tenant's journal now.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.inner.journals.checkpoint_all().map_err(|e| store_io("cannot checkpoint", &self.inner.root, e))
    }

    /// Tests: closes the store as a crash would (no closing checkpoint; the journals keep what
    /// the session files may not).
    #[cfg(test)]
    pub(crate) fn crash(self) {
        self.inner.journals.crash.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Where the master key in use came from (for messages).
    pub fn master_origin(&self) -> &str {
        &self.inner.master.origin
    }

    /// Whether `key` is the master key in use.
    pub fn master_is(&self, key: &MasterKey) -> bool {
        self.inner.master.same_key(key)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Tenants that have an identity in the store.
    pub fn tenants(&self) -> Vec<TenantId> {
        let mut v: Vec<TenantId> = self.inner.tenants.read().expect("tenants lock").keys().cloned().collect();
        v.sort();
        v
    }

    /// Creates the identity of each tenant that has none (tenants added by a config reload), as
    /// opening the store does for configured tenants.
    pub fn add_tenants(&self, tenants: &[TenantId]) -> Result<(), StoreOpenError> {
        let tenants_dir = self.inner.root.join("tenants");
        let mut loaded = self.inner.tenants.write().expect("tenants lock");
        for t in tenants {
            if !loaded.contains_key(t) {
                let keys = create_identity(&tenants_dir, &self.inner.master, t)?;
                let j = self.start_journal(t).map_err(io_err(&self.tenant_dir(t), "cannot list the journal"))?;
                self.inner.journals.insert(t.clone(), j);
                loaded.insert(t.clone(), Arc::new(keys));
            }
        }
        Ok(())
    }

    fn journal_dir(&self, t: &TenantId) -> PathBuf {
        self.tenant_dir(t).join("journal")
    }

    /// A tenant's journal, starting after the newest generation on disk (which must have been
    /// replayed or be empty).
    fn start_journal(&self, t: &TenantId) -> io::Result<journal::Journal> {
        let dir = self.journal_dir(t);
        let next = journal::generations(&dir)?.last().map_or(0, |(i, _)| i + 1);
        Ok(journal::Journal::start(&dir, &self.tenant_dir(t), next))
    }

    fn journal(&self, t: &TenantId) -> Result<Arc<journal::Journal>, StoreError> {
        self.inner
            .journals
            .get(t)
            .ok_or_else(|| StoreError::Io(format!("tenant {:?} has no journal in the store", t.as_str())))
    }

    /// Replays what a tenant's journal holds (appends acknowledged after the last checkpoint,
    /// which a power loss may have taken from the session files), flushes, removes the replayed
    /// generations and starts the journal. Entries are applied only after they authenticate, and
    /// only where the session's files lack them. A generation with a malformed or forged entry
    /// is replayed up to it and kept beside as `<generation>.log.bad` (nothing is lost), with an
    /// error in the log.
    fn replay_journal(&self, t: &TenantId, keys: &TenantKeys) -> Result<journal::Journal, StoreOpenError> {
        let dir = self.journal_dir(t);
        let gens = journal::generations(&dir).map_err(io_err(&dir, "cannot list the journal"))?;
        let mut applied = 0usize;
        for (_, path) in &gens {
            let bytes = fs::read(path).map_err(io_err(path, "cannot read the journal"))?;
            let parsed = journal::parse(&bytes);
            let mut problem = parsed.problem;
            for e in &parsed.entries {
                match self.replay_entry(t, keys, e) {
                    Ok(n) => applied += n,
                    Err(StoreError::Integrity(why)) => {
                        problem = Some(why);
                        break;
                    }
                    Err(e) => return Err(StoreOpenError::Tenant { tenant: t.to_string(), reason: e.to_string() }),
                }
            }
            if let Some(why) = problem {
                tracing::error!(tenant = %t, journal = %path.display(), problem = %why, "A journal generation does not verify; it was replayed up to the problem and kept as .bad.");
                let bad = path.with_extension("log.bad");
                fs::rename(path, &bad).map_err(io_err(path, "cannot set aside"))?;
            }
        }
        if applied > 0 {
            tracing::warn!(tenant = %t, records = applied, "Replayed acknowledged records the session files had lost (a crash before the last checkpoint).");
        }
        let root = self.tenant_dir(t);
        if !gens.is_empty() {
            fsutil::sync_fs(&root).map_err(io_err(&root, "cannot flush"))?;
            for (_, path) in &gens {
                fsutil::remove_file_if_exists(path).map_err(io_err(path, "cannot remove"))?;
            }
        }
        let next = gens.last().map_or(0, |(i, _)| i + 1);
        Ok(journal::Journal::start(&dir, &root, next))
    }

    /// Applies one journal entry where the session's files lack it; returns the records added.
    fn replay_entry(&self, t: &TenantId, keys: &TenantKeys, e: &journal::Entry) -> Result<usize, StoreError> {
        let sid = e.sid.as_str();
        let dir = self.session_dir(t, sid);
        // The metadata of a session the entry creates (written with segment 0's records).
        let mut new_meta = None;
        let (meta, layout) = match self.read_meta(t, keys, sid) {
            Ok(Some(found)) => found,
            on_disk => {
                let Some(bytes) = &e.meta else {
                    // The session's metadata is neither on disk nor in this entry: a deleted
                    // session (settled before deletion, so this cannot be acknowledged data) or a
                    // forged entry.
                    return match on_disk {
                        Err(e) => Err(e),
                        _ => Err(integrity(t, sid, "the journal holds records of a session that has no metadata")),
                    };
                };
                let meta = open_meta(keys, t, sid, bytes)?;
                new_meta = Some(bytes.as_slice());
                (meta, Layout::Pack)
            }
        };
        let frames = format::frames_in(&e.frames).map_err(|why| integrity(t, sid, &format!("journal entry: {why}")))?;
        for (j, f) in frames.iter().enumerate() {
            open_record(&meta.data, t, sid, e.first_seq + j as u64, f)?;
        }
        let per = self.inner.opts.records_per_segment;
        let frame_bytes = |f: &format::RawFrame<'_>| &e.frames[f.offset..f.offset + 4 + crate::crypto::NONCE_LEN + f.body.len()];
        let mut added = 0;
        if layout == Layout::Pack {
            // Segment 0: the records its pack lacks, as one entry.
            let have = if new_meta.is_some() { 0 } else { self.pack_count(t, sid)? };
            let mut packed = Vec::new();
            let mut records = 0u32;
            for (j, f) in frames.iter().enumerate() {
                let seq = e.first_seq + j as u64;
                if seq >= per {
                    break;
                }
                if seq < have {
                    continue;
                }
                if seq > have + u64::from(records) {
                    let why = format!("its pack lacks records before {seq}, which the journal does not hold");
                    return Err(integrity(t, sid, &why));
                }
                packed.extend_from_slice(frame_bytes(f));
                records += 1;
            }
            if new_meta.is_some() || records > 0 {
                let entry = journal::encode(sid, new_meta, have, &packed);
                self.with_pack(t, sid, |p| {
                    if let Some(why) = p.problem() {
                        return Err(StoreError::Integrity(why.to_string()));
                    }
                    p.append(sid, &entry, have, records, new_meta.is_some())
                        .map(|_| ())
                        .map_err(|e| store_io("cannot append to", p.path(), e))
                })?;
                added += records as usize;
            }
        }
        // The segment last read and how many records it holds (read once per segment, not per record).
        let mut counted: Option<(u64, u64)> = None;
        for (j, f) in frames.iter().enumerate() {
            let seq = e.first_seq + j as u64;
            let (index, pos) = (seq / per, seq % per);
            if layout == Layout::Pack && index == 0 {
                continue; // done above
            }
            let path = self.segment_path(t, sid, layout, index);
            let have = match counted {
                Some((i, n)) if i == index => n,
                _ => Self::count_records(t, sid, layout, index, &path)?,
            };
            counted = Some((index, have));
            if have > pos {
                continue; // already there
            }
            if have < pos {
                let why = format!("segment {index} lacks records before {seq}, which the journal does not hold");
                return Err(integrity(t, sid, &why));
            }
            if index > 0 && !dir.is_dir() {
                fsutil::create_private_dir(&dir).map_err(|e| store_io("cannot create", &dir, e))?;
            }
            let (mut file, _) = open_segment(&path)?;
            file.write_all(frame_bytes(f)).map_err(|e| store_io("cannot append to", &path, e))?;
            counted = Some((index, have + 1));
            added += 1;
        }
        Ok(added)
    }

    /// How many records segment `index` of a session holds (a torn tail cut first); 0 when the
    /// segment does not exist.
    fn count_records(t: &TenantId, sid: &str, layout: Layout, index: u64, path: &Path) -> Result<u64, StoreError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(store_io("cannot read", path, e)),
        };
        let found =
            Self::segment_frames(layout, index, &bytes).map_err(|why| integrity(t, sid, &format!("segment {index}: {why}")))?;
        if let Some(at) = found.torn_at {
            cut_torn_tail(path, at)?;
        }
        Ok(found.frames.len() as u64)
    }

    fn tenant_dir(&self, t: &TenantId) -> PathBuf {
        self.inner.root.join("tenants").join(t.as_str())
    }

    fn keys(&self, t: &TenantId) -> Result<Arc<TenantKeys>, StoreError> {
        self.inner
            .tenants
            .read()
            .expect("tenants lock")
            .get(t)
            .cloned()
            .ok_or_else(|| StoreError::Io(format!("tenant {:?} has no identity in the store", t.as_str())))
    }

    fn slot(&self, t: &TenantId, sid: &str) -> SessionSlot {
        self.inner.sessions.lock().expect("sessions lock").slot((t.clone(), sid.to_string()))
    }

    fn session_dir(&self, t: &TenantId, sid: &str) -> PathBuf {
        self.tenant_dir(t).join("sessions").join(sid)
    }

    fn seg_path(dir: &Path, index: u64) -> PathBuf {
        dir.join(format!("{index:08}.seg"))
    }

    /// A session's file (format 2): its metadata and segment 0.
    fn session_file(&self, t: &TenantId, sid: &str) -> PathBuf {
        self.tenant_dir(t).join("sessions").join(format!("{sid}.ses"))
    }

    /// The pack that holds a session (format 3).
    fn pack_path(&self, t: &TenantId, sid: &str) -> PathBuf {
        self.tenant_dir(t).join("sessions").join(pack::pack_name(pack::pack_of(sid)))
    }

    fn pack_at(&self, t: &TenantId, index: u8) -> PackSlot {
        let dir = self.tenant_dir(t).join("sessions");
        self.inner.packs.lock().expect("packs lock").slot(t, index, &dir)
    }

    /// Runs `f` on the pack of `sid`, loaded and locked.
    fn with_pack<R>(
        &self,
        t: &TenantId,
        sid: &str,
        f: impl FnOnce(&mut pack::Pack) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.with_pack_at(t, pack::pack_of(sid), f)
    }

    /// Runs `f` on pack `index` of a tenant, loaded and locked.
    fn with_pack_at<R>(
        &self,
        t: &TenantId,
        index: u8,
        f: impl FnOnce(&mut pack::Pack) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let slot = self.pack_at(t, index);
        let mut p = slot.lock().expect("pack lock");
        p.load().map_err(|e| store_io("cannot read", p.path(), e))?;
        f(&mut p)
    }

    /// The metadata of a pack session; `None` when its pack does not hold it. A damaged pack is
    /// an integrity error for every session it may hold (fail closed).
    fn pack_meta(&self, t: &TenantId, keys: &TenantKeys, sid: &str) -> Result<Option<OpenMeta>, StoreError> {
        self.with_pack(t, sid, |p| {
            if let Some(why) = p.problem() {
                return Err(StoreError::Integrity(why.to_string()));
            }
            let Some(first) = p.chunks(sid).first().copied() else { return Ok(None) };
            if !first.meta {
                return Err(integrity(t, sid, "its pack holds records of it but not its metadata"));
            }
            let bytes = p.read(&first).map_err(|e| store_io("cannot read", p.path(), e))?;
            let body = journal::parse_body(&bytes[4..]).map_err(|why| integrity(t, sid, why))?;
            let meta = body.meta.ok_or_else(|| integrity(t, sid, "its pack entry lost its metadata"))?;
            if !meta.starts_with(META_MAGIC) {
                return Err(integrity(t, sid, "its metadata in the pack is not sealed with the tenant's meta key"));
            }
            open_meta(keys, t, sid, meta).map(Some)
        })
    }

    /// Reads segment 0 of a pack session: its records from `from_seq` on are pushed to `out`.
    /// Returns how many records the segment holds (up to the first problem) and the problem: a
    /// missing or repeated entry, or a record that does not authenticate.
    fn pack_records(
        &self,
        t: &TenantId,
        sid: &str,
        meta: &OpenMeta,
        from_seq: u64,
        out: &mut Vec<Record>,
    ) -> Result<(u64, Option<String>), StoreError> {
        self.with_pack(t, sid, |p| {
            let p = &*p;
            if let Some(why) = p.problem() {
                return Ok((0, Some(why.to_string())));
            }
            let mut next = 0u64;
            for c in p.chunks(sid) {
                if c.first_seq != next {
                    let why = format!("its pack holds records from {} where {next} was next (missing or spliced)", c.first_seq);
                    return Ok((next, Some(integrity_text(t, sid, &why))));
                }
                if c.first_seq + u64::from(c.records) <= from_seq {
                    next += u64::from(c.records);
                    continue;
                }
                let bytes = p.read(c).map_err(|e| store_io("cannot read", p.path(), e))?;
                let frames =
                    journal::parse_body(&bytes[4..]).map_err(String::from).and_then(|b| format::frames_in(b.frames));
                let frames = match frames {
                    Ok(f) => f,
                    Err(why) => return Ok((next, Some(integrity_text(t, sid, &format!("its pack entry at byte {}: {why}", c.at))))),
                };
                for (j, f) in frames.iter().enumerate() {
                    let seq = c.first_seq + j as u64;
                    match open_record(&meta.data, t, sid, seq, f) {
                        Ok(r) if seq >= from_seq => out.push(r),
                        Ok(_) => {}
                        Err(StoreError::Integrity(why)) => return Ok((seq, Some(why))),
                        Err(e) => return Err(e),
                    }
                }
                next += frames.len() as u64;
            }
            Ok((next, None))
        })
    }

    /// How many records segment 0 of a pack session holds, by its index (not authenticated).
    fn pack_count(&self, t: &TenantId, sid: &str) -> Result<u64, StoreError> {
        self.with_pack(t, sid, |p| match p.problem() {
            Some(why) => Err(StoreError::Integrity(why.to_string())),
            None => Ok(p.chunks(sid).iter().map(|c| u64::from(c.records)).sum()),
        })
    }

    /// Whether a session exists on disk in any format (a damaged pack counts: opening the
    /// session then reports it).
    fn sid_exists(&self, t: &TenantId, sid: &str) -> Result<bool, StoreError> {
        let packed = self.with_pack(t, sid, |p| Ok(p.problem().is_some() || !p.chunks(sid).is_empty()))?;
        Ok(packed || self.session_file(t, sid).exists() || self.session_dir(t, sid).exists())
    }

    /// Where segment `index` of a session lives.
    fn segment_path(&self, t: &TenantId, sid: &str, layout: Layout, index: u64) -> PathBuf {
        match layout {
            Layout::Pack if index == 0 => self.pack_path(t, sid),
            Layout::File { .. } if index == 0 => self.session_file(t, sid),
            _ => Self::seg_path(&self.session_dir(t, sid), index),
        }
    }

    /// A session's segment indexes, in order.
    fn segments(&self, t: &TenantId, sid: &str, layout: Layout) -> Result<Vec<u64>, StoreError> {
        let mut segs = list_segments(&self.session_dir(t, sid))?;
        if matches!(layout, Layout::File { .. } | Layout::Pack) {
            // Segment 0 is the session file or its pack (a `00000000.seg` beside it is not the
            // session's).
            segs.retain(|&i| i != 0);
            segs.insert(0, 0);
        }
        Ok(segs)
    }

    /// Splits a segment of a session into frames.
    fn segment_frames<'a>(layout: Layout, index: u64, bytes: &'a [u8]) -> Result<format::Frames<'a>, String> {
        match layout {
            Layout::File { header } if index == 0 => format::split_session_frames(bytes, header),
            _ => split_frames(bytes),
        }
    }

    /// Reads and verifies the metadata of session `sid` (its session file's header, or a format-1
    /// `meta.age`), and how the session lies on disk.
    fn read_meta(&self, t: &TenantId, keys: &TenantKeys, sid: &str) -> Result<Option<(OpenMeta, Layout)>, StoreError> {
        if let Some(meta) = self.pack_meta(t, keys, sid)? {
            return Ok(Some((meta, Layout::Pack)));
        }
        let file = self.session_file(t, sid);
        match fs::read(&file) {
            Ok(bytes) => {
                let header = format::session_header(&bytes).map_err(|why| integrity(t, sid, &why))?;
                // Empty: a creation a crash interrupted before it was acknowledged.
                let Some((meta, header)) = header else { return Ok(None) };
                if !meta.starts_with(META_MAGIC) {
                    return Err(integrity(t, sid, "the session file's metadata is not sealed with the tenant's meta key"));
                }
                return open_meta(keys, t, sid, meta).map(|m| Some((m, Layout::File { header })));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(store_io("cannot read", &file, e)),
        }
        let path = self.session_dir(t, sid).join("meta.age");
        let bytes = match fs::read(&path) {
            // Empty: created by an append a crash interrupted before it was acknowledged (its
            // bytes never reached the disk), so no session.
            Ok(b) if b.is_empty() => return Ok(None),
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(store_io("cannot read", &path, e)),
        };
        open_meta(keys, t, sid, &bytes).map(|m| Some((m, Layout::Dir)))
    }

    /// Creates a session's metadata (a new data key, sealed). Nothing is written here: the
    /// session's first entry in its pack carries the sealed metadata (returned), and its journal
    /// entry the same bytes.
    fn create_session(
        &self,
        t: &TenantId,
        keys: &TenantKeys,
        sid: &str,
        key: &str,
    ) -> Result<(OpenMeta, Vec<u8>), StoreError> {
        let dk: [u8; 32] = random(&self.inner.rng).map_err(StoreError::Io)?;
        let created_ms = now_ms();
        let meta = make_meta(keys, t.as_str(), sid, key, created_ms, &dk)?;
        // Whatever a creation that crashed before it was acknowledged left in an older format (an
        // empty session file, a directory without `meta.age`, segments of another data key):
        // nothing in it was acknowledged, and none of its records would open under the new key.
        let path = self.session_file(t, sid);
        fsutil::remove_file_if_exists(&path).map_err(|e| store_io("cannot remove", &path, e))?;
        let dir = self.session_dir(t, sid);
        fsutil::remove_dir_all_if_exists(&dir).map_err(|e| store_io("cannot remove", &dir, e))?;
        let sessions = path.parent().expect("sessions dir");
        if !sessions.is_dir() {
            fsutil::create_private_dir(sessions).map_err(|e| store_io("cannot create", sessions, e))?;
        }
        let open = OpenMeta { key: key.to_string(), created_ms, data: RecordKey::new(&dk) };
        Ok((open, meta))
    }

    /// Loads a session's state for appending: meta, and the last segment verified (a torn tail is
    /// cut off with a warning; it was never acknowledged).
    fn load(&self, t: &TenantId, keys: &TenantKeys, sid: &str, st: &mut SessionState) -> Result<(), StoreError> {
        if st.loaded {
            return Ok(());
        }
        *st = SessionState::empty();
        let Some((meta, layout)) = self.read_meta(t, keys, sid)? else {
            st.loaded = true;
            return Ok(());
        };
        let segs = self.segments(t, sid, layout)?;
        let per = self.inner.opts.records_per_segment;
        let mut updated = meta.created_ms;
        let mut next = 0;
        if layout == Layout::Pack && segs.last() == Some(&0) {
            let mut records = Vec::new();
            let (count, problem) = self.pack_records(t, sid, &meta, 0, &mut records)?;
            if let Some(why) = problem {
                return Err(StoreError::Integrity(why));
            }
            if count > per {
                return Err(integrity(t, sid, "segment 0 holds too many records"));
            }
            if let Some(r) = records.last() {
                updated = r.ts;
            }
            next = count;
        } else if let Some(&last) = segs.last() {
            let path = self.segment_path(t, sid, layout, last);
            let bytes = fs::read(&path).map_err(|e| store_io("cannot read", &path, e))?;
            let frames = Self::segment_frames(layout, last, &bytes)
                .map_err(|e| integrity(t, sid, &format!("segment {last}: {e}")))?;
            if frames.frames.len() as u64 > per {
                return Err(integrity(t, sid, &format!("segment {last} holds too many records")));
            }
            for (j, f) in frames.frames.iter().enumerate() {
                let seq = last * per + j as u64;
                let rec = open_record(&meta.data, t, sid, seq, f)?;
                updated = rec.ts;
            }
            next = last * per + frames.frames.len() as u64;
            if let Some(at) = frames.torn_at {
                tracing::warn!(tenant = %t, session = sid, segment = last, "Skipped a torn write at the end of a session (an unacknowledged append); cutting it off.");
                cut_torn_tail(&path, at)?;
            }
        }
        st.meta = Some(meta);
        st.layout = layout;
        st.next_seq = next;
        st.updated_ms = updated;
        st.loaded = true;
        Ok(())
    }

    /// One append, on the calling thread (tests; the gateway's appends go through the writer).
    #[cfg(test)]
    fn append_blocking(&self, t: &TenantId, key: &SessionKey, messages: &[Message]) -> Result<(), StoreError> {
        self.append_batch(t, &[(key, messages)]).pop().expect("one result per append")
    }

    /// Appends to several sessions of one tenant, made durable by one `fdatasync`: what arrived
    /// at the tenant's writer thread while it was busy (`writer.rs`). Returns each append's
    /// result, in order; appends to one session are applied in order.
    fn append_batch(&self, t: &TenantId, items: &[(&SessionKey, &[Message])]) -> Vec<Result<(), StoreError>> {
        let keys = match self.keys(t) {
            Ok(k) => k,
            Err(e) => return items.iter().map(|_| Err(dup_error(&e))).collect(),
        };
        let texts: Vec<String> = items.iter().map(|(k, _)| k.to_string()).collect();
        let sids: Vec<String> = texts.iter().map(|k| keys.session_id(k)).collect();
        let mut out = Vec::with_capacity(items.len());
        let mut start = 0;
        while start < items.len() {
            // A run of distinct sessions (each session's lock is taken once per run).
            let mut seen = std::collections::HashSet::new();
            let end = (start..items.len()).find(|&i| !seen.insert(sids[i].as_str())).unwrap_or(items.len());
            let messages: Vec<&[Message]> = items[start..end].iter().map(|(_, m)| *m).collect();
            out.extend(self.append_run(t, &keys, &sids[start..end], &texts[start..end], &messages));
            start = end;
        }
        out
    }

    /// Appends to distinct sessions, all staged under their locks, then one sync of the journal
    /// (two if a checkpoint started a generation meanwhile), then each acknowledged or undone.
    /// The run commits or fails as a whole.
    fn append_run(
        &self,
        t: &TenantId,
        keys: &TenantKeys,
        sids: &[String],
        texts: &[String],
        messages: &[&[Message]],
    ) -> Vec<Result<(), StoreError>> {
        let n = sids.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| sids[a].cmp(&sids[b]));
        // Sessions locked in id order, as `delete_sids` locks them, so the two never deadlock.
        let slots: Vec<SessionSlot> = order.iter().map(|&i| self.slot(t, &sids[i])).collect();
        let mut pack_indexes: Vec<u8> = sids.iter().map(|s| pack::pack_of(s)).collect();
        pack_indexes.sort_unstable();
        pack_indexes.dedup();
        let pack_slots: Vec<(u8, PackSlot)> = pack_indexes.into_iter().map(|i| (i, self.pack_at(t, i))).collect();
        let mut states: Vec<_> = slots.iter().map(|s| s.lock().expect("session lock")).collect();
        let mut at = vec![0; n];
        for (held, &i) in order.iter().enumerate() {
            at[i] = held;
        }
        // Every session loaded before any pack is held (loading reads its pack).
        let mut staged: Vec<Option<Result<Staged, StoreError>>> = (0..n)
            .map(|i| {
                let st = &mut states[at[i]];
                self.load(t, keys, &sids[i], st).err().map(|e| {
                    st.loaded = false;
                    Err(e)
                })
            })
            .collect();
        let mut packs = Packs::new(&pack_slots);
        for i in 0..n {
            if staged[i].is_none() {
                let st = &mut states[at[i]];
                let r = self.stage(t, keys, &sids[i], &texts[i], messages[i], st, &mut packs);
                if r.is_err() {
                    st.loaded = false;
                    st.tail = None;
                }
                staged[i] = Some(r);
            }
        }
        // Each generation written to synced once, in the order written (two when a checkpoint
        // started one meanwhile). Once one fails, every later one counts as failed too: its
        // entries lie after the failed ones in the packs, and are undone with them.
        let mut syncs: Vec<(&journal::Written, SyncResult)> = Vec::new();
        for w in staged.iter().flatten().filter_map(|r| r.as_ref().ok()).filter_map(|s| s.written.as_ref()) {
            if syncs.iter().any(|(d, _)| d.same(w)) {
                continue;
            }
            let r = match syncs.iter().find(|(_, r)| r.is_err()) {
                Some((_, failed)) => failed.clone(),
                None => w.sync().map_err(|e| (e.kind(), e.to_string())),
            };
            syncs.push((w, r));
        }
        let failed = syncs.iter().any(|(_, r)| r.is_err());
        let synced: Vec<SyncResult> = staged
            .iter()
            .map(|r| match r.as_ref().and_then(|r| r.as_ref().ok()).and_then(|s| s.written.as_ref()) {
                Some(w) => syncs.iter().find(|(d, _)| d.same(w)).map_or(Ok(()), |(_, r)| r.clone()),
                None => Ok(()),
            })
            .collect();
        drop(syncs);
        // Undone newest first: an entry taken out of a pack is the last one in it.
        let mut out: Vec<Result<(), StoreError>> = (0..n).map(|_| Ok(())).collect();
        for i in (0..n).rev() {
            let st = &mut states[at[i]];
            out[i] = match staged[i].take().expect("every append staged or failed") {
                Err(e) => Err(e),
                Ok(s) => self.finish(t, &sids[i], st, &mut packs, s, messages[i], synced[i].clone()),
            };
        }
        if failed && let Ok(journal) = self.journal(t) {
            // The failed entries are still in the journal, and may reach the disk with a later
            // fsync: no append is acknowledged until a checkpoint has flushed the undone files
            // and removed those generations (a replay would put a failed entry where an
            // acknowledged one belongs).
            journal.sync_failed();
        }
        out
    }

    /// Writes an append (sealed records, the metadata of a session it creates) to the session's
    /// files and to the tenant's journal, without waiting for either to be durable. The session
    /// is loaded and locked, and so are the packs in `packs` once used, until `finish`.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &self,
        t: &TenantId,
        keys: &TenantKeys,
        sid: &str,
        key_text: &str,
        messages: &[Message],
        st: &mut SessionState,
        packs: &mut Packs<'_>,
    ) -> Result<Staged, StoreError> {
        let dir = self.session_dir(t, sid);
        // The sealed meta of a session this append creates (it goes into the journal entry too).
        let mut new_meta = None;
        if st.meta.is_none() {
            let (meta, sealed) = self.create_session(t, keys, sid, key_text)?;
            st.meta = Some(meta);
            st.layout = Layout::Pack;
            st.tail = None;
            st.updated_ms = now_ms();
            new_meta = Some(sealed);
        }
        let per = self.inner.opts.records_per_segment;
        let ts = now_ms();
        let first_seq = st.next_seq;
        let mut frames: Vec<u8> = Vec::new();
        // The frames that go to the session's pack (segment 0 of a format-3 session).
        let mut packed: Vec<u8> = Vec::new();
        let mut packed_records = 0u32;
        // Each segment this append writes to, with its length before (to undo a failed append;
        // `None`: created by it).
        let mut undo: Vec<(PathBuf, Option<u64>)> = Vec::new();
        let mut seq = first_seq;
        let written = (|| {
            let mut pending: Vec<u8> = Vec::new();
            for m in messages {
                let rec = Record { v: format::RECORD_VERSION, ts, msg: RecordMessage::from(m) };
                let pt =
                    serde_json::to_vec(&rec).map_err(|e| StoreError::Io(format!("cannot encode a record: {e}")))?;
                let meta = st.meta.as_ref().expect("meta set above");
                let frame =
                    meta.data.seal_frame(&self.inner.rng, t.as_str(), sid, seq, &pt).map_err(StoreError::Io)?;
                frames.extend_from_slice(&frame);
                let seg = seq / per;
                seq += 1;
                if st.layout == Layout::Pack && seg == 0 {
                    packed.extend_from_slice(&frame);
                    packed_records += 1;
                    continue;
                }
                let path = self.segment_path(t, sid, st.layout, seg);
                if st.tail.as_ref().is_none_or(|(i, _)| *i != seg) {
                    flush(st, &mut pending, &path)?;
                    if seg > 0 && matches!(st.layout, Layout::File { .. } | Layout::Pack) {
                        // The session's first segment past its file or pack: its directory.
                        match fs::DirBuilder::new().mode(0o700).create(&dir) {
                            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                                return Err(store_io("cannot create", &dir, e));
                            }
                            _ => {}
                        }
                    }
                    let (file, created) = open_segment(&path)?;
                    if created {
                        undo.push((path.clone(), None));
                    }
                    st.tail = Some((seg, file));
                }
                if undo.last().is_none_or(|(p, _)| *p != path) {
                    let (_, f) = st.tail.as_ref().expect("tail set above");
                    let len = f.metadata().map_err(|e| store_io("cannot stat", &path, e))?.len();
                    undo.push((path.clone(), Some(len)));
                }
                pending.extend_from_slice(&frame);
                if seq.is_multiple_of(per) {
                    flush(st, &mut pending, &path)?;
                }
            }
            let path = self.segment_path(t, sid, st.layout, seq.saturating_sub(1) / per);
            flush(st, &mut pending, &path)
        })();
        let mut staged = Staged { written: None, pack_undo: None, segment_undo: undo, next_seq: seq, ts };
        let journaled = written.and_then(|()| {
            if new_meta.is_none() && frames.is_empty() {
                return Ok(None);
            }
            let entry = journal::encode(sid, new_meta.as_deref(), first_seq, &frames);
            if st.layout == Layout::Pack && (new_meta.is_some() || packed_records > 0) {
                // Segment 0 of a pack session: its entry in the pack, which stays locked until
                // the journal has committed (so a failed commit can take the entry back out).
                let index = pack::pack_of(sid);
                let p = packs.get(index)?;
                // The pack gets the journal's very entry unless the append ran past segment 0.
                let spilled = (packed.len() < frames.len())
                    .then(|| journal::encode(sid, new_meta.as_deref(), first_seq, &packed));
                let before = p
                    .append(sid, spilled.as_deref().unwrap_or(&entry), first_seq, packed_records, new_meta.is_some())
                    .map_err(|e| store_io("cannot append to", p.path(), e))?;
                staged.pack_undo = Some((index, before));
            }
            let journal = self.journal(t)?;
            journal.write(sid, &entry).map(Some).map_err(|e| store_io("cannot commit to the journal of", &dir, e))
        });
        match journaled {
            Ok(written) => {
                staged.written = written;
                Ok(staged)
            }
            Err(e) => {
                self.undo(sid, packs, staged);
                Err(e)
            }
        }
    }

    /// Acknowledges a staged append once its journal generation is durable (`synced`), or takes
    /// it back out of the session's files: nothing of it was acknowledged.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        t: &TenantId,
        sid: &str,
        st: &mut SessionState,
        packs: &mut Packs<'_>,
        staged: Staged,
        messages: &[Message],
        synced: SyncResult,
    ) -> Result<(), StoreError> {
        // An append with nothing to commit (no records, an existing session) cannot fail.
        let synced = if staged.written.is_none() { Ok(()) } else { synced };
        match synced {
            Ok(()) => {
                st.next_seq = staged.next_seq;
                st.updated_ms = staged.ts;
                st.recent.push(messages);
                Ok(())
            }
            Err((kind, why)) => {
                self.undo(sid, packs, staged);
                st.loaded = false;
                st.tail = None;
                let dir = self.session_dir(t, sid);
                Err(store_io("cannot commit to the journal of", &dir, io::Error::new(kind, why)))
            }
        }
    }

    /// Takes a staged append back out of its pack and segments (the caller reloads the session,
    /// so a later read does not show it).
    fn undo(&self, sid: &str, packs: &mut Packs<'_>, staged: Staged) {
        if let Some((index, before)) = staged.pack_undo
            && let Ok(p) = packs.get(index)
        {
            p.undo(sid, before);
        }
        for (path, len) in staged.segment_undo {
            // A segment this append created goes (a later load would count it as a full segment
            // before it); one it added to is cut back.
            let _ = match len {
                None => fs::remove_file(&path),
                Some(len) => OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(len)),
            };
        }
    }

    /// Reads a session. `strict`: stop at the first problem and return it as an error; otherwise
    /// return the readable prefix and the problems. `from_seq` skips segments wholly before it.
    fn read_session(
        &self,
        t: &TenantId,
        sid: &str,
        meta: &OpenMeta,
        layout: Layout,
        from_seq: u64,
    ) -> Result<SessionRead, StoreError> {
        let per = self.inner.opts.records_per_segment;
        let segs = self.segments(t, sid, layout)?;
        let mut out = SessionRead {
            key: meta.key.clone(),
            created_ms: meta.created_ms,
            records: Vec::new(),
            problems: Vec::new(),
            torn_tail: false,
        };
        'segments: for (i, &index) in segs.iter().enumerate() {
            if index != i as u64 {
                out.problems.push(format!("segment {i} is missing (deleted or renamed)"));
                break;
            }
            if (index + 1) * per <= from_seq {
                continue;
            }
            let last = i + 1 == segs.len();
            if layout == Layout::Pack && index == 0 {
                let (count, problem) = self.pack_records(t, sid, meta, from_seq, &mut out.records)?;
                if let Some(why) = problem {
                    out.problems.push(why);
                } else if count > per || (!last && count < per) {
                    out.problems.push("segment 0 has the wrong number of records (truncated or spliced)".into());
                }
                if !out.problems.is_empty() {
                    break;
                }
                continue;
            }
            let path = self.segment_path(t, sid, layout, index);
            let bytes = fs::read(&path).map_err(|e| store_io("cannot read", &path, e))?;
            let frames = match Self::segment_frames(layout, index, &bytes) {
                Ok(f) => f,
                Err(e) => {
                    out.problems.push(format!("segment {index}: {e}"));
                    break;
                }
            };
            if frames.torn_at.is_some() {
                if last {
                    out.torn_tail = true;
                } else {
                    out.problems.push(format!("segment {index} is truncated"));
                }
            }
            let count = frames.frames.len() as u64;
            if (count > per || (!last && count < per)) && out.problems.is_empty() {
                {
                    out.problems
                        .push(format!("segment {index} has the wrong number of records (truncated or spliced)"));
                }
            }
            for (j, f) in frames.frames.iter().enumerate() {
                let seq = index * per + j as u64;
                match open_record(&meta.data, t, sid, seq, f) {
                    Ok(r) => {
                        if seq >= from_seq {
                            out.records.push(r)
                        }
                    }
                    Err(StoreError::Integrity(e)) => {
                        out.problems.push(e);
                        break 'segments;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !out.problems.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    /// Opens a session for reading (through its cached state); `None` when it does not exist.
    fn with_session<R>(
        &self,
        t: &TenantId,
        key_text: &str,
        f: impl FnOnce(&Self, &TenantKeys, &str, &SessionState) -> Result<R, StoreError>,
    ) -> Result<Option<R>, StoreError> {
        let keys = self.keys(t)?;
        let sid = keys.session_id(key_text);
        if !self.sid_exists(t, &sid)? {
            return Ok(None);
        }
        self.with_sid(t, &keys, &sid, f)
    }

    fn with_sid<R>(
        &self,
        t: &TenantId,
        keys: &TenantKeys,
        sid: &str,
        f: impl FnOnce(&Self, &TenantKeys, &str, &SessionState) -> Result<R, StoreError>,
    ) -> Result<Option<R>, StoreError> {
        let slot = self.slot(t, sid);
        let mut st = slot.lock().expect("session lock");
        if let Err(e) = self.load(t, keys, sid, &mut st) {
            st.loaded = false;
            return Err(e);
        }
        if st.meta.is_none() {
            return Ok(None);
        }
        f(self, keys, sid, &st).map(Some)
    }

    fn history_blocking(
        &self,
        t: &TenantId,
        key: &SessionKey,
        limit: Option<usize>,
    ) -> Result<Vec<Message>, StoreError> {
        let read = self.with_session(t, &key.to_string(), |s, _, sid, st| {
            let from = limit.map_or(0, |l| st.next_seq.saturating_sub(l as u64));
            let meta = st.meta.as_ref().expect("checked");
            s.read_session(t, sid, meta, st.layout, from)
        })?;
        let Some(read) = read else { return Ok(Vec::new()) };
        if let Some(p) = read.problems.first() {
            return Err(StoreError::Integrity(p.clone()));
        }
        let skip = limit.map_or(0, |l| read.records.len().saturating_sub(l));
        Ok(read.records.into_iter().skip(skip).map(|r| Message::from(r.msg)).collect())
    }

    /// A loaded session's last messages from memory (`Recent`), when it keeps them all and its
    /// lock is free; `None`: read it from disk.
    fn recent_history(&self, t: &TenantId, key: &SessionKey, limit: Option<usize>) -> Option<Vec<Message>> {
        let keys = self.keys(t).ok()?;
        let sid = keys.session_id(&key.to_string());
        // Never waits on a tokio worker: a lock someone holds sends the read to disk.
        let slot = self.inner.sessions.try_lock().ok()?.slot((t.clone(), sid));
        let st = slot.try_lock().ok()?;
        if !st.loaded || st.meta.is_none() {
            return None;
        }
        st.recent.last(limit, st.next_seq)
    }

    /// Every session of a tenant, read leniently (for export and rotation).
    pub fn read_tenant(&self, t: &TenantId) -> Result<Vec<SessionRead>, StoreError> {
        let keys = self.keys(t)?;
        let mut out = Vec::new();
        for sid in self.session_ids(t)? {
            // Hold the session lock so no append interleaves with the read.
            let slot = self.slot(t, &sid);
            let _guard = slot.lock().expect("session lock");
            let r = self.read_meta(t, &keys, &sid).and_then(|meta| match meta {
                Some((meta, layout)) => self.read_session(t, &sid, &meta, layout, 0).map(Some),
                None => Ok(None),
            });
            match r {
                Ok(Some(read)) => out.push(read),
                Ok(None) => {}
                Err(StoreError::Integrity(e)) => out.push(SessionRead::unreadable(e)),
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn session_ids(&self, t: &TenantId) -> Result<Vec<String>, StoreError> {
        let dir = self.tenant_dir(t).join("sessions");
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(store_io("cannot list", &dir, e)),
        };
        let mut packs = Vec::new();
        for e in entries {
            let e = e.map_err(|e| store_io("cannot list", &dir, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(index) = name.strip_suffix(".pack").filter(|h| h.len() == 2).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                packs.push(index);
                continue;
            }
            // A session file (`<sid>.ses`), a directory (`<sid>`), or both.
            let sid = name.strip_suffix(".ses").unwrap_or(&name);
            if sid.len() == 32 && sid.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push(sid.to_string());
            }
        }
        for index in packs {
            self.with_pack_at(t, index, |p| {
                if let Some(why) = p.problem() {
                    tracing::error!(tenant = %t, problem = %why, "A session pack is damaged: the sessions it holds do not open.");
                }
                out.extend(p.sids().cloned());
                Ok(())
            })?;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn list_blocking(&self, t: &TenantId) -> Result<Vec<SessionSummary>, StoreError> {
        let keys = self.keys(t)?;
        let mut out = Vec::new();
        for sid in self.session_ids(t)? {
            let r = self.with_sid(t, &keys, &sid, |_, _, _, st| {
                let meta = st.meta.as_ref().expect("checked");
                Ok((meta.key.clone(), st.next_seq, st.updated_ms))
            });
            match r {
                Ok(Some((key, n, updated))) => match SessionKey::parse(&key) {
                    Ok(key) => out.push(SessionSummary {
                        key,
                        messages: n as usize,
                        updated: UNIX_EPOCH + Duration::from_millis(updated),
                    }),
                    Err(_) => tracing::warn!(tenant = %t, session = %sid, "Skipped a session with an invalid key."),
                },
                Ok(None) => {}
                Err(e) => tracing::warn!(tenant = %t, session = %sid, error = %e, "Skipped an unreadable session."),
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes sessions of a tenant; returns how many existed. Those sharing a pack are taken
    /// out of it by one rewrite (retention deletes many at once). With `idle_before`, a session
    /// whose last message is not older than it (an append came meanwhile) is kept.
    fn delete_sids(&self, t: &TenantId, sids: &[String], idle_before: Option<u64>) -> Result<usize, StoreError> {
        let keys = self.keys(t)?;
        let mut by_pack: BTreeMap<u8, Vec<&str>> = BTreeMap::new();
        for sid in sids {
            by_pack.entry(pack::pack_of(sid)).or_default().push(sid);
        }
        let mut existed = 0;
        for (_, mut group) in by_pack {
            group.sort_unstable();
            group.dedup();
            // Every session of the group locked (in order; no one else holds two), so no append
            // interleaves with its deletion.
            let slots: Vec<SessionSlot> = group.iter().map(|sid| self.slot(t, sid)).collect();
            let mut states: Vec<_> = slots.iter().map(|s| s.lock().expect("session lock")).collect();
            if let Some(cutoff) = idle_before {
                let keep: Vec<bool> = group
                    .iter()
                    .zip(states.iter_mut())
                    .map(|(sid, st)| self.load(t, &keys, sid, st).map_or(true, |()| st.updated_ms >= cutoff))
                    .collect();
                (group, states) =
                    group.into_iter().zip(states).zip(keep).filter(|(_, keep)| !keep).map(|(pair, _)| pair).unzip();
                if group.is_empty() {
                    continue;
                }
            }
            // No journal generation may still hold them (a replay would bring them back).
            if let Some(j) = self.inner.journals.get(t) {
                for sid in &group {
                    j.settle(sid).map_err(|e| store_io("cannot checkpoint", &self.journal_dir(t), e))?;
                }
            }
            // The metadata (which holds the data key) goes first, durably: out of the pack
            // (rewritten without them), or the session's file.
            let packed = self.with_pack(t, group[0], |p| {
                let held: Vec<bool> = group.iter().map(|sid| !p.chunks(sid).is_empty()).collect();
                p.remove(&group).map_err(|e| store_io("cannot rewrite", p.path(), e))?;
                Ok(held)
            })?;
            for ((sid, st), in_pack) in group.iter().zip(states.iter_mut()).zip(packed) {
                existed += usize::from(self.delete_session_files(t, sid)? || in_pack);
                **st = SessionState::empty();
            }
            // The slots stay in the cache, emptied: an append may already hold one and be
            // waiting for its lock, and a second slot for the session must never exist.
            drop(states);
        }
        Ok(existed)
    }

    /// Removes a session's own files (format 1 and 2; later segments of a pack session), its
    /// metadata first; returns whether it had any.
    fn delete_session_files(&self, t: &TenantId, sid: &str) -> Result<bool, StoreError> {
        let dir = self.session_dir(t, sid);
        let file = self.session_file(t, sid);
        let existed = dir.exists() || file.exists();
        let meta = dir.join("meta.age");
        fsutil::remove_file_if_exists(&file).map_err(|e| store_io("cannot remove", &file, e))?;
        fsutil::remove_file_if_exists(&meta).map_err(|e| store_io("cannot remove", &meta, e))?;
        if dir.exists() {
            fsutil::sync_dir(&dir).map_err(|e| store_io("cannot sync", &dir, e))?;
        }
        let sessions = dir.parent().expect("sessions dir");
        if existed {
            fsutil::sync_dir(sessions).map_err(|e| store_io("cannot sync", sessions, e))?;
        }
        fsutil::remove_dir_all_if_exists(&dir).map_err(|e| store_io("cannot remove", &dir, e))?;
        if existed {
            let _ = fsutil::sync_dir(sessions);
        }
        Ok(existed)
    }

    /// Deletes one session of a tenant; `false` when it did not exist.
    pub fn delete_session_blocking(&self, t: &TenantId, key: &SessionKey) -> Result<bool, StoreError> {
        let keys = self.keys(t)?;
        let sid = keys.session_id(&key.to_string());
        Ok(self.delete_sids(t, &[sid], None)? > 0)
    }

    /// Deletes sessions whose last message is older than the retention of their tenant.
    /// Returns how many sessions were deleted per tenant.
    pub fn apply_retention(
        &self,
        retention: &Retention,
        now: SystemTime,
    ) -> Result<Vec<(TenantId, usize)>, StoreError> {
        let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut report = Vec::new();
        for t in self.tenants() {
            let Some(days) = retention.days_for(&t) else { continue };
            let cutoff = now.saturating_sub(u64::from(days) * 86_400_000);
            let keys = self.keys(&t)?;
            let mut expired = Vec::new();
            for sid in self.session_ids(&t)? {
                let updated = self.with_sid(&t, &keys, &sid, |_, _, _, st| Ok(st.updated_ms));
                match updated {
                    Ok(Some(u)) if u < cutoff => expired.push(sid),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(tenant = %t, session = %sid, error = %e, "Retention skipped an unreadable session.")
                    }
                }
            }
            let deleted = self.delete_sids(&t, &expired, Some(cutoff))?;
            if deleted > 0 {
                tracing::info!(tenant = %t, deleted, days, "Retention deleted expired sessions.");
            }
            report.push((t, deleted));
        }
        Ok(report)
    }

    /// Crypto-shredding: destroys the tenant's wrapped identity first, then its data. Returns
    /// `false` when the tenant had nothing in the store.
    pub fn delete_tenant(&self, t: &TenantId) -> Result<bool, StoreError> {
        let tenants_dir = self.inner.root.join("tenants");
        let dir = self.tenant_dir(t);
        self.inner.tenants.write().expect("tenants lock").remove(t);
        self.inner.sessions.lock().expect("sessions lock").remove_tenant(t);
        self.inner.packs.lock().expect("packs lock").remove_tenant(t);
        if let Some(j) = self.inner.journals.remove(t) {
            // Its generations are shredded with the tree (they hold only sealed bytes).
            let _ = j.retire();
        }
        if !dir.exists() {
            return Ok(false);
        }
        let doomed = tenants_dir.join(format!("{}.deleting", t.as_str()));
        fs::rename(&dir, &doomed).map_err(|e| store_io("cannot rename", &dir, e))?;
        fsutil::sync_dir(&tenants_dir).map_err(|e| store_io("cannot sync", &tenants_dir, e))?;
        shred_dir(&doomed).map_err(|e| store_io("cannot remove", &doomed, e))?;
        fsutil::sync_dir(&tenants_dir).map_err(|e| store_io("cannot sync", &tenants_dir, e))?;
        Ok(true)
    }

    /// Re-encrypts a tenant's data to a new identity. Crash-safe: the new tree is built beside
    /// the old one and swapped in by renames; `open` finishes or discards an interrupted rotation.
    /// A session that fails verification stops the rotation (nothing is changed).
    pub fn rotate_tenant(&self, t: &TenantId) -> Result<usize, StoreError> {
        let sessions = self.read_tenant(t)?;
        if let Some(bad) = sessions.iter().find(|s| !s.problems.is_empty()) {
            return Err(StoreError::Integrity(format!(
                "cannot rotate tenant {:?}: a session fails verification ({}); export it and delete the session first",
                t.as_str(),
                bad.problems.join("; ")
            )));
        }
        let tenants_dir = self.inner.root.join("tenants");
        let tmp = tenants_dir.join(format!("{}.rotate.tmp", t.as_str()));
        let new = tenants_dir.join(format!("{}.rotate.new", t.as_str()));
        let old = tenants_dir.join(format!("{}.rotate.old", t.as_str()));
        let dir = self.tenant_dir(t);
        fsutil::remove_dir_all_if_exists(&tmp).map_err(|e| store_io("cannot remove", &tmp, e))?;
        let keys = TenantKeys::generate();
        let old_keys = self.keys(t)?;
        let mut documents = Vec::new();
        for name in DOCUMENTS {
            if let Some(doc) = self.read_document(t, &old_keys, name)? {
                documents.push((name, doc));
            }
        }
        let per = self.inner.opts.records_per_segment;
        let build = || -> Result<(), StoreError> {
            for (name, doc) in &documents {
                fsutil::create_private_dir(&tmp).map_err(|e| store_io("cannot create", &tmp, e))?;
                write_document(&tmp, &keys, t.as_str(), name, doc)?;
            }
            let sessions_dir = tmp.join("sessions");
            fsutil::create_private_dir(&sessions_dir).map_err(|e| store_io("cannot create", &sessions_dir, e))?;
            let wrapped = keys.wrap(t.as_str(), &self.inner.master).map_err(StoreError::Io)?;
            let idp = tmp.join("identity.age");
            fsutil::write_atomic(&idp, &wrapped).map_err(|e| store_io("cannot write", &idp, e))?;
            for s in &sessions {
                let sid = keys.session_id(&s.key);
                let sdir = sessions_dir.join(&sid);
                let dk: [u8; 32] = random(&self.inner.rng).map_err(StoreError::Io)?;
                let meta = make_meta(&keys, t.as_str(), &sid, &s.key, s.created_ms, &dk)?;
                let rk = RecordKey::new(&dk);
                // Every session in format 2: segment 0 in its file (even when it has no record).
                let mut chunks: Vec<&[Record]> = s.records.chunks(per as usize).collect();
                if chunks.is_empty() {
                    chunks.push(&[]);
                }
                for (index, chunk) in chunks.into_iter().enumerate() {
                    let (mut bytes, p) = if index == 0 {
                        (format::session_header_for(&meta), sessions_dir.join(format!("{sid}.ses")))
                    } else {
                        fsutil::create_private_dir(&sdir).map_err(|e| store_io("cannot create", &sdir, e))?;
                        (SEGMENT_MAGIC.to_vec(), Self::seg_path(&sdir, index as u64))
                    };
                    for (j, r) in chunk.iter().enumerate() {
                        let seq = index as u64 * per + j as u64;
                        let pt = serde_json::to_vec(r).map_err(|e| StoreError::Io(e.to_string()))?;
                        bytes.extend(
                            rk.seal_frame(&self.inner.rng, t.as_str(), &sid, seq, &pt).map_err(StoreError::Io)?,
                        );
                    }
                    fsutil::write_atomic(&p, &bytes).map_err(|e| store_io("cannot write", &p, e))?;
                }
            }
            fsutil::sync_dir(&sessions_dir).map_err(|e| store_io("cannot sync", &sessions_dir, e))?;
            Ok(())
        };
        if let Err(e) = build() {
            let _ = fsutil::remove_dir_all_if_exists(&tmp);
            return Err(e);
        }
        let step = |from: &Path, to: &Path| -> Result<(), StoreError> {
            fs::rename(from, to).map_err(|e| store_io("cannot rename", from, e))?;
            fsutil::sync_dir(&tenants_dir).map_err(|e| store_io("cannot sync", &tenants_dir, e))
        };
        // Commit point: the complete new tree gets its final-looking name.
        step(&tmp, &new)?;
        // Hold the tenant's session cache while swapping so no append lands in the old tree; its
        // journal refuses appends from here on, and the tree in place afterwards gets a new one.
        let mut cache = self.inner.sessions.lock().expect("sessions lock");
        cache.remove_tenant(t);
        // The new tree holds no pack (its sessions are in format 2): forget the old tree's.
        self.inner.packs.lock().expect("packs lock").remove_tenant(t);
        if let Some(j) = self.inner.journals.get(t) {
            j.retire().map_err(|e| store_io("cannot checkpoint", &self.journal_dir(t), e))?;
        }
        let swapped = step(&dir, &old).and_then(|()| step(&new, &dir));
        match self.start_journal(t) {
            Ok(j) => self.inner.journals.insert(t.clone(), j),
            Err(e) if swapped.is_ok() => return Err(store_io("cannot start the journal", &dir, e)),
            Err(_) => {}
        }
        swapped?;
        self.inner.packs.lock().expect("packs lock").remove_tenant(t);
        self.inner.tenants.write().expect("tenants lock").insert(t.clone(), Arc::new(keys));
        drop(cache);
        shred_dir(&old).map_err(|e| store_io("cannot remove", &old, e))?;
        Ok(sessions.len())
    }
}

impl EncryptedStore {
    /// Re-wraps every tenant identity (and the store marker) to `new`; tenant data is untouched.
    /// Crash-safe: each tenant gets `identity.next.age` (wrapped to `new`), then `store.age` is
    /// replaced (the commit point), then the next files are renamed into place; `open` finishes
    /// or discards an interrupted rotation. Consumes the store: the old key no longer opens it.
    pub fn rotate_master(self, new: MasterKey) -> Result<usize, StoreError> {
        let tenants_dir = self.inner.root.join("tenants");
        let tenants: Vec<(TenantId, Arc<TenantKeys>)> =
            self.inner.tenants.read().expect("tenants lock").iter().map(|(t, k)| (t.clone(), k.clone())).collect();
        let mut written = Vec::new();
        let prepare = |written: &mut Vec<PathBuf>| -> Result<(), StoreError> {
            for (t, keys) in &tenants {
                let wrapped = keys.wrap(t.as_str(), &new).map_err(StoreError::Io)?;
                let path = tenants_dir.join(t.as_str()).join(NEXT_IDENTITY);
                fsutil::write_atomic(&path, &wrapped).map_err(|e| store_io("cannot write", &path, e))?;
                written.push(path);
            }
            Ok(())
        };
        if let Err(e) = prepare(&mut written) {
            for p in &written {
                let _ = fsutil::remove_file_if_exists(p);
            }
            return Err(e);
        }
        // Commit point: from here on only `new` opens the store.
        write_marker(&self.inner.root, &new).map_err(|e| store_io("cannot write", &self.inner.root, e))?;
        recover_master_rotation(&tenants_dir, &new).map_err(|e| {
            StoreError::Io(format!(
                "the new master key is in force, but re-wrapping did not finish ({e}); the next start with the new key finishes it"
            ))
        })?;
        Ok(tenants.len())
    }
}

/// How a session's metadata (`meta.age`, a `bh_sessions.meta` cell) starts since format 2: then
/// one frame sealed with the tenant's meta key (ChaCha20-Poly1305, associated data = tenant,
/// session id and `META_SEQ`). Format 1 was an age file to the tenant's recipient holding JSON
/// and a MAC; it is still read. Format 2 needs no public-key operation per new conversation.
const META_MAGIC: &[u8; 8] = b"BHMETA2\n";
/// The position the metadata is sealed at: no record ever has it.
const META_SEQ: u64 = u64::MAX;

/// The plaintext inside format-2 metadata (tenant and session are bound by the seal).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetaV2 {
    v: u32,
    key: String,
    created_ms: u64,
    data_key: String,
}

fn make_meta(
    keys: &TenantKeys,
    tenant: &str,
    sid: &str,
    key: &str,
    created_ms: u64,
    dk: &[u8; 32],
) -> Result<Vec<u8>, StoreError> {
    let m = MetaV2 { v: 2, key: key.to_string(), created_ms, data_key: hex(dk) };
    let json = serde_json::to_vec(&m).map_err(|e| StoreError::Io(e.to_string()))?;
    let frame = keys.meta_key().seal_frame(&SystemRandom::new(), tenant, sid, META_SEQ, &json).map_err(StoreError::Io)?;
    Ok([META_MAGIC.as_slice(), &frame].concat())
}

/// Opens and verifies a session's sealed metadata (`meta.age`, or a `bh_sessions.meta` cell).
fn open_meta(keys: &TenantKeys, t: &TenantId, sid: &str, bytes: &[u8]) -> Result<OpenMeta, StoreError> {
    let bad = |why: &str| StoreError::Integrity(format!("session {sid} of tenant {:?}: {why}", t.as_str()));
    let (key, created_ms, data_key) = match bytes.strip_prefix(META_MAGIC.as_slice()) {
        Some(sealed) => {
            let frames = format::frames_in(sealed).map_err(|_| bad("meta.age is malformed"))?;
            let [f] = frames.as_slice() else { return Err(bad("meta.age is malformed")) };
            let json = keys.meta_key().open(t.as_str(), sid, META_SEQ, &f.nonce, f.body).ok_or_else(|| {
                bad("meta.age fails authentication (modified, moved from another session or tenant, or not made with the tenant key)")
            })?;
            let m: MetaV2 = serde_json::from_slice(&json).map_err(|_| bad("meta.age has an unknown format"))?;
            if m.v != 2 {
                return Err(bad("meta.age has an unsupported version"));
            }
            (m.key, m.created_ms, m.data_key)
        }
        None => {
            let json = keys.decrypt(bytes).ok_or_else(|| bad("meta.age does not decrypt with the tenant key"))?;
            let m: MetaFile = serde_json::from_slice(&json).map_err(|_| bad("meta.age has an unknown format"))?;
            if m.v != 1 {
                return Err(bad("meta.age has an unsupported version"));
            }
            let created = m.created_ms.to_be_bytes();
            let parts: [&[u8]; 6] =
                [b"meta", m.tenant.as_bytes(), m.sid.as_bytes(), m.key.as_bytes(), &created, m.data_key.as_bytes()];
            if !keys.verify(&parts, &m.mac) {
                return Err(bad("meta.age fails authentication (replaced by a file not made with the tenant key)"));
            }
            if m.tenant != t.as_str() || m.sid != sid {
                return Err(bad("meta.age belongs to another session or tenant (moved)"));
            }
            (m.key, m.created_ms, m.data_key)
        }
    };
    if keys.session_id(&key) != sid {
        return Err(bad("meta.age belongs to another session or tenant (moved)"));
    }
    let dk: [u8; 32] =
        unhex(&data_key).and_then(|v| v.try_into().ok()).ok_or_else(|| bad("meta.age holds an invalid data key"))?;
    Ok(OpenMeta { key, created_ms, data: RecordKey::new(&dk) })
}

fn integrity(t: &TenantId, sid: &str, what: &str) -> StoreError {
    StoreError::Integrity(integrity_text(t, sid, what))
}

fn integrity_text(t: &TenantId, sid: &str, what: &str) -> String {
    format!("session {sid} of tenant {:?}: {what}", t.as_str())
}

fn open_record(
    key: &RecordKey,
    t: &TenantId,
    sid: &str,
    seq: u64,
    f: &format::RawFrame<'_>,
) -> Result<Record, StoreError> {
    let pt = key.open(t.as_str(), sid, seq, &f.nonce, f.body).ok_or_else(|| {
        integrity(
            t,
            sid,
            &format!(
                "record {seq} (byte {} of its segment) fails authentication (modified, moved, reordered or replaced)",
                f.offset
            ),
        )
    })?;
    let rec: Record =
        serde_json::from_slice(&pt).map_err(|_| integrity(t, sid, &format!("record {seq} has an unknown format")))?;
    if rec.v != format::RECORD_VERSION {
        return Err(integrity(t, sid, &format!("record {seq} has unsupported version {}", rec.v)));
    }
    Ok(rec)
}

/// Segment indexes present in a session directory, sorted.
fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(store_io("cannot list", dir, e)),
    };
    for e in entries {
        let e = e.map_err(|e| store_io("cannot list", dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Opens segment `path` for appending, creating it with its header if missing (`true`). The
/// header and the name become durable at the next checkpoint (the journal holds the records
/// until then); a crash before it leaves a torn header, which `load` rewrites.
fn open_segment(path: &Path) -> Result<(File, bool), StoreError> {
    match fsutil::create_new_private(path) {
        Ok(mut f) => {
            f.write_all(SEGMENT_MAGIC).map_err(|e| store_io("cannot write", path, e))?;
            Ok((f, true))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let f = OpenOptions::new().append(true).open(path).map_err(|e| store_io("cannot open", path, e))?;
            Ok((f, false))
        }
        Err(e) => Err(store_io("cannot create", path, e)),
    }
}

/// How a journal generation's fsync went (the error's kind and text: one failure answers
/// several appends).
type SyncResult = Result<(), (io::ErrorKind, String)>;

/// An append written to a session's files and the journal, not yet durable (`EncryptedStore::stage`).
struct Staged {
    written: Option<journal::Written>,
    /// Where the session's pack ended before its entry (to undo it).
    pack_undo: Option<(u8, u64)>,
    /// Each segment written to, with its length before (`None`: this append created it).
    segment_undo: Vec<(PathBuf, Option<u64>)>,
    next_seq: u64,
    ts: u64,
}

/// The packs appends write to, each locked at its first use and held until the journal has
/// committed (so a failed commit can cut the entries back out: no one appends meanwhile).
struct Packs<'a> {
    slots: &'a [(u8, PackSlot)],
    held: Vec<Option<std::sync::MutexGuard<'a, pack::Pack>>>,
}

impl<'a> Packs<'a> {
    fn new(slots: &'a [(u8, PackSlot)]) -> Self {
        Self { slots, held: slots.iter().map(|_| None).collect() }
    }

    /// Pack `index`, locked and loaded.
    fn get(&mut self, index: u8) -> Result<&mut pack::Pack, StoreError> {
        let slots = self.slots;
        let i = slots
            .iter()
            .position(|(n, _)| *n == index)
            .ok_or_else(|| StoreError::Io(format!("pack {index:02x} was not prepared for this append")))?;
        let p = self.held[i].get_or_insert_with(|| slots[i].1.lock().expect("pack lock"));
        p.load().map_err(|e| store_io("cannot read", p.path(), e))?;
        Ok(p)
    }
}

/// The same error again (one failure answers several callers).
fn dup_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io(m) => StoreError::Io(m.clone()),
        StoreError::Integrity(m) => StoreError::Integrity(m.clone()),
    }
}

/// Writes the pending frames to the open segment at `path` (durable through the journal, not an
/// fsync).
fn flush(st: &mut SessionState, pending: &mut Vec<u8>, path: &Path) -> Result<(), StoreError> {
    if pending.is_empty() {
        return Ok(());
    }
    let Some((_, f)) = st.tail.as_mut() else {
        return Err(StoreError::Io("no open segment".into()));
    };
    f.write_all(pending).map_err(|e| store_io("cannot append to", path, e))?;
    pending.clear();
    Ok(())
}

/// Cuts a segment's torn tail (an unacknowledged partial write) at byte `at`, durably.
fn cut_torn_tail(path: &Path, at: usize) -> Result<(), StoreError> {
    let f = OpenOptions::new().write(true).open(path).map_err(|e| store_io("cannot open", path, e))?;
    if at < SEGMENT_MAGIC.len() {
        f.set_len(0).map_err(|e| store_io("cannot truncate", path, e))?;
        (&f).write_all(SEGMENT_MAGIC).map_err(|e| store_io("cannot write", path, e))?;
    } else {
        f.set_len(at as u64).map_err(|e| store_io("cannot truncate", path, e))?;
    }
    f.sync_all().map_err(|e| store_io("cannot sync", path, e))
}

fn check_private(path: &Path) -> Result<(), StoreOpenError> {
    let mode = fsutil::mode_of(path).map_err(io_err(path, "cannot stat"))?;
    if mode & 0o077 != 0 {
        return Err(StoreOpenError::Permissions { path: path.display().to_string(), mode });
    }
    Ok(())
}

/// Checks (or, for a fresh store, writes) `store.age`, which proves the master key is the one
/// that created the store.
fn check_marker(root: &Path, master: &MasterKey) -> Result<(), StoreOpenError> {
    let path = root.join("store.age");
    let wrong = || StoreOpenError::WrongMasterKey { origin: master.origin.clone(), root: root.display().to_string() };
    match fs::read(&path) {
        Ok(bytes) => {
            let json = master.unwrap(&bytes).ok_or_else(wrong)?;
            let m: StoreMarker = serde_json::from_slice(&json).map_err(|_| wrong())?;
            if m.format != "bulkhead-store" || m.v != 1 || !master.verify(&[b"store"], &m.mac) {
                return Err(wrong());
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tenants = root.join("tenants");
            let has_data = fs::read_dir(&tenants).map(|mut d| d.next().is_some()).unwrap_or(false);
            if has_data {
                return Err(StoreOpenError::MissingMarker { root: root.display().to_string() });
            }
            write_marker(root, master).map_err(io_err(&path, "cannot write"))
        }
        Err(e) => Err(StoreOpenError::Io { path: path.display().to_string(), what: "cannot read", error: e }),
    }
}

/// Writes `store.age` for `master` atomically. Replacing it is the commit point of a master-key
/// rotation.
fn write_marker(root: &Path, master: &MasterKey) -> io::Result<()> {
    let m = StoreMarker { format: "bulkhead-store".into(), v: 1, mac: master.mac(&[b"store"]) };
    let json = serde_json::to_vec(&m).map_err(io::Error::other)?;
    let ct = master.wrap(&json).map_err(io::Error::other)?;
    fsutil::write_atomic(&root.join("store.age"), &ct)
}

/// The re-wrapped identity a master-key rotation writes beside `identity.age`.
const NEXT_IDENTITY: &str = "identity.next.age";

/// Finishes or discards an interrupted master-key rotation. `master` has just opened
/// `store.age`, so it is the current key: an `identity.next.age` that opens with it was written
/// by a rotation that committed (finish: rename it over `identity.age`); one that does not was
/// written for a key that never became current (discard).
fn recover_master_rotation(tenants_dir: &Path, master: &MasterKey) -> io::Result<()> {
    for entry in fs::read_dir(tenants_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let next = entry.path().join(NEXT_IDENTITY);
        let Ok(bytes) = fs::read(&next) else { continue };
        if TenantKeys::unwrap(&name, master, &bytes).is_ok() {
            tracing::warn!(tenant = %name, "Finishing an interrupted master-key rotation.");
            fs::rename(&next, entry.path().join("identity.age"))?;
        } else {
            tracing::warn!(tenant = %name, "Discarding an incomplete master-key rotation.");
            fs::remove_file(&next)?;
        }
        fsutil::sync_dir(&entry.path())?;
    }
    Ok(())
}

/// Removes a tenant tree, its wrapped identity first (crypto-shredding), then everything else.
fn shred_dir(dir: &Path) -> io::Result<()> {
    fsutil::remove_file_if_exists(&dir.join("identity.age"))?;
    if dir.exists() {
        fsutil::sync_dir(dir)?;
    }
    fsutil::remove_dir_all_if_exists(dir)
}

/// Finishes or discards what an interrupted rotation or deletion left behind.
fn recover_tenant_dirs(tenants_dir: &Path) -> io::Result<()> {
    let names: Vec<String> = fs::read_dir(tenants_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    let mut changed = false;
    for name in &names {
        let path = tenants_dir.join(name);
        if name.ends_with(".rotate.tmp") {
            tracing::warn!(dir = %name, "Discarding an incomplete key rotation.");
            fsutil::remove_dir_all_if_exists(&path)?;
            changed = true;
        } else if name.ends_with(".deleting") {
            tracing::warn!(dir = %name, "Finishing an interrupted tenant deletion.");
            shred_dir(&path)?;
            changed = true;
        }
    }
    for name in &names {
        if let Some(base) = name.strip_suffix(".rotate.new") {
            tracing::warn!(tenant = %base, "Finishing an interrupted key rotation.");
            let dir = tenants_dir.join(base);
            let old = tenants_dir.join(format!("{base}.rotate.old"));
            if dir.exists() {
                fs::rename(&dir, &old)?;
                fsutil::sync_dir(tenants_dir)?;
            }
            fs::rename(tenants_dir.join(name), &dir)?;
            changed = true;
        }
    }
    if changed {
        fsutil::sync_dir(tenants_dir)?;
    }
    let names: Vec<String> = fs::read_dir(tenants_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    for name in &names {
        if let Some(base) = name.strip_suffix(".rotate.old") {
            let path = tenants_dir.join(name);
            if tenants_dir.join(base).exists() {
                shred_dir(&path)?;
            } else {
                fs::rename(&path, tenants_dir.join(base))?;
            }
            fsutil::sync_dir(tenants_dir)?;
        }
    }
    Ok(())
}

/// Generates and writes a new tenant identity; refuses when sessions exist without one.
fn create_identity(tenants_dir: &Path, master: &MasterKey, t: &TenantId) -> Result<TenantKeys, StoreOpenError> {
    let dir = tenants_dir.join(t.as_str());
    let sessions = dir.join("sessions");
    if fs::read_dir(&sessions).map(|mut d| d.next().is_some()).unwrap_or(false) {
        return Err(StoreOpenError::Tenant {
            tenant: t.to_string(),
            reason: "sessions exist but identity.age is missing; refusing to create a new identity over them".into(),
        });
    }
    let keys = TenantKeys::generate();
    let wrapped =
        keys.wrap(t.as_str(), master).map_err(|reason| StoreOpenError::Tenant { tenant: t.to_string(), reason })?;
    fsutil::create_private_dir(&sessions).map_err(io_err(&sessions, "cannot create"))?;
    let id_path = dir.join("identity.age");
    fsutil::write_atomic(&id_path, &wrapped).map_err(io_err(&id_path, "cannot write"))?;
    tracing::info!(tenant = %t, "Created the tenant's store identity.");
    Ok(keys)
}

#[async_trait]
impl SessionStore for EncryptedStore {
    fn add_tenants(&self, tenants: &[TenantId]) -> Result<(), String> {
        EncryptedStore::add_tenants(self, tenants).map_err(|e| e.to_string())
    }

    async fn append(&self, tenant: &TenantId, key: &SessionKey, messages: &[Message]) -> Result<(), StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(tenant, writer::Request { key: key.clone(), messages: messages.to_vec(), reply })?;
        answer.await.map_err(|_| StoreError::Io("the store's writer stopped before it answered".into()))?
    }

    async fn history(
        &self,
        tenant: &TenantId,
        key: &SessionKey,
        limit: Option<usize>,
    ) -> Result<Vec<Message>, StoreError> {
        if let Some(kept) = self.recent_history(tenant, key, limit) {
            return Ok(kept);
        }
        let (s, t, k) = (self.clone(), tenant.clone(), key.clone());
        blocking(move || s.history_blocking(&t, &k, limit)).await
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<SessionSummary>, StoreError> {
        let (s, t) = (self.clone(), tenant.clone());
        blocking(move || s.list_blocking(&t)).await
    }

    async fn exists(&self, tenant: &TenantId, key: &SessionKey) -> Result<bool, StoreError> {
        let (s, t, k) = (self.clone(), tenant.clone(), key.clone());
        blocking(move || Ok(s.with_session(&t, &k.to_string(), |_, _, _, _| Ok(()))?.is_some())).await
    }

    async fn message_count(&self, tenant: &TenantId, key: &SessionKey) -> Result<usize, StoreError> {
        let (s, t, k) = (self.clone(), tenant.clone(), key.clone());
        blocking(move || Ok(s.with_session(&t, &k.to_string(), |_, _, _, st| Ok(st.next_seq as usize))?.unwrap_or(0)))
            .await
    }

    async fn delete_session(&self, tenant: &TenantId, key: &SessionKey) -> Result<bool, StoreError> {
        let (s, t, k) = (self.clone(), tenant.clone(), key.clone());
        blocking(move || s.delete_session_blocking(&t, &k)).await
    }

    async fn load_document(&self, tenant: &TenantId, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (s, t, n) = (self.clone(), tenant.clone(), name.to_string());
        blocking(move || {
            let keys = s.keys(&t)?;
            s.read_document(&t, &keys, &n)
        })
        .await
    }

    async fn save_document(&self, tenant: &TenantId, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let (s, t, n, b) = (self.clone(), tenant.clone(), name.to_string(), bytes.to_vec());
        blocking(move || {
            let keys = s.keys(&t)?;
            let dir = s.tenant_dir(&t);
            write_document(&dir, &keys, t.as_str(), &n, &b)
        })
        .await
    }
}

// ---- Per-tenant documents: `tenants/<tenant>/<name>.age`, age to the tenant key + MAC ----

/// Documents a rotation re-encrypts (every document kind the host writes).
const DOCUMENTS: [&str; 2] = ["pairing", "inbox"];

/// The plaintext inside `<name>.age`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DocumentFile {
    v: u32,
    tenant: String,
    name: String,
    data: String,
    mac: String,
}

fn document_path(dir: &Path, name: &str) -> Result<PathBuf, StoreError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(StoreError::Io(format!("invalid document name {name:?}")));
    }
    Ok(dir.join(format!("{name}.age")))
}

fn write_document(dir: &Path, keys: &TenantKeys, tenant: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let path = document_path(dir, name)?;
    let sealed = seal_document(keys, tenant, name, bytes)?;
    fsutil::write_atomic(&path, &sealed).map_err(|e| store_io("cannot write", &path, e))
}

/// A document sealed to its tenant and bound to its tenant and name.
fn seal_document(keys: &TenantKeys, tenant: &str, name: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    let data = hex(bytes);
    let mac = keys.mac(&[b"document", tenant.as_bytes(), name.as_bytes(), data.as_bytes()]);
    let doc = DocumentFile { v: 1, tenant: tenant.to_string(), name: name.to_string(), data, mac };
    let json = serde_json::to_vec(&doc).map_err(|e| StoreError::Io(e.to_string()))?;
    keys.encrypt(&json).map_err(StoreError::Io)
}

/// Opens a sealed document, refusing one moved from another tenant or name.
fn open_document(keys: &TenantKeys, t: &TenantId, name: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    let bad = |why: &str| StoreError::Integrity(format!("document {name} of tenant {:?}: {why}", t.as_str()));
    let json = keys.decrypt(bytes).ok_or_else(|| bad("does not decrypt with the tenant key"))?;
    let d: DocumentFile = serde_json::from_slice(&json).map_err(|_| bad("unknown format"))?;
    if d.v != 1 || d.tenant != t.as_str() || d.name != name {
        return Err(bad("belongs to another tenant or document (moved)"));
    }
    if !keys.verify(&[b"document", d.tenant.as_bytes(), d.name.as_bytes(), d.data.as_bytes()], &d.mac) {
        return Err(bad("fails authentication"));
    }
    unhex(&d.data).ok_or_else(|| bad("holds invalid data"))
}

impl EncryptedStore {
    fn read_document(&self, t: &TenantId, keys: &TenantKeys, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = document_path(&self.tenant_dir(t), name)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(store_io("cannot read", &path, e)),
        };
        open_document(keys, t, name, &bytes).map(Some)
    }
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
}

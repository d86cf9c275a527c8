//! Appending: `LogWriter` owns the audit directory (lock, keys, open logs) and writes records
//! synchronously with the store's crash discipline; `Audit` is the cheap handle the gateway
//! shares, feeding one writer thread through a bounded queue (back-pressure, never a drop) that
//! commits records in groups with one fsync per log and acknowledges each only once it is on disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ring::rand::SystemRandom;
use tokio::sync::{mpsc, oneshot};

use super::chain::{encode_line, verify_marked};
use super::{Actor, Anchors, AuditKeys, CHECKPOINT_EVERY, Checkpoint, Event, RecordBody, Scope, now_utc};
use crate::config::Config;
use crate::crypto::hex;
use crate::fsutil;
use crate::store::{MasterKey, MasterKeyError};

/// Records waiting for the writer at most; beyond it appenders wait (back-pressure).
const QUEUE: usize = 1024;
/// Records committed together at most (one write and one fsync per log).
const MAX_BATCH: usize = 512;

/// Why the audit directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditOpenError {
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    #[error("the audit log at {dir} is in use by another bulkhead process (is the gateway running?)")]
    Locked { dir: String },
    #[error("audit log: {0}")]
    Other(String),
}

/// Proof that a record is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub scope: Scope,
    pub seq: u64,
}

/// Why a record could not be appended. Callers fail closed on it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log {scope}: {reason}")]
pub struct AuditError {
    pub scope: String,
    pub reason: String,
}

struct OpenLog {
    file: File,
    len: u64,
    seq: u64,
    head: [u8; 32],
    since_checkpoint: u64,
}

/// The appending side of the audit directory. One per host at a time (it holds `audit/lock`).
pub struct LogWriter {
    dir: PathBuf,
    keys: Arc<AuditKeys>,
    logs: HashMap<Scope, OpenLog>,
    /// The tenant logs' high-water marks, from the host log (read when it is opened, then kept
    /// up to date as host records are written).
    anchors: Anchors,
    _lock: File,
}

impl LogWriter {
    /// Opens the audit directory of a config; `None` when no master key is configured (then
    /// there is nothing to hold the audit keys, and the audit log is off).
    pub fn open_config(config: &Config) -> Result<Option<Self>, AuditOpenError> {
        let Some(reference) = &config.store.master_key else { return Ok(None) };
        let master = MasterKey::load(reference, &config.base_dir, &config.state_dir)?;
        Self::open(&super::audit_dir(config), &master).map(Some)
    }

    /// Opens (creating if needed) the audit directory `dir`.
    pub fn open(dir: &Path, master: &MasterKey) -> Result<Self, AuditOpenError> {
        let other =
            |what: &str, p: &Path, e: std::io::Error| AuditOpenError::Other(format!("{what} {}: {e}", p.display()));
        fsutil::create_private_dir(&dir.join("tenants")).map_err(|e| other("cannot create", dir, e))?;
        let lock_path = dir.join("lock");
        let lock = fsutil::lock_exclusive(&lock_path)
            .map_err(|e| other("cannot open", &lock_path, e))?
            .ok_or_else(|| AuditOpenError::Locked { dir: dir.display().to_string() })?;
        let keys = AuditKeys::load(dir, master, true).map_err(AuditOpenError::Other)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            keys: Arc::new(keys),
            logs: HashMap::new(),
            anchors: Anchors::default(),
            _lock: lock,
        })
    }

    pub fn keys(&self) -> &Arc<AuditKeys> {
        &self.keys
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens a log for appending: verifies it against its stored checkpoint, if any, and (a
    /// tenant log) against its anchor in the host log, which is opened first; cuts off a torn
    /// tail, which is then recorded. A log that fails verification, or is behind its high-water
    /// mark, is not appended to and is left untouched as evidence.
    fn log(&mut self, scope: &Scope) -> Result<&mut OpenLog, String> {
        if !self.logs.contains_key(scope) {
            if let Scope::Tenant(_) = scope {
                self.log(&Scope::Host)
                    .map_err(|e| format!("the host log holds this log's high-water mark and cannot be opened ({e})"))?;
            }
            let path = scope.log_path(&self.dir);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
            let checkpoint = read_checkpoint(&scope.checkpoint_path(&self.dir))?;
            if let Some(cp) = &checkpoint {
                cp.check(&self.keys.public_key(), scope)
                    .map_err(|e| format!("{}: {e}", scope.checkpoint_path(&self.dir).display()))?;
            }
            let evidence = "run `bulkhead audit verify` and keep the audit directory as evidence";
            let marks = self.anchors.marks(scope, checkpoint.as_ref()).map_err(|e| format!("{e}; {evidence}"))?;
            let mut anchors = Anchors::default();
            let mut visit = |seq: u64, json: &[u8]| {
                if *scope == Scope::Host {
                    anchors.visit(seq, json);
                }
            };
            let v = verify_marked(&bytes, &self.keys, scope, &marks, &mut visit)
                .map_err(|b| format!("fails verification at record {}: {}; {evidence}", b.seq, b.reason))?;
            if *scope == Scope::Host {
                self.anchors = anchors;
            }
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            if v.torn_bytes > 0 {
                file.set_len(v.good_len as u64)
                    .map_err(|e| format!("cannot cut the torn tail of {}: {e}", path.display()))?;
                file.sync_all().map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
                tracing::warn!(log = %scope, after_seq = v.records, bytes = v.torn_bytes, "Audit log had a torn tail (an unacknowledged append cut by a crash); removed it.");
            } else if bytes.is_empty()
                && let Some(parent) = path.parent()
            {
                fsutil::sync_dir(parent).map_err(|e| format!("cannot sync {}: {e}", parent.display()))?;
            }
            let open = OpenLog { file, len: v.good_len as u64, seq: v.records, head: v.head, since_checkpoint: 0 };
            self.logs.insert(scope.clone(), open);
            if v.torn_bytes > 0 {
                let ev = Event::TornTail { after_seq: v.records, bytes: v.torn_bytes };
                self.write_group(scope, &[(&Actor::System, &ev)])?;
            }
        }
        Ok(self.logs.get_mut(scope).expect("opened above"))
    }

    /// Appends records to one log with one write and one fsync; returns their sequence numbers.
    fn write_group(&mut self, scope: &Scope, items: &[(&Actor, &Event)]) -> Result<Vec<u64>, String> {
        let (keys, rng) = (self.keys.clone(), SystemRandom::new());
        self.log(scope)?;
        let key = keys.log_key_or_create(scope)?;
        let log = self.logs.get_mut(scope).expect("opened above");
        let (mut seq, mut head) = (log.seq, log.head);
        let mut buf = Vec::new();
        let mut seqs = Vec::with_capacity(items.len());
        let mut bodies = Vec::with_capacity(items.len());
        for (actor, event) in items {
            seq += 1;
            let body = RecordBody { seq, ts: now_utc(), scope: scope.name(), actor: actor.to_string(), event };
            let json = serde_json::to_vec(&body).map_err(|e| format!("cannot encode a record: {e}"))?;
            let (line, mac) = encode_line(&key, &rng, scope, &head, seq, &json)?;
            buf.extend_from_slice(&line);
            head = mac;
            seqs.push(seq);
            bodies.push(json);
        }
        let written = log.file.write_all(&buf).and_then(|()| log.file.sync_data());
        if let Err(e) = written {
            // Nothing of this group counts: cut whatever part of it reached the file.
            let _ = log.file.set_len(log.len);
            return Err(format!("cannot write: {e}"));
        }
        log.len += buf.len() as u64;
        log.seq = seq;
        log.head = head;
        log.since_checkpoint += items.len() as u64;
        if *scope == Scope::Host {
            // The marks follow the host chain as written, exactly as they are read back.
            for (s, json) in seqs.iter().zip(&bodies) {
                self.anchors.visit(*s, json);
            }
        }
        if log.since_checkpoint >= CHECKPOINT_EVERY
            && let Err(e) = self.checkpoint(scope)
        {
            tracing::warn!(log = %scope, error = %e, "Cannot write an audit checkpoint.");
        }
        Ok(seqs)
    }

    /// Appends one record and syncs it.
    pub fn append(&mut self, scope: &Scope, actor: &Actor, event: &Event) -> Result<Receipt, AuditError> {
        let err = |reason: String| AuditError { scope: scope.name(), reason };
        let seq = self.write_group(scope, &[(actor, event)]).map_err(err)?[0];
        Ok(Receipt { scope: scope.clone(), seq })
    }

    /// Appends records in order, grouped per log; one result per record.
    pub fn append_batch(&mut self, items: &[(Scope, Actor, Event)]) -> Vec<Result<Receipt, AuditError>> {
        let mut order: Vec<&Scope> = Vec::new();
        for (s, _, _) in items {
            if !order.contains(&s) {
                order.push(s);
            }
        }
        let mut results: Vec<Option<Result<Receipt, AuditError>>> = vec![None; items.len()];
        for scope in order {
            let idx: Vec<usize> = (0..items.len()).filter(|&i| &items[i].0 == scope).collect();
            let group: Vec<(&Actor, &Event)> = idx.iter().map(|&i| (&items[i].1, &items[i].2)).collect();
            match self.write_group(scope, &group) {
                Ok(seqs) => {
                    for (i, seq) in idx.into_iter().zip(seqs) {
                        results[i] = Some(Ok(Receipt { scope: scope.clone(), seq }));
                    }
                }
                Err(reason) => {
                    for i in idx {
                        results[i] = Some(Err(AuditError { scope: scope.name(), reason: reason.clone() }));
                    }
                }
            }
        }
        results.into_iter().map(|r| r.expect("every record has a result")).collect()
    }

    /// The number of records and head MAC of a log.
    pub fn head(&mut self, scope: &Scope) -> Result<(u64, [u8; 32]), String> {
        let log = self.log(scope)?;
        Ok((log.seq, log.head))
    }

    /// Signs a checkpoint of a log's current head and stores it beside the log. A tenant log's
    /// head is anchored in the host log first (unless it already is): the checkpoint file then
    /// never claims more than the host chain holds.
    pub fn checkpoint(&mut self, scope: &Scope) -> Result<Checkpoint, String> {
        let (seq, head) = self.head(scope)?;
        if let Scope::Tenant(t) = scope
            && seq > 0
            && self.anchors.get(t).map(|a| a.seq) != Some(seq)
        {
            let anchor = Event::LogAnchor { log: scope.name(), log_seq: seq, head: hex(&head) };
            self.write_group(&Scope::Host, &[(&Actor::System, &anchor)])
                .map_err(|e| format!("cannot anchor the log in the host log: {e}"))?;
        }
        let cp = Checkpoint::sign(&self.keys, scope, seq, &head);
        if let Some(log) = self.logs.get_mut(scope) {
            log.since_checkpoint = 0;
        }
        let path = scope.checkpoint_path(&self.dir);
        fsutil::write_atomic(&path, cp.to_text().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(cp)
    }

    /// Checkpoints every log with records appended since its last checkpoint: the tenant logs
    /// first, then the host log, whose checkpoint then covers their anchors.
    pub fn checkpoint_all(&mut self) {
        let mut dirty: Vec<Scope> = self
            .logs
            .iter()
            .filter(|(s, l)| l.since_checkpoint > 0 && **s != Scope::Host)
            .map(|(s, _)| s.clone())
            .collect();
        dirty.sort();
        for s in dirty {
            if let Err(e) = self.checkpoint(&s) {
                tracing::warn!(log = %s, error = %e, "Cannot write an audit checkpoint.");
            }
        }
        if self.logs.get(&Scope::Host).is_some_and(|l| l.since_checkpoint > 0)
            && let Err(e) = self.checkpoint(&Scope::Host)
        {
            tracing::warn!(log = %Scope::Host, error = %e, "Cannot write an audit checkpoint.");
        }
    }

    /// Removes a tenant's log after recording its final state in the host log (tenant deletion):
    /// its key file first (crypto-shredding: what is left of the log cannot be opened), then the
    /// log and its checkpoint. The `tenant.delete` record clears the tenant's high-water mark, so
    /// a tenant re-created with the same id starts a new log under a new key.
    pub fn remove_tenant(&mut self, tenant: &crate::ids::TenantId, actor: &Actor) -> Result<Receipt, AuditError> {
        let scope = Scope::Tenant(tenant.clone());
        let (final_seq, final_head) = match self.head(&scope) {
            Ok((seq, head)) => (seq, hex(&head)),
            Err(e) => (0, format!("unverifiable: {e}")),
        };
        let event = Event::TenantDelete { tenant: tenant.to_string(), final_seq, final_head };
        let receipt = self.append(&Scope::Host, actor, &event)?;
        self.logs.remove(&scope);
        self.keys.forget(&scope);
        for p in [scope.key_path(&self.dir), scope.log_path(&self.dir), scope.checkpoint_path(&self.dir)] {
            fsutil::remove_file_if_exists(&p).map_err(|e| AuditError {
                scope: scope.name(),
                reason: format!("cannot remove {}: {e}", p.display()),
            })?;
        }
        let _ = fsutil::sync_dir(&self.dir.join("tenants"));
        Ok(receipt)
    }
}

impl LogWriter {
    /// Moves a tenant's log, checkpoint and key into `evidence/<id>-<time>/` after recording
    /// that in the host log (`log.reset`, which clears the tenant's high-water mark): the way
    /// out for a log that is refused, short of deleting the tenant. The next append starts a
    /// new log under a new key. Returns the receipt and the evidence directory.
    pub fn reset_tenant(
        &mut self,
        tenant: &crate::ids::TenantId,
        actor: &Actor,
    ) -> Result<(Receipt, PathBuf), AuditError> {
        let scope = Scope::Tenant(tenant.clone());
        let err = |reason: String| AuditError { scope: scope.name(), reason };
        self.log(&Scope::Host).map_err(|e| err(format!("the host log cannot be opened ({e})")))?;
        let stamp: String = now_utc().chars().filter(char::is_ascii_alphanumeric).collect();
        let name = format!("{tenant}-{stamp}");
        let evidence = self.dir.join("evidence").join(&name);
        fsutil::create_private_dir(&evidence).map_err(|e| err(format!("cannot create {}: {e}", evidence.display())))?;
        let anchored_seq = self.anchors.get(tenant).map_or(0, |a| a.seq);
        let event = Event::LogReset { log: scope.name(), anchored_seq, evidence: format!("evidence/{name}") };
        let receipt = self.append(&Scope::Host, actor, &event)?;
        self.logs.remove(&scope);
        self.keys.forget(&scope);
        for p in [scope.key_path(&self.dir), scope.log_path(&self.dir), scope.checkpoint_path(&self.dir)] {
            let to = evidence.join(p.file_name().unwrap_or_default());
            match std::fs::rename(&p, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(format!("cannot move {} to {}: {e}", p.display(), to.display()))),
            }
        }
        // The new log exists at once, empty (its key is made with its first record).
        let log = scope.log_path(&self.dir);
        fsutil::create_new_private(&log).map_err(|e| err(format!("cannot create {}: {e}", log.display())))?;
        let _ = fsutil::sync_dir(&self.dir.join("tenants"));
        let _ = fsutil::sync_dir(&evidence);
        Ok((receipt, evidence))
    }
}

/// Reads a stored checkpoint, if there is one.
pub fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Checkpoint::parse(&t).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

enum Job {
    Append(Scope, Actor, Box<Event>, Option<oneshot::Sender<Result<Receipt, AuditError>>>),
    Checkpoint(Scope, oneshot::Sender<Result<Checkpoint, String>>),
    Close(oneshot::Sender<()>),
}

struct Shared {
    tx: mpsc::Sender<Job>,
    keys: Arc<AuditKeys>,
    dir: PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The gateway's handle on the audit log. Cheap to clone; `Audit::off()` records nothing.
#[derive(Clone, Default)]
pub struct Audit {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dir() {
            Some(dir) => write!(f, "Audit({})", dir.display()),
            None => f.write_str("Audit(off)"),
        }
    }
}

impl Audit {
    /// An audit log that records nothing (no master key configured, or tests).
    pub fn off() -> Self {
        Self { shared: None }
    }

    /// Starts the writer thread.
    pub fn start(writer: LogWriter) -> Result<Self, String> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let keys = writer.keys.clone();
        let dir = writer.dir.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Self { shared: Some(Arc::new(Shared { tx, keys, dir, thread: Mutex::new(Some(thread)) })) })
    }

    pub fn is_on(&self) -> bool {
        self.shared.is_some()
    }

    /// The audit directory, when on.
    pub fn dir(&self) -> Option<&Path> {
        self.shared.as_deref().map(|s| s.dir.as_path())
    }

    pub fn keys(&self) -> Option<&Arc<AuditKeys>> {
        self.shared.as_deref().map(|s| &s.keys)
    }

    /// Appends a record and waits until it is on disk. With the log off, returns at once with
    /// sequence number 0.
    pub async fn append(&self, scope: Scope, actor: Actor, event: Event) -> Result<Receipt, AuditError> {
        let Some(shared) = &self.shared else { return Ok(Receipt { scope, seq: 0 }) };
        let (ack, done) = oneshot::channel();
        let name = scope.name();
        let closed = || AuditError { scope: name.clone(), reason: "the audit writer has stopped".into() };
        shared.tx.send(Job::Append(scope, actor, Box::new(event), Some(ack))).await.map_err(|_| closed())?;
        done.await.map_err(|_| closed())?
    }

    /// Queues a record without waiting for the disk (only for queue space). For events where
    /// the caller has nothing to hold back; it is still written in order and never dropped.
    pub async fn record(&self, scope: Scope, actor: Actor, event: Event) {
        if let Some(shared) = &self.shared
            && shared.tx.send(Job::Append(scope, actor, Box::new(event), None)).await.is_err()
        {
            crate::metrics::audit_write_failed();
            tracing::error!("The audit writer has stopped; a record was not written.");
        }
    }

    /// A keyed digest of an identifier for a record of `scope` (empty when the log is off).
    pub fn digest(&self, scope: &Scope, what: &str, bytes: &[u8]) -> String {
        self.keys().map(|k| k.digest(scope, what, bytes)).unwrap_or_default()
    }

    /// A fresh signed checkpoint of a log (written beside it, too).
    pub async fn checkpoint(&self, scope: Scope) -> Result<Checkpoint, String> {
        let Some(shared) = &self.shared else { return Err("the audit log is off".into()) };
        let (ack, done) = oneshot::channel();
        shared.tx.send(Job::Checkpoint(scope, ack)).await.map_err(|_| "the audit writer has stopped".to_string())?;
        done.await.map_err(|_| "the audit writer has stopped".to_string())?
    }

    /// Writes pending records and final checkpoints, then stops the writer.
    pub async fn close(&self) {
        let Some(shared) = &self.shared else { return };
        let (ack, done) = oneshot::channel();
        if shared.tx.send(Job::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
        let thread = shared.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn writer_loop(mut w: LogWriter, mut rx: mpsc::Receiver<Job>) {
    type Ack = Option<oneshot::Sender<Result<Receipt, AuditError>>>;
    fn flush(w: &mut LogWriter, pending: &mut Vec<(Scope, Actor, Event)>, acks: &mut Vec<Ack>) {
        if pending.is_empty() {
            return;
        }
        let results = w.append_batch(pending);
        for (r, ack) in results.into_iter().zip(acks.drain(..)) {
            if let Err(e) = &r {
                crate::metrics::audit_write_failed();
                tracing::error!(error = %e, "Audit record not written.");
            }
            if let Some(ack) = ack {
                let _ = ack.send(r);
            }
        }
        pending.clear();
    }
    let mut pending = Vec::new();
    let mut acks: Vec<Ack> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        for job in jobs {
            match job {
                Job::Append(scope, actor, event, ack) => {
                    pending.push((scope, actor, *event));
                    acks.push(ack);
                }
                Job::Checkpoint(scope, ack) => {
                    flush(&mut w, &mut pending, &mut acks);
                    let _ = ack.send(w.checkpoint(&scope));
                }
                Job::Close(ack) => {
                    flush(&mut w, &mut pending, &mut acks);
                    w.checkpoint_all();
                    let _ = ack.send(());
                    return;
                }
            }
        }
        flush(&mut w, &mut pending, &mut acks);
    }
    w.checkpoint_all();
}

//! The audit keys, held like the tenant keys. `audit/keys.age` is age-encrypted to the master key
//! and carries a MAC keyed from the master secret, so a key file planted by someone without the
//! master key is refused. It holds a random key-encryption key and the Ed25519 key that signs
//! checkpoints. Every log has its own random key (`host.key`, `tenants/<id>.key`), sealed with the
//! key-encryption key and bound to the log's name; its chain, sealing and digest keys are derived
//! from it. Deleting a tenant deletes its log key, so a tenant re-created with the same id gets a
//! new key that opens nothing of the old log (crypto-shredding).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ring::hmac;
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};

use super::Scope;
use crate::crypto::{NONCE_LEN, RecordKey, SigningKey, hex, random, unhex};
use crate::fsutil;
use crate::store::MasterKey;

/// The plaintext inside `keys.age` (version 2: per-log random keys).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyFile {
    v: u32,
    kek: String,
    signing: String,
    mac: String,
}

/// Only the version of a key file, to refuse an older format with a clear message.
#[derive(Deserialize)]
struct KeyFileVersion {
    v: u32,
}

const VERSION: u32 = 2;
const KEY_FILE: &str = "keys.age";
/// Written before a master-key rotation commits; see [`AuditKeys::prepare_rewrap`].
const NEXT_KEY_FILE: &str = "keys.next.age";
/// The first bytes of a log key file.
const LOG_KEY_MAGIC: &[u8] = b"bulkhead-audit-log-key v1\n";

/// One log's keys, derived from its random key.
pub struct LogKey {
    chain: hmac::Key,
    seal: RecordKey,
    digest: hmac::Key,
}

impl LogKey {
    fn derive(secret: &[u8; 32], scope: &Scope) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let sub = |label: &str| -> [u8; 32] {
            let tag = hmac::sign(&root, format!("bulkhead/audit/v2/{label}\0{}", scope.name()).as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(tag.as_ref());
            out
        };
        Self {
            chain: hmac::Key::new(hmac::HMAC_SHA256, &sub("chain")),
            seal: RecordKey::new(&sub("seal")),
            digest: hmac::Key::new(hmac::HMAC_SHA256, &sub("digest")),
        }
    }

    /// The HMAC key of the log's chain.
    pub fn chain(&self) -> &hmac::Key {
        &self.chain
    }

    /// The key that seals the log's records.
    pub fn seal(&self) -> &RecordKey {
        &self.seal
    }

    fn digest(&self, what: &str, bytes: &[u8]) -> String {
        let tag = hmac::sign(&self.digest, &[what.as_bytes(), b"\0", bytes].concat());
        hex(&tag.as_ref()[..16])
    }
}

pub struct AuditKeys {
    dir: PathBuf,
    kek: RecordKey,
    signing: SigningKey,
    public: [u8; 32],
    /// The key file's contents (hex), to re-wrap them on a master-key rotation.
    file_kek: String,
    file_signing: String,
    /// Whether missing log keys may be made (the holder of `audit/lock`), or only read.
    writable: bool,
    /// Log keys read or made so far, by log name.
    logs: Mutex<HashMap<String, Arc<LogKey>>>,
}

impl AuditKeys {
    fn from_parts(dir: &Path, kek: &[u8], pkcs8: &[u8], writable: bool) -> Result<Self, String> {
        let signing = SigningKey::from_pkcs8(pkcs8).ok_or("the signing key is not PKCS#8 Ed25519")?;
        let kek: [u8; 32] = kek.try_into().map_err(|_| "the audit key file holds no valid key-encryption key")?;
        let public = signing.public_key();
        Ok(Self {
            dir: dir.to_path_buf(),
            kek: RecordKey::new(&kek),
            signing,
            public,
            file_kek: hex(&kek),
            file_signing: hex(pkcs8),
            writable,
            logs: Mutex::new(HashMap::new()),
        })
    }

    fn mac_parts(&self) -> [&[u8]; 3] {
        [b"audit-keys/v2", self.file_kek.as_bytes(), self.file_signing.as_bytes()]
    }

    /// The key file's bytes, wrapped to `master`.
    fn wrap(&self, master: &MasterKey) -> Result<Vec<u8>, String> {
        let file = KeyFile {
            v: VERSION,
            kek: self.file_kek.clone(),
            signing: self.file_signing.clone(),
            mac: master.mac(&self.mac_parts()),
        };
        master.wrap(&serde_json::to_vec(&file).map_err(|e| e.to_string())?)
    }

    /// First step of a master-key rotation: writes `keys.next.age`, wrapped to `new`. Once the
    /// store has committed to the new key, [`AuditKeys::finish_rewrap`] (or the next `load` with
    /// the new key) moves it into place; `load` with the old key discards it. The log keys are
    /// sealed with the key-encryption key inside `keys.age`, so they follow it unchanged.
    pub fn prepare_rewrap(&self, dir: &Path, new: &MasterKey) -> Result<(), String> {
        let path = dir.join(NEXT_KEY_FILE);
        fsutil::write_atomic(&path, &self.wrap(new)?).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Moves `keys.next.age` into place (the store now opens only with the new master key).
    pub fn finish_rewrap(dir: &Path) -> Result<(), String> {
        let (next, path) = (dir.join(NEXT_KEY_FILE), dir.join(KEY_FILE));
        std::fs::rename(&next, &path).map_err(|e| format!("cannot rename {}: {e}", next.display()))?;
        fsutil::sync_dir(dir).map_err(|e| format!("cannot sync {}: {e}", dir.display()))
    }

    /// Drops an uncommitted `keys.next.age` (a failed rotation).
    pub fn discard_rewrap(dir: &Path) {
        let _ = fsutil::remove_file_if_exists(&dir.join(NEXT_KEY_FILE));
    }

    /// Opens `dir/keys.age`. With `create` (the holder of `audit/lock`) it is made when it does
    /// not exist, and missing log keys may be made later. Finishes or discards an interrupted
    /// master-key rotation (see [`AuditKeys::prepare_rewrap`]).
    pub fn load(dir: &Path, master: &MasterKey, create: bool) -> Result<Self, String> {
        let path = dir.join(KEY_FILE);
        let next = dir.join(NEXT_KEY_FILE);
        if let Ok(bytes) = std::fs::read(&next) {
            let current = std::fs::read(&path).ok().and_then(|b| Self::unwrap(dir, &b, master, create).ok());
            match (current, Self::unwrap(dir, &bytes, master, create)) {
                (Some(_), _) => Self::discard_rewrap(dir),
                (None, Ok(_)) => Self::finish_rewrap(dir)?,
                (None, Err(_)) => {}
            }
        }
        match std::fs::read(&path) {
            Ok(bytes) => Self::unwrap(dir, &bytes, master, create).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let rng = SystemRandom::new();
                let kek: [u8; 32] = random(&rng)?;
                let pkcs8 = SigningKey::generate_pkcs8(&rng).ok_or("cannot generate a signing key")?;
                let keys = Self::from_parts(dir, &kek, &pkcs8, true)?;
                let wrapped = keys.wrap(master)?;
                fsutil::write_atomic(&path, &wrapped).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                tracing::info!("Created the audit keys.");
                Ok(keys)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(format!("{} does not exist: no audit log has been written on this host", path.display()))
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn unwrap(dir: &Path, bytes: &[u8], master: &MasterKey, writable: bool) -> Result<Self, String> {
        let json = master
            .unwrap(bytes)
            .ok_or_else(|| format!("the master key ({}) does not open the audit keys", master.origin))?;
        let version: KeyFileVersion =
            serde_json::from_slice(&json).map_err(|_| "the audit key file has an unknown format")?;
        if version.v == 1 {
            return Err(format!(
                "the audit keys are in the old format (version 1: per-log keys derived from the log's name), which this \
                 version no longer writes; move {} aside (keep it as evidence), then start again to make new audit keys",
                dir.display()
            ));
        }
        if version.v != VERSION {
            return Err(format!("the audit key file has unsupported version {}", version.v));
        }
        let f: KeyFile = serde_json::from_slice(&json).map_err(|_| "the audit key file has an unknown format")?;
        let kek =
            unhex(&f.kek).filter(|r| r.len() == 32).ok_or("the audit key file holds no valid key-encryption key")?;
        let pkcs8 = unhex(&f.signing).ok_or("the audit key file holds no valid signing key")?;
        let keys = Self::from_parts(dir, &kek, &pkcs8, writable)?;
        if !master.verify(&keys.mac_parts(), &f.mac) {
            return Err("the audit key file fails authentication (not made with this master key)".into());
        }
        Ok(keys)
    }

    /// A log's key, if it has one (read from its key file once, then kept).
    pub fn log_key(&self, scope: &Scope) -> Result<Option<Arc<LogKey>>, String> {
        let mut logs = self.logs.lock().map_err(|_| "the audit key cache is poisoned".to_string())?;
        if let Some(k) = logs.get(&scope.name()) {
            return Ok(Some(k.clone()));
        }
        let path = scope.key_path(&self.dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let secret = self.open_log_key(scope, &bytes).ok_or_else(|| {
            format!("{} does not open with this host's audit keys (damaged, or another log's key)", path.display())
        })?;
        let key = Arc::new(LogKey::derive(&secret, scope));
        logs.insert(scope.name(), key.clone());
        Ok(Some(key))
    }

    /// A log's key, made (random, sealed into its key file) when the log has none and holds no
    /// record yet. A log with records but no key is an error: its key was deleted.
    pub fn log_key_or_create(&self, scope: &Scope) -> Result<Arc<LogKey>, String> {
        if let Some(k) = self.log_key(scope)? {
            return Ok(k);
        }
        if !self.writable {
            return Err(format!("log {scope} has no key (read-only)"));
        }
        let mut logs = self.logs.lock().map_err(|_| "the audit key cache is poisoned".to_string())?;
        if let Some(k) = logs.get(&scope.name()) {
            return Ok(k.clone());
        }
        let log = scope.log_path(&self.dir);
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
            return Err(format!(
                "the key file {} is missing although the log holds records (deleted?)",
                scope.key_path(&self.dir).display()
            ));
        }
        let rng = SystemRandom::new();
        let secret: [u8; 32] = random(&rng)?;
        let mut file = LOG_KEY_MAGIC.to_vec();
        file.extend_from_slice(&self.kek.seal_frame(&rng, "audit-log-key", &scope.name(), 0, &secret)?);
        let path = scope.key_path(&self.dir);
        fsutil::write_atomic(&path, &file).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let key = Arc::new(LogKey::derive(&secret, scope));
        logs.insert(scope.name(), key.clone());
        Ok(key)
    }

    fn open_log_key(&self, scope: &Scope, bytes: &[u8]) -> Option<[u8; 32]> {
        let frame = bytes.strip_prefix(LOG_KEY_MAGIC)?;
        if frame.len() < 4 + NONCE_LEN {
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&frame[4..4 + NONCE_LEN]);
        let secret = self.kek.open("audit-log-key", &scope.name(), 0, &nonce, &frame[4 + NONCE_LEN..])?;
        secret.try_into().ok()
    }

    /// Forgets a log's key (its key file was deleted with its tenant).
    pub(crate) fn forget(&self, scope: &Scope) {
        if let Ok(mut logs) = self.logs.lock() {
            logs.remove(&scope.name());
        }
    }

    /// A keyed digest (128 bits, hex) of an identifier such as a session key or a client
    /// address, for a record of `scope`: equal inputs give equal digests within a log, and the
    /// input cannot be recovered without the log's key. `unavailable` when the log has no
    /// usable key (then its records are refused anyway).
    pub fn digest(&self, scope: &Scope, what: &str, bytes: &[u8]) -> String {
        let key = if self.writable { self.log_key_or_create(scope).ok() } else { self.log_key(scope).ok().flatten() };
        key.map_or_else(|| "unavailable".to_string(), |k| k.digest(what, bytes))
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signing.sign(message)
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }
}

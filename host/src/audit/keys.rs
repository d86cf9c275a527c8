//! The audit keys, held like the tenant keys: `audit/keys.age` is age-encrypted to the master key
//! and carries a MAC keyed from the master secret, so a key file planted by someone without the
//! master key is refused. It holds a random chain root (per-log HMAC, sealing and digest keys are
//! derived from it) and the Ed25519 key that signs checkpoints.

use std::path::Path;

use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use super::Scope;
use crate::store::{MasterKey, RecordKey, fsutil, hex, random, unhex};

/// The plaintext inside `keys.age`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyFile {
    v: u32,
    root: String,
    signing: String,
    mac: String,
}

pub struct AuditKeys {
    root: hmac::Key,
    signing: Ed25519KeyPair,
    public: [u8; 32],
    /// The key file's contents (hex), to re-wrap them on a master-key rotation.
    file_root: String,
    file_signing: String,
}

const KEY_FILE: &str = "keys.age";
/// Written before a master-key rotation commits; see [`AuditKeys::prepare_rewrap`].
const NEXT_KEY_FILE: &str = "keys.next.age";

impl AuditKeys {
    /// Fresh keys (for a new host, and for tests).
    pub fn generate() -> Result<Self, String> {
        let rng = SystemRandom::new();
        let root: [u8; 32] = random(&rng)?;
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "cannot generate a signing key".to_string())?;
        Self::from_parts(&root, pkcs8.as_ref()).map(|(k, _)| k)
    }

    fn from_parts(root: &[u8], pkcs8: &[u8]) -> Result<(Self, KeyFile), String> {
        let signing = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| "the signing key is not PKCS#8 Ed25519")?;
        let mut public = [0u8; 32];
        public.copy_from_slice(signing.public_key().as_ref());
        let file = KeyFile { v: 1, root: hex(root), signing: hex(pkcs8), mac: String::new() };
        let keys = Self {
            root: hmac::Key::new(hmac::HMAC_SHA256, root),
            signing,
            public,
            file_root: file.root.clone(),
            file_signing: file.signing.clone(),
        };
        Ok((keys, file))
    }

    /// The key file's bytes, wrapped to `master`.
    fn wrap(&self, master: &MasterKey) -> Result<Vec<u8>, String> {
        let mac = master.mac(&[b"audit-keys", self.file_root.as_bytes(), self.file_signing.as_bytes()]);
        let file = KeyFile { v: 1, root: self.file_root.clone(), signing: self.file_signing.clone(), mac };
        master.wrap(&serde_json::to_vec(&file).map_err(|e| e.to_string())?)
    }

    /// First step of a master-key rotation: writes `keys.next.age`, wrapped to `new`. Once the
    /// store has committed to the new key, [`AuditKeys::finish_rewrap`] (or the next `load` with
    /// the new key) moves it into place; `load` with the old key discards it.
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

    /// Opens `dir/keys.age`, creating it when `create` and it does not exist. Finishes or
    /// discards an interrupted master-key rotation (see [`AuditKeys::prepare_rewrap`]).
    pub fn load(dir: &Path, master: &MasterKey, create: bool) -> Result<Self, String> {
        let path = dir.join(KEY_FILE);
        let next = dir.join(NEXT_KEY_FILE);
        if let Ok(bytes) = std::fs::read(&next) {
            let current = std::fs::read(&path).ok().and_then(|b| Self::unwrap(&b, master).ok());
            match (current, Self::unwrap(&bytes, master)) {
                (Some(_), _) => Self::discard_rewrap(dir),
                (None, Ok(_)) => Self::finish_rewrap(dir)?,
                (None, Err(_)) => {}
            }
        }
        match std::fs::read(&path) {
            Ok(bytes) => Self::unwrap(&bytes, master).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let rng = SystemRandom::new();
                let root: [u8; 32] = random(&rng)?;
                let pkcs8 =
                    Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "cannot generate a signing key".to_string())?;
                let (keys, _) = Self::from_parts(&root, pkcs8.as_ref())?;
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

    fn unwrap(bytes: &[u8], master: &MasterKey) -> Result<Self, String> {
        let json = master
            .unwrap(bytes)
            .ok_or_else(|| format!("the master key ({}) does not open the audit keys", master.origin))?;
        let f: KeyFile = serde_json::from_slice(&json).map_err(|_| "the audit key file has an unknown format")?;
        if f.v != 1 {
            return Err(format!("the audit key file has unsupported version {}", f.v));
        }
        if !master.verify(&[b"audit-keys", f.root.as_bytes(), f.signing.as_bytes()], &f.mac) {
            return Err("the audit key file fails authentication (not made with this master key)".into());
        }
        let root = unhex(&f.root).filter(|r| r.len() == 32).ok_or("the audit key file holds no valid root key")?;
        let pkcs8 = unhex(&f.signing).ok_or("the audit key file holds no valid signing key")?;
        Self::from_parts(&root, &pkcs8).map(|(k, _)| k)
    }

    fn derive(&self, label: &str, scope: &Scope) -> [u8; 32] {
        let tag = hmac::sign(&self.root, format!("bulkhead/audit/v1/{label}\0{}", scope.name()).as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The HMAC key of a log's chain.
    pub fn chain_key(&self, scope: &Scope) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.derive("chain", scope))
    }

    /// The key that seals a log's records.
    pub fn seal_key(&self, scope: &Scope) -> RecordKey {
        RecordKey::new(&self.derive("seal", scope))
    }

    /// A keyed digest (128 bits, hex) of an identifier such as a session key or a client
    /// address: equal inputs give equal digests within a log, and the input cannot be recovered
    /// without the audit keys.
    pub fn digest(&self, scope: &Scope, what: &str, bytes: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.derive("digest", scope));
        let tag = hmac::sign(&key, &[what.as_bytes(), b"\0", bytes].concat());
        hex(&tag.as_ref()[..16])
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signing.sign(message).as_ref().to_vec()
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }
}

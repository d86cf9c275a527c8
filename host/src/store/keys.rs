//! Key custody: the operator's master key, tenant identities wrapped to it, and the keys derived
//! from each identity (MAC key for binding, keyed hashes for file names).
//!
//! A tenant identity is an age X25519 identity. On disk it exists only inside `identity.age`,
//! encrypted to the master key and carrying a MAC keyed from the master secret, so a fresh age
//! file planted by someone who does not hold the master key is rejected.

use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::config::{SecretRef, SecretString};
use crate::crypto::{RecordKey, derive_key, derive_mac_key, hex, mac_parts, verify_parts};

/// The operator's master key: an age X25519 identity (`AGE-SECRET-KEY-1...`).
pub struct MasterKey {
    identity: x25519::Identity,
    recipient: x25519::Recipient,
    mac: hmac::Key,
    /// Where it came from, for messages (`file /etc/bulkhead/master.key`, `env BULKHEAD_MASTER_KEY`).
    pub origin: String,
}

/// Why a master key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("cannot read the master key ({origin}): {reason}")]
    Unreadable { origin: String, reason: String },
    #[error("the master key ({origin}) is not an age identity (expected AGE-SECRET-KEY-1...)")]
    Invalid { origin: String },
    #[error("the master key file {path} is accessible by group or others (mode {mode:04o}); run `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("the master key file {path} lies inside the state directory {state_dir}; keep it outside")]
    InsideStateDir { path: String, state_dir: String },
}

impl MasterKey {
    /// Parses a master key from its text.
    pub fn from_secret(secret: &SecretString, origin: String) -> Result<Self, MasterKeyError> {
        let identity = x25519::Identity::from_str(secret.expose().trim())
            .map_err(|_| MasterKeyError::Invalid { origin: origin.clone() })?;
        Ok(Self::from_identity(identity, origin))
    }

    pub fn from_identity(identity: x25519::Identity, origin: String) -> Self {
        let recipient = identity.to_public();
        let secret = identity.to_string();
        let mac = derive_mac_key(secret.expose_secret().as_bytes(), b"bulkhead/master/v1/mac");
        Self { identity, recipient, mac, origin }
    }

    /// Generates a new master key (for `keys init` and tests).
    pub fn generate(origin: String) -> Self {
        Self::from_identity(x25519::Identity::generate(), origin)
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        format!("{}\n", self.identity.to_string().expose_secret())
    }

    /// Loads the configured master key, checking a key file's permissions and location.
    pub fn load(reference: &SecretRef, base: &Path, state_dir: &Path) -> Result<Self, MasterKeyError> {
        let origin = match reference {
            SecretRef::Env(name) => format!("env {name}"),
            SecretRef::File(p) => format!("file {}", base.join(p).display()),
            SecretRef::Literal(_) => "a literal in the config".to_string(),
        };
        if let SecretRef::File(p) = reference {
            let path = base.join(p);
            let shown = path.display().to_string();
            let mode = crate::fsutil::mode_of(&path)
                .map_err(|e| MasterKeyError::Unreadable { origin: origin.clone(), reason: e.to_string() })?;
            if mode & 0o077 != 0 {
                return Err(MasterKeyError::Permissions { path: shown, mode });
            }
            if let (Ok(k), Ok(s)) = (path.canonicalize(), state_dir.canonicalize())
                && k.starts_with(&s)
            {
                return Err(MasterKeyError::InsideStateDir { path: shown, state_dir: state_dir.display().to_string() });
            }
        }
        let secret =
            reference.resolve(base).map_err(|reason| MasterKeyError::Unreadable { origin: origin.clone(), reason })?;
        Self::from_secret(&secret, origin)
    }

    /// Whether two keys are the same identity (compared by public key).
    pub fn same_key(&self, other: &MasterKey) -> bool {
        self.recipient.to_string() == other.recipient.to_string()
    }

    pub fn wrap(&self, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        age::encrypt(&self.recipient, plaintext).map_err(|e| format!("age encryption failed: {e}"))
    }

    pub fn unwrap(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        age::decrypt(&self.identity, ciphertext).ok()
    }

    pub fn mac(&self, parts: &[&[u8]]) -> String {
        mac_parts(&self.mac, parts)
    }

    pub fn verify(&self, parts: &[&[u8]], tag_hex: &str) -> bool {
        verify_parts(&self.mac, parts, tag_hex)
    }
}

/// A tenant's unwrapped identity and the keys derived from it.
pub struct TenantKeys {
    pub identity: x25519::Identity,
    pub recipient: x25519::Recipient,
    mac: hmac::Key,
    /// Seals session metadata (format 2): derived from the identity, so shredding the identity
    /// shreds it too.
    meta: RecordKey,
}

/// The plaintext inside `identity.age`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WrappedIdentity {
    v: u32,
    tenant: String,
    identity: String,
    mac: String,
}

impl TenantKeys {
    pub fn generate() -> Self {
        Self::from_identity(x25519::Identity::generate())
    }

    fn from_identity(identity: x25519::Identity) -> Self {
        let recipient = identity.to_public();
        let secret = identity.to_string();
        let mac = derive_mac_key(secret.expose_secret().as_bytes(), b"bulkhead/tenant/v1/mac");
        let meta = RecordKey::new(&derive_key(secret.expose_secret().as_bytes(), b"bulkhead/tenant/v2/meta"));
        Self { identity, recipient, mac, meta }
    }

    /// `identity.age` for `tenant`, wrapped to `master`.
    pub fn wrap(&self, tenant: &str, master: &MasterKey) -> Result<Vec<u8>, String> {
        let secret = self.identity.to_string();
        let id = secret.expose_secret();
        let w = WrappedIdentity {
            v: 1,
            tenant: tenant.to_string(),
            identity: id.to_string(),
            mac: master.mac(&[b"identity", tenant.as_bytes(), id.as_bytes()]),
        };
        let json = serde_json::to_vec(&w).map_err(|e| e.to_string())?;
        master.wrap(&json)
    }

    /// Opens `identity.age`; errors say why without showing any key material.
    pub fn unwrap(tenant: &str, master: &MasterKey, ciphertext: &[u8]) -> Result<Self, String> {
        let json = master
            .unwrap(ciphertext)
            .ok_or_else(|| format!("the master key ({}) does not open this identity", master.origin))?;
        let w: WrappedIdentity =
            serde_json::from_slice(&json).map_err(|_| "the identity file has an unknown format".to_string())?;
        if w.v != 1 {
            return Err(format!("the identity file has unsupported version {}", w.v));
        }
        if w.tenant != tenant {
            return Err("the identity file belongs to another tenant (moved or replaced)".into());
        }
        if !master.verify(&[b"identity", tenant.as_bytes(), w.identity.as_bytes()], &w.mac) {
            return Err(
                "the identity file fails authentication (replaced by a file not made with the master key)".into()
            );
        }
        let identity = x25519::Identity::from_str(&w.identity)
            .map_err(|_| "the identity file holds no valid identity".to_string())?;
        Ok(Self::from_identity(identity))
    }

    /// The directory name of a session: a keyed hash, so no session key or peer id is on disk.
    pub fn session_id(&self, session_key: &str) -> String {
        let tag = hmac::sign(&self.mac, &[b"session-id\0".as_slice(), session_key.as_bytes()].concat());
        hex(&tag.as_ref()[..16])
    }

    pub fn mac(&self, parts: &[&[u8]]) -> String {
        mac_parts(&self.mac, parts)
    }

    pub fn verify(&self, parts: &[&[u8]], tag_hex: &str) -> bool {
        verify_parts(&self.mac, parts, tag_hex)
    }

    /// The key that seals session metadata.
    pub fn meta_key(&self) -> &RecordKey {
        &self.meta
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        age::encrypt(&self.recipient, plaintext).map_err(|e| format!("age encryption failed: {e}"))
    }

    pub fn decrypt(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        age::decrypt(&self.identity, ciphertext).ok()
    }
}

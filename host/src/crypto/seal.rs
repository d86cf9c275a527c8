//! The record AEAD: ChaCha20-Poly1305 frames sealed to `(tenant, stream, position)`.
//!
//! A frame is `u32 LE length ‖ 12-byte nonce ‖ ciphertext+tag`. The associated data binds each
//! record to its tenant (or log), its stream (a session id, or the audit log's name) and its
//! sequence number, so a record moved to another stream or position fails to open. The store
//! seals transcript records with it; the audit log seals its records and log keys.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// The associated data of record `seq` of stream `sid` of `tenant`.
fn aad(tenant: &str, sid: &str, seq: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(64);
    a.extend_from_slice(b"bulkhead/record/v1\0");
    a.extend_from_slice(tenant.as_bytes());
    a.push(0);
    a.extend_from_slice(sid.as_bytes());
    a.push(0);
    a.extend_from_slice(&seq.to_be_bytes());
    a
}

/// A data key, ready to seal and open records.
pub struct RecordKey(LessSafeKey);

impl RecordKey {
    pub fn new(bytes: &[u8; 32]) -> Self {
        // A 32-byte key is always valid for ChaCha20-Poly1305.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32-byte chacha20-poly1305 key");
        Self(LessSafeKey::new(unbound))
    }

    /// Seals one record into a complete frame. The nonce is random (never derived from `seq`), so
    /// rewriting a position after a torn write never reuses a nonce.
    pub fn seal_frame(
        &self,
        rng: &SystemRandom,
        tenant: &str,
        sid: &str,
        seq: u64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| "the system random source failed".to_string())?;
        let mut buf = Vec::with_capacity(4 + NONCE_LEN + plaintext.len() + TAG_LEN);
        let len = u32::try_from(plaintext.len() + TAG_LEN).map_err(|_| "record too large".to_string())?;
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad(tenant, sid, seq)), &mut body)
            .map_err(|_| "record encryption failed".to_string())?;
        buf.extend_from_slice(&body);
        Ok(buf)
    }

    /// Opens a frame's body; `None` when it does not authenticate at this tenant/stream/position.
    pub fn open(&self, tenant: &str, sid: &str, seq: u64, nonce: &[u8; NONCE_LEN], body: &[u8]) -> Option<Vec<u8>> {
        let mut buf = body.to_vec();
        let pt = self
            .0
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad(tenant, sid, seq)), &mut buf)
            .ok()?;
        let n = pt.len();
        buf.truncate(n);
        Some(buf)
    }
}

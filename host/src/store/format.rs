//! The on-disk formats of the store: record plaintext (versioned JSON), segment framing, and the
//! AEAD that seals each record to its tenant, session and position.
//!
//! A segment file is `SEGMENT_MAGIC` followed by frames `u32 LE length ‖ 12-byte nonce ‖
//! ChaCha20-Poly1305 ciphertext+tag`. The associated data binds each record to
//! `(tenant, session id, sequence number)`, so a record that is moved to another session or
//! tenant, or to another position, fails to open.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::session::{Message, ToolCall};

pub const SEGMENT_MAGIC: &[u8; 8] = b"BHSEG01\n";
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Largest sealed record accepted when reading (a bound on what a corrupted length can ask for).
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;
pub const RECORD_VERSION: u32 = 1;

/// A transcript entry as stored (inside the ciphertext).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    pub v: u32,
    /// Unix milliseconds at append.
    pub ts: u64,
    pub msg: RecordMessage,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "role", rename_all = "camelCase", deny_unknown_fields)]
pub enum RecordMessage {
    User {
        text: String,
    },
    /// Sent by `sessions_send` from another session (`from`: its session key).
    Session {
        from: String,
        text: String,
    },
    Assistant {
        text: String,
        #[serde(rename = "toolCalls")]
        tool_calls: Vec<RecordToolCall>,
    },
    Tool {
        #[serde(rename = "callId")]
        call_id: String,
        name: String,
        content: String,
        #[serde(rename = "isError")]
        is_error: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecordToolCall {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

impl From<&Message> for RecordMessage {
    fn from(m: &Message) -> Self {
        match m {
            Message::User { text } => RecordMessage::User { text: text.clone() },
            Message::FromSession { from, text } => RecordMessage::Session { from: from.clone(), text: text.clone() },
            Message::Assistant { text, tool_calls } => RecordMessage::Assistant {
                text: text.clone(),
                tool_calls: tool_calls
                    .iter()
                    .map(|c| RecordToolCall { id: c.id.clone(), name: c.name.clone(), arguments: c.arguments.clone() })
                    .collect(),
            },
            Message::ToolResult { call_id, name, content, is_error } => RecordMessage::Tool {
                call_id: call_id.clone(),
                name: name.clone(),
                content: content.clone(),
                is_error: *is_error,
            },
        }
    }
}

impl From<RecordMessage> for Message {
    fn from(m: RecordMessage) -> Self {
        match m {
            RecordMessage::User { text } => Message::User { text },
            RecordMessage::Session { from, text } => Message::FromSession { from, text },
            RecordMessage::Assistant { text, tool_calls } => Message::Assistant {
                text,
                tool_calls: tool_calls
                    .into_iter()
                    .map(|c| ToolCall { id: c.id, name: c.name, arguments: c.arguments })
                    .collect(),
            },
            RecordMessage::Tool { call_id, name, content, is_error } => {
                Message::ToolResult { call_id, name, content, is_error }
            }
        }
    }
}

/// The associated data of record `seq` of session `sid` of `tenant`.
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

/// A session's data key, ready to seal and open records.
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

    /// Opens a frame's body; `None` when it does not authenticate at this tenant/session/position.
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

/// One frame as found in a segment (not yet authenticated).
pub struct RawFrame<'a> {
    pub offset: usize,
    pub nonce: [u8; NONCE_LEN],
    pub body: &'a [u8],
}

/// What splitting a segment into frames found.
pub struct Frames<'a> {
    pub frames: Vec<RawFrame<'a>>,
    /// Byte offset where a torn (incomplete or zero-filled) tail starts, if any.
    pub torn_at: Option<usize>,
}

/// Splits a segment's bytes into frames. A final frame that is incomplete, or whose bytes are all
/// zero (a crash can leave a zero-filled extension), is a torn tail; anything else malformed is
/// returned as an error.
pub fn split_frames(bytes: &[u8]) -> Result<Frames<'_>, String> {
    if bytes.len() < SEGMENT_MAGIC.len() {
        // A segment whose header write was torn: it never held an acknowledged record.
        return Ok(Frames { frames: Vec::new(), torn_at: Some(0) });
    }
    if &bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        return Err("the segment header is not a bulkhead segment".into());
    }
    let mut frames = Vec::new();
    let mut pos = SEGMENT_MAGIC.len();
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.iter().all(|b| *b == 0) {
            return Ok(Frames { frames, torn_at: Some(pos) });
        }
        if rest.len() < 4 + NONCE_LEN {
            return Ok(Frames { frames, torn_at: Some(pos) });
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if !(TAG_LEN..=MAX_RECORD_BYTES).contains(&len) {
            return Err(format!("a record length at byte {pos} is out of range"));
        }
        if rest.len() < 4 + NONCE_LEN + len {
            return Ok(Frames { frames, torn_at: Some(pos) });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&rest[4..4 + NONCE_LEN]);
        frames.push(RawFrame { offset: pos, nonce, body: &rest[4 + NONCE_LEN..4 + NONCE_LEN + len] });
        pos += 4 + NONCE_LEN + len;
    }
    Ok(Frames { frames, torn_at: None })
}

/// Fresh random bytes.
pub fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    rng.fill(&mut b).map_err(|_| "the system random source failed".to_string())?;
    Ok(b)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

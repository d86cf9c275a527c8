//! The on-disk formats of the store: record plaintext (versioned JSON) and segment framing. Each
//! record is sealed with `crypto::RecordKey`, the AEAD that binds it to its tenant, session and
//! position.
//!
//! A segment file is `SEGMENT_MAGIC` followed by frames `u32 LE length ‖ 12-byte nonce ‖
//! ChaCha20-Poly1305 ciphertext+tag`. The associated data binds each record to
//! `(tenant, session id, sequence number)`, so a record that is moved to another session or
//! tenant, or to another position, fails to open.

use serde::{Deserialize, Serialize};

use crate::crypto::{NONCE_LEN, TAG_LEN};
use crate::session::{Message, ToolCall};

pub const SEGMENT_MAGIC: &[u8; 8] = b"BHSEG01\n";
/// A session file (format 2): this, `u32 LE` length of the sealed metadata, the metadata, then
/// segment 0's frames.
pub const SESSION_MAGIC: &[u8; 8] = b"BHSES01\n";
/// Largest sealed metadata accepted in a session file's header.
const MAX_META_BYTES: usize = 64 * 1024;
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
    frames_from(bytes, SEGMENT_MAGIC.len())
}

/// The sealed metadata in a session file's header and the header's length; `None` for an empty
/// file (a creation whose bytes never reached the disk, so never acknowledged: no session). A
/// header cut short is an error: it was written with the session's first records, in one page.
pub fn session_header(bytes: &[u8]) -> Result<Option<(&[u8], usize)>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if !bytes.starts_with(SESSION_MAGIC) {
        return Err("the header is not a bulkhead session file (or is cut short)".into());
    }
    let Some(len) = bytes.get(8..12) else { return Err("the header is cut short".into()) };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_META_BYTES {
        return Err("the metadata length in the header is out of range".into());
    }
    match bytes.get(12..12 + len) {
        Some(meta) => Ok(Some((meta, 12 + len))),
        None => Err("the header is cut short (or its metadata length was changed)".into()),
    }
}

/// A session file's header for `meta`.
pub fn session_header_for(meta: &[u8]) -> Vec<u8> {
    [SESSION_MAGIC.as_slice(), &(meta.len() as u32).to_le_bytes(), meta].concat()
}

/// Splits the frames of a session file (after its `header` bytes, already verified).
pub fn split_session_frames(bytes: &[u8], header: usize) -> Result<Frames<'_>, String> {
    if bytes.len() < header {
        return Err("the session file is shorter than its header".into());
    }
    frames_from(bytes, header)
}

/// The frames of a journal entry (`store::journal`): all complete, or an error.
pub fn frames_in(bytes: &[u8]) -> Result<Vec<RawFrame<'_>>, String> {
    let f = frames_from(bytes, 0)?;
    match f.torn_at {
        None => Ok(f.frames),
        Some(at) => Err(format!("a record at byte {at} is incomplete")),
    }
}

fn frames_from(bytes: &[u8], start: usize) -> Result<Frames<'_>, String> {
    let mut frames = Vec::new();
    let mut pos = start;
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

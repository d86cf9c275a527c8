//! The chain: how a record becomes a line, how a log is verified, and signed checkpoints.

use ring::hmac;
use ring::rand::SystemRandom;
use serde::{Deserialize, Serialize};

use super::keys::LogKey;
use super::{AuditKeys, Scope};
use crate::crypto::{NONCE_LEN, format_public_key, hex, parse_public_key, unhex, verify_signature};

const DOMAIN: &[u8] = b"bulkhead-audit v1\0";
const CHECKPOINT_HEADER: &str = "bulkhead-audit-checkpoint v1";
/// Largest line accepted when reading a log (a record is far smaller).
const MAX_LINE: usize = 1 << 20;

/// The MAC of record `seq` with sealed bytes `sealed`, chained to `prev`.
pub(crate) fn link(key: &hmac::Key, prev: &[u8; 32], seq: u64, sealed: &[u8]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(DOMAIN);
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(sealed);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Seals a record's JSON and returns its line (with newline) and its MAC.
pub(crate) fn encode_line(
    key: &LogKey,
    rng: &SystemRandom,
    scope: &Scope,
    prev: &[u8; 32],
    seq: u64,
    json: &[u8],
) -> Result<(Vec<u8>, [u8; 32]), String> {
    let sealed = key.seal().seal_frame(rng, &scope.name(), "audit", seq, json)?;
    let mac = link(key.chain(), prev, seq, &sealed);
    let line = format!("{seq} {} {}\n", hex(&mac), hex(&sealed));
    Ok((line.into_bytes(), mac))
}

/// A log that verified: how many records, the head MAC, and any torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub head: [u8; 32],
    /// Length of the verified prefix (complete lines); bytes after it are a torn tail.
    pub good_len: usize,
    /// Bytes of an incomplete final line (a crash during an append that was never acknowledged).
    pub torn_bytes: usize,
}

/// The first place a log fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {seq}: {reason}")]
pub struct Broken {
    /// The first bad sequence number.
    pub seq: u64,
    pub reason: String,
}

struct Line<'a> {
    seq: u64,
    mac: [u8; 32],
    sealed: Vec<u8>,
    _text: &'a [u8],
}

fn parse_line(line: &[u8]) -> Option<Line<'_>> {
    // One spelling per record, the one `encode_line` writes: a decimal number without sign or
    // leading zero, lower-case hex. Another spelling of the same bytes (`+1`, `01`, `AB`) would
    // verify too, so that a line could be changed unseen.
    if line.first().is_none_or(|b| *b == b'0') || !line.iter().all(|b| matches!(b, b' ' | b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split(' ');
    let seq = parts.next()?.parse::<u64>().ok()?;
    let mac: [u8; 32] = unhex(parts.next()?)?.try_into().ok()?;
    let sealed = unhex(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some(Line { seq, mac, sealed, _text: line })
}

/// Opens a sealed record of `scope` at `seq`; `None` if it does not authenticate there.
fn open_sealed(key: &LogKey, scope: &Scope, seq: u64, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 4 + NONCE_LEN {
        return None;
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[4..4 + NONCE_LEN]);
    key.seal().open(&scope.name(), "audit", seq, &nonce, &sealed[4 + NONCE_LEN..])
}

/// A point a log must still reach with the same head: a signed checkpoint, or the log's anchor
/// in the host chain (its high-water mark).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub seq: u64,
    /// The head MAC at `seq`, hex.
    pub head: String,
    /// What set it, for messages: `the checkpoint`, `the host log's anchor (host record 12)`.
    pub what: String,
}

impl Mark {
    pub fn of_checkpoint(cp: &Checkpoint) -> Self {
        Self { seq: cp.seq, head: cp.head.clone(), what: "the checkpoint".into() }
    }
}

/// Splits a log into complete lines; returns them and the length of the complete part.
fn complete_lines(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let good_len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let lines = match bytes[..good_len].split_last() {
        Some((_, body)) => body.split(|b| *b == b'\n').collect(),
        None => Vec::new(),
    };
    (lines, good_len)
}

/// Verifies a whole log: every line parses, sequence numbers run 1, 2, 3, ... without gaps,
/// every MAC chains to the previous one, every record opens; with a checkpoint, the log reaches
/// the checkpoint's sequence number and has its head there. An incomplete final line is a torn
/// tail (reported, not an error).
pub fn verify_log(
    bytes: &[u8],
    keys: &AuditKeys,
    scope: &Scope,
    checkpoint: Option<&Checkpoint>,
) -> Result<Verified, Broken> {
    let marks: Vec<Mark> = checkpoint.map(Mark::of_checkpoint).into_iter().collect();
    verify_marked(bytes, keys, scope, &marks, &mut |_, _| {})
}

/// [`verify_log`] against any number of marks, handing each record's JSON to `visit` as it
/// verifies (`visit` may see records before a later one fails).
pub fn verify_marked(
    bytes: &[u8],
    keys: &AuditKeys,
    scope: &Scope,
    marks: &[Mark],
    visit: &mut dyn FnMut(u64, &[u8]),
) -> Result<Verified, Broken> {
    let (lines, good_len) = complete_lines(bytes);
    let key = match keys.log_key(scope) {
        Ok(Some(k)) => Some(k),
        Ok(None) if lines.is_empty() => None,
        Ok(None) => {
            return Err(Broken {
                seq: 1,
                reason: "cannot be checked: the log's key file is missing (deleted with the log's tenant, or by someone else)"
                    .into(),
            });
        }
        Err(e) => return Err(Broken { seq: 1, reason: format!("cannot be checked: {e}") }),
    };
    let mut prev = [0u8; 32];
    let mut expected = 1u64;
    let mut matched = vec![false; marks.len()];
    for raw in lines {
        let Some(key) = key.as_deref() else { break };
        if raw.len() > MAX_LINE {
            return Err(Broken { seq: expected, reason: "the line is too long to be a record".into() });
        }
        let Some(line) = parse_line(raw) else {
            return Err(Broken { seq: expected, reason: "the line is not a record (damaged or inserted)".into() });
        };
        if line.seq != expected {
            let reason = if line.seq > expected {
                format!("missing: the next line holds record {} (records deleted or reordered)", line.seq)
            } else {
                format!(
                    "out of order: found record {} again where {expected} belongs (reordered or inserted)",
                    line.seq
                )
            };
            return Err(Broken { seq: expected, reason });
        }
        let mac = link(key.chain(), &prev, line.seq, &line.sealed);
        if mac.iter().zip(line.mac.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Err(Broken {
                seq: expected,
                reason: "fails authentication (modified, inserted, or not written with this log's key)".into(),
            });
        }
        let Some(json) = open_sealed(key, scope, line.seq, &line.sealed) else {
            return Err(Broken { seq: expected, reason: "cannot be opened (modified)".into() });
        };
        for (mark, matched) in marks.iter().zip(matched.iter_mut()) {
            if mark.seq == line.seq {
                if hex(&mac) != mark.head {
                    return Err(Broken {
                        seq: expected,
                        reason: format!("does not match {}'s head (the log was rewritten)", mark.what),
                    });
                }
                *matched = true;
            }
        }
        visit(line.seq, &json);
        prev = mac;
        expected += 1;
    }
    let records = expected - 1;
    if let Some(mark) =
        marks.iter().zip(&matched).filter(|(m, ok)| !**ok && m.seq > 0).map(|(m, _)| m).max_by_key(|m| m.seq)
    {
        return Err(Broken {
            seq: records + 1,
            reason: format!(
                "missing: the log ends at record {records} but {} covers records up to {} (truncated, deleted, or an older copy restored)",
                mark.what, mark.seq
            ),
        });
    }
    Ok(Verified { records, head: prev, good_len, torn_bytes: bytes.len() - good_len })
}

/// The records of a log that verified, decrypted, as JSON values (for `audit show` and exports).
pub fn read_records(
    bytes: &[u8],
    keys: &AuditKeys,
    scope: &Scope,
    checkpoint: Option<&Checkpoint>,
) -> Result<Vec<serde_json::Value>, Broken> {
    let marks: Vec<Mark> = checkpoint.map(Mark::of_checkpoint).into_iter().collect();
    read_marked(bytes, keys, scope, &marks)
}

/// [`read_records`] against any number of marks.
pub fn read_marked(
    bytes: &[u8],
    keys: &AuditKeys,
    scope: &Scope,
    marks: &[Mark],
) -> Result<Vec<serde_json::Value>, Broken> {
    let mut records = Vec::new();
    let mut bad = None;
    verify_marked(bytes, keys, scope, marks, &mut |seq, json| match serde_json::from_slice(json) {
        Ok(v) => records.push(v),
        Err(e) => {
            bad.get_or_insert(Broken { seq, reason: format!("not JSON: {e}") });
        }
    })?;
    match bad {
        Some(b) => Err(b),
        None => Ok(records),
    }
}

/// A signed statement "log `scope` had `seq` records with head MAC `head` at `ts`", for anchoring
/// outside the host. Truncation below it, or a wholesale rewrite, no longer matches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checkpoint {
    pub scope: String,
    pub seq: u64,
    pub head: String,
    pub ts: String,
    /// `ed25519:<hex>`: the host's audit signing key.
    pub key: String,
    pub signature: String,
}

impl Checkpoint {
    fn message(scope: &str, seq: u64, head: &str, ts: &str) -> Vec<u8> {
        format!("{CHECKPOINT_HEADER}\n{scope}\n{seq}\n{head}\n{ts}\n").into_bytes()
    }

    pub fn sign(keys: &AuditKeys, scope: &Scope, seq: u64, head: &[u8; 32]) -> Self {
        let (scope, head, ts) = (scope.name(), hex(head), super::now_utc());
        let signature = hex(&keys.sign(&Self::message(&scope, seq, &head, &ts)));
        Self { scope, seq, head, ts, key: format_public_key(&keys.public_key()), signature }
    }

    /// Parses a checkpoint file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not a checkpoint: {e}"))
    }

    /// Checks the signature against `trusted` and that it is about `scope`.
    pub fn check(&self, trusted: &[u8; 32], scope: &Scope) -> Result<(), String> {
        if self.scope != scope.name() {
            return Err(format!("the checkpoint is for log {:?}, not {:?}", self.scope, scope.name()));
        }
        let key = parse_public_key(&self.key)?;
        if &key != trusted {
            return Err(format!(
                "the checkpoint is signed by {}, not by this host's audit key {}",
                self.key,
                format_public_key(trusted)
            ));
        }
        let sig = unhex(&self.signature).ok_or("the checkpoint's signature is not hex")?;
        if !verify_signature(&key, &Self::message(&self.scope, self.seq, &self.head, &self.ts), &sig) {
            return Err("the checkpoint's signature does not match its content".into());
        }
        Ok(())
    }

    pub fn to_text(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

//! The versioned request/response protocol between the host and the runner, and its framing.
//!
//! A frame is a 4-byte big-endian length followed by exactly that many bytes of JSON. A frame that
//! is truncated, longer than the receiver's limit, followed by trailing bytes, not valid JSON, of
//! another protocol version or with unknown fields is rejected with a `FrameError`; nothing in it is
//! trusted.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Version of the protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request frame the runner accepts (arguments are capped below this by the host).
pub const MAX_REQUEST_FRAME: usize = 2 << 20;
/// Largest serialized tool arguments the host sends.
pub const MAX_ARGS_BYTES: usize = 1 << 20;
/// Deepest nesting of tool arguments the host sends (tool arguments are flat objects).
pub const MAX_ARGS_DEPTH: usize = 16;
/// Bytes charged against the disk quota for each file or directory, on top of its contents, so
/// that creating many empty entries (inode exhaustion) also runs into the quota.
pub const ENTRY_COST_BYTES: u64 = 256;
/// Where the workspace appears inside every sandbox (wasm preopen and container mount alike).
pub const WORKSPACE_DIR: &str = "/workspace";
/// Bytes of framing and JSON envelope allowed on top of the output in a response frame.
pub const RESPONSE_OVERHEAD: usize = 4096;

/// Largest response frame for a given output cap: JSON may escape each output byte to 6 bytes.
pub fn max_response_frame(max_output_bytes: usize) -> usize {
    max_output_bytes.saturating_mul(6).saturating_add(RESPONSE_OVERHEAD)
}

/// How the workspace is mounted for this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    None,
    Ro,
    Rw,
}

/// Limits the host imposes on one call, enforced by the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestLimits {
    /// Bytes of output text returned at most; the rest is cut and `truncated` set.
    pub max_output_bytes: u64,
    pub access: Access,
    /// Bytes the tenant may still add to its workspaces (`None`: unlimited).
    pub disk_budget_bytes: Option<u64>,
}

/// One tool call, host → runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    pub tool: String,
    pub args: serde_json::Value,
    pub limits: RequestLimits,
}

impl Request {
    pub fn new(tool: &str, args: serde_json::Value, limits: RequestLimits) -> Self {
        Self { v: PROTOCOL_VERSION, tool: tool.to_string(), args, limits }
    }
}

/// Why a call failed in a way the host maps to its own error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Failure {
    /// The call would have grown the workspace past the tenant's quota.
    Quota,
    /// The arguments do not fit the tool.
    InvalidArguments,
    /// The request frame was rejected.
    Protocol,
    /// A native command ran past its timeout; its whole process group was killed.
    Timeout,
    /// A native command was killed by the kernel for exceeding the sandbox's memory limit.
    Memory,
}

/// The result of one call, runner → host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Response {
    pub v: u32,
    pub output: String,
    pub is_error: bool,
    pub exit_code: Option<i32>,
    pub truncated: bool,
    pub failure: Option<Failure>,
}

impl Response {
    pub fn ok(output: String) -> Self {
        Self { v: PROTOCOL_VERSION, output, is_error: false, exit_code: None, truncated: false, failure: None }
    }
    pub fn error(output: String) -> Self {
        Self { is_error: true, ..Self::ok(output) }
    }
    pub fn failure(kind: Failure, output: String) -> Self {
        Self { failure: Some(kind), ..Self::error(output) }
    }
}

trait Versioned {
    fn version(&self) -> u32;
}
impl Versioned for Request {
    fn version(&self) -> u32 {
        self.v
    }
}
impl Versioned for Response {
    fn version(&self) -> u32 {
        self.v
    }
}

/// A frame that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than its 4-byte length header")]
    TooShort(usize),
    #[error("frame declares {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame declares {declared} bytes but carries {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("frame body is not a valid message: {0}")]
    Json(String),
    #[error("frame has protocol version {got}, expected {expected}")]
    Version { got: u32, expected: u32 },
}

/// Encodes a message as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string keys, no custom impls).
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode<T: DeserializeOwned + Versioned>(frame: &[u8], max: usize) -> Result<T, FrameError> {
    let Some((head, body)) = frame.split_first_chunk::<4>() else {
        return Err(FrameError::TooShort(frame.len()));
    };
    let len = u32::from_be_bytes(*head) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if body.len() != len {
        return Err(FrameError::LengthMismatch { declared: len, actual: body.len() });
    }
    // serde_json refuses nesting deeper than 128 levels, so a deep body cannot exhaust the stack.
    let msg: T = serde_json::from_slice(body).map_err(|e| FrameError::Json(e.to_string()))?;
    if msg.version() != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: msg.version(), expected: PROTOCOL_VERSION });
    }
    Ok(msg)
}

/// Reads the 4-byte length header of a frame from a stream: the body length it declares.
pub fn frame_len(head: [u8; 4]) -> usize {
    u32::from_be_bytes(head) as usize
}

/// Decodes a request frame of at most `MAX_REQUEST_FRAME` bytes.
pub fn decode_request(frame: &[u8]) -> Result<Request, FrameError> {
    decode(frame, MAX_REQUEST_FRAME)
}

/// Decodes a response frame of at most `max` bytes.
pub fn decode_response(frame: &[u8], max: usize) -> Result<Response, FrameError> {
    decode(frame, max)
}

/// Nesting depth of a JSON value, computed without recursion.
pub fn json_depth(v: &serde_json::Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            serde_json::Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            serde_json::Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// Cuts text to at most `max` bytes on a character boundary; true when something was cut. Both
/// sides use it: the runner on what it produces, the host on what it receives.
pub fn cap_text(mut text: String, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> RequestLimits {
        RequestLimits { max_output_bytes: 100, access: Access::Rw, disk_budget_bytes: Some(10) }
    }

    #[test]
    fn frames_round_trip() {
        let req = Request::new("read", json!({"path": "a"}), limits());
        assert_eq!(decode_request(&encode(&req)).unwrap(), req);
        let resp = Response::failure(Failure::Quota, "full".into());
        assert_eq!(decode_response(&encode(&resp), 1000).unwrap(), resp);
    }

    #[test]
    fn malformed_frames_are_rejected() {
        let good = encode(&Request::new("read", json!({}), limits()));
        assert!(matches!(decode_request(&good[..3]), Err(FrameError::TooShort(3))));
        assert!(matches!(decode_request(&good[..good.len() - 1]), Err(FrameError::LengthMismatch { .. })));
        let mut trailing = good.clone();
        trailing.push(b' ');
        assert!(matches!(decode_request(&trailing), Err(FrameError::LengthMismatch { .. })));
        let huge = (u32::MAX).to_be_bytes();
        assert!(matches!(decode_request(&huge), Err(FrameError::TooLarge { .. })));
        let mut garbage = 5u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(b"{oops");
        assert!(matches!(decode_request(&garbage), Err(FrameError::Json(_))));
        let body =
            br#"{"v":2,"tool":"read","args":{},"limits":{"maxOutputBytes":1,"access":"rw","diskBudgetBytes":null}}"#;
        let mut v2 = (body.len() as u32).to_be_bytes().to_vec();
        v2.extend_from_slice(body);
        assert!(matches!(decode_request(&v2), Err(FrameError::Version { got: 2, .. })));
        let body = br#"{"v":1,"output":"","isError":false,"exitCode":null,"truncated":false,"failure":null,"extra":1}"#;
        let mut unknown = (body.len() as u32).to_be_bytes().to_vec();
        unknown.extend_from_slice(body);
        assert!(matches!(decode_response(&unknown, 1000), Err(FrameError::Json(_))));
        assert!(matches!(decode_response(&good, 10), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn deeply_nested_frames_are_rejected_not_overflowing() {
        let body = format!(
            r#"{{"v":1,"tool":"read","args":{}{}, "limits":{{"maxOutputBytes":1,"access":"rw","diskBudgetBytes":null}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body.as_bytes());
        assert!(matches!(decode_request(&frame), Err(FrameError::Json(_))));
    }

    #[test]
    fn depth_is_measured() {
        assert_eq!(json_depth(&json!(1)), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": 2}]})), 4);
    }
}

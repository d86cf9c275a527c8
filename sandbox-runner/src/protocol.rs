//! The versioned request/response protocol between the host and the runner, and its framing.
//!
//! A frame is a 4-byte big-endian length followed by exactly that many bytes. Host → runner, the
//! bytes are JSON: first one `Hello` carrying the channel's secret key (before any command runs,
//! so nothing a command does can see it), then one `Request` per call, each with its own id.
//! Runner → host, a response frame is sealed: the request id (8 bytes, big-endian), an
//! HMAC-SHA256 tag over (id, JSON) under the channel key (32 bytes), then the `Response` JSON. The
//! host opens it only for the id it is waiting for, so a response the runner did not write (a
//! command that reached the stream) or one that answers another request is refused.
//!
//! A frame that is truncated, longer than the receiver's limit, followed by trailing bytes, not
//! valid JSON, of another protocol version, with unknown fields, a wrong id or a bad tag is
//! rejected with a `FrameError`; nothing in it is trusted.

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Version of the protocol; bumped on any incompatible change (2: hello, request ids, sealed
/// responses).
pub const PROTOCOL_VERSION: u32 = 2;
/// Bytes of a channel key.
pub const KEY_BYTES: usize = 32;
/// Bytes a sealed response carries before its JSON: the request id and the tag.
pub const SEAL_BYTES: usize = 8 + 32;
/// Largest hello frame the runner accepts.
pub const MAX_HELLO_FRAME: usize = 1024;
/// Domain separation of the response tag.
const SEAL_CONTEXT: &[u8] = b"bulkhead/runner/v2/response\0";
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
    max_output_bytes.saturating_mul(6).saturating_add(RESPONSE_OVERHEAD).saturating_add(SEAL_BYTES)
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
    /// Chosen by the host, different for every request on one channel; the response carries it.
    pub id: u64,
    pub tool: String,
    pub args: serde_json::Value,
    pub limits: RequestLimits,
}

impl Request {
    pub fn new(id: u64, tool: &str, args: serde_json::Value, limits: RequestLimits) -> Self {
        Self { v: PROTOCOL_VERSION, id, tool: tool.to_string(), args, limits }
    }
}

/// The first frame on a channel, host → runner: the key the runner seals its responses with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hello {
    pub v: u32,
    /// The channel key, hex.
    pub key: String,
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
impl Versioned for Hello {
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
    #[error("response answers request {got}, not request {expected}")]
    WrongId { got: u64, expected: u64 },
    #[error("response is not authenticated by the channel key")]
    BadTag,
    #[error("channel key is not {KEY_BYTES} bytes of hex")]
    BadKey,
}

/// The secret of one host↔runner channel: made by the host when it starts a runner, sent to it
/// in the `Hello` frame, and never anywhere a command can read (not the environment, not argv,
/// not a file). Every response is sealed with it.
#[derive(Clone)]
pub struct ChannelKey([u8; KEY_BYTES]);

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelKey(..)")
    }
}

impl ChannelKey {
    pub fn new(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// The hello frame that hands this key to a runner.
    pub fn hello(&self) -> Vec<u8> {
        let key: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        encode(&Hello { v: PROTOCOL_VERSION, key })
    }

    /// Reads the key from a hello frame (runner side).
    pub fn from_hello(frame: &[u8]) -> Result<Self, FrameError> {
        let hello: Hello = decode(frame, MAX_HELLO_FRAME)?;
        let hex = hello.key.as_bytes();
        if hex.len() != 2 * KEY_BYTES {
            return Err(FrameError::BadKey);
        }
        let mut key = [0u8; KEY_BYTES];
        for (k, pair) in key.iter_mut().zip(hex.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| FrameError::BadKey)?;
            *k = u8::from_str_radix(pair, 16).map_err(|_| FrameError::BadKey)?;
        }
        Ok(Self(key))
    }

    fn mac(&self, id: u64, json: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; ours is always 32 bytes.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("hmac takes any key length");
        mac.update(SEAL_CONTEXT);
        mac.update(&id.to_be_bytes());
        mac.update(json);
        mac
    }

    /// The sealed frame answering request `id` (runner side).
    pub fn seal(&self, id: u64, resp: &Response) -> Vec<u8> {
        // Serializing this plain struct cannot fail.
        self.seal_json(id, &serde_json::to_vec(resp).unwrap_or_default())
    }

    /// The sealed frame carrying `json` as the answer to request `id`: what `seal` sends, for any
    /// bytes (so tests and fuzzing reach the host's parsing behind the tag).
    pub fn seal_json(&self, id: u64, json: &[u8]) -> Vec<u8> {
        let tag = self.mac(id, json).finalize().into_bytes();
        let mut out = Vec::with_capacity(4 + SEAL_BYTES + json.len());
        out.extend_from_slice(&((SEAL_BYTES + json.len()) as u32).to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&tag);
        out.extend_from_slice(json);
        out
    }

    /// Opens a sealed response frame of at most `max` bytes that must answer request `id` (host
    /// side). The id and the tag are checked before the JSON is parsed.
    pub fn open(&self, frame: &[u8], id: u64, max: usize) -> Result<Response, FrameError> {
        let body = frame_body(frame, max)?;
        let Some((got, rest)) = body.split_first_chunk::<8>() else {
            return Err(FrameError::TooShort(frame.len()));
        };
        let Some((tag, json)) = rest.split_first_chunk::<32>() else {
            return Err(FrameError::TooShort(frame.len()));
        };
        let got = u64::from_be_bytes(*got);
        if got != id {
            return Err(FrameError::WrongId { got, expected: id });
        }
        // Constant-time comparison.
        self.mac(id, json).verify_slice(tag).map_err(|_| FrameError::BadTag)?;
        parse(json)
    }
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

/// The body of a frame whose header declares exactly its length, at most `max`.
fn frame_body(frame: &[u8], max: usize) -> Result<&[u8], FrameError> {
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
    Ok(body)
}

fn decode<T: DeserializeOwned + Versioned>(frame: &[u8], max: usize) -> Result<T, FrameError> {
    parse(frame_body(frame, max)?)
}

fn parse<T: DeserializeOwned + Versioned>(body: &[u8]) -> Result<T, FrameError> {
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

    fn key(b: u8) -> ChannelKey {
        ChannelKey::new([b; KEY_BYTES])
    }

    #[test]
    fn frames_round_trip() {
        let req = Request::new(7, "read", json!({"path": "a"}), limits());
        assert_eq!(decode_request(&encode(&req)).unwrap(), req);
        let resp = Response::failure(Failure::Quota, "full".into());
        assert_eq!(key(1).open(&key(1).seal(9, &resp), 9, 1000).unwrap(), resp);
        let k = ChannelKey::from_hello(&key(0xab).hello()).unwrap();
        assert_eq!(k.open(&key(0xab).seal(3, &resp), 3, 1000).unwrap(), resp);
    }

    #[test]
    fn a_response_with_a_wrong_tag_or_id_is_refused() {
        let resp = Response::ok("real".into());
        let sealed = key(1).seal(5, &resp);
        // Another key (a command guessing), another request's id, any flipped byte: refused.
        assert_eq!(key(2).open(&sealed, 5, 1000), Err(FrameError::BadTag));
        assert_eq!(key(1).open(&sealed, 6, 1000), Err(FrameError::WrongId { got: 5, expected: 6 }));
        for i in 4..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(key(1).open(&bad, 5, 1000).is_err(), "byte {i} flipped was accepted");
        }
        // Re-labelling a genuine response with the expected id does not help: the tag covers it.
        let mut relabelled = sealed.clone();
        relabelled[4..12].copy_from_slice(&6u64.to_be_bytes());
        assert_eq!(key(1).open(&relabelled, 6, 1000), Err(FrameError::BadTag));
        // An unsealed frame (what version 1 runners, or a forger without the key, write).
        let plain = encode(&resp);
        assert!(key(1).open(&plain, 5, 1000).is_err());
        let mut forged = 5u64.to_be_bytes().to_vec();
        forged.extend_from_slice(&[0u8; 32]);
        forged.extend_from_slice(&serde_json::to_vec(&Response::ok("forged".into())).unwrap());
        let mut frame = (forged.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&forged);
        assert_eq!(key(1).open(&frame, 5, 1000), Err(FrameError::BadTag));
        assert!(matches!(key(1).open(&sealed[..20], 5, 1000), Err(FrameError::LengthMismatch { .. })));
    }

    #[test]
    fn bad_hellos_are_refused() {
        for body in [r#"{"v":2,"key":"00"}"#, r#"{"v":2,"key":"zz"}"#, r#"{"v":1,"key":""}"#, r#"{"v":2}"#] {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body.as_bytes());
            assert!(ChannelKey::from_hello(&frame).is_err(), "{body}");
        }
        let bad = format!(r#"{{"v":2,"key":"{}"}}"#, "g".repeat(64));
        let mut frame = (bad.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(bad.as_bytes());
        assert_eq!(ChannelKey::from_hello(&frame).unwrap_err(), FrameError::BadKey);
    }

    #[test]
    fn malformed_frames_are_rejected() {
        let good = encode(&Request::new(1, "read", json!({}), limits()));
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
        let body = br#"{"v":1,"id":1,"tool":"read","args":{},"limits":{"maxOutputBytes":1,"access":"rw","diskBudgetBytes":null}}"#;
        let mut v1 = (body.len() as u32).to_be_bytes().to_vec();
        v1.extend_from_slice(body);
        assert!(matches!(decode_request(&v1), Err(FrameError::Version { got: 1, .. })));
        let json = br#"{"v":2,"output":"","isError":false,"exitCode":null,"truncated":false,"failure":null,"extra":1}"#;
        let k = key(1);
        let mut body = 1u64.to_be_bytes().to_vec();
        body.extend_from_slice(&k.mac(1, json).finalize().into_bytes());
        body.extend_from_slice(json);
        let mut unknown = (body.len() as u32).to_be_bytes().to_vec();
        unknown.extend_from_slice(&body);
        assert!(matches!(k.open(&unknown, 1, 1000), Err(FrameError::Json(_))));
        let sealed = k.seal(1, &Response::ok("x".repeat(100)));
        assert!(matches!(k.open(&sealed, 1, 10), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn deeply_nested_frames_are_rejected_not_overflowing() {
        let body = format!(
            r#"{{"v":2,"id":1,"tool":"read","args":{}{}, "limits":{{"maxOutputBytes":1,"access":"rw","diskBudgetBytes":null}}}}"#,
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

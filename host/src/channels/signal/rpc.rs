//! The signal-cli daemon's HTTP interface (`signal-cli daemon --http`): JSON-RPC 2.0 on
//! `POST /api/v1/rpc` (`send`, `version`, `listAccounts`, `startLink`, `finishLink`; every
//! account method names its `account`, as multi-account mode wants) and the event stream on
//! `GET /api/v1/events?account=<number>` (Server-Sent Events, `event: receive`).
//!
//! The daemon's own error messages may hold phone numbers ("The user +1… is not registered"),
//! so errors are named by their JSON-RPC code and our own words, never by its message text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::config::group_wire;
use crate::channels::outbound::{ChatTarget, SendError, Transport};

/// Longest one RPC call may take (a send waits for Signal's servers).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `finishLink` waits for the phone to scan the code.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest answer read from the daemon.
const MAX_ANSWER: usize = 1 << 20;

/// signal-cli's own JSON-RPC error codes.
const USER_ERROR: i64 = -1;
const IO_ERROR: i64 = -3;
const RATE_LIMIT_ERROR: i64 = -5;
const INTERNAL_ERROR: i64 = -32603;
const INVALID_PARAMS: i64 = -32602;
const METHOD_NOT_FOUND: i64 = -32601;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcError {
    /// The daemon cannot be reached (not running, restarting) or answered 5xx.
    Unreachable(String),
    /// The daemon does not know the account (`Specified account does not exist`).
    UnknownAccount,
    /// The method does not exist (`listAccounts` on a single-account daemon).
    NoMethod,
    /// Signal's rate limit: wait this long.
    RateLimited(Duration),
    /// Another JSON-RPC error: its code and what it means in our words.
    Rpc(i64, &'static str),
    /// An answer this client cannot read.
    Bad(&'static str),
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::Unreachable(why) => f.write_str(why),
            RpcError::UnknownAccount => {
                f.write_str("the daemon has no such account (the number is not registered or linked on it)")
            }
            RpcError::NoMethod => f.write_str("the daemon does not offer this method (is it in multi-account mode?)"),
            RpcError::RateLimited(d) => write!(f, "rate limited by Signal: retry after {} s", d.as_secs()),
            RpcError::Rpc(code, what) => write!(f, "signal-cli answered error {code} ({what})"),
            RpcError::Bad(what) => f.write_str(what),
        }
    }
}

fn meaning(code: i64) -> &'static str {
    match code {
        USER_ERROR => "refused: unknown recipient or group, or not a member",
        IO_ERROR => "an I/O error on the daemon",
        -4 => "a recipient's safety number changed (untrusted identity)",
        -6 => "a captcha was rejected",
        -32600 => "invalid request",
        INTERNAL_ERROR => "the daemon failed to send or an internal error",
        _ => "an error",
    }
}

/// What signal-cli answers a request whose `Host` is not the address it listens on.
const MISDIRECTED: u16 = 421;

fn host_refused() -> RpcError {
    RpcError::Unreachable(
        "the signal-cli daemon refused the host name in url (it answers only to the address it listens on): use that address".into(),
    )
}

/// A network error in words, without its URL.
fn network(e: &reqwest::Error) -> RpcError {
    RpcError::Unreachable(if e.is_timeout() {
        "the signal-cli daemon did not answer in time".into()
    } else if e.is_connect() {
        "cannot connect to the signal-cli daemon (is `signal-cli daemon --http` running?)".into()
    } else {
        "network error talking to the signal-cli daemon".into()
    })
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// A number or an ACI.
    Direct(&'a str),
    /// A group id as signal-cli takes it (standard base64).
    Group(&'a str),
}

/// A client of one daemon.
#[derive(Clone)]
pub struct Daemon {
    http: reqwest::Client,
    base: String,
    ids: std::sync::Arc<AtomicU64>,
}

impl Daemon {
    pub fn new(base: &str) -> Result<Self, String> {
        reqwest::Url::parse(base).map_err(|e| format!("invalid url: {e}"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Loopback daemons are plain HTTP: never through a proxy from the environment.
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string(), ids: Default::default() })
    }

    /// One JSON-RPC call: its `result`, or the error by kind.
    pub async fn call(&self, method: &str, params: Value, timeout: Duration) -> Result<Value, RpcError> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let body = json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": id });
        let resp = self
            .http
            .post(format!("{}/api/v1/rpc", self.base))
            .timeout(timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| network(&e))?;
        let status = resp.status();
        if status.as_u16() == MISDIRECTED {
            return Err(host_refused());
        }
        if status.is_server_error() {
            return Err(RpcError::Unreachable(format!("the signal-cli daemon answered HTTP {}", status.as_u16())));
        }
        let bytes = match crate::channels::net::read_capped(resp, MAX_ANSWER, "the signal-cli daemon").await {
            Ok(b) => b,
            Err(_) => return Err(RpcError::Bad("the daemon's answer is too large or was cut off")),
        };
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|_| RpcError::Bad("the daemon answered something that is not JSON-RPC"))?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            return Err(classify(err));
        }
        match v.get("result") {
            Some(r) => Ok(r.clone()),
            None => Err(RpcError::Bad("the daemon's answer has neither result nor error")),
        }
    }

    /// `version`: the daemon's version string.
    pub async fn version(&self) -> Result<String, RpcError> {
        let r = self.call("version", json!({}), Duration::from_secs(10)).await?;
        r["version"].as_str().map(short).ok_or(RpcError::Bad("version answered without a version"))
    }

    /// `listAccounts`: the numbers the daemon serves.
    pub async fn accounts(&self) -> Result<Vec<String>, RpcError> {
        let r = self.call("listAccounts", json!({}), Duration::from_secs(10)).await?;
        let list = r.as_array().ok_or(RpcError::Bad("listAccounts answered without a list"))?;
        Ok(list.iter().filter_map(|a| a["number"].as_str().map(str::to_string)).collect())
    }

    /// `send` from `account` to `to`.
    pub async fn send(&self, account: &str, to: &Target<'_>, message: &str) -> Result<(), RpcError> {
        let mut params = json!({ "account": account, "message": message });
        match to {
            Target::Direct(r) => params["recipient"] = json!([r]),
            Target::Group(g) => params["groupId"] = json!(g),
        }
        let r = self.call("send", params, CALL_TIMEOUT).await?;
        send_outcome(&r)
    }

    /// `startLink`: a `sgnl://linkdevice?…` URI for the phone to scan.
    pub async fn start_link(&self) -> Result<String, RpcError> {
        let r = self.call("startLink", json!({}), Duration::from_secs(30)).await?;
        match r["deviceLinkUri"].as_str() {
            Some(u) if u.starts_with("sgnl://") => Ok(u.to_string()),
            _ => Err(RpcError::Bad("startLink answered without a sgnl:// device link URI")),
        }
    }

    /// `finishLink`: waits for the phone to scan `uri`; returns the number now linked.
    pub async fn finish_link(&self, uri: &str, device: &str) -> Result<String, RpcError> {
        let r = self.call("finishLink", json!({ "deviceLinkUri": uri, "deviceName": device }), LINK_TIMEOUT).await?;
        r["number"].as_str().map(str::to_string).ok_or(RpcError::Bad("finishLink answered without the linked number"))
    }

    /// Opens the event stream of `account` (the daemon sends only that account's events).
    pub async fn events(&self, account: &str) -> Result<reqwest::Response, RpcError> {
        let resp = self
            .http
            .get(format!("{}/api/v1/events", self.base))
            .query(&[("account", account)])
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| network(&e))?;
        match resp.status().as_u16() {
            200 => Ok(resp),
            // An account the daemon does not have.
            400 | 404 => Err(RpcError::UnknownAccount),
            MISDIRECTED => Err(host_refused()),
            s => Err(RpcError::Unreachable(format!("the signal-cli daemon answered HTTP {s} for the event stream"))),
        }
    }
}

/// A version string to show: short and printable only.
fn short(v: &str) -> String {
    v.chars().filter(|c| c.is_ascii_graphic()).take(32).collect()
}

fn retry_after(data: &Value) -> Option<Duration> {
    let secs = data["response"]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["retryAfterSeconds"].as_u64())
        .max()
        .or_else(|| data["retryAfterSeconds"].as_u64())?;
    Some(Duration::from_secs(secs.clamp(1, 3600)))
}

/// What a `send` result says: every recipient failed → an error by kind (a rate limit first,
/// then a network failure, which are worth retrying); otherwise sent.
/// A JSON-RPC error object of the daemon, by kind.
fn classify(err: &Value) -> RpcError {
    let code = err["code"].as_i64().unwrap_or(0);
    match code {
        INVALID_PARAMS if err["message"].as_str().is_some_and(|m| m.contains("account")) => RpcError::UnknownAccount,
        METHOD_NOT_FOUND => RpcError::NoMethod,
        RATE_LIMIT_ERROR => RpcError::RateLimited(retry_after(&err["data"]).unwrap_or(Duration::from_secs(30))),
        // A send no recipient took: signal-cli says why per recipient in
        // `data.response.results` (a network failure is worth retrying, an unregistered
        // number is not).
        USER_ERROR | -4 if err["data"]["response"]["results"].is_array() => {
            match send_outcome(&err["data"]["response"]) {
                Err(e) => e,
                Ok(()) => RpcError::Rpc(code, meaning(code)),
            }
        }
        code => RpcError::Rpc(code, meaning(code)),
    }
}

fn send_outcome(r: &Value) -> Result<(), RpcError> {
    let Some(results) = r["results"].as_array().filter(|l| !l.is_empty()) else { return Ok(()) };
    if results.iter().any(|x| x["type"] == "SUCCESS") {
        return Ok(());
    }
    if let Some(secs) = results
        .iter()
        .filter(|x| x["type"] == "RATE_LIMIT_FAILURE")
        .map(|x| x["retryAfterSeconds"].as_u64().unwrap_or(30))
        .max()
    {
        return Err(RpcError::RateLimited(Duration::from_secs(secs.clamp(1, 3600))));
    }
    if results.iter().any(|x| x["type"] == "NETWORK_FAILURE") {
        return Err(RpcError::Unreachable("Signal's servers could not be reached by the daemon".into()));
    }
    if results.iter().any(|x| x["type"] == "UNREGISTERED_FAILURE") {
        return Err(RpcError::Rpc(USER_ERROR, "the recipient is not registered on Signal"));
    }
    Err(RpcError::Rpc(-4, meaning(-4)))
}

/// Sends replies with `send` from one account.
pub struct SignalTransport {
    pub daemon: Daemon,
    /// The account's number (never logged).
    pub number: String,
}

#[async_trait::async_trait]
impl Transport for SignalTransport {
    async fn send(&self, to: &ChatTarget, text: &str) -> Result<(), SendError> {
        let wire;
        let target = if to.group {
            wire = group_wire(&to.chat);
            Target::Group(&wire)
        } else {
            Target::Direct(&to.chat)
        };
        match self.daemon.send(&self.number, &target, text).await {
            Ok(()) => Ok(()),
            Err(RpcError::RateLimited(d)) => Err(SendError::RetryAfter(d)),
            // The daemon restarting, our number not loaded yet, or the daemon failing to reach
            // Signal's servers (its I/O and internal errors): worth retrying.
            Err(
                e @ (RpcError::Unreachable(_) | RpcError::UnknownAccount | RpcError::Rpc(IO_ERROR | INTERNAL_ERROR, _)),
            ) => Err(SendError::Transient(e.to_string())),
            Err(e) => Err(SendError::Permanent(e.to_string())),
        }
    }
}

/// Reads Server-Sent Events from chunks of bytes: `event:` and `data:` lines up to a blank line;
/// comments (`:` keep-alives), `id:` and `retry:` are skipped. An event larger than `max` is
/// dropped whole and reported as oversized.
pub struct SseReader {
    line: Vec<u8>,
    event: String,
    data: String,
    max: usize,
    oversized: bool,
}

/// One event read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    Event { event: String, data: String },
    Oversized,
}

impl SseReader {
    pub fn new(max: usize) -> Self {
        Self { line: Vec::new(), event: String::new(), data: String::new(), max, oversized: false }
    }

    /// Feeds `chunk`; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Sse> {
        let mut out = Vec::new();
        for &b in chunk {
            if b != b'\n' {
                if self.line.len() <= self.max {
                    self.line.push(b);
                } else {
                    self.oversized = true;
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.is_empty() {
                if self.oversized {
                    out.push(Sse::Oversized);
                } else if !self.data.is_empty() || !self.event.is_empty() {
                    out.push(Sse::Event {
                        event: std::mem::take(&mut self.event),
                        data: std::mem::take(&mut self.data),
                    });
                }
                self.event.clear();
                self.data.clear();
                self.oversized = false;
                continue;
            }
            if self.oversized || line.starts_with(b":") {
                continue;
            }
            let text = String::from_utf8_lossy(line);
            let (field, value) = match text.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (text.as_ref(), ""),
            };
            match field {
                "event" => self.event = value.to_string(),
                "data" => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    if self.data.len() > self.max {
                        self.oversized = true;
                        self.data.clear();
                    }
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_no_recipient_took_is_classified_by_its_per_recipient_results() {
        // signal-cli answers such a send with an error (-1, or -4 for untrusted identities),
        // the results under data.response (SendMessageResultUtils, SignalJsonRpcCommandHandler).
        let failed = |code: i64, kind: &str| {
            json!({ "code": code, "message": "Failed to send message",
                    "data": { "response": { "timestamp": 1, "results": [
                        { "recipientAddress": { "number": "+15550000001" }, "type": kind } ] } } })
        };
        assert!(matches!(classify(&failed(-1, "NETWORK_FAILURE")), RpcError::Unreachable(_)), "worth retrying");
        assert!(matches!(classify(&failed(-1, "UNREGISTERED_FAILURE")), RpcError::Rpc(-1, _)));
        assert!(matches!(classify(&failed(-4, "IDENTITY_FAILURE")), RpcError::Rpc(-4, _)));
        assert!(matches!(classify(&json!({ "code": -1, "message": "x" })), RpcError::Rpc(-1, _)));
        assert!(matches!(
            classify(&json!({ "code": -32602, "message": "Specified account does not exist" })),
            RpcError::UnknownAccount
        ));
        assert!(matches!(classify(&json!({ "code": -32601 })), RpcError::NoMethod));
    }

    #[test]
    fn sse_events_are_read_across_chunks_and_oversized_ones_dropped() {
        let mut r = SseReader::new(64);
        let mut got = r.feed(b":\nevent:receive\ndata:{\"a\":");
        assert!(got.is_empty());
        got.extend(r.feed(b"1}\n\n:\n\nevent: receive\r\ndata: x\r\ndata: y\r\n\r\n"));
        assert_eq!(
            got,
            vec![
                Sse::Event { event: "receive".into(), data: "{\"a\":1}".into() },
                Sse::Event { event: "receive".into(), data: "x\ny".into() },
            ]
        );
        let big = format!("event:receive\ndata:{}\n\ndata:ok\n\n", "z".repeat(200));
        assert_eq!(
            r.feed(big.as_bytes()),
            vec![Sse::Oversized, Sse::Event { event: String::new(), data: "ok".into() }]
        );
    }

    #[test]
    fn send_results_map_to_outcomes() {
        assert_eq!(send_outcome(&json!({ "timestamp": 1 })), Ok(()));
        assert_eq!(
            send_outcome(&json!({ "results": [ { "type": "SUCCESS" }, { "type": "NETWORK_FAILURE" } ] })),
            Ok(())
        );
        assert_eq!(
            send_outcome(&json!({ "results": [ { "type": "RATE_LIMIT_FAILURE", "retryAfterSeconds": 7 } ] })),
            Err(RpcError::RateLimited(Duration::from_secs(7)))
        );
        assert!(matches!(
            send_outcome(&json!({ "results": [ { "type": "NETWORK_FAILURE" } ] })),
            Err(RpcError::Unreachable(_))
        ));
        assert!(matches!(
            send_outcome(&json!({ "results": [ { "type": "UNREGISTERED_FAILURE" } ] })),
            Err(RpcError::Rpc(-1, _))
        ));
    }
}

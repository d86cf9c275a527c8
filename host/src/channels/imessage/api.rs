//! The few BlueBubbles REST endpoints the adapter uses, over `reqwest`: `GET /api/v1/ping` (the
//! bridge is up and takes the password), `GET /api/v1/server/info` (version, Private API state)
//! and `POST /api/v1/message/text` (a reply).
//!
//! BlueBubbles takes its password only as the `password` query parameter, so every request URL
//! holds it: no URL is ever logged or put in an error (reqwest's errors carry it, so they are
//! reduced to their kind with `without_url` and never shown whole), and a text the bridge sent
//! back is shown only after the password is cut out of it.

use std::time::Duration;

use serde_json::{Value, json};

use super::config::{SendMethod, chat_guid};
use crate::channels::outbound::{ChatTarget, SendError, Transport};
use crate::config::SecretString;

/// Why a call to the bridge failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeError {
    /// 401: the password was refused.
    Password,
    /// The bridge could not be reached, or answered 5xx from a proxy or while starting: worth
    /// retrying.
    Down(String),
    /// The bridge answered an error for this request (iMessage could not send it, bad chat,
    /// ...): its status and what it said.
    Refused { status: u16, said: String },
    /// The send timed out on the Mac (504), or its answer could not be read: it may or may not
    /// have gone out (what happened, in words).
    Unknown(String),
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeError::Password => f.write_str("the BlueBubbles server refused the password (HTTP 401)"),
            BridgeError::Down(why) => f.write_str(why),
            BridgeError::Refused { status, said } => write!(f, "the BlueBubbles server answered HTTP {status}: {said}"),
            BridgeError::Unknown(what) => write!(f, "{what}; it may or may not have been delivered"),
        }
    }
}

/// Longest answer read from the bridge (a sent message's JSON is a few KiB).
const MAX_ANSWER: usize = 1 << 20;

/// What `server/info` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    pub server_version: String,
    pub os_version: String,
    pub private_api: bool,
    pub helper_connected: bool,
    /// The iMessage account signed in on the Mac, when reported.
    pub imessage: Option<String>,
}

/// A client of one BlueBubbles server.
#[derive(Clone)]
pub struct Bridge {
    http: reqwest::Client,
    base: String,
    password: SecretString,
}

/// A network error: only its kind is kept (`net::network_error`); the error itself, which carries
/// the URL and so the password, is dropped here.
fn down(e: reqwest::Error) -> BridgeError {
    BridgeError::Down(crate::channels::net::network_error(&e.without_url(), "the BlueBubbles server"))
}

/// A text the bridge sent, as it may be shown in a log: printable, at most 160 characters, the
/// password cut out.
pub fn said(v: &str, password: &str) -> String {
    // The password out first (as written, and as a query string carries it), then the cut: a
    // password across the cut would otherwise leave its first characters.
    let mut v = v.to_string();
    if password.len() >= 4 {
        let encoded: String = url_encoded(password);
        v = v.replace(password, "<password>");
        if encoded != password {
            v = v.replace(&encoded, "<password>");
        }
    }
    let s: String = v.chars().filter(|c| !c.is_control()).take(160).collect();
    if s.trim().is_empty() { "no message".into() } else { s }
}

/// `s` as `application/x-www-form-urlencoded` writes it (what `.query()` sends).
fn url_encoded(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What one answer of the bridge means (`path` for the message, `pw` cut out of what it said).
/// BlueBubbles answers `{ status, message, data }`, and errors as `{ status, message, error: {
/// type, message } }`.
pub fn classify(path: &str, status: u16, body: &str, pw: &str) -> Result<Value, BridgeError> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let message = || {
        let m = v["error"]["message"].as_str().or(v["message"].as_str()).unwrap_or("");
        let kind = v["error"]["type"].as_str().unwrap_or("");
        let m = if kind.is_empty() || kind == m { m.to_string() } else { format!("{kind}: {m}") };
        said(&m, pw)
    };
    match status {
        200..=299 if v.is_object() => Ok(v),
        // Taken by something that is not the server as we know it: not retried (a send could
        // arrive twice), and named.
        200..=299 => Err(BridgeError::Refused { status, said: format!("{path}: a body that is not JSON") }),
        401 | 403 => Err(BridgeError::Password),
        504 => {
            Err(BridgeError::Unknown(format!("the BlueBubbles server timed out sending it (HTTP 504: {})", message())))
        }
        // A proxy in front of a Mac that is off or restarting, or the server starting.
        502 | 503 => Err(BridgeError::Down(format!("{path}: HTTP {status} (the server is unavailable)"))),
        500 if !v.is_object() => Err(BridgeError::Down(format!("{path}: HTTP 500 with a body that is not JSON"))),
        _ => Err(BridgeError::Refused { status, said: message() }),
    }
}

impl Bridge {
    pub fn new(base: &str, password: SecretString) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // BlueBubbles answers a text only once Messages has saved it, waiting up to two
            // minutes: give up after that, never before (a send given up early may still go out).
            .timeout(Duration::from_secs(150))
            // The password travels in the query string, and loopback URLs are plain HTTP: never
            // through a proxy from the environment (HTTP_PROXY), which would see both.
            .no_proxy()
            // A redirect would carry the request (and so the password) somewhere the config did
            // not name, perhaps without TLS: none is followed (a 3xx is an error).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| "cannot build the HTTP client".to_string())?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string(), password })
    }

    /// One call: the answer's JSON, or the error by kind. Nothing here puts the URL anywhere.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, BridgeError> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1/{path}", self.base))
            .query(&[("password", self.password.expose())]);
        if let Some(b) = body {
            req = req.json(b);
        }
        // A send that failed after it reached the server (a timeout, a reset) may have gone out:
        // not retried then. Only "could not connect" is worth a retry.
        let sends = path == "message/text";
        let resp = req.send().await.map_err(|e| {
            if sends && !e.is_connect() {
                let why = crate::channels::net::network_error(&e.without_url(), "the BlueBubbles server");
                BridgeError::Unknown(format!("{path}: {why}; the message may have been sent"))
            } else {
                down(e)
            }
        })?;
        let status = resp.status().as_u16();
        // Bounded: a hostile or broken server cannot make the gateway allocate without limit.
        // A 2xx it cannot read may still have been sent: never retried then.
        let body = match crate::channels::net::read_capped(resp, MAX_ANSWER, "the BlueBubbles server").await {
            Ok(b) => b,
            Err(why) if (200..300).contains(&status) => return Err(BridgeError::Unknown(format!("{path}: {why}"))),
            Err(why) => return Err(BridgeError::Down(why)),
        };
        let text = String::from_utf8_lossy(&body);
        classify(path, status, &text, self.password.expose())
    }

    /// `GET /api/v1/ping`: up, and the password accepted.
    pub async fn ping(&self) -> Result<(), BridgeError> {
        self.call(reqwest::Method::GET, "ping", None).await.map(drop)
    }

    /// `GET /api/v1/server/info`.
    pub async fn server_info(&self) -> Result<ServerInfo, BridgeError> {
        let v = self.call(reqwest::Method::GET, "server/info", None).await?;
        let d = &v["data"];
        let text = |k: &str| d[k].as_str().map(|s| said(s, self.password.expose())).unwrap_or_default();
        Ok(ServerInfo {
            server_version: text("server_version"),
            os_version: text("os_version"),
            private_api: d["private_api"] == true,
            helper_connected: d["helper_connected"] == true,
            imessage: d["detected_imessage"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(|s| said(s, self.password.expose())),
        })
    }

    /// `POST /api/v1/message/text` to the chat `guid`: the sent message's guid, when reported.
    pub async fn send_text(&self, guid: &str, text: &str, method: SendMethod) -> Result<Option<String>, BridgeError> {
        let rng = ring::rand::SystemRandom::new();
        let temp = crate::crypto::random::<12>(&rng).map(|b| crate::crypto::hex(&b)).unwrap_or_default();
        let body =
            json!({ "chatGuid": guid, "tempGuid": format!("temp-{temp}"), "message": text, "method": method.as_str() });
        let v = self.call(reqwest::Method::POST, "message/text", Some(&body)).await?;
        // A message saved with an error code was not sent (the server normally answers 500 then).
        if v["data"]["error"].as_i64().is_some_and(|e| e != 0) {
            return Err(BridgeError::Refused {
                status: 200,
                said: format!("the message was saved with iMessage error {}", v["data"]["error"]),
            });
        }
        Ok(v["data"]["guid"].as_str().map(str::to_string))
    }
}

/// Sends replies with `message/text`.
pub struct IMessageTransport {
    pub bridge: Bridge,
    pub method: SendMethod,
    /// The account, for logs.
    pub account: String,
}

#[async_trait::async_trait]
impl Transport for IMessageTransport {
    async fn send(&self, to: &ChatTarget, text: &str) -> Result<(), SendError> {
        let id = &self.account;
        match self.bridge.send_text(&chat_guid(&to.chat), text, self.method).await {
            Ok(_) => Ok(()),
            Err(BridgeError::Password) => {
                tracing::error!(account = %id, "The BlueBubbles server refused this account's password on a reply. Replies stop until the password is fixed and the gateway restarted; the messages they answer stay stored and are answered then. Other accounts are unaffected.");
                Err(SendError::Unauthorized)
            }
            Err(e @ BridgeError::Down(_)) => Err(SendError::Transient(e.to_string())),
            Err(e) => {
                tracing::error!(account = %id, error = %e, "The BlueBubbles server did not send a reply (it is not retried, so it is never sent twice). Check Messages on the Mac; with sendMethod \"private-api\" the server reports more of these.");
                Err(SendError::Permanent(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_cut_out_before_the_text_is_shortened_and_also_url_encoded() {
        let pw = "s3cr3t pass/word";
        let long = format!("{}{pw}", "x".repeat(150));
        let shown = said(&long, pw);
        assert!(!shown.contains("s3cr3t") && shown.ends_with("<password>"), "{shown}");
        let echoed = format!("bad request ?password={}", url_encoded(pw));
        assert_eq!(said(&echoed, pw), "bad request ?password=<password>");
        assert_eq!(url_encoded("a b/c"), "a+b%2Fc");
    }

    #[test]
    fn every_answer_of_the_bridge_is_classified_and_reported_without_the_password() {
        let pw = "pw-123456";
        assert_eq!(
            classify("ping", 200, r#"{"status":200,"message":"Ping received!","data":"pong"}"#, pw).unwrap()["data"],
            "pong"
        );
        let err = |status, body: &str| classify("message/text", status, body, pw).unwrap_err();
        assert_eq!(
            err(401, r#"{"status":401,"error":{"type":"Authentication Error","message":"Unauthorized"}}"#),
            BridgeError::Password
        );
        assert_eq!(err(403, ""), BridgeError::Password);
        assert!(matches!(err(502, "<html>bad gateway</html>"), BridgeError::Down(_)));
        assert!(matches!(err(503, ""), BridgeError::Down(_)));
        assert!(matches!(err(500, "Internal Server Error"), BridgeError::Down(_)));
        assert_eq!(
            err(
                500,
                r#"{"status":500,"message":"Message Send Error","error":{"type":"iMessage Error","message":"Message failed to send! pw-123456"}}"#
            ),
            BridgeError::Refused { status: 500, said: "iMessage Error: Message failed to send! <password>".into() }
        );
        assert_eq!(
            err(400, r#"{"status":400,"message":"Chat does not exist!"}"#),
            BridgeError::Refused { status: 400, said: "Chat does not exist!".into() }
        );
        assert!(matches!(err(504, r#"{"status":504,"message":"Gateway Timeout"}"#), BridgeError::Unknown(_)));
        assert!(matches!(err(307, ""), BridgeError::Refused { status: 307, .. }));
        assert!(
            matches!(err(200, "OK"), BridgeError::Refused { status: 200, .. }),
            "a send is never retried on an unreadable 200"
        );
        for e in [err(500, r#"{"message":"pw-123456"}"#), err(504, r#"{"message":"pw-123456"}"#)] {
            assert!(!e.to_string().contains(pw), "{e}");
        }
    }

    #[test]
    fn what_the_bridge_said_is_shown_short_and_without_the_password() {
        assert_eq!(said("Message Send Error", "pw-123456"), "Message Send Error");
        assert_eq!(said("bad pw-123456 here\n", "pw-123456"), "bad <password> here");
        assert_eq!(said(&"x".repeat(500), "pw").len(), 160);
        assert_eq!(said("  ", "pw"), "no message");
    }
}

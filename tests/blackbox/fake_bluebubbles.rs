//! A fake BlueBubbles server speaking its real REST format: `GET /api/v1/ping`, `GET
//! /api/v1/server/info` and `POST /api/v1/message/text`, the password checked as the `password`
//! (or `guid`, `token`) query parameter as the real server's auth middleware does, answers as
//! `{ status, message, data }` and errors as `{ status, message, error: { type, message } }`.
//! It records the sends, can go down (its listener closed: connections are refused) and come
//! back on the same port, can fail the next sends with an iMessage error, and POSTs webhook
//! deliveries (`{ "type": "new-message", "data": <message> }`) to the gateway as BlueBubbles
//! does.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// A message the gateway sent through the bridge.
#[derive(Debug, Clone)]
pub struct Sent {
    pub chat_guid: String,
    pub text: String,
    pub method: String,
    pub temp_guid: String,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    password: String,
    private_api: bool,
    helper_connected: bool,
    sent: Vec<Sent>,
    /// Requests refused for their password.
    refused: usize,
    /// Send attempts while down would not reach here; these count the ones that did.
    attempts: usize,
    fail_send: VecDeque<(u16, &'static str)>,
    /// Sends answer 307 to this base URL, with the same path and query (the password).
    redirect: Option<String>,
    /// The next send answers 200 with a 2 MiB body (and is not recorded).
    huge: bool,
    next: u64,
}

pub struct FakeBlueBubbles {
    /// The server's base URL, for `url`.
    pub url: String,
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

type Q = Query<HashMap<String, String>>;

impl FakeBlueBubbles {
    pub async fn start(password: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            password: password.into(),
            private_api: false,
            helper_connected: false,
            next: 1,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Self { url: format!("http://{addr}"), addr, inner, stop: Mutex::new(None) };
        fake.serve(listener);
        fake
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/api/v1/ping", get(ping))
            .route("/api/v1/server/info", get(info))
            .route("/api/v1/message/text", post(send_text))
            .with_state(self.inner.clone());
        let (tx, rx) = oneshot::channel::<()>();
        *self.stop.lock().unwrap() = Some(tx);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
    }

    /// The server goes away: its listener is closed (connections refused) until `up`.
    pub async fn down(&self) {
        if let Some(tx) = self.stop.lock().unwrap().take() {
            let _ = tx.send(());
        }
        // Until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(Instant::now() < deadline, "the fake bridge did not go down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server is back, on the same port.
    pub async fn up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot bind {} again: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.serve(listener);
    }

    pub fn set_private_api(&self, enabled: bool, helper_connected: bool) {
        let mut i = self.inner.lock().unwrap();
        i.private_api = enabled;
        i.helper_connected = helper_connected;
    }

    /// The next send answers `status` with an iMessage error (as when Messages cannot send).
    pub fn fail_next_send(&self, status: u16, message: &'static str) {
        self.inner.lock().unwrap().fail_send.push_back((status, message));
    }

    /// Sends answer `307 Temporary Redirect` to the same path and query on `base`.
    pub fn redirect_sends_to(&self, base: &str) {
        self.inner.lock().unwrap().redirect = Some(base.to_string());
    }

    /// The next send is answered with a 2 MiB body, and not sent.
    pub fn huge_next_answer(&self) {
        self.inner.lock().unwrap().huge = true;
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.inner.lock().unwrap().sent.clone()
    }
    pub fn sent_to(&self, chat_guid: &str) -> Vec<Sent> {
        self.sent().into_iter().filter(|s| s.chat_guid == chat_guid).collect()
    }
    pub fn refused(&self) -> usize {
        self.inner.lock().unwrap().refused
    }
    pub fn attempts(&self) -> usize {
        self.inner.lock().unwrap().attempts
    }

    /// Waits (up to 60 s) until `chat_guid` got `n` messages.
    pub async fn wait_sent(&self, chat_guid: &str, n: usize) -> Vec<Sent> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.sent_to(chat_guid);
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{chat_guid} got {} of {n} messages: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A fresh message guid, as the Messages database makes them.
    pub fn guid(&self) -> String {
        let mut i = self.inner.lock().unwrap();
        i.next += 1;
        format!("p:0/5E1D{:04X}-7A2B-4C3D-8E9F-{:012X}", i.next % 0xffff, i.next)
    }

    /// A `new-message` event as BlueBubbles serializes it (`MessageSerializer`): from `address`
    /// in the chat `chat_guid` (`iMessage;-;<address>` for a direct chat).
    pub fn message(&self, chat_guid: &str, address: &str, text: &str) -> Value {
        let guid = self.guid();
        let group = chat_guid.contains(";+;");
        json!({ "type": "new-message", "data": {
            "originalROWID": 4242, "guid": guid, "text": text, "attributedBody": null,
            "handle": { "originalROWID": 7, "address": address, "service": "iMessage", "country": "us",
                        "uncanonicalizedId": null },
            "handleId": 7, "otherHandle": 0, "attachments": [], "subject": null, "error": 0,
            "dateCreated": now_ms(), "dateRead": null, "dateDelivered": null, "isDelivered": false,
            "isFromMe": false, "hasDdResults": false, "isArchived": false, "itemType": 0, "groupTitle": null,
            "groupActionType": 0, "balloonBundleId": null, "associatedMessageGuid": null,
            "associatedMessageType": null, "expressiveSendStyleId": null, "threadOriginatorGuid": null,
            "hasPayloadData": false,
            "chats": [ { "originalROWID": 3, "guid": chat_guid, "style": if group { 43 } else { 45 },
                         "chatIdentifier": chat_guid.rsplit(';').next().unwrap_or(""), "isArchived": false,
                         "displayName": if group { "Team" } else { "" } } ],
        } })
    }

    /// POSTs `event` to `webhook_url` as BlueBubbles' webhook service does (JSON, no other
    /// header, no retry); returns the status (0 when the gateway could not be reached).
    pub async fn deliver(&self, webhook_url: &str, event: &Value) -> u16 {
        reqwest::Client::new()
            .post(webhook_url)
            .header("content-type", "application/json")
            .body(event.to_string())
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn answer(status: u16, message: &str, data: Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap();
    (code, axum::Json(json!({ "status": status, "message": message, "data": data }))).into_response()
}

fn error(status: u16, message: &str, kind: &str, error: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap();
    (code, axum::Json(json!({ "status": status, "message": message, "error": { "type": kind, "message": error } })))
        .into_response()
}

/// The auth middleware: `guid`, `password` or `token` in the query, trimmed, equal; else the
/// 401 to answer.
fn refused(inner: &Arc<Mutex<Inner>>, q: &HashMap<String, String>) -> Option<Response> {
    let token = q.get("guid").or(q.get("password")).or(q.get("token"));
    let mut i = inner.lock().unwrap();
    match token {
        None => {
            i.refused += 1;
            Some(error(
                401,
                "You are not authorized to access this resource",
                "Authentication Error",
                "Missing server password!",
            ))
        }
        Some(t) if t.trim() != i.password.trim() => {
            i.refused += 1;
            Some(error(401, "You are not authorized to access this resource", "Authentication Error", "Unauthorized"))
        }
        Some(_) => None,
    }
}

async fn ping(State(inner): State<Arc<Mutex<Inner>>>, Query(q): Q) -> Response {
    if let Some(r) = refused(&inner, &q) {
        return r;
    }
    answer(200, "Ping received!", json!("pong"))
}

async fn info(State(inner): State<Arc<Mutex<Inner>>>, Query(q): Q) -> Response {
    if let Some(r) = refused(&inner, &q) {
        return r;
    }
    let i = inner.lock().unwrap();
    answer(
        200,
        "Success",
        json!({ "computer_id": "fake-mac", "os_version": "15.1", "server_version": "1.9.9",
                "private_api": i.private_api, "proxy_service": "lan-url", "helper_connected": i.helper_connected,
                "detected_icloud": "ops@example.com", "detected_imessage": "ops@example.com",
                "macos_time_sync": null, "local_ipv4s": ["10.0.0.2"], "local_ipv6s": [] }),
    )
}

async fn send_text(
    State(inner): State<Arc<Mutex<Inner>>>,
    Query(q): Q,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refused(&inner, &q) {
        return r;
    }
    let mut i = inner.lock().unwrap();
    i.attempts += 1;
    if std::mem::take(&mut i.huge) {
        let filler = "x".repeat(2 << 20);
        return answer(200, "Message sent!", json!({ "padding": filler }));
    }
    if let Some(base) = &i.redirect {
        let to = format!("{base}{}", uri.path_and_query().map_or("", |p| p.as_str()));
        return (StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, to)]).into_response();
    }
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return error(
            400,
            "You've made a bad request! Please check your request params & body",
            "Validation Error",
            "Bad Request",
        );
    };
    let (Some(chat), Some(text)) = (b["chatGuid"].as_str(), b["message"].as_str()) else {
        return error(
            400,
            "You've made a bad request! Please check your request params & body",
            "Validation Error",
            "A chatGuid and message are required",
        );
    };
    let method = b["method"].as_str().unwrap_or("apple-script").to_string();
    if method == "private-api" && !(i.private_api && i.helper_connected) {
        return error(400, "iMessage Private API is not enabled!", "iMessage Error", "Private API not enabled");
    }
    if let Some((status, message)) = i.fail_send.pop_front() {
        return error(status, message, "iMessage Error", "Message failed to send!");
    }
    i.next += 1;
    let guid = format!("p:0/SENT-{:08}", i.next);
    let temp = b["tempGuid"].as_str().unwrap_or("").to_string();
    i.sent.push(Sent {
        chat_guid: chat.into(),
        text: text.into(),
        method,
        temp_guid: temp.clone(),
        at: Instant::now(),
    });
    answer(
        200,
        "Message sent!",
        json!({ "guid": guid, "tempGuid": temp, "text": text, "isFromMe": true, "error": 0,
                "dateCreated": now_ms(), "chats": [ { "guid": chat } ] }),
    )
}

//! A fake signal-cli daemon in multi-account mode speaking its real HTTP wire format
//! (`signal-cli daemon --http`): JSON-RPC 2.0 on `POST /api/v1/rpc` (`version`, `listAccounts`,
//! `send` with `account` and `recipient` or `groupId`, `startLink`, `finishLink`; signal-cli's
//! error codes) and Server-Sent Events on `GET /api/v1/events[?account=NUMBER]` (`event:receive`,
//! `data:{"account":…,"envelope":…}`, `:` keep-alives). Several accounts on one daemon.
//!
//! Like a daemon run with `--receive-mode=on-connection`, an event for an account nobody is
//! listening to waits (on Signal's servers) until a stream for that account connects. `restart`
//! drops every stream and refuses connections for a while; `broadcast` sends every event to
//! every stream whatever its `?account=` (to prove the gateway checks `account` itself).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A message the gateway sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub account: String,
    /// The recipient (number or ACI), for a direct message.
    pub recipient: Option<String>,
    /// The group id (standard base64), for a group message.
    pub group: Option<String>,
    pub message: String,
    pub at: Instant,
}

struct Account {
    number: String,
    uuid: String,
    registered: bool,
    /// Events waiting for a stream of this account.
    waiting: Vec<String>,
    last: Option<String>,
}

struct Stream {
    /// `?account=`, or every account.
    account: Option<String>,
    tx: mpsc::UnboundedSender<String>,
}

#[derive(Default)]
struct Inner {
    accounts: Mutex<Vec<Account>>,
    streams: Mutex<Vec<Stream>>,
    sent: Mutex<Vec<Sent>>,
    calls: Mutex<Vec<(String, Value)>>,
    /// The number the next finishLink links.
    link_number: Mutex<Option<String>>,
    /// Sends fail with signal-cli's error for this many calls.
    fail_sends: Mutex<usize>,
    broadcast: AtomicBool,
    /// Started with `-a`: a single-account daemon has no `listAccounts`.
    single: AtomicBool,
    opened: Mutex<usize>,
    ts: Mutex<i64>,
}

#[derive(Clone)]
pub struct FakeSignal {
    /// The daemon's base URL, for `url`.
    pub url: String,
    addr: std::net::SocketAddr,
    inner: Arc<Inner>,
    server: Arc<Mutex<Option<Server>>>,
}

/// The running server: how to stop it, and its task.
type Server = (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>);

impl FakeSignal {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Self { url: format!("http://{addr}"), addr, inner, server: Arc::default() };
        fake.serve(listener);
        fake
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/api/v1/rpc", post(rpc))
            .route("/api/v1/events", get(events))
            .route("/api/v1/check", get(|| async { StatusCode::OK }))
            .with_state(self.inner.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        *self.server.lock().unwrap() = Some((stop, task));
    }

    /// An account (a number with its ACI) the daemon serves.
    pub fn add_account(&self, number: &str, uuid: &str) {
        self.inner.accounts.lock().unwrap().push(Account {
            number: number.into(),
            uuid: uuid.into(),
            registered: true,
            waiting: Vec::new(),
            last: None,
        });
    }

    /// The number the next `finishLink` links (as if that phone scanned the code).
    pub fn set_link_number(&self, number: &str) {
        *self.inner.link_number.lock().unwrap() = Some(number.into());
    }

    /// Every event goes to every stream, whatever its `?account=`.
    /// Behaves as a daemon started with `-a` (single-account mode).
    pub fn set_single_account(&self, on: bool) {
        self.inner.single.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_broadcast(&self, on: bool) {
        self.inner.broadcast.store(on, Ordering::SeqCst);
    }

    /// The next `n` sends fail (signal-cli's internal error).
    pub fn fail_sends(&self, n: usize) {
        *self.inner.fail_sends.lock().unwrap() = n;
    }

    /// The daemon goes away: every stream is dropped and connections are refused for `down`,
    /// then it listens again on the same address.
    pub async fn restart(&self, down: Duration) {
        // Streams end, idle connections close, the port is closed.
        self.inner.streams.lock().unwrap().clear();
        let server = self.server.lock().unwrap().take();
        if let Some((stop, mut task)) = server {
            let _ = stop.send(());
            if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
                task.abort();
            }
        }
        tokio::time::sleep(down).await;
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("listen again on the same port");
        self.serve(listener);
    }

    fn timestamp(&self) -> i64 {
        let mut ts = self.inner.ts.lock().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        *ts = now.max(*ts + 1);
        *ts
    }

    /// A direct message from `from` (number, ACI) to `account`; returns its timestamp.
    pub fn dm(&self, account: &str, from: (&str, &str), text: &str) -> i64 {
        self.message(account, from, json!({ "message": text }))
    }

    /// A group message; `mention` names the account in `mentions` (with its placeholder).
    pub fn group(&self, account: &str, from: (&str, &str), group: &str, text: &str, mention: bool) -> i64 {
        let mut data = json!({ "message": text,
                               "groupInfo": { "groupId": group, "groupName": "Team", "revision": 2, "type": "DELIVER" } });
        if mention {
            let uuid = self.uuid(account);
            data["message"] = json!(format!("\u{fffc} {text}"));
            data["mentions"] = json!([ { "name": account, "number": account, "uuid": uuid, "start": 0, "length": 1 } ]);
        }
        self.message(account, from, data)
    }

    fn uuid(&self, account: &str) -> String {
        self.inner.accounts.lock().unwrap().iter().find(|a| a.number == account).map(|a| a.uuid.clone()).unwrap()
    }

    fn message(&self, account: &str, from: (&str, &str), mut data: Value) -> i64 {
        let ts = self.timestamp();
        data["timestamp"] = json!(ts);
        data["expiresInSeconds"] = json!(0);
        data["viewOnce"] = json!(false);
        let envelope = json!({ "source": from.0, "sourceNumber": from.0, "sourceUuid": from.1, "sourceName": "Someone",
                               "sourceDevice": 1, "timestamp": ts, "serverReceivedTimestamp": ts + 5,
                               "serverDeliveredTimestamp": ts + 9, "dataMessage": data });
        self.push(account, json!({ "envelope": envelope, "account": account }).to_string());
        ts
    }

    /// A sync message from the account's own phone (it sent something itself).
    pub fn sync(&self, account: &str, to: &str, text: &str) {
        let ts = self.timestamp();
        let uuid = self.uuid(account);
        let envelope = json!({ "source": account, "sourceNumber": account, "sourceUuid": uuid, "sourceDevice": 2,
                               "timestamp": ts, "syncMessage": { "sentMessage": { "destination": to, "destinationNumber": to,
                               "timestamp": ts, "message": text, "expiresInSeconds": 0, "viewOnce": false } } });
        self.push(account, json!({ "envelope": envelope, "account": account }).to_string());
    }

    /// Sends `data` as one `receive` event for `account` (or keeps it until a stream of that
    /// account connects).
    pub fn push(&self, account: &str, data: String) {
        let broadcast = self.inner.broadcast.load(Ordering::SeqCst);
        let mut accounts = self.inner.accounts.lock().unwrap();
        let acc = accounts.iter_mut().find(|a| a.number == account).expect("known account");
        acc.last = Some(data.clone());
        let mut streams = self.inner.streams.lock().unwrap();
        streams.retain(|s| !s.tx.is_closed());
        let mut delivered = false;
        for s in streams.iter() {
            if broadcast || s.account.as_deref().is_none_or(|a| a == account) {
                delivered |= s.tx.send(frame(&data)).is_ok();
            }
        }
        if !delivered {
            acc.waiting.push(data);
        }
    }

    /// Sends the last event of `account` again (a re-delivery).
    pub fn replay_last(&self, account: &str) {
        let last =
            self.inner.accounts.lock().unwrap().iter().find(|a| a.number == account).and_then(|a| a.last.clone());
        self.push(account, last.expect("an event to replay"));
    }

    /// Writes raw bytes on every stream of `account` (a malformed event).
    pub fn push_raw(&self, account: &str, raw: &str) {
        for s in self.inner.streams.lock().unwrap().iter() {
            if s.account.as_deref().is_none_or(|a| a == account) {
                let _ = s.tx.send(raw.to_string());
            }
        }
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.inner.sent.lock().unwrap().clone()
    }

    /// Messages sent from `account` to `to` (a recipient or a group id).
    pub fn sent_to(&self, account: &str, to: &str) -> Vec<Sent> {
        self.sent()
            .into_iter()
            .filter(|s| s.account == account && (s.recipient.as_deref() == Some(to) || s.group.as_deref() == Some(to)))
            .collect()
    }

    /// JSON-RPC calls received: (method, params).
    pub fn calls(&self) -> Vec<(String, Value)> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// Streams open now for `account`.
    pub fn streams(&self, account: &str) -> usize {
        let mut streams = self.inner.streams.lock().unwrap();
        streams.retain(|s| !s.tx.is_closed());
        streams.iter().filter(|s| s.account.as_deref() == Some(account)).count()
    }

    /// Event streams opened so far.
    pub fn opened(&self) -> usize {
        *self.inner.opened.lock().unwrap()
    }

    pub async fn wait_streams(&self, account: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.streams(account) < n {
            assert!(Instant::now() < deadline, "no event stream for {account}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to 60 s) until `to` got `n` messages from `account`.
    pub async fn wait_sent(&self, account: &str, to: &str, n: usize) -> Vec<Sent> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.sent_to(account, to);
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{to} got {} of {n} messages: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn frame(data: &str) -> String {
    format!("event:receive\ndata:{data}\n\n")
}

async fn events(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let account = q.get("account").filter(|a| !a.is_empty()).cloned();
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    {
        let mut accounts = inner.accounts.lock().unwrap();
        if let Some(a) = &account {
            let Some(acc) = accounts.iter_mut().find(|x| &x.number == a && x.registered) else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            for data in acc.waiting.drain(..) {
                let _ = tx.send(frame(&data));
            }
        } else {
            for acc in accounts.iter_mut() {
                for data in acc.waiting.drain(..) {
                    let _ = tx.send(frame(&data));
                }
            }
        }
        *inner.opened.lock().unwrap() += 1;
        inner.streams.lock().unwrap().push(Stream { account, tx });
    }
    // The daemon flushes its headers at once, then a keep-alive now and then.
    let _ = inner;
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let next = tokio::select! {
            m = rx.recv() => m?,
            () = tokio::time::sleep(Duration::from_secs(15)) => ":\n".to_string(),
        };
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(next)), rx))
    });
    Response::builder().header(header::CONTENT_TYPE, "text/event-stream").body(Body::from_stream(body)).unwrap()
}

fn result(id: &Value, r: Value) -> Response {
    axum::Json(json!({ "jsonrpc": "2.0", "result": r, "id": id })).into_response()
}

fn error(id: &Value, code: i64, message: &str) -> Response {
    axum::Json(json!({ "jsonrpc": "2.0", "error": { "code": code, "message": message, "data": null }, "id": id }))
        .into_response()
}

async fn rpc(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(&Value::Null, -32700, "Parse error");
    };
    let id = req["id"].clone();
    let Some(method) = req["method"].as_str() else { return error(&id, -32600, "method field must be set") };
    let params = req.get("params").cloned().unwrap_or(json!({}));
    inner.calls.lock().unwrap().push((method.to_string(), params.clone()));
    let account = params["account"].as_str().map(str::to_string);
    let known = |a: &str| inner.accounts.lock().unwrap().iter().any(|x| x.number == a && x.registered);
    match method {
        "version" => result(&id, json!({ "version": "0.14.6" })),
        "listAccounts" if inner.single.load(std::sync::atomic::Ordering::SeqCst) => {
            error(&id, -32601, "Method not implemented")
        }
        "listAccounts" => {
            let list: Vec<Value> = inner
                .accounts
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.registered)
                .map(|a| json!({ "number": a.number }))
                .collect();
            result(&id, json!(list))
        }
        "send" => {
            let Some(account) = account else { return error(&id, -32602, "Method requires account parameter") };
            if !known(&account) {
                return error(&id, -32602, "Specified account does not exist");
            }
            {
                let mut fail = inner.fail_sends.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return error(&id, -32603, "Failed to send message: timeout (IOException)");
                }
            }
            let recipient = match &params["recipient"] {
                Value::Array(l) => l.first().and_then(Value::as_str).map(str::to_string),
                Value::String(s) => Some(s.clone()),
                _ => None,
            };
            let group = params["groupId"].as_str().map(str::to_string);
            let Some(message) = params["message"].as_str() else { return error(&id, -1, "No message given") };
            if recipient.is_none() && group.is_none() {
                return error(&id, -1, "No recipients given");
            }
            inner.sent.lock().unwrap().push(Sent {
                account,
                recipient: recipient.clone(),
                group,
                message: message.to_string(),
                at: Instant::now(),
            });
            let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            result(
                &id,
                json!({ "timestamp": ts, "results": [ { "recipientAddress": { "uuid": null, "number": recipient },
                                                         "type": "SUCCESS" } ] }),
            )
        }
        "startLink" => result(
            &id,
            json!({ "deviceLinkUri": "sgnl://linkdevice?uuid=Zm9vYmFyLWxpbmstdG9rZW4&pub_key=QUJDREVGR0hJSktMTU5PUA" }),
        ),
        "finishLink" => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Some(number) = inner.link_number.lock().unwrap().take() else {
                return error(&id, -3, "Link request error: Connection closed!");
            };
            inner.accounts.lock().unwrap().push(Account {
                number: number.clone(),
                uuid: "99999999-9999-4999-8999-999999999999".into(),
                registered: true,
                waiting: Vec::new(),
                last: None,
            });
            result(&id, json!({ "number": number }))
        }
        _ => error(&id, -32601, "Method not implemented"),
    }
}

//! A fake Slack speaking the real wire formats: the Web API (`auth.test` with `x-oauth-scopes`,
//! `chat.postMessage`, `apps.connections.open`, `conversations.list`; `ok: false` errors and 429
//! with `Retry-After`) and Socket Mode (a WebSocket per `apps.connections.open` ticket: `hello`,
//! `events_api` envelopes kept until acknowledged and sent again on the next connection,
//! `disconnect`). Several workspaces, one bot token and one app token each. Signed Events API
//! requests are built by `signed`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A message the gateway posted.
#[derive(Debug, Clone)]
pub struct Sent {
    pub channel: String,
    pub thread_ts: Option<String>,
    pub text: String,
    pub at: Instant,
    pub body: Value,
}

/// An acknowledgement the gateway sent.
#[derive(Debug, Clone)]
pub struct Ack {
    pub envelope_id: String,
    pub at: Instant,
}

enum Cmd {
    Frame(String),
    Close,
}

#[derive(Default)]
struct Team {
    team_id: String,
    team: String,
    bot_token: String,
    app_token: String,
    bot_user: String,
    scopes: String,
    revoked: bool,
    channels: Vec<(String, String)>,
    next: u64,
    /// Envelopes sent but not acknowledged, in order.
    pending: VecDeque<Value>,
    /// The last acknowledged envelope (to deliver it again once, on demand).
    last_acked: Option<Value>,
    replay_acked: bool,
    acks: Vec<Ack>,
    sent: Vec<Sent>,
    fail_post: VecDeque<u64>,
    throttled_at: Vec<Instant>,
    /// `apps.connections.open` calls and WebSocket connections made.
    opened: usize,
    connections: usize,
    /// Open connections (Slack sends each envelope to one of them, here in turn).
    live: Vec<(usize, mpsc::UnboundedSender<Cmd>)>,
    turn: usize,
}

#[derive(Default)]
struct Inner {
    teams: Mutex<Vec<Team>>,
    tickets: Mutex<HashMap<String, String>>,
    addr: Mutex<String>,
}

#[derive(Clone)]
pub struct FakeSlack {
    /// The Web API base, for `apiUrl`.
    pub api: String,
    inner: Arc<Inner>,
}

pub const ALL_SCOPES: &str =
    "app_mentions:read,channels:history,channels:read,chat:write,groups:history,groups:read,im:history,mpim:history";

impl FakeSlack {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app =
            Router::new().route("/api/{method}", post(web_api)).route("/link/", any(socket)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *inner.addr.lock().unwrap() = addr.to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { api: format!("http://{addr}/api"), inner }
    }

    /// A workspace with one app installed: its bot token (xoxb-), app token (xapp-) and bot user.
    pub fn add_team(&self, team_id: &str, bot_token: &str, app_token: &str, bot_user: &str) {
        self.inner.teams.lock().unwrap().push(Team {
            team_id: team_id.into(),
            team: format!("Team {team_id}"),
            bot_token: bot_token.into(),
            app_token: app_token.into(),
            bot_user: bot_user.into(),
            scopes: ALL_SCOPES.into(),
            channels: vec![("C0GENERAL1".into(), "general".into()), ("C0RANDOM01".into(), "random".into())],
            next: 1,
            ..Default::default()
        });
    }

    fn with<R>(&self, bot_token: &str, f: impl FnOnce(&mut Team) -> R) -> R {
        let mut teams = self.inner.teams.lock().unwrap();
        f(teams.iter_mut().find(|t| t.bot_token == bot_token).expect("known team"))
    }

    pub fn set_scopes(&self, bot_token: &str, scopes: &str) {
        self.with(bot_token, |t| t.scopes = scopes.into());
    }
    pub fn revoke(&self, bot_token: &str) {
        self.with(bot_token, |t| t.revoked = true);
    }
    /// The next `n` chat.postMessage calls answer 429 with `Retry-After: secs`.
    pub fn fail_next_post(&self, bot_token: &str, secs: u64) {
        self.with(bot_token, |t| t.fail_post.push_back(secs));
    }
    /// The next connection also delivers the last acknowledged envelope again (as Slack does
    /// when an acknowledgement was lost).
    pub fn replay_acked_once(&self, bot_token: &str) {
        self.with(bot_token, |t| t.replay_acked = true);
    }

    /// An `event_callback` of this team around `event`, with a fresh `event_id`.
    pub fn callback(&self, bot_token: &str, event: Value) -> Value {
        self.with(bot_token, |t| {
            t.next += 1;
            json!({ "token": "verification-token-unused", "team_id": t.team_id, "api_app_id": "A0APP",
                    "event": event, "type": "event_callback", "event_id": format!("Ev{:08}", t.next),
                    "event_time": now(), "authorizations": [ { "team_id": t.team_id, "user_id": t.bot_user, "is_bot": true } ] })
        })
    }

    /// A fresh message `ts`.
    pub fn ts(&self, bot_token: &str) -> String {
        self.with(bot_token, |t| {
            t.next += 1;
            format!("{}.{:06}", now(), t.next)
        })
    }

    /// The bot user of a team.
    pub fn bot_user(&self, bot_token: &str) -> String {
        self.with(bot_token, |t| t.bot_user.clone())
    }

    /// A direct message from `user` (its DM conversation is `D` + the user id's tail). Returns
    /// the envelope id.
    pub fn dm(&self, bot_token: &str, user: &str, text: &str) -> String {
        let ts = self.ts(bot_token);
        let channel = format!("D{}", &user[1..]);
        let event = json!({ "type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
                            "event_ts": ts, "channel_type": "im", "team": "T0" });
        let cb = self.callback(bot_token, event);
        self.push(bot_token, cb)
    }

    /// A channel message; when it mentions the bot, Slack sends it twice (as `message` and as
    /// `app_mention`), and so does this fake. Returns the message's ts.
    pub fn channel_msg(&self, bot_token: &str, channel: &str, user: &str, text: &str, thread: Option<&str>) -> String {
        let ts = self.ts(bot_token);
        let bot = self.bot_user(bot_token);
        let mut event = json!({ "type": "message", "channel": channel, "user": user, "text": text, "ts": ts,
                                "event_ts": ts, "channel_type": "channel" });
        if let Some(t) = thread {
            event["thread_ts"] = json!(t);
        }
        let cb = self.callback(bot_token, event.clone());
        self.push(bot_token, cb);
        if text.contains(&format!("<@{bot}>")) {
            event["type"] = json!("app_mention");
            event.as_object_mut().unwrap().remove("channel_type");
            let cb = self.callback(bot_token, event);
            self.push(bot_token, cb);
        }
        ts
    }

    /// Sends an `events_api` envelope with `payload`; returns its envelope id.
    pub fn push(&self, bot_token: &str, payload: Value) -> String {
        self.with(bot_token, |t| {
            t.next += 1;
            let id = format!("env-{:08}", t.next);
            let env = json!({ "envelope_id": id, "payload": payload, "type": "events_api",
                              "accepts_response_payload": false, "retry_attempt": 0, "retry_reason": "" });
            if !t.live.is_empty() {
                t.turn += 1;
                let _ = t.live[t.turn % t.live.len()].1.send(Cmd::Frame(env.to_string()));
            }
            t.pending.push_back(env);
            id
        })
    }

    /// Sends a raw text frame on the oldest live connection (not kept for redelivery).
    pub fn push_frame(&self, bot_token: &str, frame: &str) {
        self.with(bot_token, |t| {
            if let Some((_, tx)) = t.live.first() {
                let _ = tx.send(Cmd::Frame(frame.to_string()));
            }
        });
    }

    /// A `disconnect` frame on the oldest live connection, then that socket is closed (as Slack
    /// does).
    pub fn disconnect(&self, bot_token: &str, reason: &str) {
        let frame = json!({ "type": "disconnect", "reason": reason, "debug_info": { "host": "fake" } }).to_string();
        self.with(bot_token, |t| {
            // Gone from the live set at once: later envelopes go to the other connections.
            if !t.live.is_empty() {
                let (_, tx) = t.live.remove(0);
                let _ = tx.send(Cmd::Frame(frame));
                let _ = tx.send(Cmd::Close);
            }
        });
    }

    /// Drops the oldest live socket without a word.
    pub fn drop_socket(&self, bot_token: &str) {
        self.with(bot_token, |t| {
            if !t.live.is_empty() {
                let _ = t.live.remove(0).1.send(Cmd::Close);
            }
        });
    }

    /// Connections open now.
    pub fn live(&self, bot_token: &str) -> usize {
        self.with(bot_token, |t| t.live.len())
    }

    pub fn sent(&self, bot_token: &str) -> Vec<Sent> {
        self.with(bot_token, |t| t.sent.clone())
    }
    pub fn sent_to(&self, bot_token: &str, channel: &str) -> Vec<Sent> {
        self.sent(bot_token).into_iter().filter(|s| s.channel == channel).collect()
    }
    pub fn acks(&self, bot_token: &str) -> Vec<Ack> {
        self.with(bot_token, |t| t.acks.clone())
    }
    pub fn pending(&self, bot_token: &str) -> usize {
        self.with(bot_token, |t| t.pending.len())
    }
    pub fn connections(&self, bot_token: &str) -> usize {
        self.with(bot_token, |t| t.connections)
    }
    pub fn throttled_at(&self, bot_token: &str) -> Vec<Instant> {
        self.with(bot_token, |t| t.throttled_at.clone())
    }

    /// Waits (up to 60 s) until `channel` has received `n` messages from this bot.
    pub async fn wait_sent(&self, bot_token: &str, channel: &str, n: usize) -> Vec<Sent> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.sent_to(bot_token, channel);
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{channel} got {} of {n} messages: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the envelope was acknowledged; returns when.
    pub async fn wait_acked(&self, bot_token: &str, envelope_id: &str) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(a) = self.acks(bot_token).iter().find(|a| a.envelope_id == envelope_id) {
                return a.at;
            }
            assert!(Instant::now() < deadline, "envelope {envelope_id} never acknowledged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every envelope sent so far is acknowledged.
    pub async fn wait_all_acked(&self, bot_token: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.pending(bot_token) > 0 {
            assert!(Instant::now() < deadline, "{} envelopes never acknowledged", self.pending(bot_token));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the gateway holds a connection with `n` connections made so far.
    pub async fn wait_connected(&self, bot_token: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.with(bot_token, |t| t.connections >= n && !t.live.is_empty()) {
            assert!(Instant::now() < deadline, "no Socket Mode connection #{n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The Events API headers Slack sends for `body` at `timestamp`, signed with `secret`.
pub fn signed(secret: &str, timestamp: u64, body: &str) -> Vec<(&'static str, String)> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("v0:{timestamp}:{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("x-slack-request-timestamp", timestamp.to_string()),
        ("x-slack-signature", format!("v0={hex}")),
        ("content-type", "application/json".into()),
    ]
}

fn answer(v: Value, scopes: Option<&str>) -> Response {
    let mut r = axum::Json(v).into_response();
    if let Some(s) = scopes {
        r.headers_mut().insert("x-oauth-scopes", s.parse().unwrap());
    }
    r
}

fn error(code: &str) -> Response {
    answer(json!({ "ok": false, "error": code }), None)
}

async fn web_api(
    State(inner): State<Arc<Inner>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let mut teams = inner.teams.lock().unwrap();
    let Some(t) = teams.iter_mut().find(|t| t.bot_token == token || t.app_token == token) else {
        return error(if token.is_empty() { "not_authed" } else { "invalid_auth" });
    };
    if t.revoked {
        return error("token_revoked");
    }
    let is_app = t.app_token == token;
    match (method.as_str(), is_app) {
        ("auth.test", false) => answer(
            json!({ "ok": true, "url": format!("https://{}.slack.com/", t.team_id.to_lowercase()), "team": t.team,
                    "user": "helper", "team_id": t.team_id, "user_id": t.bot_user, "bot_id": "B0BOT",
                    "is_enterprise_install": false }),
            Some(&t.scopes.clone()),
        ),
        ("apps.connections.open", true) => {
            t.opened += 1;
            let ticket = format!("ticket-{}-{}", t.team_id, t.opened);
            inner.tickets.lock().unwrap().insert(ticket.clone(), t.bot_token.clone());
            let addr = inner.addr.lock().unwrap().clone();
            answer(json!({ "ok": true, "url": format!("ws://{addr}/link/?ticket={ticket}&app_id=A0APP") }), None)
        }
        ("conversations.list", false) => {
            let list: Vec<Value> =
                t.channels.iter().map(|(id, name)| json!({ "id": id, "name": name, "is_channel": true })).collect();
            answer(json!({ "ok": true, "channels": list, "response_metadata": { "next_cursor": "" } }), None)
        }
        ("chat.postMessage", false) => {
            if !t.scopes.split(',').any(|s| s == "chat:write") {
                return answer(
                    json!({ "ok": false, "error": "missing_scope", "needed": "chat:write", "provided": t.scopes }),
                    None,
                );
            }
            if let Some(secs) = t.fail_post.pop_front() {
                t.throttled_at.push(Instant::now());
                let mut r = (StatusCode::TOO_MANY_REQUESTS, axum::Json(json!({ "ok": false, "error": "ratelimited" })))
                    .into_response();
                r.headers_mut().insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
                return r;
            }
            let Ok(params) = serde_json::from_slice::<Value>(&body) else { return error("invalid_json") };
            let (Some(channel), Some(text)) = (params["channel"].as_str(), params["text"].as_str()) else {
                return error("no_text");
            };
            if text.is_empty() || text.chars().count() > 40_000 {
                return error("msg_too_long");
            }
            t.next += 1;
            let ts = format!("{}.{:06}", now(), t.next);
            t.sent.push(Sent {
                channel: channel.into(),
                thread_ts: params["thread_ts"].as_str().map(str::to_string),
                text: text.into(),
                at: Instant::now(),
                body: params.clone(),
            });
            answer(
                json!({ "ok": true, "channel": channel, "ts": ts,
                           "message": { "type": "message", "text": text, "user": t.bot_user, "bot_id": "B0BOT", "ts": ts } }),
                None,
            )
        }
        ("apps.connections.open", false) | ("auth.test" | "chat.postMessage" | "conversations.list", true) => {
            error("not_allowed_token_type")
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({ "ok": false, "error": "unknown_method" }))).into_response(),
    }
}

async fn socket(
    State(inner): State<Arc<Inner>>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    // A ticket is good for one connection.
    let Some(bot_token) = q.get("ticket").and_then(|t| inner.tickets.lock().unwrap().remove(t)) else {
        return (StatusCode::UNAUTHORIZED, "invalid ticket").into_response();
    };
    ws.on_upgrade(move |sock| connection(inner, bot_token, sock))
}

async fn connection(inner: Arc<Inner>, bot_token: String, mut sock: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn = {
        let mut teams = inner.teams.lock().unwrap();
        let t = teams.iter_mut().find(|t| t.bot_token == bot_token).unwrap();
        t.connections += 1;
        let hello = json!({ "type": "hello", "num_connections": 1,
                            "debug_info": { "host": "fake-slack", "approximate_connection_time": 18060 },
                            "connection_info": { "app_id": "A0APP" } });
        let _ = tx.send(Cmd::Frame(hello.to_string()));
        if t.replay_acked {
            t.replay_acked = false;
            if let Some(mut old) = t.last_acked.clone() {
                old["retry_attempt"] = json!(1);
                old["retry_reason"] = json!("timeout");
                let _ = tx.send(Cmd::Frame(old.to_string()));
            }
        }
        // What was not acknowledged is delivered again, with its retry count.
        for env in t.pending.iter_mut() {
            let n = env["retry_attempt"].as_u64().unwrap_or(0) + u64::from(t.connections > 1);
            env["retry_attempt"] = json!(n);
            let _ = tx.send(Cmd::Frame(env.to_string()));
        }
        t.live.push((t.connections, tx));
        t.connections
    };
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Frame(f)) => {
                    if sock.send(Message::Text(f.into())).await.is_err() {
                        break;
                    }
                }
                Some(Cmd::Close) | None => {
                    let _ = sock.send(Message::Close(None)).await;
                    break;
                }
            },
            m = sock.recv() => match m {
                Some(Ok(Message::Text(text))) => {
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    let Some(id) = v["envelope_id"].as_str() else { continue };
                    let mut teams = inner.teams.lock().unwrap();
                    let t = teams.iter_mut().find(|t| t.bot_token == bot_token).unwrap();
                    t.acks.push(Ack { envelope_id: id.to_string(), at: Instant::now() });
                    if let Some(pos) = t.pending.iter().position(|e| e["envelope_id"] == id) {
                        t.last_acked = t.pending.remove(pos);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    let mut teams = inner.teams.lock().unwrap();
    let t = teams.iter_mut().find(|t| t.bot_token == bot_token).unwrap();
    t.live.retain(|(c, _)| *c != conn);
}

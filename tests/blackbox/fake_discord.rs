//! A fake Discord speaking the real wire formats: the REST API under `/api/v10` (`/gateway/bot`,
//! `/users/@me`, `/applications/@me`, `/users/@me/guilds`, `/guilds/{id}/channels`,
//! `/channels/{id}`, `POST /channels/{id}/messages` and `/typing`, with 401s and 429s in
//! Discord's shapes) and the Gateway WebSocket at `/` (HELLO, IDENTIFY → READY, heartbeats and
//! ACKs, dispatches with sequence numbers, RESUME replaying what was missed, INVALID_SESSION,
//! close codes 4004 and 4014). Several bots, one per token.
//!
//! Frames are written with their keys in the order `t, s, op, d`, as Discord sends them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A message the gateway posted.
#[derive(Debug, Clone)]
pub struct Sent {
    pub channel: String,
    pub content: String,
    pub body: Value,
    pub at: Instant,
}

enum Push {
    Frame(String),
    /// Drop the socket without a close frame (a network failure).
    Drop,
}

#[derive(Default)]
struct Session {
    id: String,
    seq: u64,
    /// Every dispatch of the session, for RESUME.
    events: Vec<(u64, String)>,
    tx: Option<mpsc::UnboundedSender<Push>>,
}

#[derive(Clone)]
struct Bot {
    id: u64,
    name: String,
    app_flags: u64,
    guilds: Vec<(String, String)>,
}

#[derive(Default)]
struct Inner {
    bots: HashMap<String, Bot>,
    /// Channels: id → (guild, name, parent).
    channels: HashMap<String, (String, String, Option<String>)>,
    sessions: HashMap<String, Session>,
    sent: HashMap<String, Vec<Sent>>,
    typing: HashMap<String, usize>,
    identifies: HashMap<String, usize>,
    resumes: HashMap<String, usize>,
    /// 429s to answer the next sends with (`retry_after` seconds).
    limited: HashMap<String, Vec<f64>>,
    refuse_intents: HashSet<String>,
    next_session: u64,
}

#[derive(Clone)]
pub struct FakeDiscord {
    pub api: String,
    pub gateway: String,
    inner: Arc<Mutex<Inner>>,
}

fn token_of(headers: &HeaderMap) -> Option<String> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bot ").map(str::to_string)
}

fn frame(t: Option<&str>, s: Option<u64>, op: u8, d: &Value) -> String {
    let t = t.map_or("null".to_string(), |t| format!("\"{t}\""));
    let s = s.map_or("null".to_string(), |s| s.to_string());
    format!(r#"{{"t":{t},"s":{s},"op":{op},"d":{d}}}"#)
}

fn user(id: u64, name: &str, bot: bool) -> Value {
    json!({ "id": id.to_string(), "username": name, "discriminator": "0", "avatar": null, "bot": bot, "public_flags": 0 })
}

impl FakeDiscord {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = FakeDiscord { api: format!("http://{addr}/api/v10"), gateway: format!("ws://{addr}"), inner };
        let app = Router::new()
            .route("/", get(ws))
            .route("/api/v10/gateway/bot", get(gateway_bot))
            .route("/api/v10/users/@me", get(me))
            .route("/api/v10/applications/@me", get(application))
            .route("/api/v10/users/@me/guilds", get(guilds))
            .route("/api/v10/guilds/{id}/channels", get(guild_channels))
            .route("/api/v10/channels/{id}", get(channel))
            .route("/api/v10/channels/{id}/messages", post(create_message))
            .route("/api/v10/channels/{id}/typing", post(typing))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// A bot with the MESSAGE_CONTENT intent allowed, in `guilds` (id, name).
    pub fn add_bot(&self, token: &str, id: u64, name: &str, guilds: &[(&str, &str)]) {
        let guilds = guilds.iter().map(|(i, n)| (i.to_string(), n.to_string())).collect();
        self.inner.lock().unwrap().bots.insert(token.into(), Bot { id, name: name.into(), app_flags: 1 << 18, guilds });
    }

    pub fn add_channel(&self, guild: &str, id: &str, name: &str, parent: Option<&str>) {
        self.inner.lock().unwrap().channels.insert(id.into(), (guild.into(), name.into(), parent.map(str::to_string)));
    }

    /// The application has MESSAGE_CONTENT off: IDENTIFY is closed with 4014.
    pub fn refuse_intents(&self, token: &str) {
        let mut i = self.inner.lock().unwrap();
        i.refuse_intents.insert(token.into());
        if let Some(b) = i.bots.get_mut(token) {
            b.app_flags = 0;
        }
    }

    /// The toggle is switched back on.
    pub fn allow_intents(&self, token: &str) {
        let mut i = self.inner.lock().unwrap();
        i.refuse_intents.remove(token);
        if let Some(b) = i.bots.get_mut(token) {
            b.app_flags = 1 << 18;
        }
    }

    /// The next sends of `token` get 429s asking to wait `seconds` each.
    pub fn rate_limit_next(&self, token: &str, seconds: &[f64]) {
        self.inner.lock().unwrap().limited.entry(token.into()).or_default().extend_from_slice(seconds);
    }

    pub fn sent(&self, token: &str) -> Vec<Sent> {
        self.inner.lock().unwrap().sent.get(token).cloned().unwrap_or_default()
    }

    pub fn typing_count(&self, token: &str) -> usize {
        self.inner.lock().unwrap().typing.get(token).copied().unwrap_or(0)
    }

    pub fn identifies(&self, token: &str) -> usize {
        self.inner.lock().unwrap().identifies.get(token).copied().unwrap_or(0)
    }

    pub fn resumes(&self, token: &str) -> usize {
        self.inner.lock().unwrap().resumes.get(token).copied().unwrap_or(0)
    }

    pub fn connected(&self, token: &str) -> bool {
        self.inner.lock().unwrap().sessions.get(token).is_some_and(|s| s.tx.is_some())
    }

    /// Waits until `token`'s bot has a live session (READY sent), up to `within`.
    pub async fn wait_connected(&self, token: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.connected(token) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Dispatches an event to `token`'s session (buffered for RESUME when it is disconnected).
    pub fn dispatch(&self, token: &str, t: &str, d: Value) {
        let mut i = self.inner.lock().unwrap();
        let s = i.sessions.entry(token.into()).or_default();
        s.seq += 1;
        let f = frame(Some(t), Some(s.seq), 0, &d);
        s.events.push((s.seq, f.clone()));
        if let Some(tx) = &s.tx {
            let _ = tx.send(Push::Frame(f));
        }
    }

    /// Sends raw text on `token`'s socket (malformed frames).
    pub fn raw(&self, token: &str, text: &str) {
        let i = self.inner.lock().unwrap();
        if let Some(tx) = i.sessions.get(token).and_then(|s| s.tx.as_ref()) {
            let _ = tx.send(Push::Frame(text.to_string()));
        }
    }

    /// Drops `token`'s socket as a network failure would.
    pub fn disconnect(&self, token: &str) {
        let mut i = self.inner.lock().unwrap();
        if let Some(tx) = i.sessions.get_mut(token).and_then(|s| s.tx.take()) {
            let _ = tx.send(Push::Drop);
        }
    }

    /// A MESSAGE_CREATE as Discord sends it: `guild` None for a direct message.
    pub fn message(
        &self,
        token: &str,
        id: u64,
        channel: &str,
        guild: Option<&str>,
        author: (u64, &str),
        content: &str,
    ) {
        let bot = self.inner.lock().unwrap().bots.get(token).cloned().expect("bot");
        let mut mentions = Vec::new();
        if content.contains(&format!("<@{}>", bot.id)) {
            mentions.push(user(bot.id, &bot.name, true));
        }
        let mut d = json!({
            "id": id.to_string(), "channel_id": channel, "author": user(author.0, author.1, false),
            "content": content, "timestamp": "2026-01-01T00:00:00.000000+00:00", "edited_timestamp": null,
            "tts": false, "mention_everyone": false, "mention_roles": [], "attachments": [], "embeds": [],
            "pinned": false, "type": 0, "mentions": mentions,
        });
        if let Some(g) = guild {
            d["guild_id"] = json!(g);
        }
        self.dispatch(token, "MESSAGE_CREATE", d);
    }
}

async fn ws(State(fake): State<FakeDiscord>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| session(fake, socket))
}

async fn session(fake: FakeDiscord, mut socket: WebSocket) {
    let hello = frame(None, None, 10, &json!({ "heartbeat_interval": 5000 }));
    if socket.send(WsMessage::Text(hello.into())).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Push>();
    let mut token: Option<String> = None;
    loop {
        tokio::select! {
            push = rx.recv() => match push {
                Some(Push::Frame(f)) => { if socket.send(WsMessage::Text(f.into())).await.is_err() { return; } }
                Some(Push::Drop) | None => return,
            },
            msg = socket.recv() => {
                let Some(Ok(WsMessage::Text(text))) = msg else {
                    if let Some(t) = &token {
                        let mut i = fake.inner.lock().unwrap();
                        if let Some(s) = i.sessions.get_mut(t) { s.tx = None; }
                    }
                    return;
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                match v["op"].as_u64() {
                    Some(1) => {
                        let ack = frame(None, None, 11, &Value::Null);
                        if socket.send(WsMessage::Text(ack.into())).await.is_err() { return; }
                    }
                    Some(2) => {
                        let t = v["d"]["token"].as_str().and_then(|t| t.strip_prefix("Bot ")).unwrap_or("").to_string();
                        let intents = v["d"]["intents"].as_u64().unwrap_or(0);
                        let (bot, refused, ready) = {
                            let mut i = fake.inner.lock().unwrap();
                            *i.identifies.entry(t.clone()).or_default() += 1;
                            let bot = i.bots.get(&t).cloned();
                            let refused = i.refuse_intents.contains(&t) || intents & (1 << 15) == 0;
                            i.next_session += 1;
                            let id = format!("session-{}", i.next_session);
                            let s = i.sessions.entry(t.clone()).or_default();
                            // A new session: events of the old one are not replayed.
                            s.id = id.clone();
                            s.seq = 1;
                            s.events.clear();
                            s.tx = Some(tx.clone());
                            (bot, refused, id)
                        };
                        let Some(bot) = bot else {
                            let _ = socket.send(WsMessage::Close(Some(CloseFrame { code: 4004, reason: "Authentication failed.".into() }))).await;
                            return;
                        };
                        if refused {
                            let _ = socket.send(WsMessage::Close(Some(CloseFrame { code: 4014, reason: "Disallowed intent(s).".into() }))).await;
                            fake.inner.lock().unwrap().sessions.remove(&t);
                            return;
                        }
                        let d = json!({
                            "v": 10, "session_id": ready, "resume_gateway_url": fake.gateway, "shard": [0, 1],
                            "application": { "id": bot.id.to_string(), "flags": bot.app_flags },
                            "user": { "id": bot.id.to_string(), "username": bot.name, "discriminator": "0", "avatar": null, "bot": true, "mfa_enabled": false },
                            "guilds": bot.guilds.iter().map(|(g, _)| json!({ "id": g, "unavailable": true })).collect::<Vec<_>>(),
                        });
                        token = Some(t);
                        if socket.send(WsMessage::Text(frame(Some("READY"), Some(1), 0, &d).into())).await.is_err() { return; }
                    }
                    Some(6) => {
                        let t = v["d"]["token"].as_str().and_then(|t| t.strip_prefix("Bot ")).unwrap_or("").to_string();
                        let id = v["d"]["session_id"].as_str().unwrap_or("").to_string();
                        let after = v["d"]["seq"].as_u64().unwrap_or(0);
                        let replay = {
                            let mut i = fake.inner.lock().unwrap();
                            let ok = i.sessions.get(&t).is_some_and(|s| s.id == id);
                            if ok {
                                *i.resumes.entry(t.clone()).or_default() += 1;
                                let s = i.sessions.get_mut(&t).unwrap();
                                s.tx = Some(tx.clone());
                                s.seq += 1;
                                let resumed = frame(Some("RESUMED"), Some(s.seq), 0, &json!({}));
                                let mut out: Vec<String> = s.events.iter().filter(|(n, _)| *n > after).map(|(_, f)| f.clone()).collect();
                                s.events.push((s.seq, resumed.clone()));
                                out.push(resumed);
                                Some(out)
                            } else {
                                None
                            }
                        };
                        match replay {
                            Some(frames) => {
                                token = Some(t);
                                for f in frames {
                                    if socket.send(WsMessage::Text(f.into())).await.is_err() { return; }
                                }
                            }
                            None => {
                                let _ = socket.send(WsMessage::Text(frame(None, None, 9, &json!(false)).into())).await;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, axum::Json(json!({ "message": "401: Unauthorized", "code": 0 }))).into_response()
}

fn bot_of(fake: &FakeDiscord, headers: &HeaderMap) -> Option<(String, Bot)> {
    let t = token_of(headers)?;
    let b = fake.inner.lock().unwrap().bots.get(&t).cloned()?;
    Some((t, b))
}

async fn gateway_bot(State(fake): State<FakeDiscord>, headers: HeaderMap) -> Response {
    if bot_of(&fake, &headers).is_none() {
        return unauthorized();
    }
    axum::Json(json!({ "url": fake.gateway, "shards": 1,
        "session_start_limit": { "total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1 } }))
    .into_response()
}

async fn me(State(fake): State<FakeDiscord>, headers: HeaderMap) -> Response {
    let Some((_, b)) = bot_of(&fake, &headers) else { return unauthorized() };
    axum::Json(json!({ "id": b.id.to_string(), "username": b.name, "discriminator": "0", "avatar": null, "bot": true, "mfa_enabled": false, "flags": 0 })).into_response()
}

async fn application(State(fake): State<FakeDiscord>, headers: HeaderMap) -> Response {
    let Some((_, b)) = bot_of(&fake, &headers) else { return unauthorized() };
    axum::Json(json!({ "id": b.id.to_string(), "name": b.name, "description": "", "bot_public": true,
        "bot_require_code_grant": false, "verify_key": "00", "flags": b.app_flags }))
    .into_response()
}

async fn guilds(State(fake): State<FakeDiscord>, headers: HeaderMap) -> Response {
    let Some((_, b)) = bot_of(&fake, &headers) else { return unauthorized() };
    let list: Vec<Value> = b.guilds.iter().map(|(id, name)| json!({ "id": id, "name": name, "icon": null, "owner": false, "permissions": "3072", "features": [] })).collect();
    axum::Json(list).into_response()
}

fn channel_json(id: &str, c: &(String, String, Option<String>)) -> Value {
    let kind = if c.2.is_some() { 11 } else { 0 };
    json!({ "id": id, "type": kind, "guild_id": c.0, "name": c.1, "position": 0, "parent_id": c.2 })
}

async fn guild_channels(State(fake): State<FakeDiscord>, Path(guild): Path<String>, headers: HeaderMap) -> Response {
    if bot_of(&fake, &headers).is_none() {
        return unauthorized();
    }
    let i = fake.inner.lock().unwrap();
    let list: Vec<Value> =
        i.channels.iter().filter(|(_, c)| c.0 == guild && c.2.is_none()).map(|(id, c)| channel_json(id, c)).collect();
    axum::Json(list).into_response()
}

async fn channel(State(fake): State<FakeDiscord>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if bot_of(&fake, &headers).is_none() {
        return unauthorized();
    }
    let i = fake.inner.lock().unwrap();
    match i.channels.get(&id) {
        Some(c) => axum::Json(channel_json(&id, c)).into_response(),
        None => {
            (StatusCode::NOT_FOUND, axum::Json(json!({ "message": "Unknown Channel", "code": 10003 }))).into_response()
        }
    }
}

async fn create_message(
    State(fake): State<FakeDiscord>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some((t, b)) = bot_of(&fake, &headers) else { return unauthorized() };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "message": "Invalid Form Body", "code": 50035 })))
            .into_response();
    };
    let mut i = fake.inner.lock().unwrap();
    if let Some(wait) = i.limited.get_mut(&t).filter(|l| !l.is_empty()).map(|l| l.remove(0)) {
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({ "message": "You are being rate limited.", "retry_after": wait, "global": false })),
        )
            .into_response();
        let h = r.headers_mut();
        h.insert("retry-after", (wait.ceil() as u64).to_string().parse().unwrap());
        h.insert("x-ratelimit-scope", "user".parse().unwrap());
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-after", format!("{wait:.3}").parse().unwrap());
        return r;
    }
    let content = body["content"].as_str().unwrap_or("").to_string();
    if content.chars().count() > 2000 {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({ "message": "Invalid Form Body", "code": 50035 })))
            .into_response();
    }
    i.sent.entry(t).or_default().push(Sent { channel: id.clone(), content: content.clone(), body, at: Instant::now() });
    axum::Json(json!({ "id": "9000000000000000001", "channel_id": id, "author": user(b.id, &b.name, true), "content": content,
        "timestamp": "2026-01-01T00:00:00.000000+00:00", "edited_timestamp": null, "tts": false, "mention_everyone": false,
        "mention_roles": [], "attachments": [], "embeds": [], "pinned": false, "type": 0, "mentions": [] }))
    .into_response()
}

async fn typing(State(fake): State<FakeDiscord>, headers: HeaderMap) -> Response {
    let Some((t, _)) = bot_of(&fake, &headers) else { return unauthorized() };
    *fake.inner.lock().unwrap().typing.entry(t).or_default() += 1;
    StatusCode::NO_CONTENT.into_response()
}

//! A fake Telegram Bot API server speaking the real JSON: `getMe`, `getWebhookInfo`,
//! `getUpdates` (offsets confirm updates; long-poll `timeout` honoured, answered early when an
//! update arrives), `sendMessage`, and the error shapes `401 Unauthorized`, `429` with
//! `parameters.retry_after`, `409 Conflict` and 5xx. Several bots, one per token.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// A message the gateway sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub chat_id: i64,
    pub thread: Option<i64>,
    pub text: String,
    pub at: Instant,
    /// The raw request body (to check that no parse mode is used).
    pub body: Value,
}

/// A failure the fake answers with instead of the real result, once.
#[derive(Debug, Clone)]
pub enum Fail {
    /// 429 with `retry_after` seconds.
    TooMany(u64),
    /// A 502 with an HTML body, as a proxy in front of the Bot API would send.
    BadGatewayHtml,
    /// A 500 in the Bot API's JSON error shape.
    Internal,
}

#[derive(Default)]
struct BotState {
    id: u64,
    username: String,
    privacy_off: bool,
    webhook: Option<String>,
    revoked: bool,
    /// A field left out of getMe answers (an older or odd Bot API server).
    me_without: Option<String>,
    next_update: i64,
    next_message: i64,
    updates: VecDeque<Value>,
    /// Updates already confirmed (kept to replay one on demand).
    confirmed: Vec<Value>,
    replay_next: bool,
    offsets: Vec<i64>,
    sent: Vec<Sent>,
    fail_updates: VecDeque<Fail>,
    fail_send: VecDeque<Fail>,
    /// Timestamps of 429 answers to sendMessage.
    throttled_at: Vec<Instant>,
    /// `getMe` calls: one per polling session the gateway starts for this bot.
    sessions: usize,
    /// `getUpdates` calls.
    polls: usize,
}

#[derive(Default)]
struct Inner {
    bots: Mutex<HashMap<String, BotState>>,
    changed: Notify,
}

#[derive(Clone)]
pub struct FakeTelegram {
    pub base: String,
    inner: Arc<Inner>,
}

fn api_error(status: StatusCode, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({ "ok": false, "error_code": status.as_u16(), "description": description });
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    (status, axum::Json(body)).into_response()
}

fn ok(result: Value) -> Response {
    axum::Json(json!({ "ok": true, "result": result })).into_response()
}

fn fail(f: &Fail) -> Response {
    match f {
        Fail::TooMany(secs) => api_error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Too Many Requests: retry after {secs}"),
            Some(json!({ "retry_after": secs })),
        ),
        Fail::BadGatewayHtml => {
            (StatusCode::BAD_GATEWAY, "<html><body><h1>502 Bad Gateway</h1></body></html>").into_response()
        }
        Fail::Internal => api_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", None),
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn user(id: i64, name: &str) -> Value {
    json!({ "id": id, "is_bot": false, "first_name": name, "username": name.to_lowercase(), "language_code": "en" })
}

/// A chat: positive ids are private chats with that user, negative ids supergroups.
pub fn chat(id: i64, forum: bool) -> Value {
    if id > 0 {
        json!({ "id": id, "type": "private", "first_name": "User", "username": format!("user{id}") })
    } else if forum {
        json!({ "id": id, "type": "supergroup", "title": "Team", "is_forum": true })
    } else {
        json!({ "id": id, "type": "supergroup", "title": "Team" })
    }
}

impl FakeTelegram {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new().route("/{bot}/{method}", post(handle)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base: format!("http://{addr}"), inner }
    }

    /// Registers a bot; privacy mode is on (as @BotFather creates bots) unless `privacy_off`.
    pub fn add_bot(&self, token: &str, id: u64, username: &str) {
        let bot = BotState { id, username: username.into(), next_update: 1000, next_message: 1, ..Default::default() };
        self.inner.bots.lock().unwrap().insert(token.into(), bot);
    }

    fn with<R>(&self, token: &str, f: impl FnOnce(&mut BotState) -> R) -> R {
        let r = f(self.inner.bots.lock().unwrap().get_mut(token).expect("known bot"));
        self.inner.changed.notify_waiters();
        r
    }

    pub fn set_webhook(&self, token: &str, url: &str) {
        self.with(token, |b| b.webhook = Some(url.into()));
    }
    /// getMe answers leave out `field`.
    pub fn me_without(&self, token: &str, field: &str) {
        self.with(token, |b| b.me_without = Some(field.into()));
    }
    pub fn revoke(&self, token: &str) {
        self.with(token, |b| b.revoked = true);
    }
    pub fn fail_next_get_updates(&self, token: &str, f: Fail) {
        self.with(token, |b| b.fail_updates.push_back(f));
    }
    pub fn fail_next_send(&self, token: &str, f: Fail) {
        self.with(token, |b| b.fail_send.push_back(f));
    }
    /// Forgets every confirmation, as if the gateway had died before its offset reached the
    /// server: every update is delivered again unless a later offset confirms it.
    pub fn unconfirm_all(&self, token: &str) {
        self.with(token, |b| {
            let mut all: Vec<Value> = std::mem::take(&mut b.confirmed);
            all.extend(b.updates.drain(..));
            b.updates = all.into();
        });
    }
    /// The next getUpdates answer also carries the last confirmed update again.
    pub fn replay_once(&self, token: &str) {
        self.with(token, |b| b.replay_next = true);
    }

    /// Queues a raw update; `update_id` is filled in unless `with_id` is false. Returns the id.
    pub fn push_raw(&self, token: &str, mut update: Value, with_id: bool) -> i64 {
        self.with(token, |b| {
            let id = b.next_update;
            b.next_update += 1;
            if with_id {
                update["update_id"] = json!(id);
            }
            b.updates.push_back(update);
            id
        })
    }

    fn message(&self, token: &str, chat_id: i64, from: Value, extra: Value, forum: bool) -> i64 {
        let mid = self.with(token, |b| {
            b.next_message += 1;
            b.next_message
        });
        let mut m = json!({ "message_id": mid, "date": now_unix(), "chat": chat(chat_id, forum), "from": from });
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        self.push_raw(token, json!({ "message": m }), true)
    }

    /// A private message from user `from` (the chat id is the user id).
    pub fn dm(&self, token: &str, from: i64, text: &str) -> i64 {
        self.message(token, from, user(from, &format!("User{from}")), json!({ "text": text }), false)
    }

    /// A private message without text (a photo).
    pub fn dm_photo(&self, token: &str, from: i64) -> i64 {
        let photo = json!([{ "file_id": "AgACAgIAAxkBAAI", "file_unique_id": "AQAD", "width": 90, "height": 90, "file_size": 1234 }]);
        self.message(token, from, user(from, &format!("User{from}")), json!({ "photo": photo }), false)
    }

    /// A group message; `topic` makes it a forum-topic message.
    pub fn group(&self, token: &str, chat_id: i64, from: i64, text: &str, topic: Option<i64>) -> i64 {
        let mut extra = json!({ "text": text });
        if let Some(t) = topic {
            extra["message_thread_id"] = json!(t);
            extra["is_topic_message"] = json!(true);
        }
        self.message(token, chat_id, user(from, &format!("User{from}")), extra, topic.is_some())
    }

    pub fn sent(&self, token: &str) -> Vec<Sent> {
        self.inner.bots.lock().unwrap()[token].sent.clone()
    }
    pub fn sent_to(&self, token: &str, chat: i64) -> Vec<Sent> {
        self.sent(token).into_iter().filter(|s| s.chat_id == chat).collect()
    }
    /// Polling sessions started for a bot (its `getMe` calls).
    pub fn sessions(&self, token: &str) -> usize {
        self.inner.bots.lock().unwrap()[token].sessions
    }

    /// `getUpdates` calls of a bot so far.
    pub fn polls(&self, token: &str) -> usize {
        self.inner.bots.lock().unwrap()[token].polls
    }

    pub fn offsets(&self, token: &str) -> Vec<i64> {
        self.inner.bots.lock().unwrap()[token].offsets.clone()
    }
    pub fn throttled_at(&self, token: &str) -> Vec<Instant> {
        self.inner.bots.lock().unwrap()[token].throttled_at.clone()
    }

    /// Waits (up to 60 s) until `chat` has received `n` messages from this bot.
    pub async fn wait_sent(&self, token: &str, chat: i64, n: usize) -> Vec<Sent> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.sent_to(token, chat);
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "chat {chat} got {} of {n} messages: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the gateway has polled past every queued update (the updates were handled).
    pub async fn wait_consumed(&self, token: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (pending, next, last) = {
                let bots = self.inner.bots.lock().unwrap();
                let b = &bots[token];
                (b.updates.len(), b.next_update, b.offsets.last().copied().unwrap_or(0))
            };
            if pending == 0 && last >= next {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "updates not consumed: {pending} pending, offset {last}, next id {next}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn handle(State(inner): State<Arc<Inner>>, Path((bot, method)): Path<(String, String)>, body: Bytes) -> Response {
    let Some(token) = bot.strip_prefix("bot") else {
        return api_error(StatusCode::NOT_FOUND, "Not Found", None);
    };
    let params: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    {
        let bots = inner.bots.lock().unwrap();
        match bots.get(token) {
            None => return api_error(StatusCode::UNAUTHORIZED, "Unauthorized", None),
            Some(b) if b.revoked => return api_error(StatusCode::UNAUTHORIZED, "Unauthorized", None),
            Some(_) => {}
        }
    }
    // The Bot API matches method names case-insensitively (teloxide sends `GetMe`, `SendMessage`).
    match method.to_ascii_lowercase().as_str() {
        "getme" => {
            let mut bots = inner.bots.lock().unwrap();
            let b = bots.get_mut(token).unwrap();
            b.sessions += 1;
            let mut me = json!({ "id": b.id, "is_bot": true, "first_name": "Bot", "username": b.username,
                       "can_join_groups": true, "can_read_all_group_messages": b.privacy_off,
                       "supports_inline_queries": false, "can_connect_to_business": false,
                       "has_main_web_app": false });
            if let Some(f) = &b.me_without {
                me.as_object_mut().unwrap().remove(f);
            }
            ok(me)
        }
        "getwebhookinfo" => {
            let bots = inner.bots.lock().unwrap();
            let b = &bots[token];
            ok(json!({ "url": b.webhook.clone().unwrap_or_default(), "has_custom_certificate": false,
                       "pending_update_count": b.updates.len() }))
        }
        "getupdates" => get_updates(&inner, token, &params).await,
        "sendmessage" => {
            let mut bots = inner.bots.lock().unwrap();
            let b = bots.get_mut(token).unwrap();
            if let Some(f) = b.fail_send.pop_front() {
                if matches!(f, Fail::TooMany(_)) {
                    b.throttled_at.push(Instant::now());
                }
                return fail(&f);
            }
            let Some(chat_id) = params["chat_id"].as_i64() else {
                return api_error(StatusCode::BAD_REQUEST, "Bad Request: chat_id is empty", None);
            };
            let text = params["text"].as_str().unwrap_or_default().to_string();
            if text.is_empty() || text.encode_utf16().count() > 4096 {
                return api_error(StatusCode::BAD_REQUEST, "Bad Request: message text is empty or too long", None);
            }
            let thread = params["message_thread_id"].as_i64();
            b.next_message += 1;
            let mut msg = json!({ "message_id": b.next_message, "date": now_unix(), "chat": chat(chat_id, thread.is_some()),
                                  "from": { "id": b.id, "is_bot": true, "first_name": "Bot", "username": b.username },
                                  "text": text });
            if let Some(t) = thread {
                msg["message_thread_id"] = json!(t);
                msg["is_topic_message"] = json!(true);
            }
            b.sent.push(Sent { chat_id, thread, text, at: Instant::now(), body: params.clone() });
            drop(bots);
            inner.changed.notify_waiters();
            ok(msg)
        }
        _ => api_error(StatusCode::NOT_FOUND, "Not Found: method not found", None),
    }
}

async fn get_updates(inner: &Arc<Inner>, token: &str, params: &Value) -> Response {
    if let Some(b) = inner.bots.lock().unwrap().get_mut(token) {
        b.polls += 1;
    }
    let offset = params["offset"].as_i64().unwrap_or(0);
    let timeout = params["timeout"].as_u64().unwrap_or(0).min(30);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let notified = inner.changed.notified();
        {
            let mut bots = inner.bots.lock().unwrap();
            let Some(b) = bots.get_mut(token) else {
                return api_error(StatusCode::UNAUTHORIZED, "Unauthorized", None);
            };
            if b.revoked {
                return api_error(StatusCode::UNAUTHORIZED, "Unauthorized", None);
            }
            if let Some(f) = b.fail_updates.pop_front() {
                return fail(&f);
            }
            if b.webhook.is_some() {
                return api_error(
                    StatusCode::CONFLICT,
                    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
                    None,
                );
            }
            b.offsets.push(offset);
            // An offset confirms every update below it (updates without an id go out once).
            while let Some(u) = b.updates.front() {
                match u["update_id"].as_i64() {
                    Some(id) if id < offset => {
                        let u = b.updates.pop_front().unwrap();
                        b.confirmed.push(u);
                    }
                    _ => break,
                }
            }
            let mut out: Vec<Value> = Vec::new();
            if b.replay_next && !b.updates.is_empty() {
                if let Some(old) = b.confirmed.last() {
                    out.push(old.clone());
                }
                b.replay_next = false;
            }
            // Unconfirmed updates go out again until an offset confirms them; updates without
            // an id cannot be confirmed and go out once.
            out.extend(b.updates.iter().cloned());
            b.updates.retain(|u| u["update_id"].as_i64().is_some());
            if !out.is_empty() {
                return ok(Value::Array(out));
            }
            if timeout == 0 || tokio::time::Instant::now() >= deadline {
                return ok(json!([]));
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

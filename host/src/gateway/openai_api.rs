//! `POST /v1/chat/completions` and `GET /v1/models`, in OpenAI's wire format and error shape.
//!
//! The gateway keeps the conversation: `model` is the agent id, `user` the conversation id
//! (session `agent:<id>:api:direct:<user>`), and the request's last user message is the new turn.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AuthFailure, Gateway, Snapshot, bearer};
use crate::agent::{RunEvent, RunOutcome};
use crate::config::{AgentConfig, ProviderApi};
use crate::ids::{AgentId, PeerKind, SessionKey, TenantId};

/// An error in OpenAI's shape: `{"error": {"message", "type", "code"}}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        429 => "rate_limit_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    (status, Json(json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })))
        .into_response()
}

pub(super) fn auth_error(f: AuthFailure) -> Response {
    match f {
        AuthFailure::Invalid => error(StatusCode::UNAUTHORIZED, "invalid_api_key", "invalid or missing API token"),
        AuthFailure::Throttled(secs) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many failed authentication attempts; try again later",
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
    }
}

/// Looks an agent up within a tenant. Another tenant's agent and an unknown id give the same
/// answer, so ids of other tenants cannot be probed.
pub(super) fn tenant_agent<'a>(snap: &'a Snapshot, tenant: &TenantId, model: &str) -> Option<&'a AgentConfig> {
    AgentId::parse(model).ok().and_then(|id| snap.config().agent(&id)).filter(|a| &a.tenant == tenant)
}

fn model_not_found(model: &str) -> Response {
    let shown: String = model.chars().take(64).flat_map(char::escape_debug).collect();
    error(StatusCode::NOT_FOUND, "model_not_found", &format!("the model `{shown}` does not exist"))
}

pub(super) fn is_scripted(snap: &Snapshot, agent: &AgentConfig) -> bool {
    snap.config().providers.get(&agent.model.provider).is_some_and(|p| p.api == ProviderApi::Scripted)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub async fn models(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let snap = gw.snapshot();
    let tenant = match gw.tenant_for(&snap, bearer(&headers), gw.client_ip(client, &headers)) {
        Ok(t) => t,
        Err(f) => return auth_error(f),
    };
    let data: Vec<Value> = snap
        .config()
        .agents
        .iter()
        .filter(|a| a.tenant == tenant)
        .map(|a| {
            let mut m = json!({ "id": a.id.as_str(), "object": "model", "created": 0, "owned_by": tenant.as_str(), "name": a.display_name });
            if is_scripted(&snap, a) {
                m["scripted"] = json!(true);
            }
            m
        })
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// A `POST /v1/chat/completions` body, as the handler (and the fuzz target) parses it.
#[derive(Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    user: Option<String>,
    // Sampling parameters and other OpenAI fields are accepted and ignored: the agent's
    // configuration decides them.
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// Longest user message accepted for one turn, in bytes.
const MAX_TURN_BYTES: usize = 256 * 1024;

impl ChatRequest {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
    }

    /// The agent id the client asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The new turn: the text of the last message, which must be the user's.
    pub fn turn_text(&self) -> Result<String, &'static str> {
        turn_text(&self.messages)
    }

    /// The session this request continues: `user` names the conversation.
    pub fn session(&self, agent: AgentId) -> Result<SessionKey, String> {
        let conversation = self.user.as_deref().unwrap_or("default");
        SessionKey::new(agent, "api", PeerKind::Direct, conversation).map_err(|e| format!("invalid `user`: {e}"))
    }
}

fn turn_text(messages: &[ChatMessage]) -> Result<String, &'static str> {
    let last = messages.last().ok_or("messages must not be empty")?;
    if last.role != "user" {
        return Err("the last message must have role \"user\": it is the new turn");
    }
    let text = match &last.content {
        Some(Content::Text(t)) => t.clone(),
        Some(Content::Parts(parts)) => {
            if parts.iter().any(|p| p.kind != "text") {
                return Err("only text content parts are supported");
            }
            parts.iter().filter_map(|p| p.text.as_deref()).collect::<Vec<_>>().join("\n")
        }
        None => String::new(),
    };
    if text.trim().is_empty() {
        return Err("the last user message is empty");
    }
    if text.len() > MAX_TURN_BYTES {
        return Err("the last user message is too long");
    }
    Ok(text)
}

pub async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // One snapshot for the whole request: the token, the agent and the run it starts.
    let snap = gw.snapshot();
    let tenant = match gw.tenant_for(&snap, bearer(&headers), gw.client_ip(client, &headers)) {
        Ok(t) => t,
        Err(f) => return auth_error(f),
    };
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let max = snap.config().gateway.max_body_bytes;
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("request body larger than {max} bytes"),
            );
        }
        Err(rejection) => return error(StatusCode::BAD_REQUEST, "invalid_body", &rejection.body_text()),
    };
    let req = match ChatRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_json", &e),
    };
    let Some(agent) = tenant_agent(&snap, &tenant, &req.model).cloned() else {
        return model_not_found(&req.model);
    };
    let text = match req.turn_text() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_messages", e),
    };
    let session = match req.session(agent.id.clone()) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_user", &e),
    };
    let id = format!("chatcmpl-{}", random_id());
    let model = agent.id.to_string();
    let (mut events, done) = snap.runtime.spawn_turn(agent, session, text);
    if !req.stream {
        while events.recv().await.is_some() {}
        let outcome = done.await.unwrap_or_else(|_| lost_run());
        if outcome.busy {
            let code = if outcome.over_quota() { "quota_exceeded" } else { "busy" };
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, code, &outcome.text);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(5));
            return r;
        }
        if outcome.failed {
            return error(StatusCode::BAD_GATEWAY, "upstream_error", &outcome.text);
        }
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": unix_now(),
            "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": outcome.text }, "finish_reason": "stop" }],
            "usage": usage_json(&outcome),
        }))
        .into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let created = unix_now();
        let chunk = |delta: Value, finish: Value| {
            Event::default().data(
                json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
                })
                .to_string(),
            )
        };
        // A client that goes away only stops this forwarding; the run itself completes and is stored.
        let mut open = tx.send(chunk(json!({ "role": "assistant" }), Value::Null)).await.is_ok();
        while let Some(ev) = events.recv().await {
            if let (true, RunEvent::Delta(d)) = (open, ev) {
                open = tx.send(chunk(json!({ "content": d }), Value::Null)).await.is_ok();
            }
        }
        let outcome = done.await.unwrap_or_else(|_| lost_run());
        if !open {
            return;
        }
        let last = if outcome.failed {
            Event::default().data(
                json!({ "error": { "message": outcome.text, "type": "api_error", "code": "upstream_error" } })
                    .to_string(),
            )
        } else {
            chunk(json!({}), json!("stop"))
        };
        let _ = tx.send(last).await;
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) });
    Sse::new(stream).into_response()
}

fn usage_json(o: &RunOutcome) -> Value {
    json!({
        "prompt_tokens": o.usage.input_tokens,
        "completion_tokens": o.usage.output_tokens,
        "total_tokens": o.usage.input_tokens + o.usage.output_tokens,
    })
}

/// The outcome when a run's task ended without reporting (it panicked or was aborted).
pub(super) fn lost_run() -> RunOutcome {
    RunOutcome {
        text: "The request could not be completed. Please try again.".into(),
        failed: true,
        busy: false,
        usage: Default::default(),
    }
}

/// 96 random bits as hex, for response ids.
pub(super) fn random_id() -> String {
    let b: [u8; 12] = crate::crypto::random(&ring::rand::SystemRandom::new()).unwrap_or_default();
    crate::crypto::hex(&b)
}

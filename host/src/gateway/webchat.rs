//! The web chat: an embedded page at `/` and its WebSocket at `/ws`.
//!
//! Protocol (JSON text frames): the client's first frame is `{"type":"auth","token"}`; the server
//! answers `ready` with the tenant's agents. Each `{"type":"send","agent","conversation","text"}`
//! starts a turn streamed as `start`, `delta`, `tool_call`, `tool_result`, `done`. Session key:
//! `agent:<id>:webchat:direct:<conversation>`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::openai_api::{is_scripted, lost_run, tenant_agent};
use super::{AuthFailure, Gateway, Snapshot};
use crate::agent::RunEvent;
use crate::ids::{PeerKind, SessionKey, TenantId};

const PAGE: &str = include_str!("webchat.html");
/// Largest frame accepted from a browser.
const MAX_FRAME: usize = 64 * 1024;
/// Time a client has to authenticate after connecting.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// The text inside the page's one `<tag>…</tag>` block.
fn inline_block<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = page.find(&open).map_or(0, |i| i + open.len());
    let end = page[start..].find(&format!("</{tag}>")).map_or(start, |i| start + i);
    &page[start..end]
}

/// The page's CSP: its own inline script and style by hash, nothing else.
fn csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| super::console::inline_csp(inline_block(PAGE, "script"), inline_block(PAGE, "style")))
}

pub async fn page() -> Response {
    ([(header::CONTENT_SECURITY_POLICY, csp())], Html(PAGE)).into_response()
}

/// Browsers always send `Origin` on WebSocket handshakes; a page of another origin is refused
/// (non-browser clients send none and authenticate by token alone).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    origin.split_once("://").is_some_and(|(_, rest)| rest.trim_end_matches('/') == host)
}

pub async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-origin WebSocket refused\n").into_response();
    }
    let client = gw.client_ip(client, &headers);
    ws.max_message_size(MAX_FRAME).max_frame_size(MAX_FRAME).on_upgrade(move |socket| session(gw, socket, client))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Auth { token: String },
    Send { agent: String, conversation: String, text: String },
}

async fn send_json(socket: &mut WebSocket, v: Value) -> bool {
    socket.send(WsMessage::Text(v.to_string().into())).await.is_ok()
}

fn parse_frame(msg: &WsMessage) -> Result<Option<ClientFrame>, String> {
    match msg {
        WsMessage::Text(t) => serde_json::from_str(t.as_str()).map(Some).map_err(|e| format!("invalid frame: {e}")),
        WsMessage::Binary(_) => Err("binary frames are not supported".into()),
        _ => Ok(None),
    }
}

async fn session(gw: Arc<Gateway>, mut socket: WebSocket, client: IpAddr) {
    let Some((tenant, token)) = authenticate(&gw, &mut socket, client).await else {
        let _ = socket.send(WsMessage::Close(None)).await;
        return;
    };
    let snap = gw.snapshot();
    let agents: Vec<Value> = snap
        .config()
        .agents
        .iter()
        .filter(|a| a.tenant == tenant)
        .map(|a| json!({ "id": a.id.as_str(), "name": a.display_name, "emoji": a.identity.emoji, "scripted": is_scripted(&snap, a) }))
        .collect();
    let name = snap.config().tenants.get(&tenant).map(|t| t.name.clone()).unwrap_or_default();
    drop(snap);
    if !send_json(&mut socket, json!({ "type": "ready", "tenant": name, "agents": agents })).await {
        return;
    }
    while let Some(Ok(msg)) = socket.recv().await {
        if matches!(msg, WsMessage::Close(_)) {
            break;
        }
        let frame = match parse_frame(&msg) {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => {
                if !send_json(&mut socket, json!({ "type": "error", "message": e })).await {
                    break;
                }
                continue;
            }
        };
        let ClientFrame::Send { agent, conversation, text } = frame else {
            if !send_json(&mut socket, json!({ "type": "error", "message": "already authenticated" })).await {
                break;
            }
            continue;
        };
        // Each turn runs on the snapshot current when it is sent: a token removed by a reload
        // ends the session at once, and a changed agent or policy applies to the next turn.
        let snap = gw.snapshot();
        if snap.tenant_tokens.lookup(&token).as_ref() != Some(&tenant) {
            send_json(&mut socket, json!({ "type": "error", "message": "invalid token" })).await;
            break;
        }
        if !turn(&snap, &mut socket, &tenant, &agent, &conversation, text).await {
            break;
        }
    }
}

/// The tenant a socket's first frame authenticates, and the token (checked again per turn).
async fn authenticate(gw: &Gateway, socket: &mut WebSocket, client: IpAddr) -> Option<(TenantId, String)> {
    let first = tokio::time::timeout(AUTH_TIMEOUT, socket.recv()).await.ok()??.ok()?;
    let token = match parse_frame(&first) {
        Ok(Some(ClientFrame::Auth { token })) => Some(token),
        _ => None,
    };
    match gw.tenant_on(&gw.snapshot(), "webchat", token.as_deref(), client) {
        Ok(t) => Some((t, token.unwrap_or_default())),
        Err(f) => {
            let message = match f {
                AuthFailure::Invalid => "invalid token".to_string(),
                AuthFailure::Throttled(s) => format!("too many failed attempts; try again in {s} s"),
            };
            send_json(socket, json!({ "type": "error", "message": message })).await;
            None
        }
    }
}

/// Runs one turn and streams it; returns false when the socket is gone.
async fn turn(
    snap: &Snapshot,
    socket: &mut WebSocket,
    tenant: &TenantId,
    agent: &str,
    conversation: &str,
    text: String,
) -> bool {
    let Some(agent) = tenant_agent(snap, tenant, agent).cloned() else {
        return send_json(socket, json!({ "type": "error", "message": "unknown agent" })).await;
    };
    if text.trim().is_empty() {
        return send_json(socket, json!({ "type": "error", "message": "empty message" })).await;
    }
    let session = match SessionKey::new(agent.id.clone(), "webchat", PeerKind::Direct, conversation) {
        Ok(s) => s,
        Err(e) => return send_json(socket, json!({ "type": "error", "message": e })).await,
    };
    let (mut events, done) = snap.runtime.spawn_turn(agent, session, text);
    let mut open = send_json(socket, json!({ "type": "start" })).await;
    while let Some(ev) = events.recv().await {
        if !open {
            continue; // keep draining: the run finishes and is stored even without a listener
        }
        let frame = match ev {
            RunEvent::Delta(text) => json!({ "type": "delta", "text": text }),
            RunEvent::ToolCall { id, name, arguments } => {
                json!({ "type": "tool_call", "id": id, "name": name, "arguments": arguments })
            }
            RunEvent::ToolResult { id, name, content, is_error } => {
                json!({ "type": "tool_result", "id": id, "name": name, "content": content, "isError": is_error })
            }
        };
        open = send_json(socket, frame).await;
    }
    let outcome = done.await.unwrap_or_else(|_| lost_run());
    open && send_json(socket, json!({ "type": "done", "text": outcome.text, "failed": outcome.failed })).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_runs_only_its_own_inline_script_and_style() {
        let csp = csp();
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert!(csp.contains("script-src 'sha256-") && csp.contains("style-src 'sha256-"), "{csp}");
        // One block of each, so the hashes cover everything that runs; no inline handlers.
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert_eq!(PAGE.matches("<style>").count(), 1);
        assert!(!PAGE.contains(" onclick=") && !PAGE.contains(" onload=") && !PAGE.contains(" style=\""));
        assert!(inline_block(PAGE, "script").contains("WebSocket"));
    }

    #[test]
    fn origin_must_match_host() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h));
        h.insert(header::HOST, "127.0.0.1:7878".parse().unwrap());
        h.insert(header::ORIGIN, "http://127.0.0.1:7878".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
    }
}

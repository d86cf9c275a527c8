//! The operator's pairing API, used by `bulkhead pairing list / approve / deny`:
//! `GET /admin/pairing`, `POST /admin/pairing/approve` and `POST /admin/pairing/deny` with
//! `{"code": "..."}`. Needs an operator token (`gateway.operators`); approving or denying needs
//! the `admin` or `operator` role (an `auditor` may only list).
//!
//! Pending codes live in the running gateway, and the store is locked by it, so the CLI goes
//! through this API instead of touching the store.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Gateway, bearer};
use crate::channels::pairing::{PairingError, Request};
use crate::config::OperatorRole;

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

fn operator(gw: &Gateway, headers: &HeaderMap, client: SocketAddr) -> Result<OperatorRole, Box<Response>> {
    if let Some(secs) = gw.throttle.locked(client.ip()) {
        return Err(Box::new(reply(
            StatusCode::TOO_MANY_REQUESTS,
            json!({ "error": format!("too many failed attempts; try again in {secs} s") }),
        )));
    }
    match bearer(headers).and_then(|t| gw.operator_tokens.lookup(t)) {
        Some(role) => {
            gw.throttle.success(client.ip());
            Ok(role)
        }
        None => {
            gw.throttle.failure(client.ip());
            gw.runtime.metrics.auth_failure();
            Err(Box::new(reply(StatusCode::UNAUTHORIZED, json!({ "error": "operator token required" }))))
        }
    }
}

fn request_json(r: &Request) -> serde_json::Value {
    json!({
        "code": r.code,
        "tenant": r.tenant.as_str(),
        "channel": r.channel,
        "account": r.account,
        "sender": r.sender,
        "username": r.username,
        "ageSecs": r.created.elapsed().as_secs(),
    })
}

pub async fn list(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = operator(&gw, &headers, client) {
        return *r;
    }
    let pending: Vec<_> = gw.pairing.pending().iter().map(request_json).collect();
    reply(StatusCode::OK, json!({ "pending": pending }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

async fn decide(gw: Arc<Gateway>, client: SocketAddr, headers: HeaderMap, body: Bytes, approve: bool) -> Response {
    match operator(&gw, &headers, client) {
        Ok(OperatorRole::Admin | OperatorRole::Operator) => {}
        Ok(OperatorRole::Auditor) => {
            return reply(
                StatusCode::FORBIDDEN,
                json!({ "error": "the auditor role cannot approve or deny pairings" }),
            );
        }
        Err(r) => return *r,
    }
    let Ok(CodeBody { code }) = serde_json::from_slice::<CodeBody>(&body) else {
        return reply(StatusCode::BAD_REQUEST, json!({ "error": "expected a JSON body {\"code\": \"...\"}" }));
    };
    let result = if approve { gw.pairing.approve(&code).await } else { gw.pairing.deny(&code) };
    match result {
        Ok(r) => {
            tracing::info!(tenant = %r.tenant, channel = %r.channel, account = %r.account, approved = approve, "Pairing request decided by an operator.");
            reply(StatusCode::OK, json!({ "approved": approve, "request": request_json(&r) }))
        }
        Err(e @ PairingError::UnknownCode(_)) => reply(StatusCode::NOT_FOUND, json!({ "error": e.to_string() })),
        Err(e @ PairingError::Store(_)) => {
            tracing::error!(error = %e, "Cannot save a pairing approval.");
            reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": e.to_string() }))
        }
    }
}

pub async fn approve(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    decide(gw, client, headers, body, true).await
}

pub async fn deny(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    decide(gw, client, headers, body, false).await
}

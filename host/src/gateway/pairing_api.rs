//! The operator's pairing API, used by `bulkhead pairing list / approve / deny`:
//! `GET /admin/pairing`, `POST /admin/pairing/approve` and `POST /admin/pairing/deny` with
//! `{"code": "..."}`, behind the admin guard (`gateway::admin`: operator token, audited);
//! listing needs any role, approving or denying the `admin` or `operator` role.
//!
//! Pending codes live in the running gateway, and the store is locked by it, so the CLI goes
//! through this API instead of touching the store.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::Gateway;
use super::admin::{Need, Operator};
use super::openai_api::error;
use crate::audit::{Actor, Event, Scope};
use crate::channels::pairing::{PairingError, Request};

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

pub async fn list(State(gw): State<Arc<Gateway>>, Extension(op): Extension<Operator>) -> Response {
    if let Some(denied) = op.refuse_unless(Need::Read) {
        return denied;
    }
    let pending: Vec<_> = gw.pairing.pending().iter().map(request_json).collect();
    Json(json!({ "pending": pending })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

async fn decide(gw: Arc<Gateway>, op: Operator, body: Bytes, approve: bool) -> Response {
    if let Some(denied) = op.refuse_unless(Need::Operate) {
        return denied;
    }
    let Ok(CodeBody { code }) = serde_json::from_slice::<CodeBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "expected a JSON body {\"code\": \"...\"}");
    };
    let result = if approve { gw.pairing.approve(&code).await } else { gw.pairing.deny(&code) };
    match result {
        Ok(r) => {
            tracing::info!(operator = %op.id, tenant = %r.tenant, channel = %r.channel, account = %r.account, approved = approve, "Pairing request decided by an operator.");
            let rt = gw.runtime();
            let audit = &rt.audit;
            let scope = Scope::Tenant(r.tenant.clone());
            let event = Event::PairingDecision {
                channel: r.channel.clone(),
                account: r.account.clone(),
                sender: audit.digest(&scope, "peer", r.sender.as_bytes()),
                approved: approve,
            };
            // The decision is already in force; a record that cannot be written is an error the
            // operator sees (the admin guard has recorded the request itself in the host log).
            if let Err(e) = audit.append(scope, Actor::Operator(op.id.clone()), event).await {
                tracing::error!(error = %e, "Pairing decision not recorded in the tenant's audit log.");
                return error(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", "the audit log is unavailable");
            }
            Json(json!({ "approved": approve, "request": request_json(&r) })).into_response()
        }
        Err(e @ PairingError::UnknownCode(_)) => error(StatusCode::NOT_FOUND, "unknown_code", &e.to_string()),
        Err(e @ PairingError::Store(_)) => {
            tracing::error!(error = %e, "Cannot save a pairing approval.");
            error(StatusCode::INTERNAL_SERVER_ERROR, "store_failure", &e.to_string())
        }
    }
}

pub async fn approve(State(gw): State<Arc<Gateway>>, Extension(op): Extension<Operator>, body: Bytes) -> Response {
    decide(gw, op, body, true).await
}

pub async fn deny(State(gw): State<Arc<Gateway>>, Extension(op): Extension<Operator>, body: Bytes) -> Response {
    decide(gw, op, body, false).await
}

//! The admin API under `/admin/`, for operator tokens only (`gateway.operators[]`), each with a
//! role. A tenant token, no token or a wrong token gets 401 on every `/admin/` path, known or not;
//! a known operator on an unknown path gets 404. Every request that reaches `/admin/` — allowed,
//! refused or failed — is recorded in the host audit log before its response leaves; if the
//! record cannot be written the response is replaced by 503 (fail closed).
//!
//! Adding an endpoint (`/admin/pairing`, `/admin/usage`, ...): write a handler that takes
//! `Extension(op): Extension<Operator>` and starts with
//! `if let Some(denied) = op.refuse_unless(Need::...) { return denied; }`, then add one
//! `.route(..)` line to [`routes`]. Authentication and auditing are already done by the guard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;

use super::openai_api::{auth_error, error};
use super::{Gateway, bearer};
use crate::audit::{Actor, Event, Scope, read_records};
use crate::config::OperatorRole;
use crate::ids::TenantId;

/// An authenticated operator, as the admin handlers see it.
#[derive(Debug, Clone)]
pub struct Operator {
    pub id: String,
    pub role: OperatorRole,
}

/// What `POST /admin/reload` asks of the application root: read the config (main file and
/// drop-ins) again, check it as a start would, and apply it or refuse it.
#[async_trait::async_trait]
pub trait Reloader: Send + Sync {
    async fn reload(&self, by: crate::audit::Actor) -> ReloadReport;

    /// The chat accounts running now, as `(channel, account, running)` (`running` false: its
    /// task ended, e.g. a revoked token); `None` when not known right now (a reload holds them).
    fn accounts(&self) -> Option<Vec<(String, String, bool)>> {
        None
    }
}

/// A reload's outcome as the console shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastReload {
    /// Unix seconds.
    pub at: u64,
    /// `admin`, `signal`, `watch`, ...
    pub trigger: String,
    pub report: ReloadReport,
}

/// The answer to a reload: what was applied, or every reason it was refused.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    pub applied: bool,
    /// SHA-256 over the main file and every drop-in (as loaded), when it could be read.
    pub config_digest: String,
    pub tenants_added: Vec<String>,
    pub tenants_removed: Vec<String>,
    /// Tenants present before and after whose settings changed (tokens, shares, quotas, ...).
    pub tenants_changed: Vec<String>,
    /// Agents whose effective policy digest changed (added agents included).
    pub policies_changed: Vec<String>,
    /// Channel accounts (`channel/account`) started, stopped or restarted.
    pub accounts_restarted: Vec<String>,
    /// Why the reload was refused (the running config keeps serving).
    pub errors: Vec<String>,
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read the host's state (tenants, usage): every role.
    Read,
    /// Change how the gateway runs (reload, pairing approvals): admin and operator.
    Operate,
    /// Read the audit trail: admin and auditor.
    Audit,
}

impl Operator {
    pub fn may(&self, need: Need) -> bool {
        use OperatorRole::*;
        match need {
            Need::Read => true,
            Need::Operate => matches!(self.role, Admin | Operator),
            Need::Audit => matches!(self.role, Admin | Auditor),
        }
    }

    /// A 403 response unless the role allows `need`.
    pub fn refuse_unless(&self, need: Need) -> Option<Response> {
        (!self.may(need)).then(|| {
            error(StatusCode::FORBIDDEN, "forbidden", &format!("the {} role may not do this", role_name(self.role)))
        })
    }
}

pub fn role_name(role: OperatorRole) -> &'static str {
    match role {
        OperatorRole::Admin => "admin",
        OperatorRole::Operator => "operator",
        OperatorRole::Auditor => "auditor",
    }
}

/// The admin routes, nested under `/admin`.
pub(super) fn routes(gw: Arc<Gateway>) -> Router<Arc<Gateway>> {
    Router::new()
        .route("/tenants", get(tenants))
        .route("/reload", post(reload))
        .route("/audit", get(audit_export))
        .route("/usage", get(usage))
        .route("/pairing", get(super::pairing_api::list))
        .route("/pairing/approve", post(super::pairing_api::approve))
        .route("/pairing/deny", post(super::pairing_api::deny))
        .route("/whoami", get(super::console::whoami))
        .route("/status", get(super::console::status))
        .route("/audit/status", get(super::console::audit_status))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn_with_state(gw, guard))
}

/// Longest request path kept in an audit record.
const MAX_AUDITED_PATH: usize = 200;

/// Authenticates every `/admin/` request and audits it with its final status.
async fn guard(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let method = req.method().to_string();
    // Inside the nested router the URI lost its `/admin` prefix; audit the path as requested.
    let uri = req.extensions().get::<axum::extract::OriginalUri>().map_or_else(|| req.uri().clone(), |o| o.0.clone());
    let path: String = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/admin")
        .chars()
        .take(MAX_AUDITED_PATH)
        .flat_map(char::escape_debug)
        .collect();
    let op = match gw.operator_for(bearer(req.headers()), gw.client_ip(client, req.headers()), "admin") {
        Ok(op) => op,
        Err(f) => return auth_error(f),
    };
    req.extensions_mut().insert(op.clone());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let outcome = match status {
        200..=299 => "ok",
        401 | 403 => "denied",
        404 => "not_found",
        501 => "unsupported",
        _ => "failed",
    };
    let event = Event::AdminAction {
        operator: op.id.clone(),
        role: role_name(op.role).into(),
        method,
        path,
        status,
        outcome: outcome.into(),
    };
    match gw.runtime().audit.append(Scope::Host, Actor::Operator(op.id.clone()), event).await {
        Ok(_) => resp,
        Err(e) => {
            tracing::error!(error = %e, "Admin request refused: the audit log cannot record it.");
            error(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", "the audit log is unavailable")
        }
    }
}

/// `GET /admin/tenants`: tenants with their agents (never tokens).
async fn tenants(State(gw): State<Arc<Gateway>>, Extension(op): Extension<Operator>) -> Response {
    if let Some(denied) = op.refuse_unless(Need::Read) {
        return denied;
    }
    Json(json!({ "tenants": crate::cli::tenant::summary(gw.snapshot().config()) })).into_response()
}

/// `GET /admin/usage[?tenant=ID][&since=YYYY-MM-DD]`: usage per tenant and agent for billing
/// (the same report as `bulkhead usage --json`).
async fn usage(
    State(gw): State<Arc<Gateway>>,
    Extension(op): Extension<Operator>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(denied) = op.refuse_unless(Need::Read) {
        return denied;
    }
    let since = match q.get("since").map(|s| crate::usage::Day::parse(s)) {
        None => None,
        Some(Ok(day)) => Some(day),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, "invalid_since", &format!("since: {e}")),
    };
    let tenants: Vec<TenantId> = match q.get("tenant") {
        None => gw.snapshot().config().tenants.keys().cloned().collect(),
        Some(t) => match known_tenant(&gw, t) {
            Some(t) => vec![t],
            None => return error(StatusCode::NOT_FOUND, "tenant_not_found", "no such tenant"),
        },
    };
    let rt = gw.runtime();
    let usage = &rt.usage;
    let report: Vec<_> = tenants.iter().map(|t| usage.tenant_usage(t, since)).collect();
    Json(json!({ "tenants": report })).into_response()
}

/// `POST /admin/reload`: reads the config again and applies it, or refuses it with every error
/// (409; the running config keeps serving). Admin and operator roles.
async fn reload(State(gw): State<Arc<Gateway>>, Extension(op): Extension<Operator>) -> Response {
    if let Some(denied) = op.refuse_unless(Need::Operate) {
        return denied;
    }
    let Some(reloader) = gw.reloader.clone() else {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "this gateway was started without a config file to reload",
        );
    };
    let report = reloader.reload(Actor::Operator(op.id.clone())).await;
    let status = if report.applied { StatusCode::OK } else { StatusCode::CONFLICT };
    (status, Json(report)).into_response()
}

/// `GET /admin/audit[?tenant=ID]`: a log's records (decrypted, verified) with a fresh signed
/// checkpoint; without `tenant`, the host log.
async fn audit_export(
    State(gw): State<Arc<Gateway>>,
    Extension(op): Extension<Operator>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(denied) = op.refuse_unless(Need::Audit) {
        return denied;
    }
    let scope = match q.get("tenant") {
        None => Scope::Host,
        Some(t) => match known_tenant(&gw, t) {
            Some(t) => Scope::Tenant(t),
            None => return error(StatusCode::NOT_FOUND, "tenant_not_found", "no such tenant"),
        },
    };
    match verified_records(&gw, &scope).await {
        Ok((checkpoint, records)) => {
            Json(json!({ "log": scope.name(), "checkpoint": checkpoint, "records": records })).into_response()
        }
        Err(ExportError::Off) => {
            error(StatusCode::CONFLICT, "audit_off", "the audit log is off (no store.masterKey configured)")
        }
        Err(ExportError::Broken(e)) => error(StatusCode::CONFLICT, "audit_broken", &format!("the log {e}")),
        Err(ExportError::Failed) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "audit_failed", "the audit log cannot be read")
        }
    }
}

/// Why a log could not be exported.
pub(super) enum ExportError {
    /// The audit log is off.
    Off,
    /// The log fails verification (what fails, where).
    Broken(String),
    /// The log cannot be read or checkpointed.
    Failed,
}

/// A log's records (decrypted, verified) up to a checkpoint signed now.
pub(super) async fn verified_records(
    gw: &Gateway,
    scope: &Scope,
) -> Result<(crate::audit::Checkpoint, Vec<serde_json::Value>), ExportError> {
    let rt = gw.runtime();
    let audit = &rt.audit;
    let (Some(dir), Some(keys)) = (audit.dir(), audit.keys()) else { return Err(ExportError::Off) };
    let checkpoint = match audit.checkpoint(scope.clone()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(log = %scope, error = %e, "Audit export failed.");
            return Err(ExportError::Failed);
        }
    };
    let (keys, path) = (keys.clone(), scope.log_path(dir));
    let (scope2, signed) = (scope.clone(), checkpoint.clone());
    let read = tokio::task::spawn_blocking(move || {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.to_string()),
        };
        // Against the checkpoint just signed: a log cut short on disk is an error, not a short export.
        read_records(&bytes, &keys, &scope2, Some(&signed))
            .map_err(|b| format!("fails verification at record {}: {}", b.seq, b.reason))
    })
    .await;
    match read {
        Ok(Ok(mut records)) => {
            records.retain(|r| r["seq"].as_u64().is_some_and(|s| s <= checkpoint.seq));
            Ok((checkpoint, records))
        }
        Ok(Err(e)) => {
            tracing::error!(log = %scope, error = %e, "Audit export failed.");
            Err(ExportError::Broken(e))
        }
        Err(_) => Err(ExportError::Failed),
    }
}

/// A configured tenant named in a query, if any.
pub(super) fn known_tenant(gw: &Gateway, id: &str) -> Option<TenantId> {
    TenantId::parse(id).ok().filter(|t| gw.snapshot().config().tenants.contains_key(t))
}

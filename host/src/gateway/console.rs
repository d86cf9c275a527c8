//! The operator console: an embedded page at `/console` and the read-only admin endpoints it
//! needs beyond the others (`/admin/whoami`, `/admin/status`, `/admin/audit/status`).
//!
//! The page itself holds no data and needs no token to load; everything it shows comes from
//! `/admin/*` with the operator token typed into it (kept in `sessionStorage`, sent as
//! `Authorization: Bearer`), so the admin guard authenticates, role-checks and audits every
//! request exactly as for the CLI. The page hides the actions a role may not take, but the
//! server is what refuses them (403). Its script and style are inline and allowed by hash in the
//! Content-Security-Policy (no `unsafe-inline`); the page is white-label (no product name).

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde_json::{Value, json};

use super::Gateway;
use super::admin::{ExportError, Need, Operator, role_name, verified_records};
use crate::audit::Scope;

const HTML: &str = include_str!("console.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");
/// Days of usage the chart shows.
const USAGE_DAYS: i64 = 14;

/// The Content-Security-Policy of a page whose only script and style are the inline `script` and
/// `style` (exactly their text): allowed by hash, nothing else (no `unsafe-inline`). The web chat
/// page uses it too.
pub(super) fn inline_csp(script: &str, style: &str) -> String {
    let hash = |s: &str| {
        let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
        format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(d.as_ref()))
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        hash(script),
        hash(style)
    )
}

/// The page with its script and style inlined, and the CSP allowing exactly those by hash.
fn assembled() -> &'static (String, String) {
    static PAGE: OnceLock<(String, String)> = OnceLock::new();
    PAGE.get_or_init(|| {
        let page = HTML.replace("/*STYLE*/", STYLE).replace("/*SCRIPT*/", SCRIPT);
        (page, inline_csp(SCRIPT, STYLE))
    })
}

/// `GET /console`: the page (no data in it; no token needed to load it).
pub async fn page() -> Response {
    let (page, csp) = assembled();
    ([(header::CONTENT_SECURITY_POLICY, csp.as_str()), (header::X_FRAME_OPTIONS, "DENY")], Html(page.as_str()))
        .into_response()
}

/// `GET /admin/whoami`: the operator and what its role may do (any role).
pub async fn whoami(Extension(op): Extension<Operator>) -> Response {
    if let Some(denied) = op.refuse_unless(Need::Read) {
        return denied;
    }
    Json(json!({
        "operator": op.id,
        "role": role_name(op.role),
        "may": { "read": true, "operate": op.may(Need::Operate), "audit": op.may(Need::Audit) },
    }))
    .into_response()
}

/// `GET /admin/status`: tenants with their agents, channel accounts (with their state), queue,
/// usage per day, and the last reload (any role; never tokens or secrets).
pub async fn status(State(gw): State<Arc<Gateway>>, Extension(op): Extension<Operator>) -> Response {
    if let Some(denied) = op.refuse_unless(Need::Read) {
        return denied;
    }
    let snap = gw.snapshot();
    let config = snap.config();
    let rt = &snap.runtime;
    let running = gw.reloader.as_ref().and_then(|r| r.accounts());
    let mut accounts = Vec::new();
    for a in crate::channels::adapter::ADAPTERS {
        let channel = a.channel();
        for acc in config.channels.accounts_of(channel) {
            let state = match &running {
                None => "configured",
                Some(list) => match list.iter().find(|(c, id, _)| c == channel && *id == acc.id) {
                    Some((_, _, true)) => "running",
                    Some((_, _, false)) => "stopped",
                    None => "not started",
                },
            };
            accounts.push(json!({
                "channel": channel,
                "account": acc.id,
                "tenant": acc.tenant.as_ref().map(|t| t.as_str()),
                "state": state,
            }));
        }
    }
    let tenants: Vec<Value> = config
        .tenants
        .values()
        .map(|t| {
            let agents: Vec<Value> = config
                .agents
                .iter()
                .filter(|a| a.tenant == t.id)
                .map(|a| json!({ "id": a.id.as_str(), "name": a.display_name }))
                .collect();
            let (running, waiting) = rt.scheduler.tenant_load(&t.id);
            let (wait_count, wait_seconds) = rt.metrics.queue_wait_total(&t.id);
            let usage: Vec<Value> = rt
                .usage
                .tenant_daily(&t.id, USAGE_DAYS)
                .into_iter()
                .map(|(day, c)| {
                    json!({ "day": day, "runs": c.runs, "inputTokens": c.input_tokens, "outputTokens": c.output_tokens })
                })
                .collect();
            json!({
                "id": t.id.as_str(),
                "name": t.name,
                "agents": agents,
                "queue": { "running": running, "waiting": waiting, "waitCount": wait_count, "waitSeconds": wait_seconds },
                "usage": usage,
            })
        })
        .collect();
    let cluster = match &gw.cluster {
        None => Value::Null,
        Some(db) => match crate::cluster::lease::list(db).await {
            Ok(leases) => json!({ "gateway": db.gateway(), "leases": leases }),
            Err(e) => json!({ "gateway": db.gateway(), "error": e.to_string() }),
        },
    };
    Json(json!({
        "tenants": tenants,
        "accounts": accounts,
        "reload": { "available": gw.reloader.is_some(), "last": gw.last_reload() },
        "cluster": cluster,
    }))
    .into_response()
}

/// `GET /admin/audit/status`: each log (host, then every configured tenant) verified up to a
/// checkpoint signed now: whether it verifies, its record count and that checkpoint (admin and
/// auditor roles, like the export).
pub async fn audit_status(State(gw): State<Arc<Gateway>>, Extension(op): Extension<Operator>) -> Response {
    if let Some(denied) = op.refuse_unless(Need::Audit) {
        return denied;
    }
    if !gw.runtime().audit.is_on() {
        return Json(json!({ "enabled": false, "logs": [] })).into_response();
    }
    let scopes: Vec<Scope> =
        std::iter::once(Scope::Host).chain(gw.snapshot().config().tenants.keys().cloned().map(Scope::Tenant)).collect();
    let mut logs = Vec::new();
    for scope in scopes {
        let entry = match verified_records(&gw, &scope).await {
            Ok((checkpoint, records)) => json!({
                "log": scope.name(), "verified": true, "records": records.len(), "checkpoint": checkpoint, "error": null,
            }),
            Err(e) => {
                let why = match e {
                    ExportError::Broken(e) => format!("the log {e}"),
                    ExportError::Off => "the audit log is off".to_string(),
                    ExportError::Failed => "the log cannot be read".to_string(),
                };
                json!({ "log": scope.name(), "verified": false, "records": null, "checkpoint": null, "error": why })
            }
        };
        logs.push(entry);
    }
    Json(json!({ "enabled": true, "logs": logs })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_white_label_and_its_csp_allows_only_its_own_script_and_style() {
        let (page, csp) = assembled();
        assert!(!page.to_lowercase().contains("bulkhead"), "the console names no product");
        assert!(!page.contains("/*SCRIPT*/") && !page.contains("/*STYLE*/"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(page.matches("<script").count(), 1, "one inline script, the hashed one");
        for handler in ["onclick=", "onload=", "onerror=", "onsubmit=", "onchange=", "javascript:"] {
            assert!(!HTML.contains(handler), "no inline handler {handler}");
        }
        assert!(
            !SCRIPT.contains("innerHTML") && !SCRIPT.contains("outerHTML") && !SCRIPT.contains("insertAdjacentHTML")
        );
        assert!(!SCRIPT.contains("localStorage"), "the token is kept per tab (sessionStorage) only");
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
    }
}

//! `bulkhead pairing list / approve CODE / deny CODE`: decides chat pairing requests.
//!
//! Pending codes live in the running gateway (which also holds the store lock), so these
//! commands talk to it over its operator API (`/admin/pairing`) at `gateway.bind` (or `--url`),
//! with an operator token: `$BULKHEAD_OPERATOR_TOKEN`, else the first `admin`/`operator` token
//! in `gateway.operators`.

use std::time::Duration;

use serde_json::{Value, json};

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::config::{Config, OperatorRole};

/// What to do.
#[derive(Debug, Clone)]
pub enum Action {
    List { json: bool },
    Approve(String),
    Deny(String),
}

pub(super) fn base_url(config: &Config, flag: Option<&str>) -> String {
    if let Some(u) = flag {
        return u.trim_end_matches('/').to_string();
    }
    let mut addr = config.gateway.bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

pub(super) fn operator_token(config: &Config) -> Result<String, String> {
    if let Ok(t) = std::env::var("BULKHEAD_OPERATOR_TOKEN")
        && !t.is_empty()
    {
        return Ok(t);
    }
    let op = config
        .gateway
        .operators
        .iter()
        .find(|o| matches!(o.role, OperatorRole::Admin | OperatorRole::Operator))
        .ok_or(
        "no operator token: add gateway.operators with role \"admin\" or \"operator\", or set BULKHEAD_OPERATOR_TOKEN",
    )?;
    op.token
        .resolve(&config.base_dir)
        .map(|s| s.expose().to_string())
        .map_err(|e| format!("operator {:?} token: {e}", op.id))
}

pub fn run(source: &ConfigSource, url: Option<&str>, action: Action) -> i32 {
    let config = match source.load(true) {
        Ok(c) => c,
        Err(e) => {
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    let token = match operator_token(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let base = base_url(&config, url);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    rt.block_on(call(&base, &token, action))
}

async fn call(base: &str, token: &str, action: Action) -> i32 {
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(15)).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot build the HTTP client: {e}");
            return EXIT_FAILURE;
        }
    };
    let req = match &action {
        Action::List { .. } => http.get(format!("{base}/admin/pairing")),
        Action::Approve(code) => http.post(format!("{base}/admin/pairing/approve")).json(&json!({ "code": code })),
        Action::Deny(code) => http.post(format!("{base}/admin/pairing/deny")).json(&json!({ "code": code })),
    };
    let resp = match req.bearer_auth(token).send().await {
        Ok(r) => r,
        Err(_) => {
            eprintln!(
                "error: cannot reach the gateway at {base}: is `bulkhead serve` running? (pairing requests live in the running gateway; use --url if it listens elsewhere)"
            );
            return EXIT_FAILURE;
        }
    };
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let why = body["error"]["message"].as_str().or(body["error"].as_str()).unwrap_or("unexpected answer");
        eprintln!("error: {why}");
        return if status.as_u16() == 404 || status.as_u16() == 400 { EXIT_INVALID } else { EXIT_FAILURE };
    }
    match action {
        Action::List { json: true } => outln!("{body}"),
        Action::List { json: false } => {
            let pending = body["pending"].as_array().cloned().unwrap_or_default();
            if pending.is_empty() {
                outln!("no pending pairing requests");
            }
            for r in pending {
                let user = r["username"].as_str().map(|u| format!(" @{u}")).unwrap_or_default();
                outln!(
                    "{}  {}/{}  tenant {}  sender {}{}  {} s ago",
                    r["code"].as_str().unwrap_or("?"),
                    r["channel"].as_str().unwrap_or("?"),
                    r["account"].as_str().unwrap_or("?"),
                    r["tenant"].as_str().unwrap_or("?"),
                    r["sender"].as_str().unwrap_or("?"),
                    user,
                    r["ageSecs"].as_u64().unwrap_or(0),
                );
            }
        }
        Action::Approve(_) | Action::Deny(_) => {
            let r = &body["request"];
            let what = if body["approved"] == true { "approved" } else { "denied" };
            outln!(
                "{what}: sender {} on {}/{} (tenant {})",
                r["sender"].as_str().unwrap_or("?"),
                r["channel"].as_str().unwrap_or("?"),
                r["account"].as_str().unwrap_or("?"),
                r["tenant"].as_str().unwrap_or("?"),
            );
        }
    }
    EXIT_OK
}

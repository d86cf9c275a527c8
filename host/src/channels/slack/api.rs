//! The few Slack Web API methods the adapter uses, over `reqwest`: `auth.test` (who the bot is,
//! which scopes its token has), `chat.postMessage` (a reply, in its thread),
//! `apps.connections.open` (a Socket Mode URL) and `conversations.list` (channel names to ids).
//!
//! Errors are named by Slack's own error code (`invalid_auth`, `missing_scope` with the scope
//! `needed`), never with a token, a request URL or the Socket Mode URL (which holds a ticket).
//! A 429 is `RetryAfter(Retry-After)`, so the shared outbound layer waits and sends again.

use std::time::Duration;

use serde_json::{Value, json};

use crate::channels::net;
use crate::channels::outbound::{ChatTarget, SendError, Transport};

/// Why a Web API call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 429: wait this long.
    RetryAfter(Duration),
    /// The token was refused (`invalid_auth`, `not_authed`, `account_inactive`, `token_revoked`,
    /// ...): Slack's error code.
    Auth(String),
    /// `ok: false` with another error code (and the scope it needs, for `missing_scope`).
    Slack { error: String, needed: Option<String> },
    /// Network, 5xx, or an answer this client cannot read.
    Transient(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::RetryAfter(d) => write!(f, "rate limited: retry after {} s", d.as_secs()),
            ApiError::Auth(code) => write!(f, "the token was rejected ({code})"),
            ApiError::Slack { error, needed: Some(scope) } => {
                write!(f, "Slack answered {error} (needs the scope {scope})")
            }
            ApiError::Slack { error, needed: None } => write!(f, "Slack answered {error}"),
            ApiError::Transient(why) => f.write_str(why),
        }
    }
}

/// Error codes that mean the token itself is no good.
const AUTH_ERRORS: [&str; 7] = [
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "no_permission",
    "not_allowed_token_type",
];

/// A value Slack sent that may be shown in logs: a short code of `[a-z0-9_:.,-]`, else a
/// placeholder (a fake or a proxy could put anything there).
fn code(v: &Value) -> String {
    match v.as_str() {
        Some(s)
            if !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_:.,-".contains(&b)) =>
        {
            s.to_string()
        }
        Some(_) => "an unreadable error code".into(),
        None => "no error code".into(),
    }
}

/// Who `auth.test` says a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub team_id: String,
    pub team: String,
    pub user_id: String,
    pub user: String,
    pub bot_id: Option<String>,
    /// The token's scopes, from the `x-oauth-scopes` response header.
    pub scopes: Vec<String>,
}

/// A Web API client at one base URL (`https://slack.com/api` or a test server).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(base: &str) -> Result<Self, String> {
        reqwest::Url::parse(base).map_err(|e| format!("invalid apiUrl: {e}"))?;
        let http = net::http_client(Duration::from_secs(30), Default::default())?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string() })
    }

    /// One method: the answer's JSON and its `x-oauth-scopes`, or the error by kind.
    async fn call(
        &self,
        method: &str,
        token: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let mut req = self.http.post(format!("{}/{method}", self.base)).bearer_auth(token).query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ApiError::Transient(net::network_error(&e, "the Slack Web API")))?;
        let status = resp.status();
        if status.as_u16() == 429 {
            let secs = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(5);
            return Err(ApiError::RetryAfter(Duration::from_secs(secs.clamp(1, 3600))));
        }
        let scopes: Vec<String> = resp
            .headers()
            .get("x-oauth-scopes")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect())
            .unwrap_or_default();
        let text = resp.text().await.map_err(|e| ApiError::Transient(net::network_error(&e, "the Slack Web API")))?;
        let v: Value = serde_json::from_str(&text).map_err(|_| {
            ApiError::Transient(format!("{method}: HTTP {} with a body that is not JSON", status.as_u16()))
        })?;
        if v["ok"] == true {
            return Ok((v, scopes));
        }
        if !status.is_success() && v.get("error").is_none() {
            return Err(ApiError::Transient(format!("{method}: HTTP {}", status.as_u16())));
        }
        let error = code(&v["error"]);
        if AUTH_ERRORS.contains(&error.as_str()) {
            return Err(ApiError::Auth(error));
        }
        if status.is_server_error() || error == "internal_error" || error == "fatal_error" || error == "request_timeout"
        {
            return Err(ApiError::Transient(format!("{method}: Slack answered {error}")));
        }
        let needed = v.get("needed").map(code);
        Err(ApiError::Slack { error, needed })
    }

    /// `auth.test`: the workspace and bot user a bot token belongs to, and its scopes.
    pub async fn auth_test(&self, token: &str) -> Result<Identity, ApiError> {
        let (v, scopes) = self.call("auth.test", token, &[], None).await?;
        let field = |k: &str| v[k].as_str().map(str::to_string);
        let (Some(team_id), Some(user_id)) = (field("team_id"), field("user_id")) else {
            return Err(ApiError::Transient("auth.test answered without team_id or user_id".into()));
        };
        Ok(Identity {
            team_id,
            user_id,
            team: field("team").unwrap_or_default(),
            user: field("user").unwrap_or_default(),
            bot_id: field("bot_id"),
            scopes,
        })
    }

    /// `apps.connections.open` with the app-level token: a fresh Socket Mode URL. The URL holds
    /// a one-time ticket: never log it.
    pub async fn connections_open(&self, app_token: &str) -> Result<String, ApiError> {
        let (v, _) = self.call("apps.connections.open", app_token, &[], None).await?;
        match v["url"].as_str() {
            Some(u) if u.starts_with("wss://") || u.starts_with("ws://") => Ok(u.to_string()),
            _ => Err(ApiError::Transient("apps.connections.open answered without a WebSocket URL".into())),
        }
    }

    /// `chat.postMessage` as plain text, in `thread_ts` when given.
    pub async fn post_message(
        &self,
        token: &str,
        channel: &str,
        text: &str,
        thread: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut body = json!({ "channel": channel, "text": escape(text), "mrkdwn": false, "unfurl_links": false,
                               "unfurl_media": false });
        if let Some(t) = thread {
            body["thread_ts"] = json!(t);
        }
        self.call("chat.postMessage", token, &[], Some(&body)).await.map(drop)
    }

    /// `conversations.list` (public and private channels the bot can see): name → id, at most
    /// `max_pages` pages of 1,000.
    pub async fn channel_ids(&self, token: &str, max_pages: usize) -> Result<Vec<(String, String)>, ApiError> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        for _ in 0..max_pages {
            let query = [
                ("types", "public_channel,private_channel"),
                ("exclude_archived", "true"),
                ("limit", "1000"),
                ("cursor", cursor.as_str()),
            ];
            let (v, _) = self.call("conversations.list", token, &query, None).await?;
            for c in v["channels"].as_array().into_iter().flatten() {
                if let (Some(id), Some(name)) = (c["id"].as_str(), c["name"].as_str()) {
                    out.push((name.to_string(), id.to_string()));
                }
            }
            match v["response_metadata"]["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = c.to_string(),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// Text sent to Slack: `&`, `<` and `>` escaped as Slack asks, so nothing the model writes
/// becomes a mention (`<!channel>`, `<@U…>`) or a link.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Text received from Slack: its three escapes undone.
pub fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Sends replies with `chat.postMessage`.
pub struct SlackTransport {
    pub api: Api,
    /// The bot token (never logged).
    pub token: crate::config::SecretString,
    /// Set when Slack refuses the token: the account stops taking events it could not answer.
    pub halt: tokio::sync::watch::Sender<bool>,
    /// The account, for logs.
    pub account: String,
}

#[async_trait::async_trait]
impl Transport for SlackTransport {
    async fn send(&self, to: &ChatTarget, text: &str) -> Result<(), SendError> {
        match self.api.post_message(self.token.expose(), &to.chat, text, to.thread.as_deref()).await {
            Ok(()) => Ok(()),
            Err(ApiError::RetryAfter(d)) => Err(SendError::RetryAfter(d)),
            Err(ApiError::Auth(code)) => {
                if !*self.halt.borrow() {
                    tracing::error!(account = %self.account, error = %code, "Slack rejected the bot token of this account on a reply: it is wrong or was revoked. This account stops taking events (what it stored is answered after a restart with a working token); other accounts are unaffected.");
                }
                let _ = self.halt.send(true);
                Err(SendError::Unauthorized)
            }
            Err(e @ ApiError::Slack { .. }) => Err(SendError::Permanent(e.to_string())),
            Err(e @ ApiError::Transient(_)) => Err(SendError::Transient(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip_and_model_text_cannot_mention() {
        assert_eq!(escape("<!channel> & <@U1>"), "&lt;!channel&gt; &amp; &lt;@U1&gt;");
        assert_eq!(unescape(&escape("a < b && c > d")), "a < b && c > d");
    }

    #[test]
    fn error_codes_shown_only_when_they_look_like_codes() {
        assert_eq!(code(&json!("missing_scope")), "missing_scope");
        assert_eq!(code(&json!("xoxb-123 secret")), "an unreadable error code");
        assert_eq!(code(&Value::Null), "no error code");
    }
}

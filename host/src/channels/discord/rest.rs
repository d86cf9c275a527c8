//! The Discord REST calls the adapter makes, over `reqwest` (`apiUrl`, default
//! `https://discord.com/api/v10`, header `Authorization: Bot <token>`): who the bot is, where its
//! gateway is, the application's intent flags, the guilds it is in and their channels, sending a
//! message and the typing indicator.
//!
//! Rate limits: a route whose `X-RateLimit-Remaining` reaches 0 waits `X-RateLimit-Reset-After`
//! before its next call; a 429 comes back as `RestError::RateLimited` with the longer of the body's
//! `retry_after` and `Retry-After`, so the outbound queue waits and sends again (nothing dropped).
//! Errors name the status and Discord's error code, never the token or a response body.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, USER_AGENT};

use crate::channels::net;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum RestError {
    /// 401: the token is wrong or was reset.
    Unauthorized,
    /// 429: wait this long (`global`: the whole bot is limited).
    RateLimited { after: Duration, global: bool },
    /// Another status, with Discord's JSON error code when it sent one.
    Status { status: u16, code: Option<u64>, message: String },
    /// No answer (connect, timeout, TLS).
    Network(String),
    /// An answer this client cannot read.
    Unreadable(&'static str),
}

impl std::fmt::Display for RestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestError::Unauthorized => f.write_str("the bot token was rejected (401 Unauthorized)"),
            RestError::RateLimited { after, global } => {
                write!(
                    f,
                    "rate limited{}: retry after {} ms",
                    if *global { " (global)" } else { "" },
                    after.as_millis()
                )
            }
            RestError::Status { status, code: Some(code), message } => {
                write!(f, "Discord answered {status} (error {code}: {message})")
            }
            RestError::Status { status, code: None, .. } => write!(f, "Discord answered {status}"),
            RestError::Network(why) => f.write_str(why),
            RestError::Unreadable(what) => write!(f, "Discord sent {what} this client cannot read"),
        }
    }
}

/// The bot's user.
#[derive(Debug, Clone, Deserialize)]
pub struct Me {
    pub id: String,
    pub username: String,
}

/// The bot's application (`flags` carries the privileged intents it may use).
#[derive(Debug, Clone, Deserialize)]
pub struct Application {
    pub id: String,
    #[serde(default)]
    pub flags: u64,
}

/// A guild the bot is in.
#[derive(Debug, Clone, Deserialize)]
pub struct GuildSummary {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// A channel (or thread) of a guild.
#[derive(Debug, Clone, Deserialize)]
pub struct ChannelInfo {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub parent_id: Option<String>,
}

#[derive(Deserialize)]
struct GatewayBot {
    url: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<u64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retry_after: Option<f64>,
    #[serde(default)]
    global: Option<bool>,
}

/// Longest wait a 429 may ask for; beyond it the call fails (a broken or hostile answer must
/// not park a bot for hours).
const MAX_WAIT: Duration = Duration::from_secs(600);

pub struct Rest {
    http: reqwest::Client,
    base: String,
    /// Per route, when its bucket has room again.
    routes: Mutex<HashMap<String, Instant>>,
}

impl Rest {
    pub fn new(token: &str, base: &str) -> Result<Self, String> {
        let mut auth = HeaderValue::from_str(&format!("Bot {token}"))
            .map_err(|_| "the bot token contains characters that cannot be sent in a header".to_string())?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(USER_AGENT, HeaderValue::from_static("DiscordBot (https://discord.com, 10)"));
        let http = net::http_client(Duration::from_secs(30), headers)?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string(), routes: Mutex::default() })
    }

    /// One call; `route` keys its rate-limit bucket (`POST /channels/{id}/messages`).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        route: String,
        body: Option<Value>,
    ) -> Result<Vec<u8>, RestError> {
        let wait = self.routes.lock().expect("route lock").get(&route).copied();
        if let Some(at) = wait.filter(|at| *at > Instant::now()) {
            tokio::time::sleep_until(at).await;
        }
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| RestError::Network(net::network_error(&e, "Discord's API")))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let seconds = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
        };
        if headers.get("x-ratelimit-remaining").and_then(|v| v.to_str().ok()) == Some("0")
            && let Some(after) = seconds("x-ratelimit-reset-after")
        {
            let at = Instant::now() + Duration::from_secs_f64(after).min(MAX_WAIT);
            let mut routes = self.routes.lock().expect("route lock");
            // Bounded: forget buckets whose time has passed once many were seen.
            if routes.len() > 1024 {
                let now = Instant::now();
                routes.retain(|_, t| *t > now);
            }
            routes.insert(route, at);
        }
        let bytes =
            resp.bytes().await.map_err(|e| RestError::Network(net::network_error(&e, "Discord's API")))?.to_vec();
        match status {
            200..=299 => Ok(bytes),
            401 => Err(RestError::Unauthorized),
            429 => {
                let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
                let from_body = body.as_ref().and_then(|b| b.retry_after).filter(|s| s.is_finite() && *s >= 0.0);
                let secs = from_body.unwrap_or(0.0).max(seconds("retry-after").unwrap_or(0.0)).max(0.05);
                let after = Duration::from_secs_f64(secs);
                if after > MAX_WAIT {
                    return Err(RestError::Status {
                        status,
                        code: None,
                        message: "an unreasonable retry_after".into(),
                    });
                }
                let global = body.and_then(|b| b.global).unwrap_or(false)
                    || headers.get("x-ratelimit-global").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
                Err(RestError::RateLimited { after, global })
            }
            _ => {
                let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
                let code = body.as_ref().and_then(|b| b.code);
                // Discord's own message for its code (short, fixed text); never the body itself.
                let message = body.and_then(|b| b.message).filter(|_| code.is_some()).unwrap_or_default();
                Err(RestError::Status { status, code, message: message.chars().take(120).collect() })
            }
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str, what: &'static str) -> Result<T, RestError> {
        let bytes = self.call(reqwest::Method::GET, path, format!("GET {path}"), None).await?;
        serde_json::from_slice(&bytes).map_err(|_| RestError::Unreadable(what))
    }

    pub async fn me(&self) -> Result<Me, RestError> {
        self.get("/users/@me", "a user").await
    }

    pub async fn application(&self) -> Result<Application, RestError> {
        self.get("/applications/@me", "an application").await
    }

    /// The gateway's base URL (`GET /gateway/bot`).
    pub async fn gateway_url(&self) -> Result<String, RestError> {
        let g: GatewayBot = self.get("/gateway/bot", "a gateway answer").await?;
        Ok(g.url.trim_end_matches('/').to_string())
    }

    pub async fn guilds(&self) -> Result<Vec<GuildSummary>, RestError> {
        self.get("/users/@me/guilds", "a guild list").await
    }

    pub async fn guild_channels(&self, guild: &str) -> Result<Vec<ChannelInfo>, RestError> {
        self.get(&format!("/guilds/{guild}/channels"), "a channel list").await
    }

    pub async fn channel(&self, id: &str) -> Result<ChannelInfo, RestError> {
        self.get(&format!("/channels/{id}"), "a channel").await
    }

    /// Posts `content` to `channel` as plain text: no mention in it pings anyone.
    pub async fn create_message(&self, channel: &str, content: &str) -> Result<(), RestError> {
        let body = json!({ "content": content, "allowed_mentions": { "parse": [] } });
        let path = format!("/channels/{channel}/messages");
        self.call(reqwest::Method::POST, &path, format!("POST {path}"), Some(body)).await.map(drop)
    }

    /// Shows "<bot> is typing…" in `channel` for about ten seconds.
    pub async fn typing(&self, channel: &str) -> Result<(), RestError> {
        let path = format!("/channels/{channel}/typing");
        self.call(reqwest::Method::POST, &path, format!("POST {path}"), None).await.map(drop)
    }
}

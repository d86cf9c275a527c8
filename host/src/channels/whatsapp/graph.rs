//! The few Graph API calls the WhatsApp adapter makes, over `reqwest`: `POST /{phone-number-id}/messages`
//! (a text reply) and `GET /{phone-number-id}` (which number a token and id name, for start-up and
//! `doctor`).
//!
//! Meta's errors (`{"error": {"code": N, "error_subcode": M, ...}}`) are mapped to words an
//! operator can act on by their code; Meta's own message text, the token and request URLs are
//! never logged. Sends outside the 24-hour customer-service window (131047) are permanent: only
//! template messages may be sent then, and this gateway sends none.

use std::time::Duration;

use serde_json::{Value, json};

use crate::channels::net;
use crate::channels::outbound::{ChatTarget, SendError, Transport};
use crate::config::SecretString;

/// How errors name the service.
const SERVICE: &str = "the Graph API";
/// Largest answer read from the Graph API.
const MAX_ANSWER: usize = 1 << 20;

/// Why a Graph API call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    /// The access token was refused (code 190, or HTTP 401).
    Auth(i64),
    /// Throttled (HTTP 429; codes 4, 80007, 130429, 131056, 131048): wait this long.
    RetryAfter(Duration),
    /// Network, 5xx, or a temporary error of Meta's (codes 1, 2, 131000, 131016).
    Transient(String),
    /// Retrying will not help: what to do about it.
    Permanent(i64, &'static str),
}

impl std::fmt::Display for GraphError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphError::Auth(code) => write!(f, "the access token was rejected (error {code})"),
            GraphError::RetryAfter(d) => write!(f, "rate limited: retry after {} s", d.as_secs()),
            GraphError::Transient(why) => f.write_str(why),
            GraphError::Permanent(code, what) => write!(f, "error {code}: {what}"),
        }
    }
}

/// What Meta's error `code` means for the operator (`None`: nothing specific to say).
pub fn explain(code: i64) -> Option<&'static str> {
    Some(match code {
        131047 => {
            "more than 24 hours have passed since the customer's last message, so WhatsApp only accepts template messages now, which this gateway does not send; the customer has to write first"
        }
        131026 => "the message could not be delivered to this number (not on WhatsApp, or it cannot receive it)",
        131030 => "the recipient is not in the test number's allowed list (add it in the app's API Setup page)",
        131031 => "the WhatsApp Business account is restricted or disabled (check WhatsApp Manager)",
        131051 => "WhatsApp does not support this message type",
        133010 => "the phone number is not registered with the Cloud API (register it in WhatsApp Manager)",
        100 => "the Graph API refused a parameter (check phoneNumberId)",
        10 | 200 => "the access token lacks a permission (whatsapp_business_messaging)",
        368 => "the account is temporarily blocked for policy violations",
        _ => return None,
    })
}

/// Which error is this (`code` from Meta's error object, HTTP status for the rest)?
fn classify(status: u16, code: Option<i64>, retry_after: Option<u64>) -> GraphError {
    let wait = Duration::from_secs(retry_after.unwrap_or(5).clamp(1, 3600));
    match code {
        Some(190) => GraphError::Auth(190),
        Some(4 | 80007 | 130429 | 131048) => GraphError::RetryAfter(wait),
        // Pair rate limit: too many messages to one customer in a short time.
        Some(131056) => GraphError::RetryAfter(wait.max(Duration::from_secs(6))),
        Some(1 | 2 | 131000 | 131016) => {
            GraphError::Transient(format!("Meta answered a temporary error ({})", code.unwrap_or(0)))
        }
        Some(c) if status < 500 => GraphError::Permanent(c, explain(c).unwrap_or("the Graph API refused the request")),
        _ if status == 401 => GraphError::Auth(0),
        _ if status == 429 => GraphError::RetryAfter(wait),
        _ if status >= 500 => GraphError::Transient(format!("the Graph API answered HTTP {status}")),
        _ => GraphError::Permanent(0, "the Graph API refused the request"),
    }
}

/// Who `GET /{phone-number-id}` says a number is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    pub display: String,
    pub verified_name: String,
    pub quality: String,
}

/// A Graph API client at one base URL (`https://graph.facebook.com/v23.0` or a test server).
#[derive(Clone)]
pub struct Graph {
    http: reqwest::Client,
    base: String,
}

/// Short text Meta sent that may be shown (a field like a display name), else a placeholder.
fn shown(v: &Value) -> String {
    match v.as_str() {
        Some(s) if s.chars().count() <= 80 && !s.chars().any(char::is_control) => s.to_string(),
        _ => "?".into(),
    }
}

impl Graph {
    pub fn new(base: &str) -> Result<Self, String> {
        reqwest::Url::parse(base).map_err(|e| format!("invalid apiUrl: {e}"))?;
        let http = net::http_client(Duration::from_secs(30), Default::default())?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string() })
    }

    /// One call: the answer's JSON, or the error by kind.
    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, GraphError> {
        let resp = req.send().await.map_err(|e| GraphError::Transient(net::network_error(&e, SERVICE)))?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let body = net::read_capped(resp, MAX_ANSWER, SERVICE).await.map_err(GraphError::Transient)?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if (200..300).contains(&status) && v.is_object() {
            return Ok(v);
        }
        Err(classify(status, v["error"]["code"].as_i64(), retry_after))
    }

    /// Sends `text` to the customer `to` (a `wa_id`) from the number `phone_number_id`.
    pub async fn send_text(&self, token: &str, phone_number_id: &str, to: &str, text: &str) -> Result<(), GraphError> {
        let body = json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                           "type": "text", "text": { "preview_url": false, "body": text } });
        let req = self.http.post(format!("{}/{phone_number_id}/messages", self.base)).bearer_auth(token).json(&body);
        let v = self.call(req).await?;
        if v["messages"].as_array().is_some_and(|m| !m.is_empty()) {
            Ok(())
        } else {
            Err(GraphError::Transient("the Graph API answered a send without a message id".into()))
        }
    }

    /// The number `phone_number_id` names, as the token sees it.
    pub async fn number(&self, token: &str, phone_number_id: &str) -> Result<Number, GraphError> {
        let req = self
            .http
            .get(format!("{}/{phone_number_id}", self.base))
            .bearer_auth(token)
            .query(&[("fields", "display_phone_number,verified_name,quality_rating")]);
        let v = self.call(req).await?;
        Ok(Number {
            display: shown(&v["display_phone_number"]),
            verified_name: shown(&v["verified_name"]),
            quality: shown(&v["quality_rating"]),
        })
    }
}

/// The outbound queue's transport of one account.
pub struct WhatsAppTransport {
    pub graph: Graph,
    pub token: SecretString,
    pub phone_number_id: String,
    /// Set when the Graph API refuses the token on a reply: the account stops taking deliveries
    /// (they get 503 and Meta keeps them) instead of accepting turns it cannot answer.
    pub halt: tokio::sync::watch::Sender<bool>,
    pub account: String,
}

#[async_trait::async_trait]
impl Transport for WhatsAppTransport {
    async fn send(&self, to: &ChatTarget, text: &str) -> Result<(), SendError> {
        match self.graph.send_text(self.token.expose(), &self.phone_number_id, &to.chat, text).await {
            Ok(()) => Ok(()),
            Err(e @ GraphError::Auth(_)) => {
                tracing::error!(account = %self.account, error = %e, "The Graph API refused this WhatsApp account's token on a reply. The account stops taking deliveries (Meta keeps them and retries); other accounts are unaffected. Renew the token and reload.");
                let _ = self.halt.send(true);
                Err(SendError::Unauthorized)
            }
            Err(GraphError::RetryAfter(d)) => Err(SendError::RetryAfter(d)),
            Err(GraphError::Transient(why)) => Err(SendError::Transient(why)),
            Err(e @ GraphError::Permanent(..)) => Err(SendError::Permanent(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_errors_are_classified_by_code() {
        assert_eq!(classify(401, Some(190), None), GraphError::Auth(190));
        assert_eq!(classify(400, Some(190), None), GraphError::Auth(190));
        assert_eq!(classify(401, None, None), GraphError::Auth(0));
        assert_eq!(classify(429, None, Some(7)), GraphError::RetryAfter(Duration::from_secs(7)));
        assert_eq!(classify(400, Some(130429), None), GraphError::RetryAfter(Duration::from_secs(5)));
        assert_eq!(classify(400, Some(131056), Some(1)), GraphError::RetryAfter(Duration::from_secs(6)));
        assert!(matches!(classify(500, Some(131000), None), GraphError::Transient(_)));
        assert!(matches!(classify(503, None, None), GraphError::Transient(_)));
        let GraphError::Permanent(131047, why) = classify(400, Some(131047), None) else { panic!() };
        assert!(why.contains("24 hours") && why.contains("template"));
        assert!(matches!(classify(400, Some(999_999), None), GraphError::Permanent(999_999, _)));
        assert!(matches!(classify(404, None, None), GraphError::Permanent(0, _)));
    }
}

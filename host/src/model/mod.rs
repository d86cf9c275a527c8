//! Model providers: the wire formats of OpenAI chat completions, Anthropic messages, and the
//! offline `scripted` provider, behind one trait.

pub mod anthropic;
pub mod openai;
pub mod pool;
pub mod scripted;
pub mod sse;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::session::{Message, ToolCall};
use crate::tools::Tool;

/// One request to a model.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    pub model: String,
    pub system: Option<String>,
    pub messages: Vec<Message>,
    /// Only the tools the policy allows; a model may still name others, and the gate re-checks.
    pub tools: Vec<Tool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A model's complete answer for one round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelReply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
}

/// Why a model call failed. `Display` is for logs (no secrets); `user_message` is what a user sees.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model request timed out after {0:?}")]
    Timeout(Duration),
    #[error("model provider answered HTTP {status}: {detail}")]
    Upstream {
        status: u16,
        detail: String,
        /// The provider's `Retry-After`, when it sent one (in seconds).
        retry_after: Option<Duration>,
    },
    #[error("cannot reach model provider: {0}")]
    Transport(String),
    #[error("model provider sent an unexpected response: {0}")]
    Protocol(String),
    #[error("model provider is not configured: {0}")]
    NotConfigured(String),
}

impl ModelError {
    /// The provider is rate-limiting or overloaded (HTTP 429 or 529): worth retrying later.
    pub fn is_rate_limit(&self) -> bool {
        matches!(self, ModelError::Upstream { status: 429 | 529, .. })
    }

    /// A message safe to show to a chat user: no URLs, keys or internal details.
    pub fn user_message(&self) -> &'static str {
        match self {
            ModelError::Timeout(_) => "The model took too long to answer. Please try again.",
            ModelError::Upstream { status: 429, .. } | ModelError::Upstream { status: 529, .. } => {
                "The model service is busy right now. Please try again in a moment."
            }
            ModelError::Upstream { status: 401 | 403, .. } | ModelError::NotConfigured(_) => {
                "The model service is not available for this assistant. The operator has been notified."
            }
            _ => "The model service failed to answer. Please try again.",
        }
    }
}

/// A model provider. Text is streamed through `deltas` as it arrives (when the API streams);
/// the full reply is returned at the end.
#[async_trait]
pub trait ModelProvider: Send + Sync {
    async fn complete(&self, req: &ModelRequest, deltas: &mpsc::Sender<String>) -> Result<ModelReply, ModelError>;
}

/// Longest error kind (`type` or `code`) kept from an upstream error.
const MAX_KIND: usize = 48;

/// Describes an upstream error for logs by its kind and size, never by its text: providers echo
/// parts of keys (OpenAI's 401 names the masked key) and of the request in their messages. The
/// kind is the error's `code` or `type`, kept only when it is a plain identifier
/// (`invalid_api_key`, `overloaded_error`).
pub(crate) fn detail(error: Option<&serde_json::Value>, body_len: usize) -> String {
    let identifier = |v: &serde_json::Value| {
        v.as_str()
            .filter(|s| !s.is_empty() && s.len() <= MAX_KIND && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .map(str::to_string)
    };
    let kind = error.and_then(|e| e.get("code").and_then(identifier).or_else(|| e.get("type").and_then(identifier)));
    match kind {
        Some(kind) => format!("{kind}, {body_len}-byte body"),
        None => format!("{body_len}-byte body"),
    }
}

/// What an HTTP provider needs from its config.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub base_url: String,
    pub timeout: Duration,
    pub max_tokens: u32,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::detail;

    #[test]
    fn upstream_errors_are_described_by_kind_and_size() {
        // OpenAI's 401 names the (masked) key in its message; only the code and the size remain.
        let openai = json!({ "message": "Incorrect API key provided: sk-test-****abcd.", "type": "invalid_request_error", "code": "invalid_api_key" });
        assert_eq!(detail(Some(&openai), 212), "invalid_api_key, 212-byte body");
        let anthropic = json!({ "type": "authentication_error", "message": "invalid x-api-key" });
        assert_eq!(detail(Some(&anthropic), 90), "authentication_error, 90-byte body");
        // A kind that is not a plain identifier could be anything: dropped.
        for odd in [json!({ "code": "sk-live-1234" }), json!({ "type": "Key sk_x" }), json!({ "code": 401 })] {
            assert_eq!(detail(Some(&odd), 10), "10-byte body", "{odd}");
        }
        assert_eq!(detail(None, 0), "0-byte body");
    }
}

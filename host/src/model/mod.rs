//! Model providers: the wire formats of OpenAI chat completions, Anthropic messages, and the
//! offline `scripted` provider, behind one trait.

pub mod anthropic;
pub mod openai;
pub mod pool;
pub mod scripted;
mod sse;

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

/// Longest upstream error detail kept for logs.
const MAX_DETAIL: usize = 300;

/// Shortens an upstream error body for a log line.
pub(crate) fn detail(body: &str) -> String {
    let mut s: String = body.chars().filter(|c| !c.is_control()).take(MAX_DETAIL).collect();
    if body.len() > MAX_DETAIL {
        s.push('…');
    }
    s
}

/// What an HTTP provider needs from its config.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub base_url: String,
    pub timeout: Duration,
    pub max_tokens: u32,
}

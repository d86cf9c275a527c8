//! The `scripted` provider: a real provider with a fixed, documented behaviour, for offline demos
//! and tests. It is labelled as scripted wherever it appears (model list, web chat, logs).
//!
//! - a user message `/tool NAME {json}` (or one sent by `sessions_send`) makes it call tool NAME
//!   with those arguments;
//! - after tool results it answers with the results' text;
//! - any other message gets `echo: <text>`.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{ModelError, ModelProvider, ModelReply, ModelRequest, Usage};
use crate::session::{Message, ToolCall};

pub struct Scripted;

/// Parses `/tool NAME {json}`; the JSON is optional (`{}`).
fn parse_tool_command(text: &str) -> Option<Result<(String, serde_json::Value), String>> {
    let rest = text.trim().strip_prefix("/tool")?;
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let (name, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if name.is_empty() {
        return Some(Err("usage: /tool NAME {json arguments}".into()));
    }
    let args = args.trim();
    let args = if args.is_empty() {
        Ok(serde_json::json!({}))
    } else {
        serde_json::from_str(args).map_err(|e| format!("the arguments of /tool are not valid JSON: {e}"))
    };
    Some(args.map(|a| (name.to_string(), a)))
}

pub fn reply_for(messages: &[Message]) -> ModelReply {
    let results: Vec<&str> =
        messages.iter().rev().take_while(|m| matches!(m, Message::ToolResult { .. })).map(|m| m.text()).collect();
    let text = if !results.is_empty() {
        results.into_iter().rev().collect::<Vec<_>>().join("\n")
    } else {
        // A message from another session opens a turn like a user's (a prompt injection that
        // works), so tests can show that the gate, not the model, stops it.
        let last_user = messages.iter().rev().find_map(|m| match m {
            Message::User { text } | Message::FromSession { text, .. } => Some(text.as_str()),
            _ => None,
        });
        let last_user = last_user.unwrap_or("");
        match parse_tool_command(last_user) {
            Some(Ok((name, arguments))) => {
                let n = messages.iter().filter(|m| matches!(m, Message::Assistant { .. })).count();
                return ModelReply {
                    text: String::new(),
                    tool_calls: vec![ToolCall { id: format!("call_{n}"), name, arguments }],
                    usage: usage(messages, 0),
                };
            }
            Some(Err(usage_error)) => usage_error,
            None => format!("echo: {last_user}"),
        }
    };
    let out = text.split_whitespace().count() as u64;
    ModelReply { usage: usage(messages, out), text, tool_calls: Vec::new() }
}

/// Token counts by whitespace-separated words: documented, deterministic, good enough for metering tests.
fn usage(messages: &[Message], output: u64) -> Usage {
    let input = messages.iter().map(|m| m.text().split_whitespace().count() as u64).sum();
    Usage { input_tokens: input, output_tokens: output }
}

#[async_trait]
impl ModelProvider for Scripted {
    async fn complete(&self, req: &ModelRequest, deltas: &mpsc::Sender<String>) -> Result<ModelReply, ModelError> {
        let reply = reply_for(&req.messages);
        // Stream word by word so clients exercise the same path as with real providers.
        for word in reply.text.split_inclusive(' ') {
            if deltas.send(word.to_string()).await.is_err() {
                break;
            }
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(t: &str) -> Message {
        Message::User { text: t.into() }
    }

    #[test]
    fn documented_behaviour() {
        assert_eq!(reply_for(&[user("hi there")]).text, "echo: hi there");
        let r = reply_for(&[user("/tool read {\"path\":\"a.txt\"}")]);
        assert_eq!(r.tool_calls[0].name, "read");
        assert_eq!(r.tool_calls[0].arguments["path"], "a.txt");
        let after = reply_for(&[
            user("/tool read {}"),
            Message::Assistant { text: String::new(), tool_calls: r.tool_calls.clone() },
            Message::ToolResult {
                call_id: "call_0".into(),
                name: "read".into(),
                content: "file body".into(),
                is_error: false,
            },
        ]);
        assert_eq!(after.text, "file body");
        assert!(reply_for(&[user("/tool read {oops")]).text.contains("not valid JSON"));
        assert_eq!(reply_for(&[user("/toolbox")]).text, "echo: /toolbox");
    }
}

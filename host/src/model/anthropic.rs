//! Anthropic messages (`POST {baseUrl}/messages`) with `tool_use`, streamed over SSE.

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::openai::{MAX_REPLY_BYTES, transport};
use super::sse::{ReplyFormat, read_reply};
use super::{HttpSettings, ModelError, ModelProvider, ModelReply, ModelRequest, Usage, detail};
use crate::config::SecretString;
use crate::session::{Message, ToolCall};

pub const API_VERSION: &str = "2023-06-01";

pub struct Anthropic {
    settings: HttpSettings,
    key: SecretString,
    http: reqwest::Client,
}

impl Anthropic {
    pub fn new(settings: HttpSettings, key: SecretString, http: reqwest::Client) -> Self {
        Self { settings, key, http }
    }
}

/// Anthropic wants alternating roles, with tool results as `user` content blocks: consecutive
/// messages of one role are merged into one message with several blocks.
pub(crate) fn request_body(req: &ModelRequest, max_tokens: u32) -> Value {
    let mut messages: Vec<(&str, Vec<Value>)> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m {
            Message::User { .. } | Message::FromSession { .. } => {
                ("user", vec![json!({ "type": "text", "text": m.prompt_text() })])
            }
            Message::Assistant { text, tool_calls } => {
                let mut blocks = Vec::new();
                if !text.is_empty() {
                    blocks.push(json!({ "type": "text", "text": text }));
                }
                for c in tool_calls {
                    let input = if c.arguments.is_object() { c.arguments.clone() } else { json!({}) };
                    blocks.push(json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": input }));
                }
                ("assistant", blocks)
            }
            Message::ToolResult { call_id, content, is_error, .. } => (
                "user",
                vec![
                    json!({ "type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error }),
                ],
            ),
        };
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    let mut body = json!({
        "model": req.model,
        "max_tokens": max_tokens,
        "messages": messages.into_iter().map(|(role, content)| json!({ "role": role, "content": content })).collect::<Vec<_>>(),
        "stream": true,
    });
    if let Some(system) = &req.system {
        body["system"] = json!(system);
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({ "name": t.name(), "description": t.description(), "input_schema": t.parameters() }))
            .collect();
    }
    body
}

enum Block {
    Text,
    ToolUse { id: String, name: String, json: String },
}

/// Folds the event stream (`message_start`, `content_block_*`, `message_delta`, ...) into a reply
/// (the format `StreamReader` reads Anthropic streams with).
#[derive(Default)]
pub struct Accumulator {
    text: String,
    blocks: Vec<(u64, Block)>,
    usage: Usage,
    size: usize,
    pub(crate) done: bool,
}

impl Accumulator {
    pub(crate) fn apply(&mut self, ev: &Value) -> Result<Option<String>, ModelError> {
        match ev["type"].as_str().unwrap_or("") {
            "message_start" => {
                self.usage.input_tokens = ev["message"]["usage"]["input_tokens"].as_u64().unwrap_or(0);
            }
            "content_block_start" => {
                let index = ev["index"].as_u64().unwrap_or(self.blocks.len() as u64);
                let block = &ev["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => self.blocks.push((
                        index,
                        Block::ToolUse {
                            id: block["id"].as_str().unwrap_or("").to_string(),
                            name: block["name"].as_str().unwrap_or("").to_string(),
                            json: String::new(),
                        },
                    )),
                    _ => self.blocks.push((index, Block::Text)),
                }
                if let Some(t) = block["text"].as_str().filter(|t| !t.is_empty()) {
                    return self.text(t);
                }
            }
            "content_block_delta" => {
                let index = ev["index"].as_u64().unwrap_or(0);
                let delta = &ev["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => return self.text(delta["text"].as_str().unwrap_or("")),
                    Some("input_json_delta") => {
                        let part = delta["partial_json"].as_str().unwrap_or("");
                        self.grow(part.len())?;
                        match self.blocks.iter_mut().find(|(i, _)| *i == index) {
                            Some((_, Block::ToolUse { json, .. })) => json.push_str(part),
                            _ => {
                                return Err(ModelError::Protocol(
                                    "input_json_delta for a block that is not tool_use".into(),
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(n) = ev["usage"]["output_tokens"].as_u64() {
                    self.usage.output_tokens = n;
                }
            }
            "message_stop" => self.done = true,
            "error" => {
                let status = if ev["error"]["type"] == "overloaded_error" { 529 } else { 500 };
                let len = ev["error"].to_string().len();
                return Err(ModelError::Upstream { status, detail: detail(ev.get("error"), len), retry_after: None });
            }
            _ => {} // ping, content_block_stop and future event types
        }
        Ok(None)
    }

    fn text(&mut self, t: &str) -> Result<Option<String>, ModelError> {
        self.grow(t.len())?;
        self.text.push_str(t);
        Ok(Some(t.to_string()))
    }

    fn grow(&mut self, n: usize) -> Result<(), ModelError> {
        self.size += n;
        if self.size > MAX_REPLY_BYTES {
            return Err(ModelError::Protocol(format!("reply larger than {MAX_REPLY_BYTES} bytes")));
        }
        Ok(())
    }

    /// A non-streamed `message` object (servers that ignore `stream`).
    pub(crate) fn apply_message(&mut self, msg: &Value) -> Result<Option<String>, ModelError> {
        self.usage.input_tokens = msg["usage"]["input_tokens"].as_u64().unwrap_or(0);
        self.usage.output_tokens = msg["usage"]["output_tokens"].as_u64().unwrap_or(0);
        let mut text = String::new();
        for (i, block) in msg["content"].as_array().into_iter().flatten().enumerate() {
            match block["type"].as_str() {
                Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
                Some("tool_use") => self.blocks.push((
                    i as u64,
                    Block::ToolUse {
                        id: block["id"].as_str().unwrap_or("").into(),
                        name: block["name"].as_str().unwrap_or("").into(),
                        json: block["input"].to_string(),
                    },
                )),
                _ => {}
            }
        }
        self.done = true;
        if text.is_empty() { Ok(None) } else { self.text(&text) }
    }

    pub(crate) fn finish(self) -> ModelReply {
        let tool_calls = self
            .blocks
            .into_iter()
            .filter_map(|(i, b)| match b {
                Block::ToolUse { id, name, json } => Some(ToolCall {
                    id: if id.is_empty() { format!("toolu_{i}") } else { id },
                    name,
                    arguments: if json.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(&json).unwrap_or(Value::String(json))
                    },
                }),
                Block::Text => None,
            })
            .collect();
        ModelReply { text: self.text, tool_calls, usage: self.usage }
    }
}

impl ReplyFormat for Accumulator {
    fn event(&mut self, data: &str, deltas: &mut Vec<String>) -> Result<bool, ModelError> {
        let v: Value =
            serde_json::from_str(data).map_err(|e| ModelError::Protocol(format!("invalid JSON event: {e}")))?;
        deltas.extend(self.apply(&v)?);
        Ok(self.done)
    }

    fn body(&mut self, body: &Value) -> Result<Option<String>, ModelError> {
        self.apply_message(body)
    }

    fn finish(self, ended: bool) -> Result<ModelReply, ModelError> {
        if !ended {
            return Err(ModelError::Protocol("stream ended before message_stop".into()));
        }
        Ok(Accumulator::finish(self))
    }
}

#[async_trait]
impl ModelProvider for Anthropic {
    async fn complete(&self, req: &ModelRequest, deltas: &mpsc::Sender<String>) -> Result<ModelReply, ModelError> {
        let work = async {
            let resp = self
                .http
                .post(format!("{}/messages", self.settings.base_url))
                .header("x-api-key", self.key.expose())
                .header("anthropic-version", API_VERSION)
                .json(&request_body(req, self.settings.max_tokens))
                .send()
                .await
                .map_err(transport)?;
            read_reply::<Accumulator>(resp, deltas).await
        };
        tokio::time::timeout(self.settings.timeout, work)
            .await
            .map_err(|_| ModelError::Timeout(self.settings.timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_results_merge_into_one_user_turn() {
        let req = ModelRequest {
            model: "claude".into(),
            system: None,
            messages: vec![
                Message::User { text: "go".into() },
                Message::Assistant {
                    text: "ok".into(),
                    tool_calls: vec![
                        ToolCall { id: "a".into(), name: "read".into(), arguments: json!({"path": "x"}) },
                        ToolCall { id: "b".into(), name: "list".into(), arguments: json!({}) },
                    ],
                },
                Message::ToolResult { call_id: "a".into(), name: "read".into(), content: "1".into(), is_error: false },
                Message::ToolResult { call_id: "b".into(), name: "list".into(), content: "2".into(), is_error: true },
            ],
            tools: vec![],
        };
        let body = request_body(&req, 100);
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[1]["content"][1]["type"], "tool_use");
        assert_eq!(msgs[2]["content"].as_array().unwrap().len(), 2);
        assert_eq!(msgs[2]["content"][1]["is_error"], true);
    }

    #[test]
    fn stream_events_fold() {
        let mut acc = Accumulator::default();
        for ev in [
            json!({"type":"message_start","message":{"usage":{"input_tokens":3}}}),
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}),
            json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t1","name":"read","input":{}}}),
            json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"path\":"}}),
            json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"a\"}"}}),
            json!({"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}),
            json!({"type":"message_stop"}),
        ] {
            acc.apply(&ev).unwrap();
        }
        assert!(acc.done);
        let r = acc.finish();
        assert_eq!(r.text, "Hi");
        assert_eq!(r.tool_calls[0].arguments["path"], "a");
        assert_eq!(r.usage.output_tokens, 9);
    }
}

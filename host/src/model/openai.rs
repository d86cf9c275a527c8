//! OpenAI chat completions (`POST {baseUrl}/chat/completions`) with tools, streamed over SSE.
//! Also what local servers (Ollama, vLLM, llama.cpp) speak.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::sse::{ReplyFormat, read_reply};
use super::{HttpSettings, ModelError, ModelProvider, ModelReply, ModelRequest, Usage, detail};
use crate::config::SecretString;
use crate::session::{Message, ToolCall};

/// Largest reply (text plus tool arguments) accepted from a provider.
pub(crate) const MAX_REPLY_BYTES: usize = 1 << 20;

pub struct OpenAi {
    settings: HttpSettings,
    key: Option<SecretString>,
    http: reqwest::Client,
}

impl OpenAi {
    pub fn new(settings: HttpSettings, key: Option<SecretString>, http: reqwest::Client) -> Self {
        Self { settings, key, http }
    }
}

pub(crate) fn request_body(req: &ModelRequest) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        messages.push(json!({ "role": "system", "content": system }));
    }
    for m in &req.messages {
        messages.push(match m {
            Message::User { .. } | Message::FromSession { .. } => json!({ "role": "user", "content": m.prompt_text() }),
            Message::Assistant { text, tool_calls } if tool_calls.is_empty() => {
                json!({ "role": "assistant", "content": text })
            }
            Message::Assistant { text, tool_calls } => json!({
                "role": "assistant",
                "content": if text.is_empty() { Value::Null } else { Value::String(text.clone()) },
                "tool_calls": tool_calls.iter().map(|c| json!({
                    "id": c.id, "type": "function",
                    "function": { "name": c.name, "arguments": c.arguments.to_string() },
                })).collect::<Vec<_>>(),
            }),
            Message::ToolResult { call_id, content, .. } => {
                json!({ "role": "tool", "tool_call_id": call_id, "content": content })
            }
        });
    }
    let mut body = json!({
        "model": req.model,
        "messages": messages,
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({ "type": "function", "function": {
                    "name": t.name(), "description": t.description(), "parameters": t.parameters(),
                }})
            })
            .collect();
    }
    body
}

/// Tool-call fragments accumulate by index across chunks.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Folds streamed chunks into a reply (the format `StreamReader` reads OpenAI streams with).
#[derive(Default)]
pub struct Accumulator {
    text: String,
    calls: BTreeMap<u64, PartialCall>,
    usage: Usage,
    size: usize,
    /// A choice carried its `finish_reason`: the reply is complete even if `[DONE]` is missing.
    finished: bool,
}

impl Accumulator {
    /// Applies one `data:` chunk; returns the text delta it carried.
    pub(crate) fn apply(&mut self, chunk: &Value) -> Result<Option<String>, ModelError> {
        if let Some(err) = chunk.get("error") {
            let len = err.to_string().len();
            return Err(ModelError::Upstream { status: 200, detail: detail(Some(err), len), retry_after: None });
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage.input_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
            self.usage.output_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
        }
        let mut out = None;
        for choice in chunk.get("choices").and_then(Value::as_array).into_iter().flatten() {
            if choice.get("finish_reason").is_some_and(|r| !r.is_null()) {
                self.finished = true;
            }
            // Non-streaming replies carry `message`; streamed ones carry `delta`.
            let delta = choice.get("delta").or_else(|| choice.get("message"));
            let Some(delta) = delta else { continue };
            if let Some(t) = delta.get("content").and_then(Value::as_str)
                && !t.is_empty()
            {
                self.grow(t.len())?;
                self.text.push_str(t);
                out.get_or_insert_with(String::new).push_str(t);
            }
            for (pos, tc) in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let index = tc.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
                let f = tc.get("function");
                let mut fragment = 0;
                let call = self.calls.entry(index).or_default();
                if let Some(id) = tc.get("id").and_then(Value::as_str) {
                    call.id = id.to_string();
                }
                if let Some(n) = f.and_then(|f| f.get("name")).and_then(Value::as_str) {
                    call.name.push_str(n);
                    fragment += n.len();
                }
                if let Some(a) = f.and_then(|f| f.get("arguments")).and_then(Value::as_str) {
                    call.arguments.push_str(a);
                    fragment += a.len();
                }
                self.grow(fragment)?;
            }
        }
        Ok(out)
    }

    fn grow(&mut self, n: usize) -> Result<(), ModelError> {
        self.size += n;
        if self.size > MAX_REPLY_BYTES {
            return Err(ModelError::Protocol(format!("reply larger than {MAX_REPLY_BYTES} bytes")));
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> ModelReply {
        let tool_calls = self
            .calls
            .into_values()
            .enumerate()
            .map(|(i, c)| ToolCall {
                id: if c.id.is_empty() { format!("call_{i}") } else { c.id },
                name: c.name,
                // Arguments that are not a JSON object reach the gate and the sandbox as a string,
                // where they are rejected with a clear error for the model.
                arguments: if c.arguments.trim().is_empty() {
                    json!({})
                } else {
                    serde_json::from_str(&c.arguments).unwrap_or(Value::String(c.arguments))
                },
            })
            .collect();
        ModelReply { text: self.text, tool_calls, usage: self.usage }
    }
}

impl ReplyFormat for Accumulator {
    fn event(&mut self, data: &str, deltas: &mut Vec<String>) -> Result<bool, ModelError> {
        if data == "[DONE]" {
            return Ok(true);
        }
        let v: Value =
            serde_json::from_str(data).map_err(|e| ModelError::Protocol(format!("invalid JSON event: {e}")))?;
        deltas.extend(self.apply(&v)?);
        Ok(false)
    }

    fn body(&mut self, body: &Value) -> Result<Option<String>, ModelError> {
        self.apply(body)
    }

    /// A stream that ends with neither `[DONE]` nor a `finish_reason` was cut short (a proxy
    /// closing early, a crashed upstream): an error, not half a reply passed off as whole.
    fn finish(self, ended: bool) -> Result<ModelReply, ModelError> {
        if !ended && !self.finished {
            return Err(ModelError::Protocol(
                "the stream ended before the reply was complete (no finish_reason, no [DONE])".into(),
            ));
        }
        Ok(Accumulator::finish(self))
    }
}

/// Reads an error body (bounded) and turns it into a `ModelError`.
pub(crate) async fn upstream_error(resp: reqwest::Response) -> ModelError {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() > 16 * 1024 {
            break;
        }
    }
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    ModelError::Upstream { status, detail: detail(error, body.len()), retry_after }
}

pub(crate) fn transport(e: reqwest::Error) -> ModelError {
    // reqwest errors include the URL; keep only the kind of failure.
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "response body failed"
    } else {
        "request failed"
    };
    ModelError::Transport(kind.into())
}

#[async_trait]
impl ModelProvider for OpenAi {
    async fn complete(&self, req: &ModelRequest, deltas: &mpsc::Sender<String>) -> Result<ModelReply, ModelError> {
        let work = async {
            let mut builder =
                self.http.post(format!("{}/chat/completions", self.settings.base_url)).json(&request_body(req));
            if let Some(key) = &self.key {
                builder = builder.bearer_auth(key.expose());
            }
            let resp = builder.send().await.map_err(transport)?;
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
    use crate::tools::Tool;

    #[test]
    fn request_carries_tools_and_tool_results() {
        let req = ModelRequest {
            model: "gpt".into(),
            system: Some("be brief".into()),
            messages: vec![
                Message::User { text: "hi".into() },
                Message::Assistant {
                    text: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "read".into(),
                        arguments: json!({"path": "a"}),
                    }],
                },
                Message::ToolResult { call_id: "c1".into(), name: "read".into(), content: "x".into(), is_error: false },
            ],
            tools: vec![Tool::Read],
        };
        let body = request_body(&req);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][2]["tool_calls"][0]["function"]["arguments"], "{\"path\":\"a\"}");
        assert_eq!(body["messages"][3]["tool_call_id"], "c1");
        assert_eq!(body["tools"][0]["function"]["name"], "read");
    }

    #[test]
    fn a_stream_cut_short_is_an_error_and_a_finished_one_without_done_is_not() {
        use crate::model::sse::StreamReader;
        let mut cut = StreamReader::<Accumulator>::default();
        cut.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Half a rep\"}}]}\n\n").unwrap();
        let e = cut.finish().unwrap_err();
        assert!(e.to_string().contains("ended before the reply was complete"), "{e}");
        let mut done = StreamReader::<Accumulator>::default();
        done.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Whole\"},\"finish_reason\":\"stop\"}]}\n\n").unwrap();
        assert_eq!(done.finish().unwrap().text, "Whole", "a finish_reason completes it without [DONE]");
        let mut both = StreamReader::<Accumulator>::default();
        both.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"A\"}}]}\n\ndata: [DONE]\n\n").unwrap();
        assert_eq!(both.finish().unwrap().text, "A");
    }

    #[test]
    fn streamed_tool_call_fragments_join() {
        let mut acc = Accumulator::default();
        let chunks = [
            json!({"choices":[{"delta":{"content":"Hel"}}]}),
            json!({"choices":[{"delta":{"content":"lo"}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c9","function":{"name":"exec","arguments":"{\"comm"}}]}}]}),
            json!({"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"and\":\"ls\"}"}}]}}]}),
            json!({"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}),
        ];
        for c in &chunks {
            acc.apply(c).unwrap();
        }
        let r = acc.finish();
        assert_eq!(r.text, "Hello");
        assert_eq!(r.tool_calls[0].arguments["command"], "ls");
        assert_eq!(r.usage, Usage { input_tokens: 5, output_tokens: 7 });
    }
}

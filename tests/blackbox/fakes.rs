//! A fake model server speaking OpenAI chat completions (`/v1/chat/completions`) and Anthropic
//! messages (`/v1/messages`), streamed (SSE) or not, with tool calls. What it does is chosen by
//! the newest user text it receives:
//!
//! - `call-tool:NAME` → a tool call of NAME with `{"path": "notes.txt"}`; `call-tool:NAME {JSON}`
//!   → with those arguments;
//! - after a tool result → `tool said: <result>`;
//! - `upstream-500` / `upstream-429` → that HTTP error, in the provider's error shape;
//! - `upstream-401` → 401 whose body echoes the request's key, as OpenAI's does ("Incorrect API
//!   key provided: sk-…"), here in full and masked;
//! - `rate-limited-once:TAG` → the first request with that text gets 429 with `Retry-After: 1`,
//!   later ones a normal answer;
//! - a request whose key (bearer token or `x-api-key`) contains `limited` → 429 with
//!   `Retry-After: 1`, whatever the text (a tenant's own key that is rate-limited upstream);
//! - `sleep-ms:N REST` → waits N ms, then answers `fake says: sleep-ms:N REST` (a run of known length);
//! - `slow` → waits 10 s before answering; `slow-stream` → streams 5 words 150 ms apart;
//! - `garbage` → a stream whose chunk is not JSON;
//! - `drop-stream` → a stream that starts an answer, then the connection drops mid-stream;
//! - anything else → `fake says: <text>`, streamed in several chunks.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Clone, Default)]
pub struct FakeModel {
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Texts of `rate-limited-once:` requests already refused once.
    refused_once: Arc<Mutex<HashSet<String>>>,
}

pub struct Running {
    pub base: String,
    pub model: FakeModel,
}

impl Running {
    pub fn requests(&self) -> Vec<Recorded> {
        self.model.requests.lock().unwrap().clone()
    }
}

pub async fn start() -> Running {
    let model = FakeModel::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(openai))
        .route("/v1/messages", post(anthropic))
        .with_state(model.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Small SSE writes must not wait for delayed ACKs (Nagle), or every reply costs ~40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Running { base: format!("http://{addr}/v1"), model }
}

enum Plan {
    Text(String),
    /// 429 with `Retry-After: 1`.
    RateLimited,
    Sleep(u64, String),
    /// Name and arguments (JSON text).
    Tool(String, String),
    Error(u16),
    /// 401 echoing this key.
    BadKey(String),
    Slow,
    SlowStream,
    Garbage,
    /// Starts streaming these events, then drops the connection.
    Dropped,
}

/// What to answer, from the request's key and newest user-side content (text, came from a tool result).
fn plan(model: &FakeModel, headers: &HeaderMap, last_text: &str, after_tool: bool) -> Plan {
    let key = ["authorization", "x-api-key"].iter().find_map(|h| headers.get(*h)).and_then(|v| v.to_str().ok());
    if key.is_some_and(|k| k.contains("limited")) {
        return Plan::RateLimited;
    }
    if last_text.starts_with("rate-limited-once:") && model.refused_once.lock().unwrap().insert(last_text.to_string()) {
        return Plan::RateLimited;
    }
    if let Some(rest) = last_text.strip_prefix("sleep-ms:")
        && let Some(ms) = rest.split_whitespace().next().and_then(|n| n.parse().ok())
    {
        return Plan::Sleep(ms, format!("fake says: {last_text}"));
    }
    if after_tool {
        return Plan::Text(format!("tool said: {last_text}"));
    }
    if let Some(rest) = last_text.split("call-tool:").nth(1) {
        let (name, args) = rest.split_once(' ').unwrap_or((rest, ""));
        let args = if args.trim_start().starts_with('{') { args.trim() } else { r#"{"path":"notes.txt"}"# };
        return Plan::Tool(name.to_string(), args.to_string());
    }
    match last_text.trim() {
        "upstream-401" => {
            let key = key.unwrap_or("").trim_start_matches("Bearer ").to_string();
            Plan::BadKey(key)
        }
        "upstream-500" => Plan::Error(500),
        "upstream-429" => Plan::Error(429),
        "slow" => Plan::Slow,
        "slow-stream" => Plan::SlowStream,
        "garbage" => Plan::Garbage,
        "drop-stream" => Plan::Dropped,
        t => Plan::Text(format!("fake says: {t}")),
    }
}

/// Waits out a `sleep-ms:` plan, which then answers like any text; other plans are unchanged.
async fn settle(plan: Plan) -> Plan {
    match plan {
        Plan::Sleep(ms, t) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Plan::Text(t)
        }
        p => p,
    }
}

fn sse(events: Vec<(Option<String>, String)>, gap: Duration) -> Response {
    let stream = futures_util::stream::unfold(events.into_iter(), move |mut it| async move {
        let (name, data) = it.next()?;
        tokio::time::sleep(gap).await;
        let mut frame = String::new();
        if let Some(n) = name {
            frame.push_str(&format!("event: {n}\n"));
        }
        frame.push_str(&format!("data: {data}\n\n"));
        Some((Ok::<_, Infallible>(frame), it))
    });
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

/// A stream that sends `events`, then fails: the connection is cut before the stream ends.
fn dropped(events: Vec<(Option<String>, String)>) -> Response {
    let frames = events.into_iter().map(|(name, data)| {
        let event = name.map(|n| format!("event: {n}\n")).unwrap_or_default();
        Ok::<_, std::io::Error>(format!("{event}data: {data}\n\n"))
    });
    let cut = std::iter::once(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "dropped")));
    let stream = futures_util::stream::iter(frames.chain(cut));
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

fn rate_limited(body: Value) -> Response {
    (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], axum::Json(body)).into_response()
}

fn record(model: &FakeModel, path: &str, headers: &HeaderMap, body: &Value) {
    model.requests.lock().unwrap().push(Recorded { path: path.into(), headers: headers.clone(), body: body.clone() });
}

async fn openai(State(model): State<FakeModel>, headers: HeaderMap, body: axum::Json<Value>) -> Response {
    let body = body.0;
    record(&model, "/v1/chat/completions", &headers, &body);
    let msgs = body["messages"].as_array().cloned().unwrap_or_default();
    let last = msgs.last().cloned().unwrap_or(json!({}));
    let after_tool = last["role"] == "tool";
    let text = last["content"].as_str().unwrap_or("").to_string();
    let stream = body["stream"] == true;
    let chunk = |delta: Value, finish: Value| {
        json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
            .to_string()
    };
    match settle(plan(&model, &headers, &text, after_tool)).await {
        Plan::Sleep(..) => unreachable!("settled"),
        Plan::RateLimited => rate_limited(json!({"error":{"message":"rate limit reached for this key","type":"rate_limit_error"}})),
        Plan::Error(code) => (
            StatusCode::from_u16(code).unwrap(),
            axum::Json(json!({"error":{"message":"fake upstream failure at http://internal.example/secret","type":"server_error"}})),
        )
            .into_response(),
        Plan::Slow => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "late".into_response()
        }
        Plan::Garbage => sse(vec![(None, "{not json".into())], Duration::ZERO),
        Plan::Dropped => dropped(vec![(None, chunk(json!({"content": "half an "}), Value::Null))]),
        Plan::SlowStream => {
            let mut ev: Vec<(Option<String>, String)> =
                (1..=5).map(|i| (None, chunk(json!({"content": format!("w{i} ")}), Value::Null))).collect();
            ev.push((None, chunk(json!({}), json!("stop"))));
            ev.push((None, "[DONE]".into()));
            sse(ev, Duration::from_millis(150))
        }
        Plan::BadKey(key) => {
            let masked = format!("{}{}{}", &key[..key.len().min(8)], "*".repeat(12), &key[key.len().saturating_sub(4)..]);
            let message = format!("Incorrect API key provided: {masked} ({key}). You can find your API key at https://platform.openai.com/account/api-keys.");
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error":{"message":message,"type":"invalid_request_error","param":null,"code":"invalid_api_key"}})),
            )
                .into_response()
        }
        Plan::Tool(name, args) if stream => {
            // The arguments arrive in two fragments, as OpenAI streams them.
            let cut = (0..=args.len() / 2).rev().find(|i| args.is_char_boundary(*i)).unwrap_or(0);
            let (a, b) = args.split_at(cut);
            sse(
                vec![
                    (None, chunk(json!({"tool_calls":[{"index":0,"id":"call_fake","type":"function","function":{"name":name,"arguments":a}}]}), Value::Null)),
                    (None, chunk(json!({"tool_calls":[{"index":0,"function":{"arguments":b}}]}), Value::Null)),
                    (None, chunk(json!({}), json!("tool_calls"))),
                    (None, "[DONE]".into()),
                ],
                Duration::ZERO,
            )
        }
        Plan::Tool(name, args) => axum::Json(json!({"choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"call_fake","type":"function","function":{"name":name,"arguments":args}}]},"finish_reason":"tool_calls"}]}))
        .into_response(),
        Plan::Text(t) if stream => {
            let mut ev: Vec<(Option<String>, String)> =
                t.split_inclusive(' ').map(|w| (None, chunk(json!({"content": w}), Value::Null))).collect();
            ev.push((None, json!({"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":4}}).to_string()));
            ev.push((None, chunk(json!({}), json!("stop"))));
            ev.push((None, "[DONE]".into()));
            sse(ev, Duration::ZERO)
        }
        Plan::Text(t) => axum::Json(json!({"choices":[{"index":0,"message":{"role":"assistant","content":t},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":11,"completion_tokens":4}}))
        .into_response(),
    }
}

async fn anthropic(State(model): State<FakeModel>, headers: HeaderMap, body: axum::Json<Value>) -> Response {
    let body = body.0;
    record(&model, "/v1/messages", &headers, &body);
    let msgs = body["messages"].as_array().cloned().unwrap_or_default();
    let last_blocks = msgs.last().and_then(|m| m["content"].as_array().cloned()).unwrap_or_default();
    let tool_result = last_blocks.iter().find(|b| b["type"] == "tool_result");
    let (text, after_tool) = match tool_result {
        Some(b) => (b["content"].as_str().unwrap_or("").to_string(), true),
        None => (last_blocks.iter().rev().find_map(|b| b["text"].as_str()).unwrap_or("").to_string(), false),
    };
    let ev = |name: &str, v: Value| (Some(name.to_string()), v.to_string());
    let start = ev(
        "message_start",
        json!({"type":"message_start","message":{"id":"msg_1","role":"assistant","content":[],"usage":{"input_tokens":12,"output_tokens":0}}}),
    );
    let stop = |reason: &str| {
        vec![
            ev(
                "message_delta",
                json!({"type":"message_delta","delta":{"stop_reason":reason},"usage":{"output_tokens":6}}),
            ),
            ev("message_stop", json!({"type":"message_stop"})),
        ]
    };
    match settle(plan(&model, &headers, &text, after_tool)).await {
        Plan::Sleep(..) => unreachable!("settled"),
        Plan::RateLimited => {
            rate_limited(json!({"type":"error","error":{"type":"rate_limit_error","message":"rate limit reached"}}))
        }
        Plan::Error(code) => (
            StatusCode::from_u16(code).unwrap(),
            axum::Json(json!({"type":"error","error":{"type":"api_error","message":"fake upstream failure"}})),
        )
            .into_response(),
        Plan::BadKey(key) => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"type":"error","error":{"type":"authentication_error","message":format!("invalid x-api-key: {key}")}})),
        )
            .into_response(),
        Plan::Slow => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "late".into_response()
        }
        Plan::Garbage => sse(
            vec![ev("message_start", json!({})), (Some("content_block_delta".into()), "{oops".into())],
            Duration::ZERO,
        ),
        Plan::Dropped => dropped(vec![
            start,
            ev("content_block_start", json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})),
            ev("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"half an "}})),
        ]),
        Plan::SlowStream => {
            let mut e = vec![
                start,
                ev(
                    "content_block_start",
                    json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                ),
            ];
            for i in 1..=5 {
                e.push(ev("content_block_delta", json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":format!("w{i} ")}})));
            }
            e.extend(stop("end_turn"));
            sse(e, Duration::from_millis(150))
        }
        Plan::Tool(name, args) => {
            let cut = (0..=args.len() / 2).rev().find(|i| args.is_char_boundary(*i)).unwrap_or(0);
            let (a, b) = args.split_at(cut);
            let mut e = vec![
                start,
                ev(
                    "content_block_start",
                    json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_fake","name":name,"input":{}}}),
                ),
                ev(
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":a}}),
                ),
                ev(
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":b}}),
                ),
                ev("content_block_stop", json!({"type":"content_block_stop","index":0})),
            ];
            e.extend(stop("tool_use"));
            sse(e, Duration::ZERO)
        }
        Plan::Text(t) => {
            let mut e = vec![
                start,
                ev("ping", json!({"type":"ping"})),
                ev(
                    "content_block_start",
                    json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                ),
            ];
            for w in t.split_inclusive(' ') {
                e.push(ev(
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":w}}),
                ));
            }
            e.push(ev("content_block_stop", json!({"type":"content_block_stop","index":0})));
            e.extend(stop("end_turn"));
            sse(e, Duration::ZERO)
        }
    }
}

//! The web chat WebSocket (`/ws`) through the real binary.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::Gateway;
use crate::{TOKEN_A, TOKEN_B, env, fakes, two_tenant_config};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn gateway() -> (Gateway, fakes::Running) {
    let fake = fakes::start().await;
    let gw = Gateway::start(&two_tenant_config(&fake.base, ""), &env()).await;
    (gw, fake)
}

async fn connect(gw: &Gateway) -> Ws {
    tokio_tungstenite::connect_async(gw.ws_url()).await.expect("connect").0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Sends one turn and collects frames through `done`.
async fn exchange(ws: &mut Ws, agent: &str, text: &str) -> Vec<Value> {
    send(ws, json!({ "type": "send", "agent": agent, "conversation": "conv-1", "text": text })).await;
    let mut frames = Vec::new();
    loop {
        let f = next(ws).await;
        let done = f["type"] == "done" || f["type"] == "error";
        frames.push(f);
        if done {
            return frames;
        }
    }
}

#[tokio::test]
async fn authenticated_chat_streams_deltas_and_tool_events() {
    let (gw, _fake) = gateway().await;
    let mut ws = connect(&gw).await;
    send(&mut ws, json!({ "type": "auth", "token": TOKEN_A })).await;
    let ready = next(&mut ws).await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["tenant"], "Alpha Co");
    let ids: Vec<&str> = ready["agents"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a-openai", "a-claude", "a-demo", "a-sessions"]);
    assert_eq!(ready["agents"][2]["scripted"], true);
    assert_eq!(ready["agents"][2]["name"], "Alpha Bot");

    let frames = exchange(&mut ws, "a-demo", "hello there").await;
    assert_eq!(frames[0]["type"], "start");
    let deltas: String = frames.iter().filter(|f| f["type"] == "delta").map(|f| f["text"].as_str().unwrap()).collect();
    assert_eq!(deltas, "echo: hello there");
    assert!(frames.iter().filter(|f| f["type"] == "delta").count() > 1, "streamed in pieces");
    assert_eq!(frames.last().unwrap()["text"], "echo: hello there");

    let frames = exchange(&mut ws, "a-demo", r#"/tool read {"path":"notes.txt"}"#).await;
    let call = frames.iter().find(|f| f["type"] == "tool_call").expect("tool_call frame");
    assert_eq!(call["name"], "read");
    assert_eq!(call["arguments"]["path"], "notes.txt");
    let result = frames.iter().find(|f| f["type"] == "tool_result").expect("tool_result frame");
    assert_eq!(result["isError"], true, "no such file yet: {result}");
    assert_eq!(frames.last().unwrap()["type"], "done");
    // Session tools are not in the default policy: refused at the gate.
    let frames = exchange(&mut ws, "a-demo", "/tool sessions_list {}").await;
    let result = frames.iter().find(|f| f["type"] == "tool_result").expect("tool_result frame");
    assert!(result["content"].as_str().unwrap().starts_with("denied"), "{result}");
}

#[tokio::test]
async fn bad_tokens_bad_frames_and_other_tenants_agents() {
    let (gw, _fake) = gateway().await;
    let mut ws = connect(&gw).await;
    send(&mut ws, json!({ "type": "auth", "token": "nope" })).await;
    let f = next(&mut ws).await;
    assert_eq!((f["type"].as_str(), f["message"].as_str()), (Some("error"), Some("invalid token")));

    let mut ws = connect(&gw).await;
    send(&mut ws, json!({ "type": "auth", "token": TOKEN_B })).await;
    assert_eq!(next(&mut ws).await["type"], "ready");
    ws.send(Message::Text("{garbage".into())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "error");
    let frames = exchange(&mut ws, "a-demo", "hi").await;
    assert_eq!(frames[0]["message"], "unknown agent", "bravo cannot address alpha's agent");
    let frames = exchange(&mut ws, "no-such", "hi").await;
    assert_eq!(frames[0]["message"], "unknown agent");
    send(&mut ws, json!({ "type": "send", "agent": "b-secret", "conversation": "bad id!", "text": "x" })).await;
    assert_eq!(next(&mut ws).await["type"], "error");
    // Still usable after every bad frame.
    let frames = exchange(&mut ws, "b-secret", "ok?").await;
    assert_eq!(frames.last().unwrap()["text"], "echo: ok?");
}

#[tokio::test]
async fn cross_origin_sockets_are_refused() {
    let (gw, _fake) = gateway().await;
    let mut req = gw.ws_url().into_client_request().unwrap();
    req.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.expect_err("must be refused");
    assert!(err.to_string().contains("403"), "{err}");
}

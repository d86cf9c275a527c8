//! Fair scheduling through the real binary: one tenant's flood neither delays another tenant
//! behind its whole backlog nor gets silently dropped.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Gateway, http};
use crate::{env, fakes};

fn config(model_base: &str) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0" }},
  stateDir: "state",
  models: {{ providers: {{ fake: {{ api: "openai", baseUrl: "{model_base}", timeoutSec: 30 }} }} }},
  scheduling: {{ maxConcurrent: 2, maxQueued: 10 }},
  tenants: [
    {{ id: "alpha", apiTokens: [ {{ env: "TOKEN_A" }} ] }},
    {{ id: "bravo", apiTokens: [ {{ env: "TOKEN_B" }} ] }},
  ],
  agents: {{
    defaults: {{ model: "fake/m", maxConcurrent: 2 }},
    list: [ {{ id: "flood", tenant: "alpha" }}, {{ id: "calm", tenant: "bravo" }} ],
  }},
}}"#
    )
}

async fn send(gw: &Gateway, token: &str, model: &str, user: String, text: &str) -> (u16, Value) {
    let r = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({ "model": model, "user": user, "messages": [{ "role": "user", "content": text }] }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_flood_does_not_queue_another_tenant_behind_it_and_nothing_is_dropped() {
    let fake = fakes::start().await;
    let gw = std::sync::Arc::new(Gateway::start(&config(&fake.base), &env()).await);
    // Alpha floods: 20 slow turns at once, more than its 2 running + 10 queued.
    let mut flood = Vec::new();
    for i in 0..20 {
        let gw = gw.clone();
        flood.push(tokio::spawn(
            async move { send(&gw, crate::TOKEN_A, "flood", format!("f{i}"), "slow-stream").await },
        ));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Bravo sends one ordinary turn while alpha's backlog waits.
    let (status, reply) = send(&gw, crate::TOKEN_B, "calm", "c".into(), "quick").await;
    assert_eq!(status, 200, "{reply}");
    // Where did bravo's model call land among all model calls? With FIFO it would come after
    // alpha's whole accepted backlog (12); with fair shares, within the next free slots.
    let order: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| r.body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string())
        .collect();
    let pos = order.iter().position(|t| t == "quick").expect("bravo's turn reached the model");
    assert!(pos <= 4, "bravo waited behind alpha's backlog: position {pos} in {order:?}");

    // Every alpha turn got a reply or a clear refusal: count them.
    let (mut ok, mut busy) = (0, 0);
    for f in flood {
        match f.await.unwrap() {
            (200, _) => ok += 1,
            (429, v) => {
                assert_eq!(v["error"]["code"], "busy");
                assert!(v["error"]["message"].as_str().unwrap().contains("busy"));
                busy += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok + busy, 20);
    assert_eq!(ok, 12, "2 running + 10 queued are accepted");
    assert_eq!(busy, 8, "the rest are refused at once, not dropped");
}

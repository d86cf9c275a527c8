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
  stateDir: "state", store: {{ mode: "memory" }},
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

/// How long one model call of the load test takes (the fake sleeps this long).
const RUN_MS: u64 = 300;

fn load_config(model_base: &str) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", operators: [ {{ id: "ops", token: {{ env: "OPS_TOKEN" }} }} ] }},
  stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ fake: {{ api: "openai", baseUrl: "{model_base}", timeoutSec: 30 }} }} }},
  tenants: [
    {{ id: "alpha", apiTokens: [ {{ env: "TOKEN_A" }} ], quotas: {{ messagesPerMinute: 60 }},
       scheduling: {{ maxConcurrent: 2, maxQueued: 6 }} }},
    {{ id: "bravo", apiTokens: [ {{ env: "TOKEN_B" }} ] }},
  ],
  agents: {{
    defaults: {{ model: "fake/m", maxConcurrent: 3 }},
    list: [ {{ id: "flood", tenant: "alpha" }}, {{ id: "calm", tenant: "bravo" }} ],
  }},
}}"#
    )
}

/// Bravo sends `n` turns, one every `gap`, each in its own conversation; returns each turn's
/// latency (all must be answered).
async fn bravo_latencies(gw: &Gateway, n: usize, gap: Duration, tag: &str) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (base, tag) = (gw.base.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            let r = http()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(crate::TOKEN_B)
                .json(&json!({ "model": "calm", "user": format!("{tag}{i}"),
                               "messages": [{ "role": "user", "content": format!("sleep-ms:{RUN_MS} {tag}{i}") }] }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "bravo is never refused: {:?}", r.text().await);
            t0.elapsed()
        }));
        tokio::time::sleep(gap).await;
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out.sort();
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test]
async fn a_tenant_flooding_at_ten_times_its_quota_adds_under_one_run_time_to_anothers_p99() {
    let fake = fakes::start().await;
    let gw = std::sync::Arc::new(Gateway::start(&load_config(&fake.base), &env()).await);
    let gap = Duration::from_millis(350);
    let unloaded = bravo_latencies(&gw, 14, gap, "u").await;

    // Alpha floods at 10 turns/s = 600/min, ten times its quota of 60/min, for 8 s.
    let flood = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..80 {
                let gw = gw.clone();
                sent.push(tokio::spawn(async move {
                    send(&gw, crate::TOKEN_A, "flood", format!("f{i}"), &format!("sleep-ms:{RUN_MS} f{i}")).await
                }));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut out = Vec::new();
            for s in sent {
                out.push(s.await.unwrap());
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = bravo_latencies(&gw, 20, gap, "l").await;
    let replies = flood.await.unwrap();

    let (u50, u99, l50, l99) =
        (percentile(&unloaded, 0.5), percentile(&unloaded, 0.99), percentile(&loaded, 0.5), percentile(&loaded, 0.99));
    eprintln!("bravo latency unloaded p50 {u50:?} p99 {u99:?}; with alpha flooding p50 {l50:?} p99 {l99:?}");
    assert!(
        l99 <= u99 + Duration::from_millis(RUN_MS),
        "alpha's flood added more than one run-time ({RUN_MS} ms) to bravo's p99: {u99:?} -> {l99:?}"
    );

    // Count every alpha turn: a reply, or a clear refusal (queue full, or over quota).
    let (mut ok, mut busy, mut quota) = (0, 0, 0);
    for (status, v) in &replies {
        let msg = v["error"]["message"].as_str().unwrap_or("");
        match status {
            200 => {
                assert!(v["choices"][0]["message"]["content"].as_str().unwrap().starts_with("fake says: sleep-ms:"));
                ok += 1;
            }
            429 if msg.contains("busy right now") => busy += 1,
            429 if msg.contains("reached its usage limit") => quota += 1,
            other => panic!("alpha turn neither answered nor clearly refused: {other} {v}"),
        }
    }
    assert_eq!(ok + busy + quota, 80);
    assert!(
        busy > 0 && quota > 0,
        "the flood hit both the queue bound and the quota: {ok} ok, {busy} busy, {quota} quota"
    );
    // The operator's numbers match what the clients saw.
    let m = http().get(gw.url("/metrics")).bearer_auth(crate::OPS_TOKEN).send().await.unwrap().text().await.unwrap();
    let value = |series: &str| -> u64 {
        let line = m.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' ')).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value(r#"gateway_runs_total{tenant="alpha"}"#), ok);
    assert_eq!(value(r#"gateway_runs_refused_total{tenant="alpha"}"#), busy);
    assert_eq!(value(r#"gateway_quota_refusals_total{tenant="alpha",quota="messages_per_minute"}"#), quota);
    assert_eq!(value(r#"gateway_runs_total{tenant="bravo"}"#), (unloaded.len() + loaded.len()) as u64);
    assert_eq!(value(r#"gateway_queue_depth{tenant="alpha"}"#), 0, "nothing left waiting");
}

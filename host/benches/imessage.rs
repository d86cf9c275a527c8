//! iMessage channel benchmark: the real binary against the in-process fake BlueBubbles server
//! (`tests/blackbox/fake_bluebubbles.rs`) with the scripted provider, next to Telegram (its fake
//! Bot API) in the same run and the same gateway:
//!
//! - iMessage: a webhook delivery `POST /channels/imessage/<account>/webhook?secret=…` → the
//!   reply's `POST /api/v1/message/text` on the bridge;
//! - Telegram: an update queued → `sendMessage`;
//!
//! sequential turns, each from its own chat and spaced so no pace binds.
//!
//! Run with `cargo bench -p bulkhead --bench imessage` (or `--profile dev`). Figures are
//! recorded in BENCHMARKS.md.

#[path = "../../tests/blackbox/fake_bluebubbles.rs"]
#[allow(dead_code)]
mod fake_bluebubbles;
#[path = "../../tests/blackbox/fake_telegram.rs"]
#[allow(dead_code)]
mod fake_telegram;

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use fake_bluebubbles::FakeBlueBubbles;
use fake_telegram::FakeTelegram;

const TG: &str = "111:bench-token-tg";
const PASSWORD: &str = "bench-bridge-password-4e1c";
const SECRET: &str = "bench-webhook-secret-9b2d7f1a";

fn config(bridge: &str, telegram: &str) -> String {
    format!(
        r#"{{ gateway: {{ bind: "127.0.0.1:0" }}, stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "ta" }} ],
  agents: {{ defaults: {{ model: "demo/scripted", maxConcurrent: 64 }}, list: [ {{ id: "a", tenant: "ta" }} ] }},
  bindings: [ {{ agentId: "a", match: {{ channel: "telegram" }} }}, {{ agentId: "a", match: {{ channel: "imessage" }} }} ],
  channels: {{
    telegram: {{ dmPolicy: "open", allowFrom: ["*"], accounts: {{ t: {{ token: {{ env: "TG" }}, apiUrl: "{telegram}" }} }} }},
    imessage: {{ dmPolicy: "open", allowFrom: ["*"], accounts: {{
      mac: {{ url: "{bridge}", password: {{ env: "BB_PASSWORD" }}, webhookSecret: {{ env: "BB_SECRET" }} }} }} }},
  }} }}"#
    )
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(name: &str, v: &mut [Duration]) {
    v.sort();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    println!("{name:<48} p50 {}, p90 {}, p99 {}", ms(pct(v, 0.5)), ms(pct(v, 0.9)), ms(pct(v, 0.99)));
}

#[tokio::main]
async fn main() {
    let bb = FakeBlueBubbles::start(PASSWORD).await;
    let tg = FakeTelegram::start().await;
    tg.add_bot(TG, 111, "bench_tg_bot");
    let env = [("TG", TG), ("BB_PASSWORD", PASSWORD), ("BB_SECRET", SECRET)];
    let served = common::serve(&config(&bb.url, &tg.base), &env).await;
    let hook = format!("{}/channels/imessage/mac/webhook?secret={SECRET}", served.base);

    // Until the account serves (a delivery of another event type is answered 200).
    let deadline = Instant::now() + Duration::from_secs(60);
    while bb.deliver(&hook, &serde_json::json!({ "type": "typing-indicator", "data": {} })).await != 200 {
        assert!(Instant::now() < deadline, "the iMessage account never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warm = bb.message("iMessage;-;+15550000000", "+15550000000", "warm");
    assert_eq!(bb.deliver(&hook, &warm).await, 200);
    bb.wait_sent("iMessage;-;+15550000000", 1).await;
    tg.dm(TG, 19_999, "warm");
    tg.wait_sent(TG, 19_999, 1).await;

    let n = 200;
    let (mut im, mut t) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let number = format!("+1555{:07}", 1_000_000 + i);
        let chat = format!("iMessage;-;{number}");
        let event = bb.message(&chat, &number, "ping");
        let at = Instant::now();
        assert_eq!(bb.deliver(&hook, &event).await, 200);
        im.push(bb.wait_sent(&chat, 1).await[0].at.duration_since(at));
        let user = 20_000 + i as i64;
        let at = Instant::now();
        tg.dm(TG, user, "ping");
        t.push(tg.wait_sent(TG, user, 1).await[0].at.duration_since(at));
        // Past the per-bot pace (100 ms on iMessage), so it never binds.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    summary("iMessage webhook POST -> message/text", &mut im);
    summary("Telegram update -> sendMessage", &mut t);
    drop(served);
}

//! Signal channel benchmark, against the in-process fake signal-cli daemon
//! (`tests/blackbox/fake_signal.rs`: JSON-RPC + SSE, multi-account) with the scripted provider,
//! next to Telegram (its fake Bot API) in the same run and the same gateway:
//!
//! - latency from a message being available to its reply being sent (Signal: `receive` event
//!   written on the account's SSE stream → the reply's `send` JSON-RPC call; Telegram: update
//!   queued → `sendMessage`), sequential turns, each from its own sender, spaced so no pace binds;
//! - the same for the second number of the same daemon, interleaved (two accounts, one daemon).
//!
//! Run with `cargo bench -p bulkhead --bench signal` (or `--profile dev`). Figures are recorded
//! in BENCHMARKS.md.

#[path = "../../tests/blackbox/fake_signal.rs"]
#[allow(dead_code)]
mod fake_signal;
#[path = "../../tests/blackbox/fake_telegram.rs"]
#[allow(dead_code)]
mod fake_telegram;

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use fake_signal::FakeSignal;
use fake_telegram::FakeTelegram;

const TG: &str = "111:bench-token-tg";
const ONE: &str = "+15550000001";
const TWO: &str = "+15550000002";

fn config(signal: &str, telegram: &str) -> String {
    format!(
        r#"{{ gateway: {{ bind: "127.0.0.1:0" }}, stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "ta" }}, {{ id: "tb" }} ],
  agents: {{ defaults: {{ model: "demo/scripted", maxConcurrent: 64 }}, list: [ {{ id: "a", tenant: "ta" }}, {{ id: "b", tenant: "tb" }} ] }},
  bindings: [ {{ agentId: "a", match: {{ channel: "telegram" }} }},
              {{ agentId: "a", match: {{ channel: "signal", accountId: "one" }} }},
              {{ agentId: "b", match: {{ channel: "signal", accountId: "two" }} }} ],
  channels: {{
    telegram: {{ dmPolicy: "open", allowFrom: ["*"], accounts: {{ t: {{ token: {{ env: "TG" }}, apiUrl: "{telegram}" }} }} }},
    signal: {{ url: "{signal}", dmPolicy: "open", allowFrom: ["*"], accounts: {{
      one: {{ number: "{ONE}" }}, two: {{ number: "{TWO}" }} }} }},
  }} }}"#
    )
}

fn sender(i: usize) -> (String, String) {
    (format!("+1555{:07}", 1_000_000 + i), format!("{:08x}-0000-4000-8000-000000000000", i))
}

#[tokio::main]
async fn main() {
    let signal = FakeSignal::start().await;
    signal.add_account(ONE, "aaaaaaaa-0000-4000-8000-000000000001");
    signal.add_account(TWO, "bbbbbbbb-0000-4000-8000-000000000002");
    let tg = FakeTelegram::start().await;
    tg.add_bot(TG, 111, "bench_tg_bot");
    let mut served = common::serve(&config(&signal.url, &tg.base), &[("TG", TG)]).await;
    signal.wait_streams(ONE, 1).await;
    signal.wait_streams(TWO, 1).await;
    // Warm up both doors.
    let warm = sender(0);
    signal.dm(ONE, (&warm.0, &warm.1), "warm");
    signal.wait_sent(ONE, &warm.0, 1).await;
    tg.dm(TG, 9, "warm");
    tg.wait_sent(TG, 9, 1).await;

    let n = 200;
    let (mut s1, mut s2, mut t) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let (number, uuid) = sender(1 + i);
        let at = Instant::now();
        signal.dm(ONE, (&number, &uuid), "ping");
        s1.push(signal.wait_sent(ONE, &number, 1).await[0].at.duration_since(at));
        let at = Instant::now();
        signal.dm(TWO, (&number, &uuid), "ping");
        s2.push(signal.wait_sent(TWO, &number, 1).await[0].at.duration_since(at));
        let user = 20_000 + i as i64;
        let at = Instant::now();
        tg.dm(TG, user, "ping");
        t.push(tg.wait_sent(TG, user, 1).await[0].at.duration_since(at));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    common::report("Signal receive event -> send (number one)", s1);
    common::report("Signal receive event -> send (number two, same daemon)", s2);
    common::report("Telegram update -> sendMessage", t);
    let _ = served.child.start_kill();
}

//! Telegram channel benchmark: the real binary long-polling the in-process fake Bot API server
//! (`tests/blackbox/fake_telegram.rs`) with the scripted provider.
//!
//! - latency from an update becoming available to the reply's `sendMessage`, sequential turns
//!   spaced so the per-bot pace never binds (the channel's own overhead);
//! - a burst of 300 DMs from 300 users on one bot: replies/s (bounded by the 30/s per-bot pace),
//!   and the latency of one DM to a second tenant's bot sent during that burst;
//! - `outbound::split` of a 100 KiB reply into 4096-unit pieces.
//!
//! Run with `cargo bench -p bulkhead --bench telegram`. Figures are recorded in BENCHMARKS.md.

#[path = "../../tests/blackbox/fake_telegram.rs"]
#[allow(dead_code)]
mod fake_telegram;

// Not every bench reads every field of `common::Served`.
#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use fake_telegram::FakeTelegram;

const A: &str = "111:bench-token-a";
const B: &str = "222:bench-token-b";

fn config(api: &str) -> String {
    format!(
        r#"{{ gateway: {{ bind: "127.0.0.1:0" }}, stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "ta" }}, {{ id: "tb" }} ],
  agents: {{ defaults: {{ model: "demo/scripted", maxConcurrent: 64 }},
             list: [ {{ id: "a", tenant: "ta" }}, {{ id: "b", tenant: "tb" }} ] }},
  scheduling: {{ maxConcurrent: 64, maxQueued: 1024 }},
  bindings: [ {{ agentId: "a", match: {{ channel: "telegram", accountId: "a" }} }},
              {{ agentId: "b", match: {{ channel: "telegram", accountId: "b" }} }} ],
  channels: {{ telegram: {{ dmPolicy: "open", allowFrom: ["*"], accounts: {{
    a: {{ token: {{ env: "TG_A" }}, apiUrl: "{api}" }},
    b: {{ token: {{ env: "TG_B" }}, apiUrl: "{api}" }} }} }} }} }}"#
    )
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let tg = FakeTelegram::start().await;
    tg.add_bot(A, 111, "bench_a_bot");
    tg.add_bot(B, 222, "bench_b_bot");
    let mut served = common::serve(&config(&tg.base), &[("TG_A", A), ("TG_B", B)]).await;

    // Warm up (bots connect, first turn).
    tg.dm(A, 1, "warm");
    tg.wait_sent(A, 1, 1).await;

    // Sequential latency, each turn from its own user, 60 ms apart so the 34 ms bot pace never binds.
    let n = 200;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let user = 10_000 + i as i64;
        let t0 = Instant::now();
        tg.dm(A, user, "ping");
        let sent = tg.wait_sent(A, user, 1).await;
        lat.push(sent[0].at.duration_since(t0));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    lat.sort();
    println!(
        "update -> sendMessage, sequential ({n} turns): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.9).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3
    );

    // Burst: 300 users at once on bot A; one DM to bot B in the middle of it.
    let burst = 300;
    let t0 = Instant::now();
    for i in 0..burst {
        tg.dm(A, 50_000 + i as i64, "burst");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tb = Instant::now();
    tg.dm(B, 7, "other tenant");
    let b_sent = tg.wait_sent(B, 7, 1).await;
    let b_latency = b_sent[0].at.duration_since(tb);
    let a_done_then = tg.sent(A).iter().filter(|s| s.chat_id >= 50_000).count();
    let deadline = Instant::now() + Duration::from_secs(120);
    while tg.sent(A).iter().filter(|s| s.chat_id >= 50_000).count() < burst {
        assert!(Instant::now() < deadline, "burst did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = tg.sent(A).iter().filter(|s| s.chat_id >= 50_000).map(|s| s.at).max().unwrap();
    let secs = last.duration_since(t0).as_secs_f64();
    println!(
        "burst of {burst} DMs on one bot: all replied in {secs:.2} s = {:.1} replies/s (per-bot pace 30/s)",
        burst as f64 / secs
    );
    println!(
        "second tenant's bot during that burst: reply in {:.2} ms (bot A had sent {a_done_then} of {burst})",
        b_latency.as_secs_f64() * 1e3
    );

    // Splitting a 100 KiB reply.
    let text: String = (0..20_000).map(|i| if i % 12 == 11 { "\n" } else { "word " }).collect();
    let rounds = 200;
    let t = Instant::now();
    let mut pieces = 0;
    for _ in 0..rounds {
        pieces = std::hint::black_box(bulkhead::channels::outbound::split(&text, 4096)).len();
    }
    println!(
        "split {} KiB into {pieces} pieces: {:.1} µs per reply",
        text.len() / 1024,
        t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );
    let _ = served.child.start_kill();
}

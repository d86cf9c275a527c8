//! Fairness figure: tenant B's turn latency (p50/p99) through the real binary, unloaded and while
//! tenant A floods at 10x its message quota, with runs of a known length (the fake model sleeps
//! `RUN_MS`). Run with `cargo bench -p bulkhead --bench fairness`. Figures are in BENCHMARKS.md.

#[path = "../../tests/blackbox/fakes.rs"]
#[allow(dead_code)]
mod fakes;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

const RUN_MS: u64 = 300;
const SAMPLES: usize = 60;
const GAP: Duration = Duration::from_millis(350);

fn config(model_base: &str, alpha_slots: usize) -> String {
    format!(
        r#"{{ gateway: {{ bind: "127.0.0.1:0" }}, stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ fake: {{ api: "openai", baseUrl: "{model_base}" }} }} }},
  tenants: [
    {{ id: "alpha", apiTokens: [ {{ env: "TOKEN_A" }} ], quotas: {{ messagesPerMinute: 60 }},
       scheduling: {{ maxConcurrent: {alpha_slots}, maxQueued: 8 }} }},
    {{ id: "bravo", apiTokens: [ {{ env: "TOKEN_B" }} ] }},
  ],
  agents: {{ defaults: {{ model: "fake/m", maxConcurrent: 3 }},
            list: [ {{ id: "flood", tenant: "alpha" }}, {{ id: "calm", tenant: "bravo" }} ] }} }}"#
    )
}

async fn turn(client: &reqwest::Client, base: &str, token: &str, agent: &str, user: String) -> (u16, Duration) {
    let t0 = Instant::now();
    let (status, _) = turn_body(client, base, token, agent, user).await;
    (status, t0.elapsed())
}

async fn turn_body(client: &reqwest::Client, base: &str, token: &str, agent: &str, user: String) -> (u16, String) {
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(token)
        .json(&json!({ "model": agent, "user": user, "messages": [{ "role": "user", "content": format!("sleep-ms:{RUN_MS} x") }] }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

async fn bravo(client: &reqwest::Client, base: &str, tag: &str) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for i in 0..SAMPLES {
        let (c, b, tag) = (client.clone(), base.to_string(), tag.to_string());
        tasks.push(tokio::spawn(async move { turn(&c, &b, "tok-b", "calm", format!("{tag}{i}")).await }));
        tokio::time::sleep(GAP).await;
    }
    let mut out = Vec::new();
    for t in tasks {
        let (status, d) = t.await.unwrap();
        assert_eq!(status, 200);
        out.push(d);
    }
    out.sort();
    out
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

#[tokio::main]
async fn main() {
    // Alpha capped below the global cap of 3, then allowed to hold every slot (the worst case:
    // bravo's turn waits for the first of alpha's runs to end).
    for alpha_slots in [2, 3] {
        println!("== alpha may hold {alpha_slots} of the 3 run slots");
        phase(alpha_slots).await;
    }
}

async fn phase(alpha_slots: usize) {
    let fake = fakes::start().await;
    let mut served =
        common::serve(&config(&fake.base, alpha_slots), &[("TOKEN_A", "tok-a"), ("TOKEN_B", "tok-b")]).await;
    let base = served.base.clone();
    let client = reqwest::Client::new();

    let unloaded = bravo(&client, &base, "u").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (c, b, stop) = (client.clone(), base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut i = 0;
            // 10 turns/s = 600/min: ten times alpha's quota of 60/min.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (c, b) = (c.clone(), b.clone());
                sent.push(tokio::spawn(async move { turn_body(&c, &b, "tok-a", "flood", format!("f{i}")).await }));
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut counts = [0usize; 4];
            for s in sent {
                match s.await.unwrap() {
                    (200, _) => counts[0] += 1,
                    (429, body) if body.contains("usage limit") => counts[2] += 1,
                    (429, body) if body.contains("busy right now") => counts[1] += 1,
                    _ => counts[3] += 1,
                }
            }
            counts
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = bravo(&client, &base, "l").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let [ok, busy, quota, other] = flood.await.unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "run time (fake model): {RUN_MS} ms; bravo sends a turn every {} ms, {SAMPLES} samples per phase",
        GAP.as_millis()
    );
    println!("bravo unloaded:        p50 {:.1} ms  p99 {:.1} ms", ms(pct(&unloaded, 0.5)), ms(pct(&unloaded, 0.99)));
    println!("bravo, alpha flooding: p50 {:.1} ms  p99 {:.1} ms", ms(pct(&loaded, 0.5)), ms(pct(&loaded, 0.99)));
    println!(
        "added to bravo's p99: {:.1} ms ({:.2} run-times)",
        ms(pct(&loaded, 0.99)) - ms(pct(&unloaded, 0.99)),
        (ms(pct(&loaded, 0.99)) - ms(pct(&unloaded, 0.99))) / RUN_MS as f64
    );
    println!("alpha's flood: {ok} answered, {busy} refused busy, {quota} refused by quota, {other} other");
    let _ = served.child.kill().await;
}

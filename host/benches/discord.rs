//! Discord channel benchmark, against the in-process fake Discord (`tests/blackbox/fake_discord.rs`:
//! REST + Gateway WebSocket) with the scripted provider, next to Telegram (its fake Bot API) and
//! the HTTP API in the same run and the same process:
//!
//! - latency from a message being available to its reply being sent (Discord: MESSAGE_CREATE
//!   dispatched → `POST /channels/{id}/messages`; Telegram: update queued → `sendMessage`; HTTP:
//!   `POST /v1/chat/completions` round trip), sequential turns spaced so no pace binds;
//! - resident memory with 100 Discord bot accounts connected, against the same gateway with none.
//!
//! Run with `cargo bench -p bulkhead --bench discord`. Figures are recorded in BENCHMARKS.md.

#[path = "../../tests/blackbox/fake_discord.rs"]
#[allow(dead_code)]
mod fake_discord;
#[path = "../../tests/blackbox/fake_telegram.rs"]
#[allow(dead_code)]
mod fake_telegram;

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use fake_discord::FakeDiscord;
use fake_telegram::FakeTelegram;

const TG: &str = "111:bench-token-tg";
const HTTP_TOKEN: &str = "tok-bench-discord-7d1e4a9c2f6b8e3a5c0d9f1b7e4a2c6d";

fn discord_token(i: usize) -> String {
    format!("MTAw{i:04}.bench-discord-token")
}

fn config(discord: (&str, &str), telegram: &str, bots: usize) -> String {
    let accounts: Vec<String> = (0..bots).map(|i| format!(r#"d{i}: {{ token: {{ env: "DC_{i}" }} }}"#)).collect();
    format!(
        r#"{{ gateway: {{ bind: "127.0.0.1:0" }}, stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "ta", apiTokens: [ {{ env: "HTTP_TOKEN" }} ] }} ],
  agents: {{ defaults: {{ model: "demo/scripted", maxConcurrent: 64 }}, list: [ {{ id: "a", tenant: "ta" }} ] }},
  bindings: [ {{ agentId: "a", match: {{ channel: "telegram" }} }}, {discord_binding} ],
  channels: {{
    telegram: {{ dmPolicy: "open", allowFrom: ["*"], accounts: {{ t: {{ token: {{ env: "TG" }}, apiUrl: "{telegram}" }} }} }},
    {discord_block}
  }} }}"#,
        discord_binding = if bots == 0 { "" } else { r#"{ agentId: "a", match: { channel: "discord" } }"# },
        discord_block = if bots == 0 {
            String::new()
        } else {
            format!(
                r#"discord: {{ apiUrl: "{}", gatewayUrl: "{}", dmPolicy: "open", allowFrom: ["*"], accounts: {{ {} }} }},"#,
                discord.0,
                discord.1,
                accounts.join(", ")
            )
        }
    )
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn rss_kib(child: &tokio::process::Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id().unwrap())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn summary(name: &str, v: &mut [Duration]) {
    v.sort();
    println!("{name:<44} p50 {}, p90 {}, p99 {}", ms(pct(v, 0.5)), ms(pct(v, 0.9)), ms(pct(v, 0.99)));
}

async fn wait_sent(fake: &FakeDiscord, token: &str, n: usize) -> fake_discord::Sent {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = fake.sent(token);
        if sent.len() >= n {
            return sent[n - 1].clone();
        }
        assert!(Instant::now() < end, "no reply");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

#[tokio::main]
async fn main() {
    let dc = FakeDiscord::start().await;
    let tg = FakeTelegram::start().await;
    tg.add_bot(TG, 111, "bench_tg_bot");
    let bots = 100;
    let tokens: Vec<String> = (0..bots).map(discord_token).collect();
    for (i, t) in tokens.iter().enumerate() {
        dc.add_bot(t, 2000 + i as u64, &format!("bench_dc_{i}"), &[]);
    }
    let names: Vec<String> = (0..bots).map(|i| format!("DC_{i}")).collect();
    let fakes = (dc.api.as_str(), dc.gateway.as_str());

    // Memory: the same gateway with no Discord bot, then with 100 connected.
    let env0 = [("TG", TG), ("HTTP_TOKEN", HTTP_TOKEN)];
    let mut none = common::serve(&config(fakes, &tg.base, 0), &env0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_none = rss_kib(&none.child);
    let _ = none.child.start_kill();
    let mut env: Vec<(&str, &str)> = env0.to_vec();
    env.extend(names.iter().map(String::as_str).zip(tokens.iter().map(String::as_str)));
    let mut served = common::serve(&config(fakes, &tg.base, bots), &env).await;
    let t0 = Instant::now();
    for t in &tokens {
        assert!(dc.wait_connected(t, Duration::from_secs(120)).await, "a bot did not connect");
    }
    let connected_in = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_all = rss_kib(&served.child);
    println!(
        "RSS, no Discord bot: {:.1} MiB; 100 Discord bots connected: {:.1} MiB (+{:.0} KiB per bot); all connected in {:.1} s",
        rss_none as f64 / 1024.0,
        rss_all as f64 / 1024.0,
        (rss_all.saturating_sub(rss_none)) as f64 / bots as f64,
        connected_in.as_secs_f64()
    );

    // Latency, the three doors in turn, 100 each, one bot and one chat per door.
    let n = 100;
    let (mut d, mut t, mut h) = (Vec::new(), Vec::new(), Vec::new());
    let client = reqwest::Client::new();
    let body = serde_json::json!({ "model": "a", "messages": [{ "role": "user", "content": "ping" }] });
    for i in 0..n {
        let at = Instant::now();
        dc.message(&tokens[0], 10_000 + i as u64, "7000", None, (6000, "bench"), "ping");
        d.push(wait_sent(&dc, &tokens[0], i + 1).await.at.duration_since(at));
        let user = 20_000 + i as i64;
        let at = Instant::now();
        tg.dm(TG, user, "ping");
        t.push(tg.wait_sent(TG, user, 1).await[0].at.duration_since(at));
        let at = Instant::now();
        let r = client
            .post(format!("{}/v1/chat/completions", served.base))
            .bearer_auth(HTTP_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        h.push(at.elapsed());
        // Past the per-chat pace (one message a second per Discord channel), so it never binds.
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    summary("Discord MESSAGE_CREATE -> reply POST", &mut d);
    summary("Telegram update -> sendMessage", &mut t);
    summary("HTTP POST /v1/chat/completions", &mut h);
    let _ = served.child.start_kill();
}

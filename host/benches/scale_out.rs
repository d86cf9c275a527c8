//! Several gateways on one PostgreSQL (a throwaway server, fsync on): API turn throughput and
//! p50/p99 through one, two and three gateways (requests spread round-robin, 16 conversations at
//! once, the scripted provider so the model costs nothing), and the takeover time of a Telegram
//! bot after `kill -9` of the gateway that owns it (lease 3 s): from the kill to the reply to a
//! message sent at the kill.
//!
//! Run with `cargo bench -p bulkhead --bench scale_out`. Figures are recorded in BENCHMARKS.md.

#[path = "../../tests/blackbox/fake_telegram.rs"]
#[allow(dead_code)]
mod fake_telegram;
#[path = "../../tests/pg_common.rs"]
mod pg_common;

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use fake_telegram::FakeTelegram;
use serde_json::{Value, json};

const TOKEN: &str = "tok-bench-3f9c2a7e5b1d4c8f9a6e2b7d1c5f8a3e";
const OPS: &str = "ops-bench-5c2e8a1f7b3d9e6c4a8f2b5d1e7c3a9f";
const BOT: &str = "999:bench-scale-token";
const CLIENTS: usize = 16;
const TURNS: usize = 40;

fn config(key: &str, api: &str) -> String {
    format!(
        r#"{{ gateway: {{ bind: "127.0.0.1:0", operators: [ {{ id: "ops", token: {{ env: "OPS" }}, role: "admin" }} ] }},
  stateDir: "state",
  store: {{ masterKey: {{ file: {key:?} }}, backend: "postgres", url: {{ env: "PG_URL" }}, leaseSeconds: 3 }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "ta", apiTokens: [ {{ env: "TOKEN" }} ] }} ],
  agents: {{ defaults: {{ model: "demo/scripted", maxConcurrent: 64 }}, list: [ {{ id: "a", tenant: "ta" }} ] }},
  scheduling: {{ maxConcurrent: 64, maxQueued: 1024 }},
  bindings: [ {{ agentId: "a", match: {{ channel: "telegram", accountId: "bot" }} }} ],
  channels: {{ telegram: {{ dmPolicy: "open", allowFrom: ["*"], accounts: {{
    bot: {{ token: {{ env: "TG" }}, apiUrl: "{api}" }} }} }} }} }}"#
    )
}

async fn turn(http: &reqwest::Client, base: &str, user: &str, text: &str) -> Duration {
    let body = json!({ "model": "a", "user": user, "messages": [{ "role": "user", "content": text }] });
    let t = Instant::now();
    let resp = http.post(format!("{base}/v1/chat/completions")).bearer_auth(TOKEN).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
    t.elapsed()
}

async fn lease_holder(http: &reqwest::Client, base: &str) -> Option<String> {
    let v: Value = http.get(format!("{base}/admin/status")).bearer_auth(OPS).send().await.ok()?.json().await.ok()?;
    let l = v["cluster"]["leases"].as_array()?.first()?.clone();
    (l["expiresInMs"].as_i64()? > 0).then(|| l["holder"].as_str().unwrap_or_default().to_string())
}

#[tokio::main]
async fn main() {
    let pg = pg_common::Pg::start_with(true);
    let tg = FakeTelegram::start().await;
    tg.add_bot(BOT, 999, "bench_scale_bot");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("master.key");
    let out = std::process::Command::new(common::bin()).args(["keys", "init", "--out", key.to_str().unwrap()]).output();
    assert!(out.unwrap().status.success());
    let cfg = config(key.to_str().unwrap(), &tg.base);
    let env = [("TOKEN", TOKEN), ("OPS", OPS), ("TG", BOT), ("PG_URL", pg.url.as_str())];
    let http = reqwest::Client::new();

    // The first gateway takes the bot; the others stand by.
    let mut gws = vec![common::serve(&cfg, &env).await];
    while lease_holder(&http, &gws[0].base).await.is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 1..3 {
        gws.push(common::serve(&cfg, &env).await);
    }

    for n in 1..=3 {
        let bases: Vec<String> = gws[..n].iter().map(|g| g.base.clone()).collect();
        // Warm up every gateway (connections, the tenant's keys).
        for (i, b) in bases.iter().enumerate() {
            turn(&http, b, &format!("warm-{n}-{i}"), "warm").await;
        }
        let started = Instant::now();
        let clients = (0..CLIENTS).map(|c| {
            let (http, bases) = (http.clone(), bases.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(TURNS);
                for t in 0..TURNS {
                    let base = &bases[(c + t) % bases.len()];
                    lat.push(turn(&http, base, &format!("u{n}-{c}"), &format!("turn {t}")).await);
                }
                lat
            })
        });
        let mut lat = Vec::new();
        for c in clients {
            lat.extend(c.await.unwrap());
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort();
        println!(
            "{n} gateway(s): {} turns in {secs:.2} s = {:.0} turns/s; p50 {:.2} ms, p99 {:.2} ms",
            lat.len(),
            lat.len() as f64 / secs,
            common::pct(&lat, 0.5).as_secs_f64() * 1e3,
            common::pct(&lat, 0.99).as_secs_f64() * 1e3,
        );
    }

    // Takeover: kill -9 the owner (gateway 0), a message arrives at once; time to its reply.
    tg.dm(BOT, 1, "before");
    tg.wait_sent(BOT, 1, 1).await;
    let mut owner = gws.remove(0);
    owner.child.start_kill().unwrap();
    let killed = Instant::now();
    let _ = owner.child.wait().await;
    tg.dm(BOT, 1, "after");
    tg.wait_sent(BOT, 1, 2).await;
    println!("bot takeover after kill -9 (lease 3 s): reply {:.2} s after the kill", killed.elapsed().as_secs_f64());
}

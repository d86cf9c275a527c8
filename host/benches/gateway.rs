//! Gateway benchmark: start-up time, request overhead through `/v1/chat/completions` to a local
//! fake OpenAI server (sequential and at concurrency 8), and resident memory idle, after load,
//! and with 1,000 tenants configured. Run with `cargo bench -p bulkhead --bench gateway`.
//! Figures are recorded in BENCHMARKS.md.

#[path = "../../tests/blackbox/fakes.rs"]
#[allow(dead_code)]
mod fakes;

mod common;

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::Child;

const TOKEN: &str = "bench-token";

struct Running {
    child: Child,
    base: String,
    started_in: Duration,
    _dir: tempfile::TempDir,
}

fn config(model_base: &str, extra_tenants: usize) -> String {
    let mut tenants = r#"{ id: "bench", apiTokens: [ { env: "BENCH_TOKEN" } ] }"#.to_string();
    let mut agents = r#"{ id: "fast", tenant: "bench", model: "fake/bench-model" }"#.to_string();
    for i in 0..extra_tenants {
        tenants.push_str(&format!(r#", {{ id: "t{i}", apiTokens: [ {{ env: "BENCH_TOKEN" }} ] }}"#));
        agents.push_str(&format!(r#", {{ id: "agent{i}", tenant: "t{i}" }}"#));
    }
    format!(
        r#"{{ gateway: {{ bind: "127.0.0.1:0" }}, stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ fake: {{ api: "openai", baseUrl: "{model_base}" }}, scripted: {{ api: "scripted" }} }} }},
  tenants: [ {tenants} ],
  agents: {{ defaults: {{ model: "scripted/scripted", maxConcurrent: 64 }}, list: [ {agents} ] }} }}"#
    )
}

async fn start(cfg: &str) -> Running {
    let t0 = Instant::now();
    let served = common::serve(cfg, &[("BENCH_TOKEN", TOKEN)]).await;
    let client = reqwest::Client::new();
    while client.get(format!("{}/healthz", served.base)).send().await.is_err() {}
    let started_in = t0.elapsed();
    Running { child: served.child, base: served.base, started_in, _dir: served._dir }
}

fn rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id().unwrap())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn load(base: &str, model: &str, total: usize, concurrency: usize) -> (Vec<Duration>, Duration) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    let url = format!("{base}/v1/chat/completions");
    let t0 = Instant::now();
    let per = total / concurrency;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, url, model) = (client.clone(), url.clone(), model.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                // A fresh conversation per request keeps the prompt (and so the work) constant.
                let body = json!({ "model": model, "user": format!("w{w}-{i}"), "messages": [{ "role": "user", "content": "ping" }] });
                let t = Instant::now();
                let r = client.post(&url).bearer_auth(TOKEN).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = t0.elapsed();
    all.sort();
    (all, wall)
}

fn report(name: &str, lat: &[Duration], wall: Duration) {
    println!(
        "{name:<34} n={:<6} p50={:>8.3} ms  p99={:>8.3} ms  {:>8.0} req/s",
        lat.len(),
        pct(lat, 0.5).as_secs_f64() * 1e3,
        pct(lat, 0.99).as_secs_f64() * 1e3,
        lat.len() as f64 / wall.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let fake = fakes::start().await;
    // Baseline: the fake model server alone, so the gateway's share can be read off as a ratio.
    let direct = {
        let client = reqwest::Client::new();
        let mut lat = Vec::new();
        let t0 = Instant::now();
        for _ in 0..2000 {
            let t = Instant::now();
            let r = client
                .post(format!("{}/chat/completions", fake.base))
                .json(&json!({ "model": "m", "stream": true, "messages": [{ "role": "user", "content": "ping" }] }))
                .send()
                .await
                .unwrap();
            r.bytes().await.unwrap();
            lat.push(t.elapsed());
        }
        let wall = t0.elapsed();
        lat.sort();
        (lat, wall)
    };
    fake.model.requests.lock().unwrap().clear();

    let gw = start(&config(&fake.base, 0)).await;
    println!("gateway start (spawn → healthz 200):  {:.1} ms", gw.started_in.as_secs_f64() * 1e3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib(&gw.child);
    report("fake model alone, sequential", &direct.0, direct.1);
    let (lat, wall) = load(&gw.base, "fast", 2000, 1).await;
    report("gateway → fake model, sequential", &lat, wall);
    let (lat, wall) = load(&gw.base, "fast", 8000, 8).await;
    report("gateway → fake model, concurrency 8", &lat, wall);
    let (lat, wall) = load(&gw.base, "fast", 8000, 8).await;
    report("gateway → fake model, c8 (again)", &lat, wall);
    let after = rss_kib(&gw.child);
    println!("RSS idle: {:.1} MiB   after 18,000 requests: {:.1} MiB", idle as f64 / 1024.0, after as f64 / 1024.0);
    fake.model.requests.lock().unwrap().clear();
    drop(gw);

    let big = start(&config(&fake.base, 1000)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "1,000 tenants configured: start {:.1} ms, RSS idle {:.1} MiB",
        big.started_in.as_secs_f64() * 1e3,
        rss_kib(&big.child) as f64 / 1024.0
    );
}

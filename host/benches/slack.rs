//! Slack channel benchmark: the real binary against the in-process fake Slack
//! (`tests/blackbox/fake_slack.rs`) with the scripted provider.
//!
//! - Socket Mode: latency from an `events_api` envelope sent on the socket to the reply's
//!   `chat.postMessage`, sequential turns each from its own DM (spaced so the per-bot pace never
//!   binds);
//! - Events API: a signed `POST /channels/slack/<account>/events` to the reply's
//!   `chat.postMessage`, the same way;
//! - memory (VmRSS of the gateway) with 100 Socket Mode accounts connected, against the same
//!   gateway with one.
//!
//! Run with `cargo bench -p bulkhead --bench slack` (or `--profile dev`). Figures are recorded in
//! BENCHMARKS.md.

#[path = "../../tests/blackbox/fake_slack.rs"]
#[allow(dead_code)]
mod fake_slack;

// Not every bench reads every field of `common::Served`.
#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use fake_slack::{FakeSlack, now, signed};
use serde_json::json;

const SECRET: &str = "bench-signing-secret-0123456789abcdef";

fn bot(i: usize) -> String {
    format!("xoxb-bench-{i:03}-token")
}
fn app(i: usize) -> String {
    format!("xapp-bench-{i:03}-token")
}

/// `n` Socket Mode accounts `s000`.. and one Events API account `hooks`, all bound to one agent.
fn config(api: &str, n: usize) -> String {
    let mut accounts = String::new();
    for i in 0..n {
        accounts.push_str(&format!(
            "s{i:03}: {{ botToken: {{ env: \"BOT_{i:03}\" }}, appToken: {{ env: \"APP_{i:03}\" }} }},\n"
        ));
    }
    format!(
        r#"{{ gateway: {{ bind: "127.0.0.1:0" }}, stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "ta" }} ],
  agents: {{ defaults: {{ model: "demo/scripted", maxConcurrent: 64 }}, list: [ {{ id: "a", tenant: "ta" }} ] }},
  scheduling: {{ maxConcurrent: 64, maxQueued: 1024 }},
  bindings: [ {{ agentId: "a", match: {{ channel: "slack" }} }} ],
  channels: {{ slack: {{ apiUrl: "{api}", dmPolicy: "open", allowFrom: ["*"], accounts: {{
    {accounts}
    hooks: {{ mode: "events", botToken: {{ env: "HOOKS_BOT" }}, signingSecret: {{ env: "HOOKS_SECRET" }} }},
  }} }} }} }}"#
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A gateway with `n` Socket Mode accounts, all connected; returns it with its fake.
async fn start(n: usize) -> (FakeSlack, common::Served) {
    let slack = FakeSlack::start().await;
    let mut env: Vec<(String, String)> = Vec::new();
    for i in 0..n {
        slack.add_team(&format!("T{i:08}"), &bot(i), &app(i), &format!("UBOT{i:05}"));
        env.push((format!("BOT_{i:03}"), bot(i)));
        env.push((format!("APP_{i:03}"), app(i)));
    }
    slack.add_team("THOOKS001", "xoxb-bench-hooks", "xapp-unused", "UBOTHOOKS");
    env.push(("HOOKS_BOT".into(), "xoxb-bench-hooks".into()));
    env.push(("HOOKS_SECRET".into(), SECRET.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let served = common::serve(&config(&slack.api, n), &env).await;
    for i in 0..n {
        slack.wait_connected(&bot(i), 1).await;
    }
    (slack, served)
}

#[tokio::main]
async fn main() {
    let (slack, mut served) = start(1).await;
    let b = bot(0);
    slack.dm(&b, "U0WARM001", "warm");
    slack.wait_sent(&b, "D0WARM001", 1).await;

    let n = 200;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let user = format!("U{:08}", 10_000 + i);
        let t0 = Instant::now();
        slack.dm(&b, &user, "ping");
        let sent = slack.wait_sent(&b, &format!("D{}", &user[1..]), 1).await;
        lat.push(sent[0].at.duration_since(t0));
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    common::report("Socket Mode envelope -> chat.postMessage, sequential", lat);

    // The Events API account: wait until it serves (a signed URL check answers 200).
    let http = reqwest::Client::new();
    let url = format!("{}/channels/slack/hooks/events", served.base);
    let post = |body: String| {
        let mut req = http.post(&url).body(body.clone());
        for (k, v) in signed(SECRET, now(), &body) {
            req = req.header(k, v);
        }
        req.send()
    };
    let check = json!({ "type": "url_verification", "challenge": "c" }).to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while post(check.clone()).await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "the Events API account never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hooks = "xoxb-bench-hooks";
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let user = format!("U{:08}", 20_000 + i);
        let channel = format!("D{}", &user[1..]);
        let ev = json!({ "type": "message", "channel": channel, "channel_type": "im", "user": user,
                         "text": "ping", "ts": slack.ts(hooks) });
        let body = slack.callback(hooks, ev).to_string();
        let t0 = Instant::now();
        let status = post(body).await.unwrap().status();
        assert_eq!(status.as_u16(), 200);
        let sent = slack.wait_sent(hooks, &channel, 1).await;
        lat.push(sent[0].at.duration_since(t0));
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    common::report("Events API signed POST -> chat.postMessage, sequential", lat);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let one = rss_kib(served.child.id().unwrap());
    let _ = served.child.start_kill();
    let _ = served.child.wait().await;

    let t0 = Instant::now();
    let (slack, mut served) = start(100).await;
    let connect = t0.elapsed();
    // Every account answers.
    for i in 0..100 {
        slack.dm(&bot(i), "U0CHECK01", "hi");
    }
    for i in 0..100 {
        slack.wait_sent(&bot(i), "D0CHECK01", 1).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hundred = rss_kib(served.child.id().unwrap());
    println!(
        "memory (VmRSS): {:.1} MiB with 1 Socket Mode account, {:.1} MiB with 100 connected (started and all 100 connected in {:.2} s, then each answered a DM); {:.0} KiB per account",
        one as f64 / 1024.0,
        hundred as f64 / 1024.0,
        connect.as_secs_f64(),
        (hundred.saturating_sub(one)) as f64 / 99.0
    );
    let _ = served.child.start_kill();
}

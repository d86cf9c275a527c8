//! Onboarding benchmark: a Telegram, a Discord and a Slack tenant onboarded end to end with
//! `bulkhead tenant add` against the in-process fakes and a running gateway (release binary,
//! scripted provider), from the command to the first answered message, with no restart.
//!
//! Each channel is onboarded twice on a fresh gateway: by the wizard on a real pseudo-terminal
//! (`script` allocates it; the answers are typed at its prompts, counted), and by flags with
//! `--yes` (no questions). Run with `cargo bench -p bulkhead --bench onboarding`.

#[path = "../../tests/blackbox/fake_discord.rs"]
#[allow(dead_code)]
mod fake_discord;
#[path = "../../tests/blackbox/fake_slack.rs"]
#[allow(dead_code)]
mod fake_slack;
#[path = "../../tests/blackbox/fake_telegram.rs"]
#[allow(dead_code)]
mod fake_telegram;

#[allow(dead_code)]
mod common;

use std::io::Write;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");
const OPS: &str = "ops-token-bench-onboard-5d2c8e1a7f3b9d4e6c0a8f2b5d1e7c3a";
const TG: &str = "123456:bench-onboarding-tg";
const DC: &str = "MTAwNA.bench-onboarding-dc";
const SL_BOT: &str = "xoxb-bench-onboarding";
const SL_APP: &str = "xapp-bench-onboarding";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("OPS_TOKEN", OPS), ("TG", TG), ("DC", DC), ("SL_BOT", SL_BOT), ("SL_APP", SL_APP)]
}

const MAIN: &str = r#"{
  gateway: { bind: "127.0.0.1:0", operators: [ { id: "ops", token: { env: "OPS_TOKEN" }, role: "admin" } ] },
  stateDir: "state", store: { mode: "memory" },
  models: { providers: { demo: { api: "scripted" } } },
  agents: { defaults: { model: "demo/scripted" } },
}"#;

/// Runs `tenant add` with `args`; with `answers`, on a pseudo-terminal typing them at the
/// prompts. Returns (exit code, prompts seen).
fn add(config: &std::path::Path, url: &str, args: &[&str], answers: Option<&[&str]>) -> (i32, usize) {
    let mut cmd_line = vec![
        BIN.to_string(),
        "--config".into(),
        config.display().to_string(),
        "tenant".into(),
        "add".into(),
        "--url".into(),
        url.into(),
    ];
    cmd_line.extend(args.iter().map(|s| s.to_string()));
    let out = match answers {
        None => std::process::Command::new(BIN)
            .args(&cmd_line[1..])
            .envs(env())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap(),
        Some(answers) => {
            let quoted: Vec<String> = cmd_line.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();
            let mut child = std::process::Command::new("script")
                .args(["-qec", &quoted.join(" "), "/dev/null"])
                .envs(env())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            for a in answers {
                // One answer per prompt, as a person types them.
                std::thread::sleep(Duration::from_millis(150));
                writeln!(stdin, "{a}").unwrap();
            }
            let out = child.wait_with_output().unwrap();
            drop(stdin);
            out
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Every question the wizard asks starts with "? ".
    let prompts = text.matches("? ").count();
    if !out.status.success() {
        eprintln!("tenant add failed:\n{text}");
    }
    (out.status.code().unwrap_or(-1), prompts)
}

#[tokio::main]
async fn main() {
    let tg = fake_telegram::FakeTelegram::start().await;
    let dc = fake_discord::FakeDiscord::start().await;
    let sl = fake_slack::FakeSlack::start().await;
    tg.add_bot(TG, 123456, "bench_bot");
    dc.add_bot(DC, 1004, "bench_dc", &[]);
    sl.add_team("T0", SL_BOT, SL_APP, "U0BOT");
    println!("{:<10} {:<9} {:>9} {:>14}", "channel", "how", "questions", "to first reply");
    for interactive in [true, false] {
        for channel in ["telegram", "discord", "slack"] {
            let served = common::serve(MAIN, &env()).await;
            let config = served._dir.path().join("bench.json5");
            let id = format!("{channel}co");
            let t0 = Instant::now();
            let (code, prompts) = match (channel, interactive) {
                ("telegram", true) => add(
                    &config,
                    &served.base,
                    &["--api-url", &tg.base, "--dm-policy", "open", "--allow-from", "*"],
                    Some(&[&id, "", "", "telegram", "env:TG"]),
                ),
                ("discord", true) => add(
                    &config,
                    &served.base,
                    &["--api-url", &dc.api, "--gateway-url", &dc.gateway, "--dm-policy", "open", "--allow-from", "*"],
                    Some(&[&id, "", "", "discord", "env:DC", ""]),
                ),
                ("slack", true) => add(
                    &config,
                    &served.base,
                    &["--api-url", &sl.api, "--dm-policy", "open", "--allow-from", "*"],
                    Some(&[&id, "", "", "slack", "env:SL_BOT", "env:SL_APP"]),
                ),
                ("telegram", false) => add(
                    &config,
                    &served.base,
                    &[
                        "--id",
                        &id,
                        "--channel",
                        "telegram",
                        "--token-env",
                        "TG",
                        "--api-url",
                        &tg.base,
                        "--dm-policy",
                        "open",
                        "--allow-from",
                        "*",
                        "--yes",
                    ],
                    None,
                ),
                ("discord", false) => add(
                    &config,
                    &served.base,
                    &[
                        "--id",
                        &id,
                        "--channel",
                        "discord",
                        "--token-env",
                        "DC",
                        "--api-url",
                        &dc.api,
                        "--gateway-url",
                        &dc.gateway,
                        "--dm-policy",
                        "open",
                        "--allow-from",
                        "*",
                        "--yes",
                    ],
                    None,
                ),
                _ => add(
                    &config,
                    &served.base,
                    &[
                        "--id",
                        &id,
                        "--channel",
                        "slack",
                        "--token-env",
                        "SL_BOT",
                        "--app-token-env",
                        "SL_APP",
                        "--api-url",
                        &sl.api,
                        "--dm-policy",
                        "open",
                        "--allow-from",
                        "*",
                        "--yes",
                    ],
                    None,
                ),
            };
            assert_eq!(code, 0, "{channel}");
            let user = if interactive { 7001 } else { 7002 };
            match channel {
                "telegram" => {
                    let before = tg.sent(TG).len();
                    tg.dm(TG, user, "hello");
                    while tg.sent(TG).len() <= before {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                "discord" => {
                    assert!(dc.wait_connected(DC, Duration::from_secs(30)).await);
                    let before = dc.sent(DC).len();
                    dc.message(DC, 9000 + user as u64, "7100", None, (6000, "bench"), "hello");
                    while dc.sent(DC).len() <= before {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                _ => {
                    sl.wait_connected(SL_BOT, 1).await;
                    let before = sl.sent(SL_BOT).len();
                    sl.dm(SL_BOT, "U0ALICE", "hello");
                    while sl.sent(SL_BOT).len() <= before {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            let how = if interactive { "wizard" } else { "flags" };
            println!("{channel:<10} {how:<9} {prompts:>9} {:>12.2} s", t0.elapsed().as_secs_f64());
            drop(served);
        }
    }
}

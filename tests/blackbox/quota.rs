//! Quotas, per-tenant model keys, usage metering and metrics through the real binary: a tenant
//! over quota or rate-limited upstream does not affect another; usage survives a restart and a
//! SIGKILL, holds no content; `/metrics` exposes the numbers and nothing per session.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Gateway, http, run_cli};
use crate::{OPENAI_KEY, TOKEN_A, TOKEN_B, fakes};

const TOKEN_C: &str = "tok-charlie-7a4e1c9f3b6d8a2e5c1f7b4d9e3a6c8b";
const QUOTA_TEXT: &str = "reached its usage limit";
/// A user id that must never show up in metrics or usage.
const SECRET_USER: &str = "conversation-7f3e-private";
const SECRET_TEXT: &str = "Charlie's merger code name is BLUE HERON";

fn env() -> Vec<(&'static str, &'static str)> {
    let mut e = crate::env();
    e.extend([("TOKEN_C", TOKEN_C), ("ALPHA_OWN_KEY", "sk-alpha-own-limited"), ("BRAVO_OWN_KEY", "sk-bravo-own-key")]);
    e
}

/// alpha: tight quotas, scripted agents; bravo: no quotas; charlie: a model-token budget.
/// Model keys: alpha and bravo bring their own for `fake`; charlie uses the operator's.
fn config(model_base: &str) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", operators: [ {{ id: "ops", token: {{ env: "OPS_TOKEN" }} }} ] }},
  stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{
    fake: {{ api: "openai", baseUrl: "{model_base}", apiKey: {{ env: "FAKE_OPENAI_KEY" }}, timeoutSec: 10, maxRetries: 1 }},
    demo: {{ api: "scripted" }},
  }} }},
  scheduling: {{ maxConcurrent: 2 }},
  tenants: [
    {{ id: "alpha", apiTokens: [ {{ env: "TOKEN_A" }} ], modelKeys: {{ fake: {{ env: "ALPHA_OWN_KEY" }} }},
       quotas: {{ messagesPerMinute: 3, toolCallsPerMinute: 1 }} }},
    {{ id: "bravo", apiTokens: [ {{ env: "TOKEN_B" }} ], modelKeys: {{ fake: {{ env: "BRAVO_OWN_KEY" }} }} }},
    {{ id: "charlie", apiTokens: [ {{ env: "TOKEN_C" }} ], quotas: {{ modelTokensPerDay: 20 }} }},
  ],
  agents: {{
    defaults: {{ maxConcurrent: 6 }},
    list: [
      {{ id: "a-demo", tenant: "alpha", model: "demo/scripted", tools: {{ allow: ["group:sessions"] }} }},
      {{ id: "a-model", tenant: "alpha", model: "fake/m" }},
      {{ id: "b-demo", tenant: "bravo", model: "demo/scripted", tools: {{ allow: ["group:sessions"] }} }},
      {{ id: "b-model", tenant: "bravo", model: "fake/m" }},
      {{ id: "c-model", tenant: "charlie", model: "fake/m" }},
      {{ id: "b-files", tenant: "bravo", model: "demo/scripted", tools: {{ allow: ["write"] }},
         sandbox: {{ mode: "all", backend: "wasm" }} }},
    ],
  }},
}}"#
    )
}

async fn chat(gw: &Gateway, token: &str, model: &str, user: &str, text: &str) -> (u16, Value) {
    let body = json!({ "model": model, "user": user, "messages": [{ "role": "user", "content": text }] });
    let resp = http().post(gw.url("/v1/chat/completions")).bearer_auth(token).json(&body).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

fn reply(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().or_else(|| v["error"]["message"].as_str()).unwrap_or("")
}

async fn metrics(gw: &Gateway) -> String {
    let r = http().get(gw.url("/metrics")).bearer_auth(crate::OPS_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of one sample line, e.g. `gateway_runs_total{tenant="alpha"}`.
fn sample(text: &str, series: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '));
    let line = line.unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
}

#[tokio::test]
async fn a_tenant_over_quota_gets_a_clear_refusal_and_another_tenant_is_untouched() {
    let fake = fakes::start().await;
    let gw = Gateway::start(&config(&fake.base), &env()).await;
    // alpha: 3 turns a minute. The 4th and 5th are refused with the white-label message.
    let mut statuses = Vec::new();
    for i in 0..5 {
        let (s, v) = chat(&gw, TOKEN_A, "a-demo", "u", &format!("hello {i}")).await;
        if s != 200 {
            assert_eq!(s, 429, "{v}");
            assert!(reply(&v).contains(QUOTA_TEXT), "{v}");
            assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
            for leak in ["alpha", "quota", "messagesPerMinute"] {
                assert!(!reply(&v).contains(leak), "white-label wording: {v}");
            }
        }
        statuses.push(s);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // bravo, same gateway, no quotas: never refused, tools run.
    for i in 0..8 {
        let (s, v) = chat(&gw, TOKEN_B, "b-demo", "u", &format!("hi {i}")).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = chat(&gw, TOKEN_B, "b-demo", "t", "/tool sessions_list {}").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = chat(&gw, TOKEN_B, "b-demo", "t", "/tool sessions_list {}").await;
    assert_eq!(s, 200, "{v}");
    assert!(!reply(&v).contains(QUOTA_TEXT));

    // The operator sees each refusal, by tenant and quota.
    let m = metrics(&gw).await;
    assert_eq!(sample(&m, r#"gateway_quota_refusals_total{tenant="alpha",quota="messages_per_minute"}"#), 2);
    assert_eq!(sample(&m, r#"gateway_quota_refusals_total{tenant="bravo",quota="messages_per_minute"}"#), 0);
    assert_eq!(sample(&m, r#"gateway_runs_total{tenant="alpha"}"#), 3);
    assert_eq!(sample(&m, r#"gateway_runs_total{tenant="bravo"}"#), 10);
    assert_eq!(sample(&m, r#"gateway_runs_total{tenant="charlie"}"#), 0);
    assert_eq!(sample(&m, r#"gateway_tool_calls_total{tenant="bravo",outcome="ok"}"#), 2);
}

#[tokio::test]
async fn the_tool_call_quota_stops_the_turn_clearly_and_keeps_the_conversation() {
    let fake = fakes::start().await;
    let mut cfg = config(&fake.base);
    cfg = cfg.replace("messagesPerMinute: 3, toolCallsPerMinute: 1", "toolCallsPerMinute: 1");
    let gw = Gateway::start(&cfg, &env()).await;
    let (s, v) = chat(&gw, TOKEN_A, "a-demo", "tools", "/tool sessions_list {}").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = chat(&gw, TOKEN_A, "a-demo", "tools", "/tool sessions_list {}").await;
    assert_eq!(s, 429, "{v}");
    assert!(reply(&v).contains(QUOTA_TEXT), "{v}");
    // The refused round was stored: the next plain turn sees the whole conversation and works.
    let (s, v) = chat(&gw, TOKEN_A, "a-demo", "tools", "still there?").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(reply(&v), "echo: still there?");
    let m = metrics(&gw).await;
    assert_eq!(sample(&m, r#"gateway_quota_refusals_total{tenant="alpha",quota="tool_calls_per_minute"}"#), 1);
}

#[tokio::test]
async fn tenant_keys_bill_separately_and_an_upstream_limit_stays_on_its_key() {
    let fake = fakes::start().await;
    let gw = std::sync::Arc::new(Gateway::start(&config(&fake.base), &env()).await);
    // alpha's own key is rate-limited upstream (429, Retry-After: 1) on every call.
    let a = {
        let gw = gw.clone();
        tokio::spawn(async move { chat(&gw, TOKEN_A, "a-model", "k", "anything").await })
    };
    for _ in 0..500 {
        if fake.requests().iter().any(|r| r.headers["authorization"] == "Bearer sk-alpha-own-limited") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While alpha waits out its Retry-After, bravo (own key) and charlie (operator's key) answer.
    let (s, v) = chat(&gw, TOKEN_B, "b-model", "k", "bravo here").await;
    assert_eq!((s, reply(&v)), (200, "fake says: bravo here"), "{v}");
    let (s, v) = chat(&gw, TOKEN_C, "c-model", "k", "charlie here").await;
    assert_eq!((s, reply(&v)), (200, "fake says: charlie here"), "{v}");
    assert!(!a.is_finished(), "alpha is still backing off on its own key");
    let (s, v) = a.await.unwrap();
    assert_eq!(s, 502, "{v}");
    assert!(reply(&v).contains("busy right now"), "{v}");
    // Billing isolation: each tenant's calls carried its own key; charlie's the operator's.
    let keys: Vec<(String, String)> = fake
        .requests()
        .iter()
        .map(|r| {
            let last = r.body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
            (last, r.headers["authorization"].to_str().unwrap().to_string())
        })
        .collect();
    let alpha: Vec<_> = keys.iter().filter(|(t, _)| t == "anything").collect();
    assert_eq!(alpha.len(), 2, "one call and one retry: {keys:?}");
    assert!(alpha.iter().all(|(_, k)| k == "Bearer sk-alpha-own-limited"));
    assert!(keys.contains(&("bravo here".into(), "Bearer sk-bravo-own-key".into())), "{keys:?}");
    assert!(keys.contains(&("charlie here".into(), format!("Bearer {OPENAI_KEY}"))), "{keys:?}");
    // A rate limit that clears is retried after Retry-After and the user never sees it.
    let (s, v) = chat(&gw, TOKEN_B, "b-model", "k", "rate-limited-once:b1").await;
    assert_eq!((s, reply(&v)), (200, "fake says: rate-limited-once:b1"), "{v}");
    let seen = fake.requests().iter().filter(|r| r.body.to_string().contains("rate-limited-once:b1")).count();
    assert_eq!(seen, 2);
}

#[tokio::test]
async fn config_check_refuses_a_tenant_without_a_key_for_an_unshared_provider() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("http://127.0.0.1:9/v1").replace(
        "apiKey: { env: \"FAKE_OPENAI_KEY\" }, timeoutSec: 10,",
        "apiKey: { env: \"FAKE_OPENAI_KEY\" }, allowSharedKey: false, timeoutSec: 10,",
    );
    let path = dir.path().join("c.json5");
    std::fs::write(&path, cfg).unwrap();
    let (code, out, err) = run_cli(&["config", "check", path.to_str().unwrap()], None);
    assert_eq!(code, 2, "{out}{err}");
    let all = format!("{out}{err}");
    assert!(all.contains("agents.list[4].model"), "{all}");
    assert!(all.contains("tenants[2].modelKeys.fake"), "{all}");
}

fn usage_json(dir: &std::path::Path, extra: &[&str]) -> Value {
    let cfg = dir.join("bulkhead.json5");
    let mut args = vec!["usage", "--config", cfg.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = run_cli(&args, None);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn usage_survives_a_crash_and_a_restart_and_holds_no_content() {
    let fake = fakes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&fake.base);
    let mut gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    // charlie: 15 tokens per call (11 in, 4 out) against a budget of 20 a day.
    for text in [SECRET_TEXT, "second"] {
        let (s, v) = chat(&gw, TOKEN_C, "c-model", SECRET_USER, text).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = chat(&gw, TOKEN_C, "c-model", SECRET_USER, "third").await;
    assert_eq!(s, 429, "the day's tokens are spent: {v}");
    assert!(reply(&v).contains(QUOTA_TEXT));
    let (s, _) = chat(&gw, TOKEN_A, "a-demo", "u", "/tool sessions_list {}").await;
    assert_eq!(s, 200);
    // Let the periodic flush run, then crash (SIGKILL: no shutdown path at all).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gw.kill().await;

    let v = usage_json(dir.path(), &["--tenant", "charlie"]);
    let c = &v["tenants"][0];
    assert_eq!(c["tenant"], "charlie");
    assert_eq!(c["total"]["runs"], 2);
    assert_eq!(c["total"]["inputTokens"], 22);
    assert_eq!(c["total"]["outputTokens"], 8);
    assert_eq!(c["total"]["quotaRefusals"], 1);
    assert_eq!(c["agents"]["c-model"]["runs"], 2);
    let all = usage_json(dir.path(), &[]);
    let alpha = all["tenants"].as_array().unwrap().iter().find(|t| t["tenant"] == "alpha").unwrap();
    assert_eq!(alpha["total"]["toolCalls"]["sessions_list"], 1);
    let future = usage_json(dir.path(), &["--since", "2999-01-01"]);
    assert!(future["tenants"].as_array().unwrap().iter().all(|t| t["total"]["runs"] == 0));

    // After the restart the daily token budget is still spent: quotas read the persisted usage.
    let mut gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    let (s, v) = chat(&gw, TOKEN_C, "c-model", SECRET_USER, "after restart").await;
    assert_eq!(s, 429, "{v}");
    let (s, _) = chat(&gw, TOKEN_A, "a-demo", "u", "one more").await;
    assert_eq!(s, 200);
    // A clean stop flushes at once.
    assert_eq!(gw.terminate().await, Some(0));
    let v = usage_json(dir.path(), &["--tenant", "alpha"]);
    assert_eq!(v["tenants"][0]["total"]["runs"], 2);
    let v = usage_json(dir.path(), &["--tenant", "charlie"]);
    assert_eq!(v["tenants"][0]["total"]["quotaRefusals"], 2);

    // The usage files hold counters and ids only: no message text, no user or session ids.
    let udir = dir.path().join("state").join("usage");
    let mut files = 0;
    for e in std::fs::read_dir(&udir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for needle in [SECRET_TEXT, SECRET_USER, "BLUE HERON", "second", "sessions_list {}"] {
            assert!(!text.contains(needle), "usage holds {needle:?}: {text}");
        }
        files += 1;
    }
    assert!(files >= 2);
    // Bad arguments are clear errors.
    let cfgp = dir.path().join("bulkhead.json5");
    let (code, _, err) = run_cli(&["usage", "--config", cfgp.to_str().unwrap(), "--since", "2026-02-30"], None);
    assert_eq!(code, 2);
    assert!(err.contains("expected YYYY-MM-DD"), "{err}");
    let (code, out, _) = run_cli(&["usage", "--config", cfgp.to_str().unwrap(), "--tenant", "alpha"], None);
    assert_eq!(code, 0);
    assert!(out.contains("TENANT") && out.contains("a-demo") && out.contains("(total)"), "{out}");
}

#[tokio::test]
async fn metrics_expose_usage_and_queue_numbers_and_nothing_per_session() {
    let fake = fakes::start().await;
    let gw = Gateway::start(&config(&fake.base), &env()).await;
    let (s, _) = chat(&gw, TOKEN_C, "c-model", SECRET_USER, SECRET_TEXT).await;
    assert_eq!(s, 200);
    let (s, _) = chat(&gw, TOKEN_B, "b-demo", SECRET_USER, "/tool sessions_list {}").await;
    assert_eq!(s, 200);
    let (s, _) = chat(&gw, TOKEN_B, "b-demo", SECRET_USER, "/tool exec {\"command\": \"ls\"}").await;
    assert_eq!(s, 200, "a denied tool is an answer, not an error");
    let (s, v) = chat(&gw, TOKEN_B, "b-files", SECRET_USER, r#"/tool write {"path": "n.txt", "content": "x"}"#).await;
    assert_eq!(s, 200, "{v}");
    let m = metrics(&gw).await;
    assert_eq!(sample(&m, r#"gateway_model_input_tokens_total{tenant="charlie"}"#), 11);
    assert_eq!(sample(&m, r#"gateway_model_output_tokens_total{tenant="charlie"}"#), 4);
    assert_eq!(sample(&m, r#"gateway_tool_denials_total{tenant="bravo"}"#), 1);
    assert_eq!(sample(&m, r#"gateway_queue_wait_seconds_count{tenant="bravo"}"#), 3);
    assert_eq!(sample(&m, r#"gateway_queue_depth{tenant="alpha"}"#), 0);
    assert_eq!(sample(&m, r#"gateway_sandbox_starts_total{tenant="bravo"}"#), 1);
    assert_eq!(sample(&m, r#"gateway_sandbox_failures_total{tenant="bravo"}"#), 0);
    assert_eq!(sample(&m, r#"gateway_tool_calls_total{tenant="bravo",outcome="ok"}"#), 2);
    for family in ["process_resident_memory_bytes", "process_open_fds", "process_uptime_seconds"] {
        assert!(m.lines().any(|l| l.starts_with(&format!("{family} "))), "{family} missing:\n{m}");
    }
    assert!(sample(&m, "process_resident_memory_bytes") > 1 << 20);
    for needle in [SECRET_USER, SECRET_TEXT, "session", "agent:"] {
        assert!(!m.contains(needle), "metrics mention {needle:?}");
    }
    // Labels come from a bounded set: tenants, quota kinds, histogram bounds, outcomes.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, rest)) = line.split_once('{') {
            for kv in rest.split_once('}').unwrap().0.split(',') {
                let (k, v) = kv.split_once('=').unwrap();
                assert!(["tenant", "quota", "le", "outcome"].contains(&k), "label {k} in {line}");
                if k == "tenant" {
                    assert!(["\"alpha\"", "\"bravo\"", "\"charlie\""].contains(&v), "{line}");
                }
            }
        }
    }
}

#[tokio::test]
async fn a_spent_sandbox_budget_refuses_sandbox_tools_but_not_session_tools() {
    let fake = fakes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&fake.base).replace(
        r#"modelKeys: { fake: { env: "BRAVO_OWN_KEY" } } },"#,
        r#"modelKeys: { fake: { env: "BRAVO_OWN_KEY" } }, quotas: { sandboxSecondsPerDay: 5 } },"#,
    );
    assert!(cfg.contains("sandboxSecondsPerDay: 5"), "{cfg}");
    // Earlier today bravo already used its 5 sandbox seconds (as recorded by a previous run).
    let today = bulkhead::usage::Day::today().to_string();
    let spent = json!({ "version": 1, "tenant": "bravo", "days": { today: { "b-files": {
        "runs": 1, "runsFailed": 0, "inputTokens": 0, "outputTokens": 0, "toolCalls": { "exec": 1 },
        "sandboxMs": 5000, "sandboxFailures": 0, "denials": 0, "quotaRefusals": 0, "busyRefusals": 0 } } } });
    std::fs::create_dir_all(dir.path().join("state/usage")).unwrap();
    std::fs::write(dir.path().join("state/usage/bravo.json"), spent.to_string()).unwrap();
    let gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    let (s, v) = chat(&gw, TOKEN_B, "b-files", "f", r#"/tool write {"path": "n.txt", "content": "x"}"#).await;
    assert_eq!(s, 429, "{v}");
    assert!(reply(&v).contains(QUOTA_TEXT), "{v}");
    let (s, v) = chat(&gw, TOKEN_B, "b-demo", "f", "/tool sessions_list {}").await;
    assert_eq!(s, 200, "host-side session tools use no sandbox time: {v}");
    let m = metrics(&gw).await;
    assert_eq!(sample(&m, r#"gateway_quota_refusals_total{tenant="bravo",quota="sandbox_seconds_per_day"}"#), 1);
    assert_eq!(
        sample(&m, r#"gateway_sandbox_starts_total{tenant="bravo"}"#),
        0,
        "the refused call never reached the sandbox"
    );
}

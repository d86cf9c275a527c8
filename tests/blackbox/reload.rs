//! Live reload through the real binary: tenant files dropped into `tenants.d/` and removed, a
//! changed policy, refused configs (a broken file, a restart-only setting), `SIGHUP` and
//! `POST /admin/reload` with its role check, and Telegram accounts added, removed, changed and
//! left alone.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_telegram::FakeTelegram;
use crate::harness::{Gateway, http};
use crate::store::{Site, chat};
use crate::{OPS_TOKEN, TOKEN_A, TOKEN_B, env, fakes};

const TOKEN_G: &str = "tok-gamma-2b7d4a8f3e5c0b9a7d6e2f1c4b6f1c9e";
const AUDITOR_TOKEN: &str = "aud-token-9e4b1d7c3a8f2e6b5d0c9a4f7e1b3d8c";

/// Gamma's tenant file: one tenant, one agent on the scripted model.
fn gamma_file(extra_agent: &str) -> String {
    format!(
        r#"{{
  tenant: {{ name: "Gamma GmbH", apiTokens: ["{TOKEN_G}"] }},
  agents: [ {{ id: "g-demo", model: "demo/scripted", {extra_agent} }} ],
}}"#
    )
}

fn write_tenant(dir: &Path, id: &str, text: &str) {
    let d = dir.join("tenants.d");
    std::fs::create_dir_all(&d).unwrap();
    // Written beside and renamed, as an operator's deploy tool would: never half a file.
    let tmp = d.join(format!(".{id}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, d.join(format!("{id}.json5"))).unwrap();
}

async fn models_status(gw: &Gateway, token: &str) -> u16 {
    http().get(gw.url("/v1/models")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

/// Polls until `token` gets `want` on `/v1/models`; returns how long it took.
async fn until_status(gw: &Gateway, token: &str, want: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if models_status(gw, token).await == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "no {want} within {within:?}\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin_reload(gw: &Gateway, token: &str) -> (u16, Value) {
    let r = http().post(gw.url("/admin/reload")).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A streamed completion read to its end: (every content delta joined, saw `[DONE]`).
async fn stream_all(base: &str, token: &str, model: &str, text: &str) -> (String, bool) {
    let body = json!({ "model": model, "stream": true, "messages": [{ "role": "user", "content": text }] });
    let resp = http().post(format!("{base}/v1/chat/completions")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let mut out = String::new();
    for line in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if let Ok(v) = serde_json::from_str::<Value>(line)
            && let Some(d) = v["choices"][0]["delta"]["content"].as_str()
        {
            out.push_str(d);
        }
    }
    (out, body.contains("data: [DONE]"))
}

#[tokio::test]
async fn a_dropped_in_tenant_works_within_a_second_and_a_removed_one_is_refused_at_once() {
    let fake = fakes::start().await;
    let site = Site::new();
    // The polls below for a token that does not work yet are failed logins: allow enough of them
    // that the throttle (tested in api.rs) does not answer 429 for the 401s this test checks.
    let config =
        site.config(&fake.base).replace("maxBodyBytes: 65536,", "maxBodyBytes: 65536, auth: { maxFailures: 1000 },");
    assert!(config.contains("maxFailures: 1000"));
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    assert_eq!(models_status(&gw, TOKEN_G).await, 401);

    // Another tenant's stream is in flight while gamma is added (5 words, 150 ms apart).
    let streaming = {
        let base = gw.base.clone();
        tokio::spawn(async move { stream_all(&base, TOKEN_A, "a-openai", "slow-stream").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    write_tenant(site.path(), "gamma", &gamma_file(""));
    let took = until_status(&gw, TOKEN_G, 200, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "the new tenant's token worked after {took:?}");
    let (status, v) = chat(&gw, TOKEN_G, "g-demo", "u1", "hello gamma").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hello gamma");
    let (text, done) = streaming.await.unwrap();
    assert!(done, "the stream in flight ended normally: {text}");
    assert_eq!(text.split_whitespace().count(), 5, "no word lost: {text}");
    assert_eq!(models_status(&gw, TOKEN_A).await, 200);
    assert!(gw.logs().contains("Config reloaded."), "applied by the running process: {}", gw.logs());

    // Removed: refused as soon as the reload is applied; its data stays.
    std::fs::remove_file(site.path().join("tenants.d/gamma.json5")).unwrap();
    let (status, report) = admin_reload(&gw, OPS_TOKEN).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(models_status(&gw, TOKEN_G).await, 401, "refused at once");
    let (status, _) = chat(&gw, TOKEN_G, "g-demo", "u1", "still there?").await;
    assert_eq!(status, 401);
    let tenant_dir = site.state().join("store/tenants/gamma");
    assert!(tenant_dir.join("identity.age").exists(), "its identity stays");
    assert!(std::fs::read_dir(tenant_dir.join("sessions")).unwrap().next().is_some(), "its sessions stay");
    assert_eq!(gw.terminate().await, Some(0));
}

#[tokio::test]
async fn a_changed_policy_applies_to_the_next_call_and_the_reload_is_audited() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = site.config(&fake.base);
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    let write = r#"/tool write {"path": "notes.txt", "content": "v1"}"#;
    let (status, v) = chat(&gw, TOKEN_B, "b-secret", "u", write).await;
    assert_eq!(status, 200, "{v}");
    assert!(!v["choices"][0]["message"]["content"].as_str().unwrap().starts_with("denied"), "{v}");

    // bravo's agent loses every tool but `read`.
    let narrowed = config.replacen(
        r#"{ id: "b-secret", tenant: "bravo", model: "demo/scripted", tools: { allow: ["group:fs", "exec"] } }"#,
        r#"{ id: "b-secret", tenant: "bravo", model: "demo/scripted", tools: { allow: ["read"] } }"#,
        1,
    );
    assert_ne!(narrowed, config);
    std::fs::write(site.config_path(), &narrowed).unwrap();
    let (status, report) = admin_reload(&gw, OPS_TOKEN).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["policiesChanged"], json!(["b-secret"]), "{report}");
    let (_, v) = chat(&gw, TOKEN_B, "b-secret", "u", write).await;
    let reply = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(reply.contains("denied"), "the next call sees the new policy: {reply}");

    let host = http().get(gw.url("/admin/audit")).bearer_auth(OPS_TOKEN).send().await.unwrap();
    let host: Value = host.json().await.unwrap();
    let reloads: Vec<&Value> =
        host["records"].as_array().unwrap().iter().filter(|r| r["kind"] == "config.reload").collect();
    assert_eq!(reloads.len(), 1, "{host}");
    let r = reloads[0];
    assert!(r["configDigest"].as_str().unwrap().starts_with("sha256:"), "{r}");
    assert_eq!(r["policies"][0]["agent"], "b-secret", "{r}");
    assert!(r["policies"][0]["digest"].as_str().unwrap().starts_with("sha256:"), "{r}");
    assert_eq!(r["actor"], "operator:ops", "{r}");
    let bravo = http().get(gw.url("/admin/audit?tenant=bravo")).bearer_auth(OPS_TOKEN).send().await.unwrap();
    let bravo: Value = bravo.json().await.unwrap();
    let loads = bravo["records"].as_array().unwrap().iter().filter(|r| r["kind"] == "policy.load").count();
    assert_eq!(loads, 2, "the start's policy load and the reload's: {bravo}");
    assert_eq!(gw.terminate().await, Some(0));
}

#[tokio::test]
async fn refused_reloads_name_every_error_and_the_running_config_keeps_serving() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = site.config(&fake.base).replacen(
        r#"operators: [ { id: "ops", token: { env: "OPS_TOKEN" }, role: "admin" } ]"#,
        r#"operators: [ { id: "ops", token: { env: "OPS_TOKEN" }, role: "admin" },
                       { id: "soc2", token: { env: "AUDITOR_TOKEN" }, role: "auditor" } ]"#,
        1,
    );
    let mut env = env();
    env.push(("AUDITOR_TOKEN", AUDITOR_TOKEN));
    let mut gw = Gateway::start_with(site.path(), &config, &env, &["--no-watch"]).await;

    // The role check: auditors may not reload, tenants and strangers are not operators.
    assert_eq!(admin_reload(&gw, AUDITOR_TOKEN).await.0, 403);
    assert_eq!(admin_reload(&gw, TOKEN_A).await.0, 401);

    // A broken tenant file: refused with the file and the key path; nothing of it is applied.
    write_tenant(site.path(), "gamma", &gamma_file(r#"tools: { allow: ["exce"] }"#));
    write_tenant(site.path(), "delta", r#"{ tenant: { id: "delta", apiTokens: ["short"] }, colour: "blue" }"#);
    let (status, report) = admin_reload(&gw, OPS_TOKEN).await;
    assert_eq!(status, 409, "{report}");
    assert_eq!(report["applied"], false);
    let errors: Vec<&str> = report["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
    assert!(has("tenants.d/gamma.json5: agents[0].tools.allow[0]"), "{errors:?}");
    assert!(has("tenants.d/delta.json5: colour"), "{errors:?}");
    assert_eq!(models_status(&gw, TOKEN_G).await, 401, "nothing applied");
    assert_eq!(models_status(&gw, TOKEN_A).await, 200, "the old config serves");
    std::fs::remove_file(site.path().join("tenants.d/delta.json5")).unwrap();

    // A restart-only setting: refused, saying a restart is needed.
    write_tenant(site.path(), "gamma", &gamma_file(""));
    std::fs::write(site.config_path(), config.replacen("127.0.0.1:0", "127.0.0.1:1", 1)).unwrap();
    let (status, report) = admin_reload(&gw, OPS_TOKEN).await;
    assert_eq!(status, 409, "{report}");
    let errors = report["errors"].to_string();
    assert!(errors.contains("gateway.bind") && errors.contains("restart is needed"), "{errors}");
    assert_eq!(models_status(&gw, TOKEN_G).await, 401, "refused whole: gamma was not added either");

    // Fixed: SIGHUP applies it (the watcher is off, so nothing else did).
    std::fs::write(site.config_path(), &config).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(models_status(&gw, TOKEN_G).await, 401, "--no-watch: a file change alone reloads nothing");
    gw.signal("HUP");
    until_status(&gw, TOKEN_G, 200, Duration::from_secs(10)).await;
    assert_eq!(gw.terminate().await, Some(0));
}

const ACME_TG: &str = "123456:ACME-reload-token-value";
const BETA_TG: &str = "654321:BETA-reload-token-value";
const BETA2_TG: &str = "777777:BETA2-reload-token-value";

fn tg_main(api: &str, acme_limit: u32) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 5,
              operators: [ {{ id: "ops", token: {{ env: "OPS_TOKEN" }}, role: "admin" }} ] }},
  stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "alpha" }} ],
  agents: {{ list: [ {{ id: "acme-support", tenant: "alpha", model: "demo/scripted" }} ] }},
  bindings: [ {{ agentId: "acme-support", match: {{ channel: "telegram", accountId: "acme" }} }} ],
  channels: {{ telegram: {{ accounts: {{
    acme: {{ token: "{ACME_TG}", apiUrl: "{api}", dmPolicy: "open", allowFrom: ["*"], textChunkLimit: {acme_limit} }},
  }} }} }},
}}"#
    )
}

/// Bravo's tenant file with its bots (`beta`, and `beta2` when asked).
fn tg_bravo(api: &str, with_beta2: bool) -> String {
    let beta2 = if with_beta2 {
        format!(r#"beta2: {{ token: "{BETA2_TG}", apiUrl: "{api}", dmPolicy: "open", allowFrom: ["*"] }},"#)
    } else {
        String::new()
    };
    let beta2_binding = if with_beta2 {
        r#"{ agentId: "beta-help", match: { channel: "telegram", accountId: "beta2" } },"#
    } else {
        ""
    };
    format!(
        r#"{{
  tenant: {{ id: "bravo" }},
  agents: [ {{ id: "beta-help", model: "demo/scripted" }} ],
  bindings: [ {{ agentId: "beta-help", match: {{ channel: "telegram", accountId: "beta" }} }}, {beta2_binding} ],
  channels: {{ telegram: {{ accounts: {{
    beta: {{ token: "{BETA_TG}", apiUrl: "{api}", dmPolicy: "open", allowFrom: ["*"] }},
    {beta2}
  }} }} }},
}}"#
    )
}

async fn until_sessions(tg: &FakeTelegram, token: &str, n: usize) {
    let start = Instant::now();
    while tg.sessions(token) < n {
        assert!(start.elapsed() < Duration::from_secs(10), "{token}: {} sessions, want {n}", tg.sessions(token));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn telegram_accounts_follow_the_reload_and_unchanged_ones_never_reconnect() {
    let tg = FakeTelegram::start().await;
    tg.add_bot(ACME_TG, 123456, "acme_bot");
    tg.add_bot(BETA_TG, 654321, "beta_bot");
    tg.add_bot(BETA2_TG, 777777, "beta2_bot");
    let dir = tempfile::tempdir().unwrap();
    write_tenant(dir.path(), "bravo", &tg_bravo(&tg.base, false));
    let env = [("OPS_TOKEN", OPS_TOKEN)];
    let mut gw = Gateway::start_with(dir.path(), &tg_main(&tg.base, 4096), &env, &["--no-watch"]).await;
    until_sessions(&tg, ACME_TG, 1).await;
    until_sessions(&tg, BETA_TG, 1).await;
    tg.dm(BETA_TG, 42, "hi beta");
    assert_eq!(tg.wait_sent(BETA_TG, 42, 1).await[0].text, "echo: hi beta");

    // Added by reload: starts polling; the others are left alone.
    write_tenant(dir.path(), "bravo", &tg_bravo(&tg.base, true));
    let (status, report) = admin_reload(&gw, OPS_TOKEN).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["accountsRestarted"], json!(["telegram/beta2"]), "{report}");
    until_sessions(&tg, BETA2_TG, 1).await;
    tg.dm(BETA2_TG, 43, "hi beta2");
    assert_eq!(tg.wait_sent(BETA2_TG, 43, 1).await[0].text, "echo: hi beta2");

    // Removed by reload: stops polling.
    write_tenant(dir.path(), "bravo", &tg_bravo(&tg.base, false));
    let (status, report) = admin_reload(&gw, OPS_TOKEN).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["accountsRestarted"], json!(["telegram/beta2"]), "{report}");
    let polls = tg.polls(BETA2_TG);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(tg.polls(BETA2_TG), polls, "the removed account polls no more");

    // Changed: only that account reconnects.
    std::fs::write(dir.path().join("bulkhead.json5"), tg_main(&tg.base, 2000)).unwrap();
    let (status, report) = admin_reload(&gw, OPS_TOKEN).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["accountsRestarted"], json!(["telegram/acme"]), "{report}");
    until_sessions(&tg, ACME_TG, 2).await;
    tg.dm(ACME_TG, 44, "hi acme");
    assert_eq!(tg.wait_sent(ACME_TG, 44, 1).await[0].text, "echo: hi acme");

    // beta was never touched: one session from start to end, and it still answers.
    tg.dm(BETA_TG, 42, "still here?");
    assert_eq!(tg.wait_sent(BETA_TG, 42, 2).await[1].text, "echo: still here?");
    assert_eq!(tg.sessions(BETA_TG), 1, "the unchanged account never reconnected");
    assert_eq!(tg.sessions(BETA2_TG), 1);
    assert_eq!(gw.terminate().await, Some(0));
}

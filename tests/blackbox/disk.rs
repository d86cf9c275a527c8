//! The gateway's own disk, through the real binary: while the state directory's filesystem is
//! below `gateway.minFreeDiskMb`, tool calls are refused with a clear reply before any sandbox
//! runs them, and the gateway goes on serving and auditing.

use serde_json::{Value, json};

use crate::TOKEN_A;
use crate::harness::{Gateway, http, run_cli};

fn config(min_free_mb: u64) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", minFreeDiskMb: {min_free_mb} }},
  stateDir: "state",
  store: {{ masterKey: {{ file: "master.key" }} }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "alpha", apiTokens: [ {{ env: "TOKEN_A" }} ] }} ],
  agents: {{ list: [
    {{ id: "a-tools", tenant: "alpha", model: "demo/scripted", tools: {{ allow: ["exec"] }},
       sandbox: {{ mode: "all", backend: "wasm" }} }},
  ] }},
}}"#
    )
}

async fn say(gw: &Gateway, text: &str) -> String {
    let body = json!({ "model": "a-tools", "user": "disk", "messages": [{ "role": "user", "content": text }] });
    let resp = http().post(gw.url("/v1/chat/completions")).bearer_auth(TOKEN_A).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_nearly_full_state_disk_refuses_tool_calls_but_keeps_serving_and_auditing() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let (code, _, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    // More free space required than any disk has (1 PiB): every tool call is refused.
    let gw = Gateway::start_in(dir.path(), &config(1 << 30), &crate::env()).await;
    let reply = say(&gw, r#"/tool exec {"command":"echo ran-in-the-sandbox"}"#).await;
    assert!(reply.contains("disk is nearly full"), "{reply}");
    assert!(!reply.contains("ran-in-the-sandbox"), "{reply}");
    assert!(gw.logs().contains("nearly full"), "the operator is told: {}", gw.logs());
    // Serving goes on: a plain turn is answered, and the refused call is in the audit log.
    assert!(!say(&gw, "hello").await.is_empty());
    drop(gw);
    let cfg = dir.path().join("bulkhead.json5");
    let (code, out, err) = run_cli(&["--config", cfg.to_str().unwrap(), "audit", "show", "--tenant", "alpha"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("exec"), "the refused call is audited: {out}");
    // With the default floor the same call runs (positive control).
    let gw = Gateway::start_in(dir.path(), &config(256), &crate::env()).await;
    let reply = say(&gw, r#"/tool exec {"command":"echo ran-in-the-sandbox"}"#).await;
    assert!(reply.contains("ran-in-the-sandbox"), "{reply}");
}

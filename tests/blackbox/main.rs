//! Black-box tests: the real `bulkhead` binary, driven over HTTP and WebSocket, with fake model
//! servers speaking the OpenAI and Anthropic wire formats, a fake Telegram Bot API server, a fake
//! Discord (REST and Gateway), a fake Slack (Web API and Socket Mode), a fake signal-cli daemon
//! (JSON-RPC and SSE), a fake Graph API (WhatsApp) and fake BlueBubbles servers (iMessage: REST
//! and webhooks).

mod api;
mod audit;
mod browser;
mod cdp;
mod cli;
mod console;
mod contract;
mod discord;
mod disk;
mod fairness;
mod fake_bluebubbles;
mod fake_discord;
mod fake_signal;
mod fake_slack;
mod fake_telegram;
mod fake_whatsapp;
mod fakes;
mod faults;
mod harness;
mod imessage;
mod onboarding;
#[path = "../pg_common.rs"]
mod pg_common;
mod policy;
mod quota;
mod reload;
mod scale_out;
mod signal;
mod slack;
mod store;
mod telegram;
mod webchat_page;
mod webchat_ws;
mod whatsapp;

pub const TOKEN_A: &str = "tok-alpha-3f9c2a7e5b1d4c8f9a6e2b7d1c5f8a3e";
pub const TOKEN_B: &str = "tok-bravo-8e1b6d3f9a2c7e4b5d8f1a6c3e9b2d7f";
/// The operator token of `two_tenant_config` (role admin).
pub const OPS_TOKEN: &str = "ops-token-5c2e8a1f7b3d9e6c4a8f2b5d1e7c3a9f";
pub const OPENAI_KEY: &str = "sk-test-openai-key-never-logged";
pub const ANTHROPIC_KEY: &str = "sk-ant-test-key-never-logged";

/// Two tenants: `alpha` (agents `a-openai`, `a-claude`, `a-demo`, `a-sessions`) and `bravo` (agent
/// `b-secret`), in memory (`store.mode: "memory"`; `store::Site` swaps in a master key). `a-demo`
/// and `b-secret` are allowed the file tools and `exec`, `a-sessions` only the session tools.
pub fn two_tenant_config(model_base: &str, extra_gateway: &str) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", maxBodyBytes: 65536, shutdownGraceSec: 10, {extra_gateway}
              operators: [ {{ id: "ops", token: {{ env: "OPS_TOKEN" }}, role: "admin" }} ] }},
  stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{
    fakeai: {{ api: "openai", baseUrl: "{model_base}", apiKey: {{ env: "FAKE_OPENAI_KEY" }}, timeoutSec: 3 }},
    fakeclaude: {{ api: "anthropic", baseUrl: "{model_base}", apiKey: {{ env: "FAKE_ANTHROPIC_KEY" }}, timeoutSec: 3 }},
    demo: {{ api: "scripted" }},
  }} }},
  tenants: [
    {{ id: "alpha", name: "Alpha Co", apiTokens: [ {{ env: "TOKEN_A" }} ] }},
    {{ id: "bravo", name: "Bravo Ltd", apiTokens: [ {{ env: "TOKEN_B" }} ] }},
  ],
  agents: {{
    defaults: {{ sandbox: {{ mode: "all", backend: "wasm" }} }},
    list: [
      {{ id: "a-openai", tenant: "alpha", model: "fakeai/gpt-fake", tools: {{ allow: ["group:fs", "exec"] }} }},
      {{ id: "a-claude", tenant: "alpha", model: "fakeclaude/claude-fake", tools: {{ allow: ["read"] }} }},
      {{ id: "a-demo", tenant: "alpha", model: "demo/scripted", identity: {{ name: "Alpha Bot", emoji: "🅰" }},
         tools: {{ allow: ["group:fs", "exec"] }} }},
      {{ id: "a-sessions", tenant: "alpha", model: "demo/scripted", tools: {{ allow: ["group:sessions"] }} }},
      {{ id: "b-secret", tenant: "bravo", model: "demo/scripted", tools: {{ allow: ["group:fs", "exec"] }} }},
    ],
  }},
}}"#
    )
}

pub fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TOKEN_A", TOKEN_A),
        ("TOKEN_B", TOKEN_B),
        ("OPS_TOKEN", OPS_TOKEN),
        ("FAKE_OPENAI_KEY", OPENAI_KEY),
        ("FAKE_ANTHROPIC_KEY", ANTHROPIC_KEY),
    ]
}

//! WhatsApp (Cloud API) channel benchmark: the real binary against the in-process fake Graph API
//! (`tests/blackbox/fake_whatsapp.rs`) with the scripted provider, next to Telegram (its fake Bot
//! API) in the same gateway and the same run:
//!
//! - WhatsApp: a signed webhook delivery `POST /channels/whatsapp/<account>/webhook` → the reply's
//!   `POST /{phone-number-id}/messages`; Telegram: update queued → `sendMessage`; sequential
//!   turns, each from a new customer, spaced so no pace binds;
//! - the cost of the signature check alone: a mis-signed delivery → 401, sequential.
//!
//! Run with `cargo bench -p bulkhead --bench whatsapp`. Figures are recorded in BENCHMARKS.md.

#[path = "../../tests/blackbox/fake_whatsapp.rs"]
#[allow(dead_code)]
mod fake_whatsapp;

#[path = "../../tests/blackbox/fake_telegram.rs"]
#[allow(dead_code)]
mod fake_telegram;

// Not every bench reads every field of `common::Served`.
#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use fake_telegram::FakeTelegram;
use fake_whatsapp::{FakeWhatsApp, delivery, signature};

const TG: &str = "111:bench-telegram-token";
const WA_TOKEN: &str = "EAAG-bench-whatsapp-token";
const WA_SECRET: &str = "bench-whatsapp-app-secret";
const PNID: &str = "1001";

fn config(wa: &str, tg: &str) -> String {
    format!(
        r#"{{ gateway: {{ bind: "127.0.0.1:0" }}, stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "ta" }} ],
  agents: {{ defaults: {{ model: "demo/scripted", maxConcurrent: 64 }}, list: [ {{ id: "a", tenant: "ta" }} ] }},
  bindings: [ {{ agentId: "a", match: {{ channel: "telegram" }} }}, {{ agentId: "a", match: {{ channel: "whatsapp" }} }} ],
  channels: {{
    telegram: {{ dmPolicy: "open", allowFrom: ["*"], accounts: {{ t: {{ token: {{ env: "TG" }}, apiUrl: "{tg}" }} }} }},
    whatsapp: {{ apiUrl: "{wa}", dmPolicy: "open", allowFrom: ["*"], accounts: {{ w: {{ phoneNumberId: "{PNID}",
      accessToken: {{ env: "WA_TOKEN" }}, appSecret: {{ env: "WA_SECRET" }}, verifyToken: {{ env: "WA_VERIFY" }} }} }} }},
  }} }}"#
    )
}

#[tokio::main]
async fn main() {
    let wa = FakeWhatsApp::start().await;
    wa.add_number(PNID, WA_TOKEN, "+1 555-000-1001");
    let tg = FakeTelegram::start().await;
    tg.add_bot(TG, 111, "bench_tg_bot");
    let env = [("TG", TG), ("WA_TOKEN", WA_TOKEN), ("WA_SECRET", WA_SECRET), ("WA_VERIFY", "bench-verify")];
    let served = common::serve(&config(&wa.api, &tg.base), &env).await;
    let http = reqwest::Client::new();
    let url = format!("{}/channels/whatsapp/w/webhook", served.base);
    let post = |body: String, sig: String| {
        http.post(&url).header("content-type", "application/json").header("x-hub-signature-256", sig).body(body).send()
    };
    // Wait until the account serves (a signed empty delivery answers 200).
    let empty = r#"{"object":"whatsapp_business_account","entry":[]}"#.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while post(empty.clone(), signature(WA_SECRET, &empty)).await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "the WhatsApp account never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let n = 200;
    let (mut w, mut t, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let customer = format!("1555{:07}", 1_000_000 + i);
        let body = delivery(PNID, &[(&customer, &format!("wamid.BENCH{i}"), "ping")]);
        let sig = signature(WA_SECRET, &body);
        let at = Instant::now();
        assert_eq!(post(body, sig).await.unwrap().status().as_u16(), 200);
        let sent = wa.wait_sent(PNID, i + 1).await;
        w.push(sent[i].at.duration_since(at));
        let user = 20_000 + i as i64;
        let at = Instant::now();
        tg.dm(TG, user, "ping");
        t.push(tg.wait_sent(TG, user, 1).await[0].at.duration_since(at));
        let forged = delivery(PNID, &[(&customer, "wamid.FORGED", "ping")]);
        let at = Instant::now();
        assert_eq!(post(forged, signature("wrong-secret", "x")).await.unwrap().status().as_u16(), 401);
        refused.push(at.elapsed());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    common::report("WhatsApp signed delivery -> Graph API send", w);
    common::report("Telegram update -> sendMessage", t);
    common::report("WhatsApp mis-signed delivery -> 401", refused);
    assert_eq!(wa.sent(PNID).len(), n, "every delivery answered exactly once");
}

//! The WhatsApp channel (Cloud API) through the real binary, against the fake Graph API: Meta's
//! verification handshake, signed deliveries (unsigned or mis-signed: 401 and nothing runs),
//! replies from the right number with the right token, two tenants that never cross (and a
//! delivery signed by one app never feeding another app's number), one Meta app serving two
//! numbers through one webhook URL, re-deliveries answered once, a 200 that survives a crash,
//! Meta's errors (outside the 24-hour window, throttling, an outage) reported to the operator,
//! config errors and `doctor`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_whatsapp::{FakeWhatsApp, change, delivery, signature};
use crate::harness::{Gateway, SmallDisk, fill, http, run_cli, run_cli_env};

const ACME_TOKEN: &str = "EAAG-acme-system-user-token-secret";
const ACME_SECRET: &str = "acme-app-secret-0123456789abcdef";
const ACME_VERIFY: &str = "acme-verify-token-5f3c";
const BETA_TOKEN: &str = "EAAG-beta-system-user-token-secret";
const BETA_SECRET: &str = "beta-app-secret-fedcba9876543210";
const BETA_VERIFY: &str = "beta-verify-token-9a1e";

/// Phone-number ids: acme's and its second number (same Meta app), beta's (another app).
const ACME: &str = "1001";
const ACME2: &str = "1002";
const BETA: &str = "2002";

const ALICE: &str = "15550100001";
const BOB: &str = "15550100002";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ACME_TOKEN", ACME_TOKEN),
        ("ACME_SECRET", ACME_SECRET),
        ("ACME_VERIFY", ACME_VERIFY),
        ("BETA_TOKEN", BETA_TOKEN),
        ("BETA_SECRET", BETA_SECRET),
        ("BETA_VERIFY", BETA_VERIFY),
    ]
}

/// `acme` and `acme2` (tenant alpha, one Meta app: token, secret and verify token written once
/// on the channel; acme's DMs from Alice only), `beta` (tenant bravo, its own app, open DMs).
fn config(api: &str, store: &str, model: &str, agent_model: &str) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 5 }},
  stateDir: "state",
  {store}
  models: {{ providers: {{ demo: {{ api: "scripted" }}, {model} }} }},
  tenants: [ {{ id: "alpha" }}, {{ id: "bravo" }} ],
  agents: {{ list: [
    {{ id: "acme-support", tenant: "alpha", model: "{agent_model}" }},
    {{ id: "beta-help", tenant: "bravo", model: "{agent_model}" }},
  ] }},
  bindings: [
    {{ agentId: "acme-support", match: {{ channel: "whatsapp", accountId: "acme" }} }},
    {{ agentId: "acme-support", match: {{ channel: "whatsapp", accountId: "acme2" }} }},
    {{ agentId: "beta-help", match: {{ channel: "whatsapp", accountId: "beta" }} }},
  ],
  channels: {{ whatsapp: {{ apiUrl: "{api}",
    accessToken: {{ env: "ACME_TOKEN" }}, appSecret: {{ env: "ACME_SECRET" }}, verifyToken: {{ env: "ACME_VERIFY" }},
    accounts: {{
      acme: {{ phoneNumberId: "{ACME}", dmPolicy: "allowlist", allowFrom: ["+{ALICE}"] }},
      acme2: {{ phoneNumberId: "{ACME2}", dmPolicy: "open", allowFrom: ["*"] }},
      beta: {{ phoneNumberId: "{BETA}", accessToken: {{ env: "BETA_TOKEN" }}, appSecret: {{ env: "BETA_SECRET" }},
               verifyToken: {{ env: "BETA_VERIFY" }}, dmPolicy: "open", allowFrom: ["*"] }},
  }} }} }},
}}"#
    )
}

const MEMORY: &str = "store: { mode: \"memory\" },";

/// The test config on an encrypted store (a master key made in `dir`) and the fake OpenAI model
/// at `model` (which can be told to be slow).
fn durable_config(api: &str, model: &str, dir: &std::path::Path) -> String {
    let key = dir.join("master.key");
    let (code, out, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    let store = format!("store: {{ masterKey: {{ file: {key:?} }} }},");
    let provider = format!("fake: {{ api: \"openai\", baseUrl: \"{model}\", timeoutSec: 30 }}");
    config(api, &store, &provider, "fake/m")
}

async fn fake() -> FakeWhatsApp {
    let wa = FakeWhatsApp::start().await;
    wa.add_number(ACME, ACME_TOKEN, "+1 555-000-1001");
    wa.add_number(ACME2, ACME_TOKEN, "+1 555-000-1002");
    wa.add_number(BETA, BETA_TOKEN, "+1 555-000-2002");
    wa
}

async fn wait_log(gw: &Gateway, needle: &str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while gw.logs().matches(needle).count() < n {
        assert!(std::time::Instant::now() < deadline, "fewer than {n} log lines with {needle:?}:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup(store: &str) -> (FakeWhatsApp, Gateway) {
    let wa = fake().await;
    let gw = Gateway::start(&config(&wa.api, store, "", "demo/scripted"), &env()).await;
    wait_log(&gw, "WhatsApp account ready", 3).await;
    (wa, gw)
}

async fn post(gw: &Gateway, account: &str, body: &str, signature: Option<String>) -> u16 {
    let mut req = http()
        .post(gw.url(&format!("/channels/whatsapp/{account}/webhook")))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    req.send().await.unwrap().status().as_u16()
}

fn no_product_name_nor_secrets(wa: &FakeWhatsApp, gw: &Gateway) {
    for pnid in [ACME, ACME2, BETA] {
        for s in wa.sent(pnid) {
            assert!(!s.text.to_lowercase().contains("bulkhead"), "product name leaked: {:?}", s.text);
        }
    }
    let logs = gw.logs();
    for secret in [ACME_TOKEN, ACME_SECRET, ACME_VERIFY, BETA_TOKEN, BETA_SECRET, BETA_VERIFY] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_verification_handshake_answers_the_challenge_only_with_the_verify_token() {
    let (wa, gw) = setup(MEMORY).await;
    let get = |account: &str, q: &str| {
        let url = gw.url(&format!("/channels/whatsapp/{account}/webhook?{q}"));
        async move {
            let r = http().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let ok = format!("hub.mode=subscribe&hub.verify_token={ACME_VERIFY}&hub.challenge=1158201444");
    assert_eq!(get("acme", &ok).await, (200, "1158201444".to_string()));
    let beta = format!("hub.mode=subscribe&hub.verify_token={BETA_VERIFY}&hub.challenge=42");
    assert_eq!(get("beta", &beta).await, (200, "42".to_string()));
    for (account, q) in [
        ("beta", ok.clone()),
        ("acme", format!("hub.mode=subscribe&hub.verify_token={ACME_VERIFY}x&hub.challenge=1")),
        ("acme", format!("hub.mode=unsubscribe&hub.verify_token={ACME_VERIFY}&hub.challenge=1")),
        ("acme", format!("hub.mode=subscribe&hub.verify_token={ACME_VERIFY}")),
        ("acme", String::new()),
        ("nobody", ok.clone()),
    ] {
        assert_eq!(get(account, &q).await.0, 403, "{account} {q}");
    }
    no_product_name_nor_secrets(&wa, &gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_unsigned_and_missigned_deliveries_get_401_and_run_nothing_and_a_replay_is_answered_once() {
    let (wa, gw) = setup(MEMORY).await;
    let body = delivery(ACME, &[(ALICE, "wamid.A1", "hello")]);
    // Unsigned, signed with another app's secret, a signature over another body, a bad
    // header form, and an account that does not exist: 401, nothing runs.
    assert_eq!(post(&gw, "acme", &body, None).await, 401);
    assert_eq!(post(&gw, "acme", &body, Some(signature(BETA_SECRET, &body))).await, 401);
    let other = delivery(ACME, &[(ALICE, "wamid.A2", "other")]);
    assert_eq!(post(&gw, "acme", &body, Some(signature(ACME_SECRET, &other))).await, 401);
    assert_eq!(post(&gw, "acme", &body, Some(signature(ACME_SECRET, &body).replace("sha256=", "sha1="))).await, 401);
    assert_eq!(post(&gw, "nobody", &body, Some(signature(ACME_SECRET, &body))).await, 401);
    // Signed right: 200, one reply; Meta's retry of the same delivery (and the same message in
    // a new delivery) is answered 200 and not handled again.
    assert_eq!(post(&gw, "acme", &body, Some(signature(ACME_SECRET, &body))).await, 200);
    let got = wa.wait_sent(ACME, 1).await;
    assert_eq!((got[0].to.as_str(), got[0].text.as_str()), (ALICE, "echo: hello"));
    assert_eq!(got[0].body["messaging_product"], "whatsapp");
    assert_eq!(post(&gw, "acme", &body, Some(signature(ACME_SECRET, &body))).await, 200);
    let again = delivery(ACME, &[(ALICE, "wamid.A1", "hello"), (ALICE, "wamid.A3", "barrier")]);
    assert_eq!(post(&gw, "acme", &again, Some(signature(ACME_SECRET, &again))).await, 200);
    let got = wa.wait_sent(ACME, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let texts: Vec<String> = wa.sent(ACME).into_iter().map(|s| s.text).collect();
    assert_eq!(texts, ["echo: hello", "echo: barrier"], "refused deliveries ran nothing, the replay once: {got:?}");
    let logs = gw.logs();
    for kind in ["missing signature", "signature does not match"] {
        assert!(logs.contains(kind), "{kind} not logged:\n{logs}");
    }
    assert!(!logs.contains("hello") && !logs.contains("barrier"), "message text is not logged");
    no_product_name_nor_secrets(&wa, &gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_two_tenants_never_cross_and_one_app_serves_two_numbers_through_one_url() {
    let (wa, gw) = setup(MEMORY).await;
    // Beta's customer writes to beta's number: beta's agent answers from beta's number, with
    // beta's token (the fake refuses another).
    let b = delivery(BETA, &[(BOB, "wamid.B1", "beta question")]);
    assert_eq!(post(&gw, "beta", &b, Some(signature(BETA_SECRET, &b))).await, 200);
    let got = wa.wait_sent(BETA, 1).await;
    assert_eq!((got[0].to.as_str(), got[0].text.as_str()), (BOB, "echo: beta question"));
    // One Meta app, one callback URL: a change for acme's second number posted to acme's URL
    // goes to acme2's account (and number).
    let two = delivery(ACME2, &[(BOB, "wamid.C1", "second number")]);
    assert_eq!(post(&gw, "acme", &two, Some(signature(ACME_SECRET, &two))).await, 200);
    let got = wa.wait_sent(ACME2, 1).await;
    assert_eq!((got[0].to.as_str(), got[0].text.as_str()), (BOB, "echo: second number"));
    // Acme's own number (+1 555-000-1001) writes to beta's: two agents of this gateway would
    // answer each other for ever, so it is ignored.
    let loop_ = delivery(BETA, &[("15550001001", "wamid.L0", "from acme's number")]);
    assert_eq!(post(&gw, "beta", &loop_, Some(signature(BETA_SECRET, &loop_))).await, 200);
    wait_log(&gw, "WhatsApp message from another number of this gateway ignored", 1).await;
    // A delivery signed by acme's app that names beta's number is not beta's: dropped, logged.
    let cross = delivery(BETA, &[(BOB, "wamid.X1", "cross tenant")]);
    assert_eq!(post(&gw, "acme", &cross, Some(signature(ACME_SECRET, &cross))).await, 200);
    wait_log(&gw, "names a phone number no running account of this Meta app serves", 1).await;
    // Acme's number takes DMs from Alice only (allowlist): Bob is not answered.
    let bob = delivery(ACME, &[(BOB, "wamid.A9", "let me in")]);
    assert_eq!(post(&gw, "acme", &bob, Some(signature(ACME_SECRET, &bob))).await, 200);
    let alice = delivery(ACME, &[(ALICE, "wamid.A10", "from alice")]);
    assert_eq!(post(&gw, "acme", &alice, Some(signature(ACME_SECRET, &alice))).await, 200);
    let got = wa.wait_sent(ACME, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acme: Vec<(String, String)> = wa.sent(ACME).into_iter().map(|s| (s.to, s.text)).collect();
    assert_eq!(acme, [(ALICE.to_string(), "echo: from alice".to_string())], "{got:?}");
    assert_eq!(wa.sent(BETA).len(), 1, "the cross-tenant message never reached beta: {:?}", wa.sent(BETA));
    no_product_name_nor_secrets(&wa, &gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_meta_errors_reach_the_operator_and_throttled_or_failed_sends_are_delivered_once() {
    let (wa, gw) = setup(MEMORY).await;
    // Outside the 24-hour window: the send is refused for good, and the log says why.
    wa.fail_next(BETA, &[131047]);
    let late = delivery(BETA, &[(BOB, "wamid.L1", "late")]);
    assert_eq!(post(&gw, "beta", &late, Some(signature(BETA_SECRET, &late))).await, 200);
    wait_log(&gw, "more than 24 hours have passed since the customer's last message", 1).await;
    // The same error reported later as a failed status of a sent message.
    let status = change(
        BETA,
        json!({ "statuses": [{ "id": "wamid.OUT1", "status": "failed", "timestamp": "1",
        "recipient_id": BOB, "errors": [{ "code": 131047, "title": "Re-engagement message" }] }] }),
    );
    assert_eq!(post(&gw, "beta", &status, Some(signature(BETA_SECRET, &status))).await, 200);
    wait_log(&gw, "more than 24 hours have passed since the customer's last message", 2).await;
    assert!(gw.logs().contains("WhatsApp reports a reply it could not deliver"), "{}", gw.logs());
    // Throttled, then a 500, then an outage: the reply waits and arrives once.
    wa.fail_next(BETA, &[130429, 0]);
    let busy = delivery(BETA, &[(BOB, "wamid.L2", "busy")]);
    let posted = std::time::Instant::now();
    assert_eq!(post(&gw, "beta", &busy, Some(signature(BETA_SECRET, &busy))).await, 200);
    let got = wa.wait_sent(BETA, 1).await;
    assert_eq!(got[0].text, "echo: busy");
    // Meta sends no Retry-After with 130429: the number pauses five seconds before sending again.
    assert!(got[0].at.duration_since(posted) >= Duration::from_millis(4500), "{:?}", got[0].at.duration_since(posted));
    wa.set_down(true);
    let down = delivery(BETA, &[(BOB, "wamid.L3", "while down")]);
    assert_eq!(post(&gw, "beta", &down, Some(signature(BETA_SECRET, &down))).await, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wa.set_down(false);
    let got = wa.wait_sent(BETA, 2).await;
    assert_eq!(got[1].text, "echo: while down");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(wa.sent(BETA).len(), 2, "{:?}", wa.sent(BETA));
    no_product_name_nor_secrets(&wa, &gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_a_refused_token_stops_taking_deliveries_and_a_number_not_running_gets_503() {
    // acme2's number is unknown to the Graph API: that account stops at start; acme runs.
    let wa = FakeWhatsApp::start().await;
    wa.add_number(ACME, ACME_TOKEN, "+1 555-000-1001");
    wa.add_number(BETA, BETA_TOKEN, "+1 555-000-2002");
    let gw = Gateway::start(&config(&wa.api, MEMORY, "", "demo/scripted"), &env()).await;
    wait_log(&gw, "WhatsApp account ready", 2).await;
    wait_log(&gw, "refused this WhatsApp account's token or phone number id", 1).await;
    // A message for acme2 posted to acme's URL (one app, one URL) is not taken: 503, so Meta
    // delivers it again once that number runs; never 200 for a message nobody stored.
    let sibling = delivery(ACME2, &[(BOB, "wamid.N1", "for the second number")]);
    assert_eq!(post(&gw, "acme", &sibling, Some(signature(ACME_SECRET, &sibling))).await, 503);
    assert_eq!(post(&gw, "acme2", &sibling, Some(signature(ACME_SECRET, &sibling))).await, 503);
    // Beta's token is refused on a reply: beta stops taking deliveries (503, Meta keeps them),
    // instead of accepting turns it cannot answer; acme goes on.
    wa.fail_next(BETA, &[190]);
    let first = delivery(BETA, &[(BOB, "wamid.T1", "first")]);
    assert_eq!(post(&gw, "beta", &first, Some(signature(BETA_SECRET, &first))).await, 200);
    wait_log(&gw, "refused this WhatsApp account's token on a reply", 1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let next = delivery(BETA, &[(BOB, "wamid.T2", "second")]);
    while post(&gw, "beta", &next, Some(signature(BETA_SECRET, &next))).await != 503 {
        assert!(std::time::Instant::now() < deadline, "beta still takes deliveries after its token was refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alice = delivery(ACME, &[(ALICE, "wamid.T3", "acme still here")]);
    assert_eq!(post(&gw, "acme", &alice, Some(signature(ACME_SECRET, &alice))).await, 200);
    assert_eq!(wa.wait_sent(ACME, 1).await[0].text, "echo: acme still here");
    assert!(wa.sent(BETA).is_empty(), "{:?}", wa.sent(BETA));
    no_product_name_nor_secrets(&wa, &gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_answers_200_only_once_stored_so_an_acknowledged_message_survives_a_crash() {
    let wa = fake().await;
    let model = crate::fakes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = durable_config(&wa.api, &model.base, dir.path());
    let mut gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    wait_log(&gw, "WhatsApp account ready", 3).await;
    // A slow turn: the delivery is answered 200 (Meta will not send it again) while the turn is
    // still at the model. Then the gateway dies.
    let body = delivery(BETA, &[(BOB, "wamid.S1", "sleep-ms:4000 survive this")]);
    assert_eq!(post(&gw, "beta", &body, Some(signature(BETA_SECRET, &body))).await, 200);
    gw.kill().await;
    assert!(wa.sent(BETA).is_empty(), "the crash came before the reply");
    // The restarted gateway answers it from its inbox, once.
    gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    let got = wa.wait_sent(BETA, 1).await;
    assert_eq!(got[0].text, "fake says: sleep-ms:4000 survive this");
    wait_log(&gw, "WhatsApp account ready", 3).await;
    let next = delivery(BETA, &[(BOB, "wamid.S2", "after restart")]);
    assert_eq!(post(&gw, "beta", &next, Some(signature(BETA_SECRET, &next))).await, 200);
    let got = wa.wait_sent(BETA, 2).await;
    assert_eq!(got[1].text, "fake says: after restart");
    assert_eq!(gw.terminate().await, Some(0));
    assert_eq!(wa.sent(BETA).len(), 2, "{:?}", wa.sent(BETA));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_answers_503_to_a_delivery_it_could_not_store_and_takes_it_when_delivered_again() {
    let wa = fake().await;
    let model = crate::fakes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _disk = SmallDisk::mount(&state, 8);
    let gw = Gateway::start_in(dir.path(), &durable_config(&wa.api, &model.base, dir.path()), &env()).await;
    wait_log(&gw, "WhatsApp account ready", 3).await;
    let before = delivery(BETA, &[(BOB, "wamid.D1", "before")]);
    assert_eq!(post(&gw, "beta", &before, Some(signature(BETA_SECRET, &before))).await, 200);
    wa.wait_sent(BETA, 1).await;
    // The state disk fills up: the message cannot be stored, so the delivery is not taken.
    let filler = fill(&state);
    let full = delivery(BETA, &[(BOB, "wamid.D2", "while full")]);
    assert_eq!(post(&gw, "beta", &full, Some(signature(BETA_SECRET, &full))).await, 503);
    wait_log(&gw, "WhatsApp delivery not stored", 1).await;
    // Room again; Meta delivers it again: stored, 200, answered once.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(post(&gw, "beta", &full, Some(signature(BETA_SECRET, &full))).await, 200);
    let got = wa.wait_sent(BETA, 2).await;
    assert_eq!(got[1].text, "fake says: while full");
    let barrier = delivery(BETA, &[(BOB, "wamid.D3", "barrier")]);
    assert_eq!(post(&gw, "beta", &barrier, Some(signature(BETA_SECRET, &barrier))).await, 200);
    let got = wa.wait_sent(BETA, 3).await;
    let texts: Vec<&str> = got.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["fake says: before", "fake says: while full", "fake says: barrier"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_malformed_deliveries_are_skipped_by_kind_and_non_text_gets_the_text_only_answer() {
    let (wa, gw) = setup(MEMORY).await;
    let not_json = "{not json";
    assert_eq!(post(&gw, "beta", not_json, Some(signature(BETA_SECRET, not_json))).await, 400);
    let bad = change(
        BETA,
        json!({ "messages": [{ "from": "not-a-number", "id": "wamid.M1", "type": "text",
                                                   "text": { "body": "secret words" } }] }),
    );
    assert_eq!(post(&gw, "beta", &bad, Some(signature(BETA_SECRET, &bad))).await, 200);
    wait_log(&gw, "message with an unreadable sender", 1).await;
    let image = change(
        BETA,
        json!({ "messages": [{ "from": BOB, "id": "wamid.M2", "type": "image",
                                                     "image": { "id": "media1", "mime_type": "image/jpeg" } }] }),
    );
    assert_eq!(post(&gw, "beta", &image, Some(signature(BETA_SECRET, &image))).await, 200);
    let got = wa.wait_sent(BETA, 1).await;
    assert!(!got[0].text.is_empty() && !got[0].text.starts_with("echo:"), "{got:?}");
    let fine = delivery(BETA, &[(BOB, "wamid.M3", "still here")]);
    assert_eq!(post(&gw, "beta", &fine, Some(signature(BETA_SECRET, &fine))).await, 200);
    let got = wa.wait_sent(BETA, 2).await;
    assert_eq!(got[1].text, "echo: still here");
    assert!(!gw.logs().contains("secret words"), "content is not logged");
    no_product_name_nor_secrets(&wa, &gw);
}

#[test]
fn whatsapp_config_errors_name_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json5");
    std::fs::write(
        &path,
        r#"{ agents: { list: [ { id: "a" } ] },
             channels: { whatsapp: { phoneNumberId: "1", accounts: {
               one: { accessToken: { env: "X" }, appSecret: { env: "X" }, verifyToken: { env: "X" }, apiUrl: "ftp://nope", allowFrom: ["alice"] },
               two: { phoneNumberId: "+15550001111", appSecret: { env: "X" } },
               three: { phoneNumberId: "3", accessToken: "EAAG-literal-token-never-echoed", appSecret: { env: "X" }, verifyToken: { env: "X" }, textChunkLimit: 5000, groups: { "x": {} }, color: "red" },
             } } } }"#,
    )
    .unwrap();
    let (code, out, _) = run_cli(&["config", "check", "--json", path.to_str().unwrap()], None);
    assert_eq!(code, 2, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let paths: Vec<&str> = v["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    for p in [
        "channels.whatsapp.phoneNumberId",
        "channels.whatsapp.accounts.one.phoneNumberId",
        "channels.whatsapp.accounts.one.apiUrl",
        "channels.whatsapp.accounts.one.allowFrom[0]",
        "channels.whatsapp.accounts.two.phoneNumberId",
        "channels.whatsapp.accounts.two.accessToken",
        "channels.whatsapp.accounts.two.verifyToken",
        "channels.whatsapp.accounts.three.textChunkLimit",
        "channels.whatsapp.accounts.three.groups.x",
        "channels.whatsapp.accounts.three.color",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    assert!(!out.contains("EAAG-literal-token-never-echoed"), "a literal secret is never echoed: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_a_number_on_two_accounts_is_refused_at_start() {
    let wa = fake().await;
    let cfg = config(&wa.api, MEMORY, "", "demo/scripted")
        .replace(&format!("phoneNumberId: \"{ACME2}\""), &format!("phoneNumberId: \"{ACME}\""));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    std::fs::write(&path, cfg).unwrap();
    let (code, out, err) = run_cli_env(&["config", "check", path.to_str().unwrap()], None, &env());
    let out = format!("{out}{err}");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("the same phone number id as channels.whatsapp.accounts.acme.phoneNumberId"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_whatsapp_tokens_and_numbers() {
    let wa = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    std::fs::write(&path, config(&wa.api, MEMORY, "", "demo/scripted")).unwrap();
    let doctor = |env: Vec<(&str, &str)>| {
        let (code, out, _) = run_cli_env(&["doctor", "--config", path.to_str().unwrap()], None, &env);
        (code, out)
    };
    let (_, out) = doctor(env());
    assert!(
        out.contains("ok    whatsapp/acme: access token accepted (number +1 555-000-1001, verified name Business 1001, quality GREEN)"),
        "{out}"
    );
    assert!(out.contains("whatsapp/beta: in the Meta app's WhatsApp Configuration, set the Callback URL to https://<this gateway>/channels/whatsapp/beta/webhook"), "{out}");
    let mut wrong = env();
    wrong.retain(|(k, _)| *k != "BETA_TOKEN");
    wrong.push(("BETA_TOKEN", "EAAG-revoked-token"));
    let (code, out) = doctor(wrong);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  whatsapp/beta: the access token was rejected (error 190)"), "{out}");
    for secret in [ACME_TOKEN, ACME_SECRET, BETA_TOKEN, "EAAG-revoked-token"] {
        assert!(!out.contains(secret), "{out}");
    }
}

#[test]
fn whatsapp_channels_login_says_there_is_no_device_to_link() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    std::fs::write(&path, config("http://127.0.0.1:9/v23.0", MEMORY, "", "demo/scripted")).unwrap();
    let args = ["channels", "login", "--channel", "whatsapp", "--account", "acme", "--config", path.to_str().unwrap()];
    let (code, out, err) = run_cli_env(&args, None, &env());
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no device to link") && err.contains("Cloud API"), "{err}");
    assert!(!out.contains('█') && !out.contains('▀'), "no QR code is drawn: {out}");
}

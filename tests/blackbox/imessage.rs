//! The iMessage channel through the real binary, against fake BlueBubbles servers (REST sends,
//! password as a query parameter, webhook deliveries POSTed to the gateway): two tenants on two
//! bridges that never cross, direct messages answered by their agent, groups and allowlists by
//! the shared rules, deliveries without the right secret refused with 401 and running nothing,
//! re-deliveries answered once, replies waiting for a bridge that is down, the bridge's errors
//! reported to the operator, no password or webhook secret in any log, config errors and
//! `doctor`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_bluebubbles::FakeBlueBubbles;
use crate::harness::{Gateway, http, run_cli};

const ACME_PW: &str = "acme-bridge-password-6d1f0a";
const ACME_HOOK: &str = "acme-webhook-secret-0c9e7b2a55d1";
const GLOBEX_PW: &str = "globex-bridge-password-93be4c";
const GLOBEX_HOOK: &str = "globex-webhook-secret-7f3a19c0e8b2";

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";
const ALICE_DM: &str = "iMessage;-;+15550001111";
const TEAM: &str = "iMessage;+;chat100000001";
const OTHER_GROUP: &str = "iMessage;+;chat200000002";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("ACME_PW", ACME_PW), ("ACME_HOOK", ACME_HOOK), ("GLOBEX_PW", GLOBEX_PW), ("GLOBEX_HOOK", GLOBEX_HOOK)]
}

/// Two tenants, one bridge each: `acme` (tenant alpha: DMs from Alice only, the group `TEAM`
/// without mentions) and `globex` (tenant bravo: pairing for strangers, Private API sends).
fn config(acme_url: &str, globex_url: &str) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 5 }},
  stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "alpha" }}, {{ id: "bravo" }} ],
  agents: {{ list: [
    {{ id: "acme-support", tenant: "alpha", model: "demo/scripted", identity: {{ name: "Acme Bot" }} }},
    {{ id: "globex-help", tenant: "bravo", model: "demo/scripted", identity: {{ name: "Globex Helper" }} }},
  ] }},
  bindings: [
    {{ agentId: "acme-support", match: {{ channel: "imessage", accountId: "acme" }} }},
    {{ agentId: "globex-help", match: {{ channel: "imessage", accountId: "globex" }} }},
  ],
  channels: {{ imessage: {{ accounts: {{
    acme: {{ url: "{acme_url}", password: {{ env: "ACME_PW" }}, webhookSecret: {{ env: "ACME_HOOK" }},
             dmPolicy: "allowlist", allowFrom: ["+1 555 000 1111"],
             groups: {{ "{TEAM}": {{ requireMention: false }} }} }},
    globex: {{ url: "{globex_url}", password: {{ env: "GLOBEX_PW" }}, webhookSecret: {{ env: "GLOBEX_HOOK" }},
               sendMethod: "private-api", dmPolicy: "pairing" }},
  }} }} }},
}}"#
    )
}

async fn fakes() -> (FakeBlueBubbles, FakeBlueBubbles) {
    let acme = FakeBlueBubbles::start(ACME_PW).await;
    let globex = FakeBlueBubbles::start(GLOBEX_PW).await;
    globex.set_private_api(true, true);
    (acme, globex)
}

async fn wait_log(gw: &Gateway, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !gw.logs().contains(needle) {
        assert!(std::time::Instant::now() < deadline, "no log line with {needle:?}:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn setup() -> (FakeBlueBubbles, FakeBlueBubbles, Gateway) {
    let (acme, globex) = fakes().await;
    let gw = Gateway::start(&config(&acme.url, &globex.url), &env()).await;
    wait_log(&gw, "/channels/imessage/acme/webhook").await;
    wait_log(&gw, "/channels/imessage/globex/webhook").await;
    (acme, globex, gw)
}

/// `config` on the encrypted store, with a fresh master key in `dir`.
fn encrypted(dir: &std::path::Path, config: &str) -> String {
    let key = dir.join("master.key");
    let (code, out, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    config.replace(r#"store: { mode: "memory" }"#, &format!("store: {{ masterKey: {{ file: {key:?} }} }}"))
}

fn hook(gw: &Gateway, account: &str, secret: &str) -> String {
    gw.url(&format!("/channels/imessage/{account}/webhook?secret={secret}"))
}

/// Neither password nor webhook secret, nor a bridge request URL, in the gateway's output.
fn no_secrets(gw: &Gateway, bridges: &[&FakeBlueBubbles]) {
    let logs = gw.logs();
    for secret in [ACME_PW, ACME_HOOK, GLOBEX_PW, GLOBEX_HOOK, "password=", "secret="] {
        assert!(!logs.contains(secret), "{secret} appears in the logs:\n{logs}");
    }
    for b in bridges {
        assert!(!logs.contains(&b.url), "a bridge URL appears in the logs:\n{logs}");
        for s in b.sent() {
            assert!(!s.text.to_lowercase().contains("bulkhead"), "product name leaked: {:?}", s.text);
            for secret in [ACME_PW, ACME_HOOK, GLOBEX_PW, GLOBEX_HOOK] {
                assert!(!s.text.contains(secret), "a secret was sent to a chat: {:?}", s.text);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imessage_two_tenants_on_two_bridges_never_cross_and_a_dm_gets_its_agents_reply() {
    let (acme, globex, gw) = setup().await;
    // The same person writes to both bridges: each answers with its own tenant's agent.
    let s = acme.deliver(&hook(&gw, "acme", ACME_HOOK), &acme.message(ALICE_DM, ALICE, "/start")).await;
    assert_eq!(s, 200);
    globex.set_private_api(true, true);
    let paired = globex.message(ALICE_DM, ALICE, "hello globex");
    assert_eq!(globex.deliver(&hook(&gw, "globex", GLOBEX_HOOK), &paired).await, 200);
    let a = acme.wait_sent(ALICE_DM, 1).await;
    assert!(a[0].text.contains("Acme Bot") && !a[0].text.contains("Globex"), "{:?}", a[0].text);
    let g = globex.wait_sent(ALICE_DM, 1).await;
    assert!(g[0].text.contains("Globex Helper") && g[0].text.contains("pairing code"), "{:?}", g[0].text);
    assert_eq!(g[0].method, "private-api", "globex's sendMethod");
    assert_eq!(a[0].method, "apple-script", "the default sendMethod");

    // A DM gets its agent's reply, on its own bridge, to the chat it came from.
    let s = acme.deliver(&hook(&gw, "acme", ACME_HOOK), &acme.message(ALICE_DM, ALICE, "hello there")).await;
    assert_eq!(s, 200);
    let a = acme.wait_sent(ALICE_DM, 2).await;
    assert_eq!(a[1].text, "echo: hello there");
    assert!(a[1].temp_guid.starts_with("temp-") && a[1].temp_guid != a[0].temp_guid);

    // One bridge's delivery posted to the other account, with either secret: never taken there.
    let crossed = acme.message(ALICE_DM, ALICE, "crossed wires");
    assert_eq!(acme.deliver(&hook(&gw, "globex", ACME_HOOK), &crossed).await, 401);
    assert_eq!(globex.deliver(&hook(&gw, "acme", GLOBEX_HOOK), &crossed).await, 401);
    let barrier = globex.message(ALICE_DM, ALICE, "barrier");
    assert_eq!(globex.deliver(&hook(&gw, "globex", GLOBEX_HOOK), &barrier).await, 200);
    let s = acme.deliver(&hook(&gw, "acme", ACME_HOOK), &acme.message(ALICE_DM, ALICE, "barrier")).await;
    assert_eq!(s, 200);
    acme.wait_sent(ALICE_DM, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(acme.sent().iter().chain(globex.sent().iter()).all(|s| !s.text.contains("crossed")));
    assert_eq!(acme.sent().len(), 3, "{:?}", acme.sent());
    let g = globex.wait_sent(ALICE_DM, 2).await;
    assert!(g.iter().all(|s| s.text.contains("pairing code")), "only globex's pairing answers: {g:?}");
    assert_eq!(globex.sent().len(), 2, "{:?}", globex.sent());
    no_secrets(&gw, &[&acme, &globex]);
    assert!(!gw.logs().contains("hello there"), "content is not logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imessage_groups_allowlists_and_own_messages_follow_the_shared_rules() {
    let (acme, _globex, gw) = setup().await;
    let url = hook(&gw, "acme", ACME_HOOK);
    // Bob is not on acme's allowlist: nothing at all. The listed group needs no mention; another
    // group is not listed. The bridge's own message (`isFromMe`) and a tapback are not answered.
    assert_eq!(acme.deliver(&url, &acme.message("iMessage;-;+15550002222", BOB, "let me in")).await, 200);
    assert_eq!(acme.deliver(&url, &acme.message(OTHER_GROUP, BOB, "not this group")).await, 200);
    let mut mine = acme.message(ALICE_DM, ALICE, "my own reply");
    mine["data"]["isFromMe"] = json!(true);
    assert_eq!(acme.deliver(&url, &mine).await, 200);
    let mut tapback = acme.message(ALICE_DM, ALICE, "Loved \u{201c}hi\u{201d}");
    tapback["data"]["associatedMessageGuid"] = json!("p:0/ABC");
    tapback["data"]["associatedMessageType"] = json!(2000);
    assert_eq!(acme.deliver(&url, &tapback).await, 200);
    assert_eq!(acme.deliver(&url, &json!({ "type": "typing-indicator", "data": { "display": true } })).await, 200);
    assert_eq!(acme.deliver(&url, &json!({ "type": "new-message", "data": { "text": "SECRETCONTENT" } })).await, 200);
    assert_eq!(acme.deliver(&url, &acme.message(TEAM, BOB, "hi team")).await, 200);
    let got = acme.wait_sent(TEAM, 1).await;
    assert_eq!(got[0].text, "echo: hi team");
    // An attachment alone gets the polite text-only answer.
    let mut photo = acme.message(ALICE_DM, ALICE, "\u{fffc}");
    photo["data"]["attachments"] = json!([ { "guid": "at_1", "mimeType": "image/jpeg", "transferName": "x.jpg" } ]);
    assert_eq!(acme.deliver(&url, &photo).await, 200);
    let got = acme.wait_sent(ALICE_DM, 1).await;
    assert!(got[0].text.contains("text"), "{:?}", got[0].text);
    assert_eq!(acme.deliver(&url, &acme.message(ALICE_DM, ALICE, "barrier")).await, 200);
    acme.wait_sent(ALICE_DM, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let chats: Vec<String> = acme.sent().iter().map(|s| s.chat_guid.clone()).collect();
    assert_eq!(chats, [TEAM, ALICE_DM, ALICE_DM], "{:?}", acme.sent());
    let logs = gw.logs();
    assert!(logs.contains("malformed iMessage webhook delivery"), "{logs}");
    assert!(!logs.contains("SECRETCONTENT") && !logs.contains("hi team") && !logs.contains("panicked"), "{logs}");
    no_secrets(&gw, &[&acme]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imessage_a_mis_secreted_or_unsigned_delivery_gets_401_and_runs_nothing() {
    let (acme, globex, gw) = setup().await;
    let post = |url: String, bearer: Option<&'static str>, event: Value| async move {
        let mut req = http().post(url).header("content-type", "application/json").body(event.to_string());
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        req.send().await.unwrap().status().as_u16()
    };
    let base = gw.url("/channels/imessage/acme/webhook");
    let refused = [
        (base.clone(), None, "no secret"),
        (format!("{base}?secret="), None, "empty secret"),
        (format!("{base}?secret=not-the-secret"), None, "wrong secret"),
        (format!("{base}?secret={}", &ACME_HOOK[..ACME_HOOK.len() - 1]), None, "a prefix of the secret"),
        (format!("{base}?secret={ACME_HOOK}x"), None, "the secret and more"),
        (format!("{base}?secret={ACME_PW}"), None, "the API password"),
        (format!("{base}?secret={GLOBEX_HOOK}"), None, "another account's secret"),
        (base.clone(), Some("not-the-secret"), "wrong bearer"),
        (gw.url(&format!("/channels/imessage/nobody/webhook?secret={ACME_HOOK}")), None, "no such account"),
    ];
    for (url, bearer, what) in refused {
        let s = post(url, bearer, acme.message(ALICE_DM, ALICE, &format!("refused: {what}"))).await;
        assert_eq!(s, 401, "{what}");
    }
    // The right secret, in the query or as a bearer header (a proxy's way): taken once each.
    let s = post(format!("{base}?secret={ACME_HOOK}"), None, acme.message(ALICE_DM, ALICE, "by query")).await;
    assert_eq!(s, 200);
    let s = post(base.clone(), Some(ACME_HOOK), acme.message(ALICE_DM, ALICE, "by header")).await;
    assert_eq!(s, 200);
    let got = acme.wait_sent(ALICE_DM, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let texts: Vec<String> = acme.sent().iter().map(|s| s.text.clone()).collect();
    assert_eq!(texts, ["echo: by query", "echo: by header"], "refused deliveries ran nothing: {got:?}");
    assert!(globex.sent().is_empty());
    let logs = gw.logs();
    assert!(logs.contains("no secret") && logs.contains("wrong secret"), "{logs}");
    assert!(!logs.contains("refused:"), "content is not logged");
    no_secrets(&gw, &[&acme, &globex]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imessage_a_replayed_delivery_is_answered_once() {
    let (acme, _globex, gw) = setup().await;
    let url = hook(&gw, "acme", ACME_HOOK);
    let event = acme.message(ALICE_DM, ALICE, "only once please");
    // Delivered three times (once while the first is being handled): one answer.
    let (a, b) = tokio::join!(acme.deliver(&url, &event), acme.deliver(&url, &event));
    assert_eq!((a, b), (200, 200));
    assert_eq!(acme.deliver(&url, &event).await, 200);
    assert_eq!(acme.deliver(&url, &acme.message(ALICE_DM, ALICE, "barrier")).await, 200);
    acme.wait_sent(ALICE_DM, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let texts: Vec<String> = acme.sent().iter().map(|s| s.text.clone()).collect();
    assert_eq!(texts, ["echo: only once please", "echo: barrier"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imessage_a_reply_waits_for_a_bridge_that_is_down_and_arrives_once_it_is_back() {
    let (acme, globex, gw) = setup().await;
    let url = hook(&gw, "acme", ACME_HOOK);
    assert_eq!(acme.deliver(&url, &acme.message(ALICE_DM, ALICE, "before")).await, 200);
    acme.wait_sent(ALICE_DM, 1).await;
    // The Mac restarts: the message is still taken (the gateway stores it), its reply waits.
    acme.down().await;
    assert_eq!(acme.deliver(&url, &acme.message(ALICE_DM, ALICE, "while down")).await, 200);
    wait_log(&gw, "cannot connect to the BlueBubbles server").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(acme.sent().len(), 1);
    acme.up().await;
    let back = std::time::Instant::now();
    let got = acme.wait_sent(ALICE_DM, 2).await;
    assert_eq!(got[1].text, "echo: while down");
    assert!(got[1].at >= back, "sent once the bridge was back");
    assert_eq!(acme.deliver(&url, &acme.message(ALICE_DM, ALICE, "barrier")).await, 200);
    acme.wait_sent(ALICE_DM, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let texts: Vec<String> = acme.sent().iter().map(|s| s.text.clone()).collect();
    assert_eq!(texts, ["echo: before", "echo: while down", "echo: barrier"], "delivered once");

    // A 200 whose answer passes 1 MiB is not read (nor held in memory), and not retried: the
    // message may have gone out, so the operator is told it may or may not have been delivered.
    acme.huge_next_answer();
    let attempts = acme.attempts();
    assert_eq!(acme.deliver(&url, &acme.message(ALICE_DM, ALICE, "big answer")).await, 200);
    wait_log(&gw, "answered more than 1048576 bytes; it may or may not have been delivered").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(acme.attempts(), attempts + 1, "not retried");

    // The bridge answers an error for a send: the operator is told what it said (never the URL
    // or the password), and it is not sent again (it could arrive twice).
    acme.fail_next_send(500, "Message Send Error");
    let attempts = acme.attempts();
    assert_eq!(acme.deliver(&url, &acme.message(ALICE_DM, ALICE, "doomed")).await, 200);
    wait_log(&gw, "Message failed to send!").await;
    let logs = gw.logs();
    let line = logs.lines().rfind(|l| l.contains("did not send a reply")).unwrap();
    assert!(line.contains("HTTP 500") && line.contains("Message failed to send!"), "{line}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(acme.attempts(), attempts + 1, "not retried");

    // A redirect (which would carry the password elsewhere) is not followed.
    let elsewhere = FakeBlueBubbles::start(ACME_PW).await;
    acme.redirect_sends_to(&elsewhere.url);
    assert_eq!(acme.deliver(&url, &acme.message(ALICE_DM, ALICE, "redirected")).await, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !gw.logs().lines().any(|l| l.contains("did not send a reply") && l.contains("HTTP 307")) {
        assert!(std::time::Instant::now() < deadline, "the redirect was not reported:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((elsewhere.attempts(), elsewhere.refused()), (0, 0), "nothing reached the redirect's target");
    no_secrets(&gw, &[&acme, &globex, &elsewhere]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imessage_a_refused_password_is_reported_without_the_password_and_the_message_answered_once_fixed() {
    let (acme, globex) = fakes().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = encrypted(dir.path(), &config(&acme.url, &globex.url));
    // The gateway has an old password for acme's bridge: the check at start and the reply are
    // refused, and the operator is told so (without either password).
    let mut wrong = env();
    wrong[0] = ("ACME_PW", "an-old-password-4b2e");
    let mut gw = Gateway::start_in(dir.path(), &cfg, &wrong).await;
    wait_log(&gw, "/channels/imessage/acme/webhook").await;
    wait_log(&gw, "BlueBubbles server check failed").await;
    assert_eq!(acme.deliver(&hook(&gw, "acme", ACME_HOOK), &acme.message(ALICE_DM, ALICE, "kept")).await, 200);
    wait_log(&gw, "The BlueBubbles server refused this account's password on a reply").await;
    assert!(acme.sent().is_empty() && acme.refused() >= 2);
    let logs = gw.logs();
    assert!(!logs.contains("an-old-password-4b2e"), "{logs}");
    no_secrets(&gw, &[&acme, &globex]);
    assert_eq!(gw.terminate().await, Some(0));

    // Restarted with the right password: the stored message is answered, once.
    let gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    let got = acme.wait_sent(ALICE_DM, 1).await;
    assert_eq!(got[0].text, "echo: kept");
    assert_eq!(acme.deliver(&hook(&gw, "acme", ACME_HOOK), &acme.message(ALICE_DM, ALICE, "barrier")).await, 200);
    acme.wait_sent(ALICE_DM, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(acme.sent().len(), 2, "{:?}", acme.sent());
    no_secrets(&gw, &[&acme, &globex]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imessage_a_delivery_that_cannot_be_stored_gets_503_and_is_taken_when_delivered_again() {
    let (acme, globex) = fakes().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _disk = crate::harness::SmallDisk::mount(&state, 8);
    let cfg = encrypted(dir.path(), &config(&acme.url, &globex.url));
    let gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    wait_log(&gw, "/channels/imessage/acme/webhook").await;
    let url = hook(&gw, "acme", ACME_HOOK);
    assert_eq!(acme.deliver(&url, &acme.message(ALICE_DM, ALICE, "before")).await, 200);
    acme.wait_sent(ALICE_DM, 1).await;

    // The state disk fills up: the message cannot be stored, so it is not answered 200.
    let filler = crate::harness::fill(&state);
    let event = acme.message(ALICE_DM, ALICE, "while full");
    assert_eq!(acme.deliver(&url, &event).await, 503);
    wait_log(&gw, "iMessage message not stored; answered 503").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(acme.sent().len(), 1, "nothing ran for it");

    // Room again; delivered again (a proxy's retry, or the operator's): stored, answered once.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(acme.deliver(&url, &event).await, 200);
    assert_eq!(acme.deliver(&url, &event).await, 200);
    assert_eq!(acme.deliver(&url, &acme.message(ALICE_DM, ALICE, "barrier")).await, 200);
    acme.wait_sent(ALICE_DM, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let texts: Vec<String> = acme.sent().iter().map(|s| s.text.clone()).collect();
    assert_eq!(texts, ["echo: before", "echo: while full", "echo: barrier"]);
    no_secrets(&gw, &[&acme, &globex]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imessage_accounts_follow_a_reload_and_an_unchanged_one_keeps_serving() {
    let (acme, globex) = fakes().await;
    acme.set_private_api(true, true);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&acme.url, &globex.url);
    let gw = Gateway::start_with(dir.path(), &cfg, &env(), &["--no-watch"]).await;
    wait_log(&gw, "/channels/imessage/acme/webhook").await;
    wait_log(&gw, "/channels/imessage/globex/webhook").await;
    assert_eq!(acme.deliver(&hook(&gw, "acme", ACME_HOOK), &acme.message(ALICE_DM, ALICE, "one")).await, 200);
    assert_eq!(acme.wait_sent(ALICE_DM, 1).await[0].method, "apple-script");

    // acme now sends through the Private API: only acme restarts.
    let changed = cfg.replacen(
        r#"webhookSecret: { env: "ACME_HOOK" },"#,
        r#"webhookSecret: { env: "ACME_HOOK" }, sendMethod: "private-api","#,
        1,
    );
    assert_ne!(changed, cfg);
    std::fs::write(dir.path().join("bulkhead.json5"), changed).unwrap();
    gw.signal("HUP");
    wait_log(&gw, "Config reloaded.").await;
    // BlueBubbles delivers once: a delivery that arrives while acme restarts waits for it (no
    // 503, which would lose the message), and is answered by the restarted account.
    let event = acme.message(ALICE_DM, ALICE, "two");
    assert_eq!(acme.deliver(&hook(&gw, "acme", ACME_HOOK), &event).await, 200);
    let got = acme.wait_sent(ALICE_DM, 2).await;
    assert_eq!((got[1].text.as_str(), got[1].method.as_str()), ("echo: two", "private-api"));
    let logs = gw.logs();
    assert_eq!(logs.matches("/channels/imessage/globex/webhook").count(), 1, "globex was not restarted:\n{logs}");
    let paired = globex.message(ALICE_DM, ALICE, "still there?");
    assert_eq!(globex.deliver(&hook(&gw, "globex", GLOBEX_HOOK), &paired).await, 200);
    assert!(globex.wait_sent(ALICE_DM, 1).await[0].text.contains("Globex Helper"));
    no_secrets(&gw, &[&acme, &globex]);
}

#[test]
fn imessage_tenant_add_names_the_bridge_keys_it_still_needs_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulkhead.json5");
    std::fs::write(
        &path,
        r#"{ gateway: { bind: "127.0.0.1:0" }, stateDir: "state", store: { mode: "memory" },
             models: { providers: { demo: { api: "scripted" } } }, agents: { defaults: { model: "demo/scripted" } } }"#,
    )
    .unwrap();
    let args = ["--config", path.to_str().unwrap(), "tenant", "add", "--id", "acme", "--channel", "imessage"];
    let args = [&args[..], &["--token-env", "ACME_PW", "--yes", "--url", "http://127.0.0.1:9"]].concat();
    let (code, out) = crate::harness::run_with_env(&args, &env());
    assert_eq!(code, 2, "{out}");
    // The bridge's keys come from the adapter: the password was given (--token-env), the URL and
    // the webhook secret were not.
    assert!(out.contains("--set url=VALUE: missing"), "{out}");
    assert!(out.contains("webhookSecret=env:VAR): missing"), "{out}");
    assert!(!out.contains("password=env:VAR): missing"), "{out}");
    assert!(!dir.path().join("tenants.d/acme.json5").exists(), "nothing written");
    assert!(!out.contains(ACME_PW));
}

#[test]
fn imessage_config_errors_name_their_keys() {
    let (paths, out) = crate::harness::refused_paths(
        r#"{ agents: { list: [ { id: "a" } ] },
             channels: { imessage: { accounts: {
               plain: { url: "http://mac.example.com:1234", password: { env: "P" }, webhookSecret: { env: "W" } },
               same: { url: "https://mac.example.com", password: "pw-literal-12345678", webhookSecret: "pw-literal-12345678" },
               none: { sendMethod: "fax", allowFrom: ["alice"], groups: { "iMessage;-;+15550001111": {} } },
             } } } }"#,
    );
    for p in [
        "channels.imessage.accounts.plain.url",
        "channels.imessage.accounts.same.webhookSecret",
        "channels.imessage.accounts.none.url",
        "channels.imessage.accounts.none.password",
        "channels.imessage.accounts.none.webhookSecret",
        "channels.imessage.accounts.none.sendMethod",
        "channels.imessage.accounts.none.allowFrom[0]",
        "channels.imessage.accounts.none.groups.iMessage;-;+15550001111",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} missing from {paths:?}");
    }
    assert!(!out.contains("pw-literal-12345678"), "a literal secret is never echoed: {out}");

    // What only the resolved secrets show: a webhook secret equal to the password, one shared
    // by two accounts, one too short. `config check` runs the start-up checks `serve` runs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    std::fs::write(
        &path,
        r#"{ store: { mode: "memory" }, agents: { list: [ { id: "a" } ] }, channels: { imessage: { accounts: {
             a: { url: "https://a.example", password: { env: "PA" }, webhookSecret: { env: "WA" } },
             b: { url: "https://b.example", password: { env: "PB" }, webhookSecret: { env: "WB" } },
             c: { url: "https://c.example", password: { env: "PC" }, webhookSecret: { env: "WC" } },
             d: { url: "https://d.example", password: { env: "PD" }, webhookSecret: { env: "WD" } },
           } } } }"#,
    )
    .unwrap();
    let check = |env: &[(&str, &str)]| crate::harness::run_with_env(&["config", "check", path.to_str().unwrap()], env);
    let good = [
        ("PA", "password-a-1234"),
        ("WA", "webhook-secret-a-0123456789"),
        ("PB", "password-b-1234"),
        ("WB", "webhook-secret-b-0123456789"),
        ("PC", "password-c-1234"),
        ("WC", "webhook-secret-c-0123456789"),
        ("PD", "password-d-1234"),
        ("WD", "webhook-secret-d-0123456789"),
    ];
    let (code, out) = check(&good);
    assert_eq!(code, 0, "{out}");
    let mut bad = good;
    bad[1].1 = "password-a-1234"; // a's webhook secret is its password
    bad[5].1 = "webhook-secret-b-0123456789"; // c shares b's
    bad[7].1 = "short"; // d's is too short
    let (code, out) = check(&bad);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("account \"a\" webhookSecret: the same as the server password"), "{out}");
    assert!(out.contains("channels.imessage.accounts.c.webhookSecret: the same webhook secret as channels.imessage.accounts.b.webhookSecret"), "{out}");
    assert!(out.contains("account \"d\" webhookSecret: shorter than 16 characters"), "{out}");
    for (_, secret) in bad.iter().filter(|(_, s)| s.len() > 5) {
        assert!(!out.contains(secret), "{secret} echoed: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_imessage_bridges_and_names_a_wrong_password() {
    let (acme, globex) = fakes().await;
    globex.set_private_api(false, false);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    std::fs::write(&path, config(&acme.url, &globex.url)).unwrap();
    let doctor =
        |env: Vec<(&str, &str)>| crate::harness::run_with_env(&["doctor", "--config", path.to_str().unwrap()], &env);
    let (code, out) = doctor(env());
    assert_eq!(code, 1, "globex's Private API is off: {out}");
    assert!(out.contains("ok    imessage/acme: BlueBubbles server reachable, password accepted"), "{out}");
    assert!(
        out.contains(
            "imessage/acme: BlueBubbles 1.9.9 on macOS 15.1, iMessage account ops@example.com; Private API disabled"
        ),
        "{out}"
    );
    assert!(out.contains("imessage/acme: sends use AppleScript"), "{out}");
    assert!(
        out.contains("FAIL  imessage/globex: sendMethod is \"private-api\" but the server's Private API is disabled"),
        "{out}"
    );
    assert!(out.contains("/channels/imessage/acme/webhook?secret=<webhookSecret>"), "{out}");
    assert!(out.contains("imessage/globex: iMessage has no bot mentions"), "{out}");
    assert!(!out.contains("imessage/acme: iMessage has no bot mentions"), "acme's group needs none: {out}");

    globex.set_private_api(true, true);
    let mut wrong = env();
    wrong[0] = ("ACME_PW", "an-old-password-4b2e");
    let (code, out) = doctor(wrong);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  imessage/acme: the BlueBubbles server refused the password (HTTP 401): set password"),
        "{out}"
    );
    assert!(!out.contains("FAIL  imessage/globex"), "{out}");
    acme.down().await;
    let (_, out) = doctor(env());
    assert!(out.contains("FAIL  imessage/acme: cannot connect to the BlueBubbles server"), "{out}");
    for secret in [ACME_PW, ACME_HOOK, GLOBEX_PW, GLOBEX_HOOK, "an-old-password-4b2e", "password="] {
        assert!(!out.contains(secret), "{secret} in {out}");
    }
    assert!(!out.contains(&acme.url), "the bridge URL is not printed: {out}");
}

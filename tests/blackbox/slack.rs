//! The Slack channel through the real binary, against the fake Slack (Web API + Socket Mode):
//! direct messages and channel mentions answered in their thread, unmentioned messages and
//! channels not allowed ignored, acknowledgements only after storage (an acknowledged message
//! survives a crash), reconnection after `disconnect` and a dropped socket without answering
//! twice, two workspaces that never cross, signed Events API requests (forged or stale: 401 and
//! nothing runs), 429 on `chat.postMessage`, malformed envelopes, config errors and `doctor`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_slack::{FakeSlack, now, signed};
use crate::harness::{Gateway, SmallDisk, fill, http, run_cli};

const ACME_BOT: &str = "xoxb-1111-acme-bot-secret-token";
const ACME_APP: &str = "xapp-1-A0APP-acme-app-secret-token";
const BETA_BOT: &str = "xoxb-2222-beta-bot-secret-token";
const BETA_APP: &str = "xapp-1-A0APP-beta-app-secret-token";
const HOOKS_BOT: &str = "xoxb-3333-hooks-bot-secret-token";
const HOOKS_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

const ALICE: &str = "U0ALICE01";
const BOB: &str = "U0BOB0001";
const GENERAL: &str = "C0GENERAL1";
const RANDOM: &str = "C0RANDOM01";
const SUPPORT: &str = "C0SUPPORT1";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ACME_BOT", ACME_BOT),
        ("ACME_APP", ACME_APP),
        ("BETA_BOT", BETA_BOT),
        ("BETA_APP", BETA_APP),
        ("HOOKS_BOT", HOOKS_BOT),
        ("HOOKS_SECRET", HOOKS_SECRET),
    ]
}

/// Two tenants: `acme` (tenant alpha, Socket Mode, DMs from Alice only, `#general` by name and
/// `C0SUPPORT1` without mentions for Alice) and `hooks` (tenant alpha, Events API); `beta`
/// (tenant bravo, Socket Mode, open DMs, every channel).
fn config(api: &str, store: &str, model: &str) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 5 }},
  stateDir: "state",
  {store}
  models: {{ providers: {{ demo: {{ api: "scripted" }}, {model} }} }},
  tenants: [ {{ id: "alpha" }}, {{ id: "bravo" }} ],
  agents: {{ list: [
    {{ id: "acme-support", tenant: "alpha", model: "demo/scripted", identity: {{ name: "Acme Bot" }} }},
    {{ id: "beta-help", tenant: "bravo", model: "demo/scripted", identity: {{ name: "Beta Helper" }} }},
  ] }},
  bindings: [
    {{ agentId: "acme-support", match: {{ channel: "slack", accountId: "acme" }} }},
    {{ agentId: "acme-support", match: {{ channel: "slack", accountId: "hooks" }} }},
    {{ agentId: "beta-help", match: {{ channel: "slack", accountId: "beta" }} }},
  ],
  channels: {{ slack: {{ apiUrl: "{api}", accounts: {{
    acme: {{ botToken: {{ env: "ACME_BOT" }}, appToken: {{ env: "ACME_APP" }},
             dmPolicy: "allowlist", allowFrom: ["{ALICE}"],
             channels: {{ general: {{}}, "{SUPPORT}": {{ requireMention: false, users: ["{ALICE}"] }} }} }},
    beta: {{ botToken: {{ env: "BETA_BOT" }}, appToken: {{ env: "BETA_APP" }}, dmPolicy: "open", allowFrom: ["*"],
             channels: {{ "*": {{}} }} }},
    hooks: {{ mode: "events", botToken: {{ env: "HOOKS_BOT" }}, signingSecret: {{ env: "HOOKS_SECRET" }},
              dmPolicy: "open", allowFrom: ["*"] }},
  }} }} }},
}}"#
    )
}

const MEMORY: &str = "store: { mode: \"memory\" },";

async fn fake() -> FakeSlack {
    let slack = FakeSlack::start().await;
    slack.add_team("T0ACME001", ACME_BOT, ACME_APP, "U0ACMEBOT");
    slack.add_team("T0BETA001", BETA_BOT, BETA_APP, "U0BETABOT");
    slack.add_team("T0HOOKS01", HOOKS_BOT, "xapp-unused", "U0HOOKBOT");
    slack
}

async fn setup() -> (FakeSlack, Gateway) {
    let slack = fake().await;
    let gw = Gateway::start(&config(&slack.api, MEMORY, ""), &env()).await;
    slack.wait_connected(ACME_BOT, 1).await;
    slack.wait_connected(BETA_BOT, 1).await;
    (slack, gw)
}

fn no_product_name_nor_secrets(slack: &FakeSlack, bot: &str, gw: &Gateway) {
    for s in slack.sent(bot) {
        assert!(!s.text.to_lowercase().contains("bulkhead"), "product name leaked: {:?}", s.text);
    }
    let logs = gw.logs();
    for secret in [ACME_BOT, ACME_APP, BETA_BOT, BETA_APP, HOOKS_BOT, HOOKS_SECRET, "ticket-"] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_dms_and_mentions_are_answered_in_their_thread_and_the_rest_ignored() {
    let (slack, gw) = setup().await;
    let dm = "D0ALICE01";
    slack.dm(ACME_BOT, ALICE, "hello there");
    let got = slack.wait_sent(ACME_BOT, dm, 1).await;
    assert_eq!(got[0].text, "echo: hello there");
    assert_eq!(got[0].thread_ts, None, "a top-level DM is answered in the DM");
    // A stranger under dmPolicy "allowlist" gets nothing at all.
    slack.dm(ACME_BOT, BOB, "let me in");

    // #general (configured by name): only a mention is answered, in the thread of the message,
    // once although Slack sends it as `message` and as `app_mention`.
    slack.channel_msg(ACME_BOT, GENERAL, BOB, "no mention here", None);
    slack.channel_msg(ACME_BOT, RANDOM, BOB, "<@U0ACMEBOT> this channel is not allowed", None);
    let ts = slack.channel_msg(ACME_BOT, GENERAL, BOB, "<@U0ACMEBOT> what's up", None);
    let got = slack.wait_sent(ACME_BOT, GENERAL, 1).await;
    assert_eq!(got[0].text, "echo: what's up");
    assert_eq!(got[0].thread_ts.as_deref(), Some(ts.as_str()), "answered in the thread of the message");
    // Inside that thread the bot was called into, no mention is needed; the reply stays in it.
    slack.channel_msg(ACME_BOT, GENERAL, BOB, "and then?", Some(&ts));
    let got = slack.wait_sent(ACME_BOT, GENERAL, 2).await;
    assert_eq!((got[1].text.as_str(), got[1].thread_ts.as_deref()), ("echo: and then?", Some(ts.as_str())));
    // In another thread (the bot never mentioned there) it still is.
    let other = slack.channel_msg(ACME_BOT, GENERAL, BOB, "a thread without the bot", None);
    slack.channel_msg(ACME_BOT, GENERAL, BOB, "still not for the bot", Some(&other));

    // C0SUPPORT1: no mention needed, but only Alice.
    slack.channel_msg(ACME_BOT, SUPPORT, BOB, "<@U0ACMEBOT> bob is not listed", None);
    slack.channel_msg(ACME_BOT, SUPPORT, ALICE, "no mention needed", None);
    let got = slack.wait_sent(ACME_BOT, SUPPORT, 1).await;
    assert_eq!(got[0].text, "echo: no mention needed");

    // Nothing the model writes becomes a Slack mention or link.
    slack.dm(ACME_BOT, ALICE, "ping <!channel> and <@U0BOB0001> & co");
    let got = slack.wait_sent(ACME_BOT, dm, 2).await;
    assert_eq!(got[1].text, "echo: ping &lt;!channel&gt; and &lt;@U0BOB0001&gt; &amp; co", "{:?}", got[1].body);

    // Every envelope was acknowledged, and only the messages above were answered.
    slack.wait_all_acked(ACME_BOT).await;
    slack.dm(ACME_BOT, ALICE, "barrier");
    slack.wait_sent(ACME_BOT, dm, 3).await;
    assert_eq!(slack.sent_to(ACME_BOT, GENERAL).len(), 2, "{:?}", slack.sent_to(ACME_BOT, GENERAL));
    assert!(slack.sent_to(ACME_BOT, RANDOM).is_empty());
    assert!(slack.sent_to(ACME_BOT, "D0BOB0001").is_empty(), "allowlist enforced");
    assert_eq!(slack.sent_to(ACME_BOT, SUPPORT).len(), 1);
    assert_eq!(slack.sent(ACME_BOT).len(), 6);
    no_product_name_nor_secrets(&slack, ACME_BOT, &gw);
    assert!(!gw.logs().contains("hello there") && !gw.logs().contains("what's up"), "content is not logged");
}

/// Alpha's `acme` bot on the fake model (`sleep-ms:` makes slow turns), with the encrypted store.
fn crash_config(api: &str, model: &str, key: &std::path::Path) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 5 }},
  stateDir: "state",
  store: {{ masterKey: {{ file: {key:?} }} }},
  models: {{ providers: {{ fake: {{ api: "openai", baseUrl: "{model}", timeoutSec: 30 }} }} }},
  tenants: [ {{ id: "alpha" }} ],
  agents: {{ list: [ {{ id: "acme-support", tenant: "alpha", model: "fake/m" }} ] }},
  bindings: [ {{ agentId: "acme-support", match: {{ channel: "slack", accountId: "acme" }} }} ],
  channels: {{ slack: {{ accounts: {{
    acme: {{ botToken: {{ env: "ACME_BOT" }}, appToken: {{ env: "ACME_APP" }}, apiUrl: "{api}",
             dmPolicy: "allowlist", allowFrom: ["{ALICE}"] }},
  }} }} }},
}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_acknowledges_only_what_it_stored_so_an_acknowledged_message_survives_a_crash() {
    let slack = fake().await;
    let model = crate::fakes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let (code, out, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    let cfg = crash_config(&slack.api, &model.base, &key);
    let mut gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    slack.wait_connected(ACME_BOT, 1).await;

    // A slow turn: the envelope is acknowledged (so Slack will not send it again) while the
    // turn is still at the model. Then the gateway dies.
    let envelope = slack.dm(ACME_BOT, ALICE, "sleep-ms:4000 survive this");
    slack.wait_acked(ACME_BOT, &envelope).await;
    gw.kill().await;
    assert!(slack.sent(ACME_BOT).is_empty(), "the crash came before the reply");
    assert_eq!(slack.pending(ACME_BOT), 0, "Slack holds nothing to deliver again");

    // The restarted gateway answers it from its inbox, once.
    gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    let got = slack.wait_sent(ACME_BOT, "D0ALICE01", 1).await;
    assert_eq!(got[0].text, "fake says: sleep-ms:4000 survive this");
    slack.dm(ACME_BOT, ALICE, "after restart");
    let got = slack.wait_sent(ACME_BOT, "D0ALICE01", 2).await;
    assert_eq!(got[1].text, "fake says: after restart");
    assert_eq!(gw.terminate().await, Some(0));
    assert_eq!(slack.sent(ACME_BOT).len(), 2, "{:?}", slack.sent(ACME_BOT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_reconnects_after_disconnect_and_a_dropped_socket_and_answers_nothing_twice() {
    let (slack, gw) = setup().await;
    let dm = "D0ALICE01";
    slack.dm(ACME_BOT, ALICE, "one");
    slack.wait_sent(ACME_BOT, dm, 1).await;
    slack.wait_all_acked(ACME_BOT).await;
    // Slack refreshes the connection; the next one also carries "one" again (as when an
    // acknowledgement is lost): it is recognised, acknowledged, and not answered twice.
    slack.replay_acked_once(ACME_BOT);
    slack.disconnect(ACME_BOT, "refresh_requested");
    slack.wait_connected(ACME_BOT, 2).await;
    slack.dm(ACME_BOT, ALICE, "two");
    slack.wait_sent(ACME_BOT, dm, 2).await;
    // The socket drops without a word: the gateway opens a new one.
    slack.drop_socket(ACME_BOT);
    slack.wait_connected(ACME_BOT, 3).await;
    slack.dm(ACME_BOT, ALICE, "three");
    let got = slack.wait_sent(ACME_BOT, dm, 3).await;
    slack.wait_all_acked(ACME_BOT).await;
    slack.dm(ACME_BOT, ALICE, "barrier");
    let got_all = slack.wait_sent(ACME_BOT, dm, 4).await;
    let texts: Vec<&str> = got_all.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["echo: one", "echo: two", "echo: three", "echo: barrier"], "nothing twice: {got:?}");
    assert!(gw.logs().contains("reconnecting"), "{}", gw.logs());
    // The other workspace's connection was never disturbed.
    assert_eq!(slack.connections(BETA_BOT), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_two_connections_per_app_take_turns_and_a_refresh_loses_nothing() {
    let slack = fake().await;
    let cfg = config(&slack.api, MEMORY, "").replace(
        r#"beta: { botToken: { env: "BETA_BOT" },"#,
        r#"beta: { connections: 2, botToken: { env: "BETA_BOT" },"#,
    );
    let _gw = Gateway::start(&cfg, &env()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while slack.live(BETA_BOT) < 2 {
        assert!(std::time::Instant::now() < deadline, "two connections were not opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Events alternate between the connections; one of them is refreshed in the middle.
    for i in 0..6 {
        slack.dm(BETA_BOT, &format!("U0USER00{i}"), &format!("m{i}"));
        if i == 2 {
            slack.disconnect(BETA_BOT, "refresh_requested");
        }
    }
    for i in 0..6 {
        let got = slack.wait_sent(BETA_BOT, &format!("D0USER00{i}"), 1).await;
        assert_eq!(got[0].text, format!("echo: m{i}"));
    }
    slack.wait_all_acked(BETA_BOT).await;
    assert_eq!(slack.sent(BETA_BOT).len(), 6, "nothing twice: {:?}", slack.sent(BETA_BOT));
    assert!(slack.connections(BETA_BOT) >= 3, "the refreshed connection was replaced");
    while slack.live(BETA_BOT) < 2 {
        assert!(std::time::Instant::now() < deadline, "back to two connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_two_workspaces_two_tenants_never_cross() {
    let (slack, gw) = setup().await;
    // The same user id in two workspaces: each bot answers with its own tenant's agent.
    slack.dm(ACME_BOT, ALICE, "/start");
    slack.dm(BETA_BOT, ALICE, "/start");
    let a = slack.wait_sent(ACME_BOT, "D0ALICE01", 1).await;
    let b = slack.wait_sent(BETA_BOT, "D0ALICE01", 1).await;
    assert!(a[0].text.contains("Acme Bot") && !a[0].text.contains("Beta"), "{:?}", a[0].text);
    assert!(b[0].text.contains("Beta Helper") && !b[0].text.contains("Acme"), "{:?}", b[0].text);
    // An event of beta's workspace arriving on acme's connection is not taken.
    let ev = json!({ "type": "message", "channel": "D0ALICE01", "channel_type": "im", "user": ALICE,
                     "text": "crossed wires", "ts": slack.ts(ACME_BOT) });
    let mut cb = slack.callback(ACME_BOT, ev);
    cb["team_id"] = json!("T0BETA001");
    slack.push(ACME_BOT, cb);
    slack.wait_all_acked(ACME_BOT).await;
    slack.dm(ACME_BOT, ALICE, "barrier");
    let a = slack.wait_sent(ACME_BOT, "D0ALICE01", 2).await;
    assert_eq!(a[1].text, "echo: barrier");
    assert!(slack.sent(ACME_BOT).iter().all(|s| !s.text.contains("crossed")));
    assert_eq!(slack.sent(BETA_BOT).len(), 1);
    no_product_name_nor_secrets(&slack, BETA_BOT, &gw);
}

/// Posts an Events API request for account `hooks` with `headers`.
async fn post_event(gw: &Gateway, account: &str, body: &str, headers: &[(&str, String)]) -> (u16, String) {
    let mut req = http().post(gw.url(&format!("/channels/slack/{account}/events"))).body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_events_api_refuses_forged_and_stale_signatures_and_runs_nothing() {
    let (slack, gw) = setup().await;
    gw.wait_log("Slack Events API account ready").await;
    // Slack's URL check, signed: answered with its challenge.
    let challenge = r#"{"token":"unused","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let (status, body) = post_event(&gw, "hooks", challenge, &signed(HOOKS_SECRET, now(), challenge)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );

    let event = |text: &str| {
        let ev = json!({ "type": "message", "channel": "D0ALICE01", "channel_type": "im", "user": ALICE,
                         "text": text, "ts": slack.ts(HOOKS_BOT) });
        slack.callback(HOOKS_BOT, ev).to_string()
    };
    // Forged (signed with another secret), stale (six minutes old), from the future, unsigned,
    // a signature over another body, and an account that does not exist: 401, nothing runs.
    let forged = event("forged");
    let (s, _) = post_event(&gw, "hooks", &forged, &signed("not-the-secret", now(), &forged)).await;
    assert_eq!(s, 401);
    let stale = event("stale");
    let (s, _) = post_event(&gw, "hooks", &stale, &signed(HOOKS_SECRET, now() - 360, &stale)).await;
    assert_eq!(s, 401);
    let future = event("future");
    let (s, _) = post_event(&gw, "hooks", &future, &signed(HOOKS_SECRET, now() + 360, &future)).await;
    assert_eq!(s, 401);
    let unsigned = event("unsigned");
    let (s, _) = post_event(&gw, "hooks", &unsigned, &[("content-type", "application/json".into())]).await;
    assert_eq!(s, 401);
    let swapped = event("swapped");
    let (s, _) = post_event(&gw, "hooks", &swapped, &signed(HOOKS_SECRET, now(), challenge)).await;
    assert_eq!(s, 401);
    let (s, _) = post_event(&gw, "nobody", &swapped, &signed(HOOKS_SECRET, now(), &swapped)).await;
    assert_eq!(s, 401);

    // A good one is answered 200 once stored, then replied to; Slack's retry of it is not
    // answered twice.
    let good = event("signed and fresh");
    let headers = signed(HOOKS_SECRET, now(), &good);
    let (s, _) = post_event(&gw, "hooks", &good, &headers).await;
    assert_eq!(s, 200);
    let got = slack.wait_sent(HOOKS_BOT, "D0ALICE01", 1).await;
    assert_eq!(got[0].text, "echo: signed and fresh");
    let mut retry = signed(HOOKS_SECRET, now(), &good);
    retry.push(("x-slack-retry-num", "1".into()));
    retry.push(("x-slack-retry-reason", "http_timeout".into()));
    let (s, _) = post_event(&gw, "hooks", &good, &retry).await;
    assert_eq!(s, 200);
    let barrier = event("barrier");
    let (s, _) = post_event(&gw, "hooks", &barrier, &signed(HOOKS_SECRET, now(), &barrier)).await;
    assert_eq!(s, 200);
    let got = slack.wait_sent(HOOKS_BOT, "D0ALICE01", 2).await;
    let texts: Vec<&str> = got.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["echo: signed and fresh", "echo: barrier"], "refused requests ran nothing, the retry once");
    let logs = gw.logs();
    for kind in ["signature does not match", "timestamp older than five minutes", "missing signature or timestamp"] {
        assert!(logs.contains(kind), "{kind} not logged:\n{logs}");
    }
    assert!(!logs.contains("forged") && !logs.contains("stale\""), "content is not logged");
    no_product_name_nor_secrets(&slack, HOOKS_BOT, &gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_rate_limited_reply_waits_for_retry_after_and_is_delivered_once() {
    let (slack, _gw) = setup().await;
    slack.fail_next_post(ACME_BOT, 2);
    slack.dm(ACME_BOT, ALICE, "are you there?");
    let got = slack.wait_sent(ACME_BOT, "D0ALICE01", 1).await;
    assert_eq!(got[0].text, "echo: are you there?");
    let throttled = slack.throttled_at(ACME_BOT);
    assert_eq!(throttled.len(), 1);
    assert!(got[0].at.duration_since(throttled[0]) >= Duration::from_secs(2), "Retry-After was waited out");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(slack.sent(ACME_BOT).len(), 1, "delivered exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_malformed_envelopes_are_skipped_by_kind_without_stopping_the_account() {
    let (slack, gw) = setup().await;
    slack.push_frame(ACME_BOT, "this is not json SECRETCONTENT1");
    slack.push_frame(ACME_BOT, r#"{"type":"events_api","payload":{"text":"SECRETCONTENT2"}}"#);
    slack.push_frame(ACME_BOT, r#"{"type":"slash_commands","envelope_id":"env-slash","payload":{}}"#);
    slack.push_frame(ACME_BOT, r#"{"type":"some_future_type"}"#);
    slack.push(ACME_BOT, json!("SECRETCONTENT3"));
    let ev = json!({ "type": "message", "channel": "D0ALICE01", "user": ALICE, "text": { "SECRETCONTENT4": 1 }, "ts": "1.2" });
    let cb = slack.callback(ACME_BOT, ev);
    slack.push(ACME_BOT, cb);
    let ev = json!({ "type": "message", "channel": "D0ALICE01", "text": "SECRETCONTENT5 no user", "ts": "1.3" });
    let cb = slack.callback(ACME_BOT, ev);
    slack.push(ACME_BOT, cb);
    // A file without text gets the polite text-only answer; then a good message.
    let ev = json!({ "type": "message", "subtype": "file_share", "channel": "D0ALICE01", "channel_type": "im",
                     "user": ALICE, "text": "", "ts": slack.ts(ACME_BOT), "files": [ { "id": "F0FILE" } ] });
    let cb = slack.callback(ACME_BOT, ev);
    slack.push(ACME_BOT, cb);
    slack.dm(ACME_BOT, ALICE, "still there?");
    let got = slack.wait_sent(ACME_BOT, "D0ALICE01", 2).await;
    assert!(got[0].text.contains("text"), "{:?}", got[0].text);
    assert_eq!(got[1].text, "echo: still there?");
    // Everything with an envelope id was acknowledged (Slack would otherwise send it again).
    slack.wait_all_acked(ACME_BOT).await;
    assert!(slack.acks(ACME_BOT).iter().any(|a| a.envelope_id == "env-slash"));
    let logs = gw.logs();
    assert!(logs.contains("malformed Socket Mode frame") && logs.contains("malformed Slack event"), "{logs}");
    assert!(!logs.contains("SECRETCONTENT") && !logs.contains("panicked"), "{logs}");
    assert_eq!(slack.connections(ACME_BOT), 1, "the connection was kept");
}

#[test]
fn slack_config_errors_name_their_keys() {
    let (paths, out) = crate::harness::refused_paths(
        r#"{ agents: { list: [ { id: "a" } ] },
             channels: { slack: { accounts: {
               one: { appToken: { env: "X" }, apiUrl: "ftp://nope", allowFrom: ["@alice"], groups: { "C0123ABCD": {} } },
               two: { botToken: { env: "X" } },
               three: { botToken: { env: "X" }, mode: "webhook" },
               four: { botToken: { env: "X" }, mode: "events", textChunkLimit: 5000 },
               five: { botToken: "xoxp-user-token", appToken: { env: "X" }, channels: { "General Chat": {}, "C0123ABCD": { users: ["bob"] } }, color: "red" },
             } } } }"#,
    );
    for p in [
        "channels.slack.accounts.one.botToken",
        "channels.slack.accounts.one.apiUrl",
        "channels.slack.accounts.one.allowFrom[0]",
        "channels.slack.accounts.one.groups.C0123ABCD",
        "channels.slack.accounts.two.appToken",
        "channels.slack.accounts.three.mode",
        "channels.slack.accounts.four.signingSecret",
        "channels.slack.accounts.four.textChunkLimit",
        "channels.slack.accounts.five.botToken",
        "channels.slack.accounts.five.channels.General Chat",
        "channels.slack.accounts.five.channels.C0123ABCD.users[0]",
        "channels.slack.accounts.five.color",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} missing from {paths:?}");
    }
    assert!(!out.contains("xoxp-user-token"), "a literal secret is never echoed: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_slack_tokens_and_names_missing_scopes() {
    let slack = fake().await;
    slack.set_scopes(BETA_BOT, "chat:write,app_mentions:read");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    let cfg = config(&slack.api, MEMORY, "").replace("general: {},", "general: {}, nosuchroom: {},");
    std::fs::write(&path, cfg).unwrap();
    let doctor = || crate::harness::run_with_env(&["doctor", "--config", path.to_str().unwrap()], &env());
    let (_, out) = doctor();
    assert!(
        out.contains(
            "ok    slack/acme: bot token accepted (workspace Team T0ACME001 T0ACME001, bot user @helper U0ACMEBOT)"
        ),
        "{out}"
    );
    assert!(out.contains("ok    slack/acme: app-level token accepted (Socket Mode)"), "{out}");
    assert!(out.contains("slack/beta: the bot token lacks the scope im:history"), "{out}");
    assert!(out.contains("warn  slack/acme: channel #nosuchroom is not in the workspace"), "{out}");
    assert!(!out.contains("#general"), "a name that resolves is fine: {out}");
    assert!(out.contains("slack/hooks: Events API mode") && out.contains("/channels/slack/hooks/events"), "{out}");
    slack.revoke(ACME_BOT);
    let (code, out) = doctor();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  slack/acme: auth.test failed: the token was rejected (token_revoked)"), "{out}");
    for secret in [ACME_BOT, ACME_APP, BETA_BOT, HOOKS_SECRET] {
        assert!(!out.contains(secret), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_does_not_acknowledge_a_message_it_could_not_store_and_takes_it_when_delivered_again() {
    let slack = fake().await;
    let model = crate::fakes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let (code, out, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    let state = dir.path().join("state");
    let _disk = SmallDisk::mount(&state, 8);
    let cfg = crash_config(&slack.api, &model.base, &key);
    let gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    slack.wait_connected(ACME_BOT, 1).await;
    slack.dm(ACME_BOT, ALICE, "before");
    slack.wait_sent(ACME_BOT, "D0ALICE01", 1).await;

    // The state disk fills up: the message cannot be stored, so it is not acknowledged.
    let filler = fill(&state);
    let envelope = slack.dm(ACME_BOT, ALICE, "while full");
    gw.wait_log("Slack event not stored").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(slack.acks(ACME_BOT).iter().all(|a| a.envelope_id != envelope), "acknowledged without being stored");
    assert_eq!(slack.pending(ACME_BOT), 1);

    // Room again; Slack delivers it again (here on a fresh connection): stored, acknowledged,
    // answered once.
    std::fs::remove_file(&filler).unwrap();
    slack.disconnect(ACME_BOT, "refresh_requested");
    slack.wait_acked(ACME_BOT, &envelope).await;
    let got = slack.wait_sent(ACME_BOT, "D0ALICE01", 2).await;
    assert_eq!(got[1].text, "fake says: while full");
    slack.dm(ACME_BOT, ALICE, "barrier");
    let got = slack.wait_sent(ACME_BOT, "D0ALICE01", 3).await;
    let texts: Vec<&str> = got.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["fake says: before", "fake says: while full", "fake says: barrier"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_accounts_follow_a_reload_and_unchanged_ones_keep_their_connection() {
    let slack = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&slack.api, MEMORY, "");
    let gw = Gateway::start_with(dir.path(), &cfg, &env(), &["--no-watch"]).await;
    slack.wait_connected(ACME_BOT, 1).await;
    slack.wait_connected(BETA_BOT, 1).await;
    slack.channel_msg(ACME_BOT, RANDOM, BOB, "<@U0ACMEBOT> before", None);
    slack.wait_all_acked(ACME_BOT).await;

    // acme now answers in #random too: only acme reconnects.
    let changed = cfg.replace("channels: { general: {},", "channels: { general: {}, random: {},");
    assert_ne!(changed, cfg);
    std::fs::write(dir.path().join("bulkhead.json5"), changed).unwrap();
    gw.signal("HUP");
    gw.wait_log("Config reloaded.").await;
    slack.wait_connected(ACME_BOT, 2).await;
    slack.channel_msg(ACME_BOT, RANDOM, BOB, "<@U0ACMEBOT> after", None);
    let got = slack.wait_sent(ACME_BOT, RANDOM, 1).await;
    assert_eq!(got[0].text, "echo: after", "{got:?}");
    slack.dm(BETA_BOT, ALICE, "still here?");
    assert_eq!(slack.wait_sent(BETA_BOT, "D0ALICE01", 1).await[0].text, "echo: still here?");
    assert_eq!(slack.connections(BETA_BOT), 1, "the unchanged account never reconnected");
    // The Events API account was not restarted either and still serves.
    let body = r#"{"type":"url_verification","challenge":"still"}"#;
    let (s, _) = post_event(&gw, "hooks", body, &signed(HOOKS_SECRET, now(), body)).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_an_oversized_frame_costs_one_connection_and_a_revoked_token_stops_only_its_account() {
    let slack = fake().await;
    slack.revoke(BETA_BOT);
    let gw = Gateway::start(&config(&slack.api, MEMORY, ""), &env()).await;
    slack.wait_connected(ACME_BOT, 1).await;
    gw.wait_log("Slack rejected the bot token of this account").await;
    let logs = gw.logs();
    let line = logs.lines().find(|l| l.contains("Slack rejected the bot token")).unwrap();
    assert!(line.contains("beta") && line.contains("token_revoked"), "{line}");
    assert_eq!(slack.connections(BETA_BOT), 0, "a bot whose token is refused does not connect");

    // A frame past the 1 MiB bound (its content is never logged): that connection is given up,
    // a new one is opened, and the account carries on.
    slack.push_frame(
        ACME_BOT,
        &format!(r#"{{"type":"events_api","envelope_id":"big","payload":"{}"}}"#, "B".repeat(2 << 20)),
    );
    slack.wait_connected(ACME_BOT, 2).await;
    slack.dm(ACME_BOT, ALICE, "after the big one");
    let got = slack.wait_sent(ACME_BOT, "D0ALICE01", 1).await;
    assert_eq!(got[0].text, "echo: after the big one");
    assert!(!gw.logs().contains("BBBBBBBB"));

    // The token is revoked while running: the reply is refused, and the account stops taking
    // events it could not answer (they stay with Slack).
    slack.revoke(ACME_BOT);
    slack.dm(ACME_BOT, ALICE, "after revocation");
    gw.wait_log("Slack rejected the bot token of this account on a reply").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while slack.live(ACME_BOT) > 0 {
        assert!(std::time::Instant::now() < deadline, "the account kept its connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connections = slack.connections(ACME_BOT);
    let pending = slack.pending(ACME_BOT);
    slack.dm(ACME_BOT, ALICE, "nobody home");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(slack.connections(ACME_BOT), connections, "no reconnection");
    assert_eq!(slack.pending(ACME_BOT), pending + 1, "new events are left with Slack");
    no_product_name_nor_secrets(&slack, ACME_BOT, &gw);
}

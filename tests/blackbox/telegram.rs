//! The Telegram channel through the real binary, against the fake Bot API server: direct
//! messages and allowlists, groups and mentions, forum topics, pairing end to end (encrypted at
//! rest, persisted across restarts), splitting and pacing, 429/5xx/401 handling, malformed
//! updates, two tenants with two bots, crash safety (store first, then confirm), one bot token
//! per account, and `doctor`.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::fake_telegram::{Fail, FakeTelegram};
use crate::harness::{Gateway, run_cli};

const ACME: &str = "123456:ACME-secret-token-value";
const BETA: &str = "654321:BETA-secret-token-value";
const OPS: &str = "ops-token-telegram-1e7c4a9f2d6b8e3a5c1f9d4b7e2a6c8f";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("ACME_TG_TOKEN", ACME), ("BETA_TG_TOKEN", BETA), ("OPS_TOKEN", OPS)]
}

/// `config`'s `store` for tests that keep nothing.
const MEMORY: &str = "store: { mode: \"memory\" },";

/// Two tenants, each with its own bot: `acme` (tenant alpha, agent "Acme Bot", DM allowlist
/// unless `acme_dm` says otherwise) and `beta` (tenant bravo, agent "Beta Helper", open DMs).
fn config(api: &str, acme_dm: &str, store: &str) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 5,
              operators: [ {{ id: "ops", token: {{ env: "OPS_TOKEN" }}, role: "admin" }} ] }},
  stateDir: "state",
  {store}
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "alpha" }}, {{ id: "bravo" }} ],
  agents: {{ list: [
    {{ id: "acme-support", tenant: "alpha", model: "demo/scripted", identity: {{ name: "Acme Bot" }} }},
    {{ id: "beta-help", tenant: "bravo", model: "demo/scripted", identity: {{ name: "Beta Helper" }} }},
  ] }},
  bindings: [
    {{ agentId: "acme-support", match: {{ channel: "telegram", accountId: "acme" }} }},
    {{ agentId: "beta-help", match: {{ channel: "telegram", accountId: "beta" }} }},
  ],
  channels: {{ telegram: {{ accounts: {{
    acme: {{ token: {{ env: "ACME_TG_TOKEN" }}, apiUrl: "{api}", {acme_dm}
             groups: {{ "-1001": {{}}, "-1003": {{}}, "-1004": {{ requireMention: false, allowFrom: ["111"] }} }},
             textChunkLimit: 1000 }},
    beta: {{ token: {{ env: "BETA_TG_TOKEN" }}, apiUrl: "{api}", dmPolicy: "open", allowFrom: ["*"] }},
  }} }} }},
}}"#
    )
}

const ALLOWLIST: &str = r#"dmPolicy: "allowlist", allowFrom: ["111"],"#;

async fn setup(acme_dm: &str) -> (FakeTelegram, Gateway) {
    let tg = FakeTelegram::start().await;
    tg.add_bot(ACME, 123456, "acme_bot");
    tg.add_bot(BETA, 654321, "beta_bot");
    let gw = Gateway::start(&config(&tg.base, acme_dm, MEMORY), &env()).await;
    (tg, gw)
}

fn no_product_name(tg: &FakeTelegram, token: &str) {
    for s in tg.sent(token) {
        assert!(!s.text.to_lowercase().contains("bulkhead"), "product name leaked: {:?}", s.text);
        assert!(s.body.get("parse_mode").is_none(), "replies are sent as plain text: {}", s.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_direct_messages_follow_the_allowlist_and_answer_in_the_agents_name() {
    let (tg, gw) = setup(ALLOWLIST).await;
    tg.dm(ACME, 111, "hello there");
    let got = tg.wait_sent(ACME, 111, 1).await;
    assert_eq!(got[0].text, "echo: hello there");

    // A stranger under dmPolicy "allowlist" gets nothing at all.
    tg.dm(ACME, 222, "let me in");
    // /start gets a greeting in the agent's name; a photo gets a polite text-only answer.
    tg.dm(ACME, 111, "/start");
    tg.dm_photo(ACME, 111);
    tg.dm(ACME, 111, "/start@acme_bot");
    let got = tg.wait_sent(ACME, 111, 4).await;
    assert!(got[1].text.contains("Acme Bot"), "{:?}", got[1].text);
    assert!(got[2].text.contains("Acme Bot") && got[2].text.contains("text"), "{:?}", got[2].text);
    tg.wait_consumed(ACME).await;
    assert!(tg.sent_to(ACME, 222).is_empty(), "allowlist enforced: {:?}", tg.sent_to(ACME, 222));
    // An edit of an earlier message is not answered again.
    tg.push_raw(
        ACME,
        json!({ "edited_message": { "message_id": 2, "date": 1, "edit_date": 2,
                "chat": crate::fake_telegram::chat(111, false), "from": crate::fake_telegram::user(111, "Ann"),
                "text": "hello there (edited)" } }),
        true,
    );
    tg.dm(ACME, 111, "after edit");
    let got = tg.wait_sent(ACME, 111, 5).await;
    assert_eq!(got[4].text, "echo: after edit");
    assert!(!got.iter().any(|s| s.text.contains("edited")), "{got:?}");
    no_product_name(&tg, ACME);
    assert!(!gw.logs().contains(ACME), "the bot token never appears in logs");
    assert!(!gw.logs().contains("hello there"), "message content is not logged at info");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_groups_need_an_allowed_group_and_a_mention_and_topics_keep_their_thread() {
    let (tg, _gw) = setup(ALLOWLIST).await;
    tg.group(ACME, -1001, 500, "no mention here", None);
    tg.group(ACME, -1002, 500, "@acme_bot but this group is not allowed", None);
    tg.group(ACME, -1001, 500, "hey @Acme_Bot what's up", None);
    let got = tg.wait_sent(ACME, -1001, 1).await;
    assert_eq!(got[0].text, "echo: hey @Acme_Bot what's up");
    assert_eq!(got[0].thread, None);

    // A forum topic: the reply goes back into the topic.
    tg.group(ACME, -1003, 500, "@acme_bot in a topic", Some(77));
    let got = tg.wait_sent(ACME, -1003, 1).await;
    assert_eq!(got[0].thread, Some(77));
    assert_eq!(got[0].text, "echo: @acme_bot in a topic");

    // requireMention: false with a sender allowlist: 111 is answered without a mention, 500 is not.
    tg.group(ACME, -1004, 500, "@acme_bot ignored sender", None);
    tg.group(ACME, -1004, 111, "no mention needed", None);
    let got = tg.wait_sent(ACME, -1004, 1).await;
    assert_eq!(got[0].text, "echo: no mention needed");
    tg.wait_consumed(ACME).await;
    // Only the mentioned message was answered in -1001; nothing in the group not allowed.
    tg.group(ACME, -1004, 111, "barrier", None);
    tg.wait_sent(ACME, -1004, 2).await;
    assert_eq!(tg.sent_to(ACME, -1001).len(), 1, "{:?}", tg.sent_to(ACME, -1001));
    assert!(tg.sent_to(ACME, -1002).is_empty());
    assert_eq!(tg.sent_to(ACME, -1004).len(), 2);
    no_product_name(&tg, ACME);
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_pairing_flow_end_to_end_with_approvals_encrypted_and_persisted() {
    const STRANGER: i64 = 987_654_321;
    let tg = FakeTelegram::start().await;
    tg.add_bot(ACME, 123456, "acme_bot");
    tg.add_bot(BETA, 654321, "beta_bot");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let (code, out, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    let store = format!("store: {{ masterKey: {{ file: {:?} }} }},", key.to_str().unwrap());
    let cfg = config(&tg.base, "", &store);
    let mut gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    let cfg_path = dir.path().join("bulkhead.json5");
    let cli = |base: &str, args: &[&str]| {
        let mut all = vec!["pairing", "--config", cfg_path.to_str().unwrap(), "--url", base];
        all.extend_from_slice(args);
        let mut cmd = std::process::Command::new(crate::harness::BIN);
        cmd.args(&all).env_remove("BULKHEAD_CONFIG").env("OPS_TOKEN", OPS);
        let o = cmd.output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };

    // The stranger gets a code in the agent's name, and their message is not answered.
    tg.dm(ACME, STRANGER, "hi, can we talk?");
    let got = tg.wait_sent(ACME, STRANGER, 1).await;
    assert!(got[0].text.contains("Acme Bot"), "{:?}", got[0].text);
    let code_text: String = got[0].text.split("pairing code is ").nth(1).unwrap().chars().take(8).collect();
    assert_eq!(code_text.len(), 8);
    // Asking again gives the same code; still no answer from the agent.
    tg.dm(ACME, STRANGER, "hello?");
    let got = tg.wait_sent(ACME, STRANGER, 2).await;
    assert!(got[1].text.contains(&code_text), "{:?}", got[1].text);
    assert!(!got.iter().any(|s| s.text.starts_with("echo:")));

    let (code, out, err) = cli(&gw.base, &["list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&code_text) && out.contains(&STRANGER.to_string()) && out.contains("telegram/acme"), "{out}");
    let (code, _, err) = cli(&gw.base, &["approve", "WRONGCOD"]);
    assert_eq!(code, 2, "unknown codes are refused: {err}");
    assert!(err.contains("no pending pairing request"), "{err}");
    let (code, out, err) = cli(&gw.base, &["approve", &code_text.to_lowercase()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("approved"), "{out}");

    tg.dm(ACME, STRANGER, "thanks!");
    let got = tg.wait_sent(ACME, STRANGER, 3).await;
    assert_eq!(got[2].text, "echo: thanks!");

    // Denied codes never let a sender in.
    tg.dm(ACME, 555, "me too");
    let got = tg.wait_sent(ACME, 555, 1).await;
    let other: String = got[0].text.split("pairing code is ").nth(1).unwrap().chars().take(8).collect();
    let (code, out, err) = cli(&gw.base, &["deny", &other]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = cli(&gw.base, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pending"].as_array().unwrap().len(), 0, "{v}");

    // The approval survives a restart; on disk nothing holds the peer id in clear.
    assert_eq!(gw.terminate().await, Some(0));
    let state = dir.path().join("state");
    let needle = STRANGER.to_string();
    let files = files_under(&state);
    assert!(files.iter().any(|f| f.ends_with("pairing.age")), "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{} holds the peer id", f.display());
    }
    gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    tg.dm(ACME, STRANGER, "back again");
    let got = tg.wait_sent(ACME, STRANGER, 4).await;
    assert_eq!(got[3].text, "echo: back again");
    let (code, out, _) = cli(&gw.base, &["list"]);
    assert_eq!(code, 0);
    assert!(out.contains("no pending"), "{out}");
    assert_eq!(gw.terminate().await, Some(0));

    // Both decisions are in the tenant's audit trail, by operator, with the user as a digest.
    let (code, out, err) =
        run_cli(&["--config", cfg_path.to_str().unwrap(), "audit", "show", "--tenant", "alpha", "--json"], None);
    assert_eq!(code, 0, "{out}{err}");
    let decisions: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "pairing.decision")
        .collect();
    assert_eq!(decisions.len(), 2, "{out}");
    assert_eq!(decisions[0]["approved"], true);
    assert_eq!(decisions[1]["approved"], false);
    assert!(decisions.iter().all(|d| d["actor"] == "operator:ops" && d["account"] == "acme"), "{decisions:?}");
    assert!(!out.contains(&needle), "the user id appears only as a digest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_long_replies_are_split_and_paced_and_retry_after_is_honoured() {
    let (tg, _gw) = setup(ALLOWLIST).await;
    // textChunkLimit is 1000 for acme: a reply of ~2,400 characters goes out in three pieces.
    let words: String = (0..300).map(|i| format!("word{i:03} ")).collect();
    tg.fail_next_send(ACME, Fail::TooMany(1));
    tg.dm(ACME, 111, words.trim());
    let got = tg.wait_sent(ACME, 111, 3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    for s in &got {
        assert!(s.text.encode_utf16().count() <= 1000, "{}", s.text.len());
        assert!(!s.text.starts_with(' ') && !s.text.ends_with(' '));
    }
    let joined = got.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join(" ");
    assert_eq!(joined, format!("echo: {}", words.trim()), "split on word boundaries, nothing lost");
    // The 429's retry_after (1 s) was waited out before the first piece; pieces to one chat are
    // at least a second apart.
    let throttled = tg.throttled_at(ACME);
    assert_eq!(throttled.len(), 1);
    assert!(got[0].at.duration_since(throttled[0]) >= Duration::from_secs(1));
    for w in got.windows(2) {
        assert!(w[1].at.duration_since(w[0].at) >= Duration::from_secs(1), "per-chat pace");
    }
    // Exactly once: the throttled piece was not sent twice.
    assert_eq!(tg.sent_to(ACME, 111).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_revoked_token_stops_only_that_account_with_a_clear_log() {
    let (tg, gw) = setup(ALLOWLIST).await;
    tg.dm(ACME, 111, "before");
    tg.wait_sent(ACME, 111, 1).await;
    tg.revoke(ACME);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !gw.logs().contains("rejected the bot token") {
        assert!(std::time::Instant::now() < deadline, "no log about the revoked token:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = gw.logs();
    let line = logs.lines().find(|l| l.contains("rejected the bot token")).unwrap();
    assert!(line.contains("acme") && line.contains("other accounts are unaffected"), "{line}");
    assert!(!logs.contains(ACME) && !logs.contains("ACME-secret"), "the token is never logged");
    // The other tenant's bot keeps working.
    tg.dm(BETA, 42, "still there?");
    let got = tg.wait_sent(BETA, 42, 1).await;
    assert_eq!(got[0].text, "echo: still there?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_malformed_updates_and_server_errors_never_stop_polling_or_replay() {
    let (tg, gw) = setup(ALLOWLIST).await;
    tg.dm(ACME, 111, "one");
    tg.wait_sent(ACME, 111, 1).await;
    tg.wait_consumed(ACME).await;
    // A batch with: no update_id, a message missing required fields, an unknown update kind,
    // a message whose text is not a string, then a good one.
    tg.push_raw(ACME, json!({ "message": { "text": "no id" } }), false);
    tg.push_raw(ACME, json!({ "message": { "bogus": true } }), true);
    tg.push_raw(ACME, json!({ "some_future_update": { "x": 1 } }), true);
    tg.push_raw(
        ACME,
        json!({ "message": { "message_id": 9, "date": 1, "chat": crate::fake_telegram::chat(111, false), "text": { "not": "a string" } } }),
        true,
    );
    let last = tg.dm(ACME, 111, "two");
    let got = tg.wait_sent(ACME, 111, 2).await;
    assert_eq!(got[1].text, "echo: two");
    tg.wait_consumed(ACME).await;
    assert!(tg.offsets(ACME).iter().any(|o| *o > last), "the offset moved past every update");

    // The server replays an already-confirmed update: it is not handled twice.
    tg.replay_once(ACME);
    tg.dm(ACME, 111, "three");
    let got = tg.wait_sent(ACME, 111, 3).await;
    assert_eq!(got[2].text, "echo: three");

    // 5xx answers (an HTML proxy page, then Bot API JSON): polling retries and carries on.
    tg.fail_next_get_updates(ACME, Fail::BadGatewayHtml);
    tg.fail_next_get_updates(ACME, Fail::Internal);
    tg.fail_next_get_updates(ACME, Fail::TooMany(1));
    tg.dm(ACME, 111, "four");
    let got = tg.wait_sent(ACME, 111, 4).await;
    assert_eq!(got[3].text, "echo: four");
    tg.wait_consumed(ACME).await;
    tg.dm(ACME, 111, "barrier");
    let got = tg.wait_sent(ACME, 111, 5).await;
    let texts: Vec<&str> = got.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["echo: one", "echo: two", "echo: three", "echo: four", "echo: barrier"], "nothing twice");
    let logs = gw.logs();
    assert!(logs.contains("malformed Telegram update"), "{logs}");
    assert!(logs.contains("without an update_id"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_two_tenants_two_bots_never_cross_and_a_flood_does_not_slow_the_other() {
    let (tg, _gw) = setup(r#"dmPolicy: "open", allowFrom: ["*"],"#).await;
    tg.dm(ACME, 42, "for alpha");
    tg.dm(BETA, 42, "for bravo");
    assert_eq!(tg.wait_sent(ACME, 42, 1).await[0].text, "echo: for alpha");
    assert_eq!(tg.wait_sent(BETA, 42, 1).await[0].text, "echo: for bravo");
    // Same user id, two bots, two tenants: each bot only ever sent its own tenant's replies.
    tg.dm(ACME, 42, "/start");
    tg.dm(BETA, 42, "/start");
    assert!(tg.wait_sent(ACME, 42, 2).await[1].text.contains("Acme Bot"));
    assert!(tg.wait_sent(BETA, 42, 2).await[1].text.contains("Beta Helper"));
    assert!(tg.sent(ACME).iter().all(|s| !s.text.contains("bravo") && !s.text.contains("Beta")));
    assert!(tg.sent(BETA).iter().all(|s| !s.text.contains("alpha") && !s.text.contains("Acme")));

    // A flood on acme: 30 messages in one chat (paced at one reply per second, so at least
    // 30 s of backlog). Beta's reply must come while acme is still working through it.
    for i in 0..30 {
        tg.dm(ACME, 7, &format!("flood {i}"));
    }
    tg.wait_sent(ACME, 7, 2).await;
    tg.dm(BETA, 8, "urgent");
    tg.wait_sent(BETA, 8, 1).await;
    let acme_done = tg.sent_to(ACME, 7).len();
    assert!(acme_done < 30, "beta waited for acme's backlog ({acme_done} of 30 sent)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_telegram_tokens_privacy_and_webhooks() {
    let tg = FakeTelegram::start().await;
    tg.add_bot(ACME, 123456, "acme_bot");
    tg.add_bot(BETA, 654321, "beta_bot");
    tg.set_webhook(BETA, "https://hooks.example.net/tg");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    std::fs::write(&path, config(&tg.base, ALLOWLIST, MEMORY)).unwrap();
    let doctor = || {
        let o = std::process::Command::new(crate::harness::BIN)
            .args(["doctor", "--config", path.to_str().unwrap()])
            .env_remove("BULKHEAD_CONFIG")
            .envs(env())
            .output()
            .unwrap();
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).to_string())
    };
    let (code, out) = doctor();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ok    telegram/acme: token accepted (bot @acme_bot)"), "{out}");
    // acme has a group with requireMention: false, and privacy mode is on.
    assert!(out.contains("warn  telegram/acme: privacy mode is on") && out.contains("/setprivacy"), "{out}");
    assert!(
        out.contains("FAIL  telegram/beta: a webhook is set (to hooks.example.net)") && out.contains("deleteWebhook"),
        "{out}"
    );
    assert!(!out.contains("ACME-secret") && !out.contains("BETA-secret"), "{out}");
    tg.revoke(ACME);
    let (code, out) = doctor();
    assert_eq!(code, 1);
    assert!(out.contains("FAIL  telegram/acme: getMe failed: the bot token was rejected"), "{out}");
    // A getMe answer that lacks a field says which one (not "not valid JSON"), never the token.
    tg.me_without(BETA, "has_main_web_app");
    let (code, out) = doctor();
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "FAIL  telegram/beta: getMe failed: the Bot API's getMe answer lacks the field `has_main_web_app`"
        ),
        "{out}"
    );
    assert!(!out.contains("not valid JSON") && !out.contains("BETA-secret"), "{out}");
}

/// A gateway whose acme bot talks to the fake model (`sleep-ms:` texts make slow turns), with
/// the encrypted store.
fn crash_config(api: &str, model: &str, key: &Path) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 5 }},
  stateDir: "state",
  store: {{ masterKey: {{ file: {key:?} }} }},
  models: {{ providers: {{ fake: {{ api: "openai", baseUrl: "{model}", timeoutSec: 30 }} }} }},
  tenants: [ {{ id: "alpha" }} ],
  agents: {{ list: [ {{ id: "acme-support", tenant: "alpha", model: "fake/m", identity: {{ name: "Acme Bot" }} }} ] }},
  bindings: [ {{ agentId: "acme-support", match: {{ channel: "telegram", accountId: "acme" }} }} ],
  channels: {{ telegram: {{ accounts: {{
    acme: {{ token: {{ env: "ACME_TG_TOKEN" }}, apiUrl: "{api}", dmPolicy: "allowlist", allowFrom: ["918273645", "918273646"] }},
  }} }} }},
}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_messages_accepted_before_a_crash_are_stored_once_and_answered_after_restart() {
    const U1: i64 = 918_273_645;
    const U2: i64 = 918_273_646;
    let tg = FakeTelegram::start().await;
    tg.add_bot(ACME, 123456, "acme_bot");
    let model = crate::fakes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let (code, out, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    let cfg = crash_config(&tg.base, &model.base, &key);
    let mut gw = Gateway::start_in(dir.path(), &cfg, &env()).await;

    // Three slow turns in one chat (they run one after the other) and one in another chat.
    let texts = ["sleep-ms:1500 first", "sleep-ms:1500 second", "sleep-ms:1500 third"];
    for t in texts {
        tg.dm(ACME, U1, t);
    }
    tg.dm(ACME, U2, "sleep-ms:1500 other chat");
    // Once the gateway has confirmed every update and the first turn is at the model, kill it:
    // two turns of chat U1 are still queued.
    tg.wait_consumed(ACME).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while model.requests().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no turn reached the model");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.kill().await;
    assert!(tg.sent_to(ACME, U1).len() < 3, "the crash came while turns were queued");
    // As if the last confirmation never reached Telegram: every update comes again unless the
    // restarted gateway knows (from its inbox) that it already stored it.
    tg.unconfirm_all(ACME);

    // The restarted gateway answers every accepted message; no update is taken twice.
    gw = Gateway::start_in(dir.path(), &cfg, &env()).await;
    let got = tg.wait_sent(ACME, U1, 3).await;
    tg.wait_sent(ACME, U2, 1).await;
    for t in texts {
        assert!(got.iter().any(|s| s.text == format!("fake says: {t}")), "no reply to {t:?}: {got:?}");
    }
    tg.dm(ACME, U1, "after restart");
    let got = tg.wait_sent(ACME, U1, 4).await;
    assert_eq!(got.last().unwrap().text, "fake says: after restart", "{got:?}");
    assert_eq!(gw.terminate().await, Some(0));

    // In the transcript, each message exactly once, each followed by its reply.
    let out = dir.path().join("alpha.jsonl");
    let cfg_path = dir.path().join("bulkhead.json5");
    let (code, stdout, err) = run_cli(
        &["--config", cfg_path.to_str().unwrap(), "tenant", "export", "alpha", "--out", out.to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0, "{stdout}{err}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let msgs: Vec<(String, String)> = lines
        .iter()
        .filter(|l| l["type"] == "message")
        .map(|l| (l["role"].as_str().unwrap().to_string(), l["text"].as_str().unwrap().to_string()))
        .collect();
    for t in texts.iter().chain(&["sleep-ms:1500 other chat", "after restart"]) {
        let at: Vec<usize> =
            msgs.iter().enumerate().filter(|(_, m)| m.0 == "user" && m.1 == *t).map(|(i, _)| i).collect();
        assert_eq!(at.len(), 1, "{t:?} is stored exactly once: {msgs:?}");
        assert_eq!(msgs[at[0] + 1], ("assistant".to_string(), format!("fake says: {t}")), "{msgs:?}");
    }
    // The inbox held message text and chat ids only encrypted.
    for f in files_under(&dir.path().join("state")) {
        let bytes = std::fs::read(&f).unwrap();
        for needle in ["sleep-ms", "918273645"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{} holds {needle:?}", f.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_two_accounts_with_one_bot_token_are_refused_at_start() {
    let tg = FakeTelegram::start().await;
    tg.add_bot(ACME, 123456, "acme_bot");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let (code, out, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    let store = format!("store: {{ masterKey: {{ file: {:?} }} }},", key.to_str().unwrap());
    let path = dir.path().join("c.json5");
    // Two env names, one token, two tenants: compared by value, not by account id or reference.
    std::fs::write(&path, config(&tg.base, ALLOWLIST, &store)).unwrap();
    let child = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .env_remove("BULKHEAD_CONFIG")
        .envs(env())
        .env("BETA_TG_TOKEN", ACME)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !waiter.is_finished() {
        if std::time::Instant::now() > deadline {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("serve started with one bot token on two accounts");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = waiter.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("channels.telegram.accounts.beta.token")
            && err.contains("channels.telegram.accounts.acme.token")
            && err.contains("same bot token"),
        "{err}"
    );
    assert!(!err.contains("ACME-secret") && !String::from_utf8_lossy(&o.stdout).contains("ACME-secret"), "{err}");
}

#[test]
fn telegram_config_errors_name_their_keys() {
    let (paths, _) = crate::harness::refused_paths(
        r#"{ agents: { list: [ { id: "a" } ] },
             channels: { telegram: { dmPolicy: "open", allowFrom: ["*"], accounts: {
               acme: { token: { env: "X" }, apiUrl: "ftp://nope", allowFrom: ["@alice"], groups: { "team": {} }, textChunkLimit: 5000 },
               beta: { dmPolicy: "sometimes" },
               gamma: { token: { env: "X" }, allowFrom: ["42"] },
             } } } }"#,
    );
    for p in [
        "channels.telegram.accounts.acme.apiUrl",
        "channels.telegram.accounts.acme.allowFrom[0]",
        "channels.telegram.accounts.acme.groups.team",
        "channels.telegram.accounts.acme.textChunkLimit",
        "channels.telegram.accounts.beta.token",
        "channels.telegram.accounts.beta.dmPolicy",
        // An inherited "open" with the account's own allowFrom: the effective policy lacks "*".
        "channels.telegram.accounts.gamma.allowFrom",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} missing from {paths:?}");
    }
}

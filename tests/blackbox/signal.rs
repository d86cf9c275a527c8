//! The Signal channel through the real binary, against the fake signal-cli daemon (JSON-RPC +
//! SSE, multi-account): two tenants on two numbers of one daemon never cross (even when the
//! daemon sends every event on every stream), direct messages answered, group rules and
//! mentions, a replayed event answered once, a daemon restart and a gateway crash losing no
//! accepted message, a reload restarting only the changed number, a malformed event skipped by
//! kind, no number or text in the logs, `doctor`, config errors, `tenant add` and
//! `channels login`.

use std::time::Duration;

use base64::Engine;

use crate::fake_signal::FakeSignal;
use crate::harness::{BIN, Gateway, run_cli};

const ACME: &str = "+15550000001";
const ACME_ACI: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const GLOBEX: &str = "+15550000002";
const GLOBEX_ACI: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const ALICE: (&str, &str) = ("+15557770001", "a11ce000-0000-4000-8000-00000000a11c");
const BOB: (&str, &str) = ("+15557770002", "b0b00000-0000-4000-8000-000000000b0b");

fn group(n: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

/// Group 0xfb: its standard base64 has `+` and `/`, its URL-safe form `-` and `_`.
fn team() -> String {
    group(0xfb)
}
fn team_url_safe() -> String {
    base64::engine::general_purpose::URL_SAFE.encode([0xfb; 32])
}

/// `acme` (tenant alpha: DMs from Alice only; group 1 by its signal-cli id with a mention,
/// group 0xfb, written URL-safe, without a mention for Alice only) and `globex` (tenant bravo,
/// open DMs), both on one daemon.
fn config(url: &str, model: &str, agent_model: &str) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 5 }},
  stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ demo: {{ api: "scripted" }}, {model} }} }},
  tenants: [ {{ id: "alpha" }}, {{ id: "bravo" }} ],
  agents: {{ list: [
    {{ id: "acme-support", tenant: "alpha", model: "{agent_model}", identity: {{ name: "Acme Bot" }} }},
    {{ id: "globex-help", tenant: "bravo", model: "demo/scripted", identity: {{ name: "Globex Helper" }} }},
  ] }},
  bindings: [
    {{ agentId: "acme-support", match: {{ channel: "signal", accountId: "acme" }} }},
    {{ agentId: "globex-help", match: {{ channel: "signal", accountId: "globex" }} }},
  ],
  channels: {{ signal: {{ url: "{url}", accounts: {{
    acme: {{ number: "{ACME}", dmPolicy: "allowlist", allowFrom: ["{alice}"],
             groups: {{ "{g1}": {{}}, "{team}": {{ requireMention: false, allowFrom: ["{alice_aci}"] }} }} }},
    globex: {{ number: "{GLOBEX}", dmPolicy: "open", allowFrom: ["*"] }},
  }} }} }},
}}"#,
        alice = ALICE.0,
        alice_aci = ALICE.1,
        g1 = group(1),
        team = team_url_safe(),
    )
}

async fn fake() -> FakeSignal {
    let signal = FakeSignal::start().await;
    signal.add_account(ACME, ACME_ACI);
    signal.add_account(GLOBEX, GLOBEX_ACI);
    signal
}

async fn setup() -> (FakeSignal, Gateway) {
    let signal = fake().await;
    let gw = Gateway::start(&config(&signal.url, "", "demo/scripted"), &[]).await;
    signal.wait_streams(ACME, 1).await;
    signal.wait_streams(GLOBEX, 1).await;
    (signal, gw)
}

/// No phone number (the accounts', the senders') and none of `texts` in the logs; no product
/// name in what was sent.
fn nothing_private_logged(signal: &FakeSignal, gw: &Gateway, texts: &[&str]) {
    let logs = gw.logs();
    for n in [ACME, GLOBEX, ALICE.0, BOB.0, "5550000001", "5557770001"] {
        assert!(!logs.contains(n), "{n} appears in the logs:\n{logs}");
    }
    for t in texts {
        assert!(!logs.contains(t), "message text {t:?} appears in the logs");
    }
    for s in signal.sent() {
        assert!(!s.message.to_lowercase().contains("bulkhead"), "product name leaked: {:?}", s.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_two_tenants_on_two_numbers_of_one_daemon_never_cross() {
    let (signal, gw) = setup().await;
    signal.dm(ACME, ALICE, "hello acme");
    let got = signal.wait_sent(ACME, ALICE.0, 1).await;
    assert_eq!(got[0].message, "echo: hello acme");
    signal.dm(GLOBEX, BOB, "hello globex");
    let got = signal.wait_sent(GLOBEX, BOB.0, 1).await;
    assert_eq!(got[0].message, "echo: hello globex");
    // Bob is not in acme's allowlist: nothing at all.
    signal.dm(ACME, BOB, "let me in");

    // The daemon now sends every event on every stream (as a stream without ?account= gets):
    // each account still takes only the events that name its own number.
    signal.set_broadcast(true);
    signal.dm(ACME, ALICE, "only for acme");
    signal.dm(GLOBEX, ALICE, "only for globex");
    signal.wait_sent(ACME, ALICE.0, 2).await;
    signal.wait_sent(GLOBEX, ALICE.0, 1).await;
    // A barrier on each account, then count.
    signal.dm(ACME, ALICE, "barrier a");
    signal.dm(GLOBEX, BOB, "barrier g");
    signal.wait_sent(ACME, ALICE.0, 3).await;
    signal.wait_sent(GLOBEX, BOB.0, 2).await;
    let acme: Vec<String> = signal.sent().iter().filter(|s| s.account == ACME).map(|s| s.message.clone()).collect();
    let globex: Vec<String> = signal.sent().iter().filter(|s| s.account == GLOBEX).map(|s| s.message.clone()).collect();
    assert_eq!(acme, ["echo: hello acme", "echo: only for acme", "echo: barrier a"], "acme took only its own");
    assert_eq!(globex, ["echo: hello globex", "echo: only for globex", "echo: barrier g"], "globex took only its own");
    assert!(signal.sent_to(ACME, BOB.0).is_empty(), "allowlist enforced");
    // Each account asked the daemon for its own number's stream.
    assert_eq!((signal.streams(ACME), signal.streams(GLOBEX)), (1, 1));
    nothing_private_logged(&signal, &gw, &["hello acme", "only for globex", "let me in"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_groups_follow_the_rules_and_mentions() {
    let (signal, gw) = setup().await;
    let g1 = group(1);
    // Group 1 (listed by its signal-cli id): only a mention is answered, without the mention's
    // placeholder, in the group.
    signal.group(ACME, BOB, &g1, "no mention here", false);
    signal.group(ACME, BOB, &g1, "what's up", true);
    let got = signal.wait_sent(ACME, &g1, 1).await;
    assert_eq!(got[0].message, "echo: what's up");
    assert_eq!(got[0].recipient, None, "sent to the group, by groupId");
    // Group 0xfb (listed in URL-safe form): no mention needed, but Alice only (listed by ACI).
    signal.group(ACME, BOB, &team(), "bob is not listed", true);
    signal.group(ACME, ALICE, &team(), "no mention needed", false);
    let got = signal.wait_sent(ACME, &team(), 1).await;
    assert_eq!(got[0].message, "echo: no mention needed");
    // A group that is not listed, even with a mention; the account's own phone's messages.
    signal.group(ACME, ALICE, &group(2), "not this group", true);
    signal.sync(ACME, ALICE.0, "sent from the phone");
    // Globex has no groups at all (groupPolicy allowlist by default).
    signal.group(GLOBEX, ALICE, &g1, "globex group", true);

    signal.dm(ACME, ALICE, "barrier");
    signal.wait_sent(ACME, ALICE.0, 1).await;
    signal.dm(GLOBEX, ALICE, "barrier");
    signal.wait_sent(GLOBEX, ALICE.0, 1).await;
    assert_eq!(signal.sent_to(ACME, &g1).len(), 1, "{:?}", signal.sent());
    assert_eq!(signal.sent_to(ACME, &team()).len(), 1, "{:?}", signal.sent());
    assert!(signal.sent_to(ACME, &group(2)).is_empty());
    assert!(signal.sent_to(GLOBEX, &g1).is_empty());
    assert_eq!(signal.sent().len(), 4, "{:?}", signal.sent());
    nothing_private_logged(&signal, &gw, &["what's up", "no mention needed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_a_replayed_event_is_answered_once_and_a_malformed_one_skipped_by_kind() {
    let (signal, gw) = setup().await;
    signal.dm(ACME, ALICE, "only once");
    signal.wait_sent(ACME, ALICE.0, 1).await;
    signal.replay_last(ACME);
    signal.replay_last(ACME);
    // Malformed events on the stream: not JSON, a bad group id, an oversized event.
    signal.push_raw(ACME, "event:receive\ndata:{not json at all\n\n");
    let bad_group = serde_json::json!({ "account": ACME, "envelope": { "sourceNumber": ALICE.0, "sourceUuid": ALICE.1,
        "timestamp": 42, "dataMessage": { "message": "secret words", "groupInfo": { "groupId": "!!", "type": "DELIVER" } } } });
    signal.push_raw(ACME, &format!("event:receive\ndata:{bad_group}\n\n"));
    signal.push_raw(ACME, &format!("event:receive\ndata:{}\n\n", "x".repeat(300 * 1024)));
    signal.dm(ACME, ALICE, "still here");
    let got = signal.wait_sent(ACME, ALICE.0, 2).await;
    assert_eq!(got[1].message, "echo: still here");
    signal.dm(ACME, ALICE, "barrier");
    let got = signal.wait_sent(ACME, ALICE.0, 3).await;
    let texts: Vec<&str> = got.iter().map(|s| s.message.as_str()).collect();
    assert_eq!(texts, ["echo: only once", "echo: still here", "echo: barrier"], "the replay was not answered");
    for kind in ["an event that is not JSON", "a group message with an unreadable groupId", "an oversized event"] {
        gw.wait_log(kind).await;
    }
    assert!(gw.logs().contains("Skipped a malformed Signal event."));
    assert_eq!(signal.streams(ACME), 1, "the stream was kept through the malformed events");
    nothing_private_logged(&signal, &gw, &["only once", "secret words", "not json at all"]);
}

/// Waits until a turn has reached the fake model (so its message was taken and stored).
async fn at_the_model(model: &crate::fakes::Running) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while model.requests().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the turn never reached the model");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_daemon_restart_loses_no_accepted_message() {
    let signal = fake().await;
    let model = crate::fakes::start().await;
    let provider = format!(r#"fake: {{ api: "openai", baseUrl: "{}", timeoutSec: 30 }}"#, model.base);
    let gw = Gateway::start(&config(&signal.url, &provider, "fake/m"), &[]).await;
    signal.wait_streams(ACME, 1).await;
    signal.wait_streams(GLOBEX, 1).await;

    // A slow turn is accepted; the daemon goes away before its reply can be sent, and a
    // message arrives while it is down (it waits on Signal's servers).
    signal.dm(ACME, ALICE, "sleep-ms:1500 before the restart");
    at_the_model(&model).await;
    let opened = signal.opened();
    let restart = {
        let signal = signal.clone();
        tokio::spawn(async move { signal.restart(Duration::from_secs(4)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal.dm(ACME, ALICE, "sent while down");
    signal.dm(GLOBEX, BOB, "globex while down");
    restart.await.unwrap();

    let got = signal.wait_sent(ACME, ALICE.0, 2).await;
    let mut texts: Vec<&str> = got.iter().map(|s| s.message.as_str()).collect();
    texts.sort();
    assert_eq!(texts, ["fake says: sent while down", "fake says: sleep-ms:1500 before the restart"]);
    let got = signal.wait_sent(GLOBEX, BOB.0, 1).await;
    assert_eq!(got[0].message, "echo: globex while down");
    signal.wait_streams(ACME, 1).await;
    assert!(signal.opened() >= opened + 2, "both accounts reconnected");
    // Once more after the restart, and nothing was answered twice.
    signal.dm(ACME, ALICE, "after");
    signal.wait_sent(ACME, ALICE.0, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(signal.sent_to(ACME, ALICE.0).len(), 3, "{:?}", signal.sent());
    let logs = gw.logs();
    assert!(logs.contains("Signal event stream ended") || logs.contains("Signal event stream unavailable"), "{logs}");
    assert!(logs.contains("Send failed; retrying."), "the reply was retried while the daemon was down:\n{logs}");
    nothing_private_logged(&signal, &gw, &["before the restart", "sent while down"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_an_accepted_message_survives_a_gateway_crash_and_is_answered_once() {
    let signal = fake().await;
    let model = crate::fakes::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let (code, out, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    let provider = format!(r#"fake: {{ api: "openai", baseUrl: "{}", timeoutSec: 30 }}"#, model.base);
    let cfg = config(&signal.url, &provider, "fake/m")
        .replace(r#"store: { mode: "memory" }"#, &format!("store: {{ masterKey: {{ file: {key:?} }} }}"));
    let mut gw = Gateway::start_in(dir.path(), &cfg, &[]).await;
    signal.wait_streams(ACME, 1).await;

    // Taken from the stream (it will not be sent again) and at the model when the gateway dies.
    signal.dm(ACME, ALICE, "sleep-ms:4000 survive this");
    at_the_model(&model).await;
    gw.kill().await;
    assert!(signal.sent().is_empty(), "the crash came before the reply");

    // The restarted gateway answers it from the tenant's inbox, once.
    gw = Gateway::start_in(dir.path(), &cfg, &[]).await;
    let got = signal.wait_sent(ACME, ALICE.0, 1).await;
    assert_eq!(got[0].message, "fake says: sleep-ms:4000 survive this");
    signal.dm(ACME, ALICE, "after the crash");
    let got = signal.wait_sent(ACME, ALICE.0, 2).await;
    assert_eq!(got[1].message, "fake says: after the crash");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(signal.sent_to(ACME, ALICE.0).len(), 2, "{:?}", signal.sent());
    nothing_private_logged(&signal, &gw, &["survive this"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_a_reload_restarts_only_the_number_whose_settings_changed() {
    let signal = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&signal.url, "", "demo/scripted");
    let gw = Gateway::start_in(dir.path(), &cfg, &[]).await;
    signal.wait_streams(ACME, 1).await;
    signal.wait_streams(GLOBEX, 1).await;
    let before = signal.opened();
    // Globex's direct messages become Alice's only.
    let open = format!(r#"globex: {{ number: "{GLOBEX}", dmPolicy: "open", allowFrom: ["*"] }}"#);
    let closed = format!(r#"globex: {{ number: "{GLOBEX}", dmPolicy: "allowlist", allowFrom: ["{}"] }}"#, ALICE.0);
    assert!(cfg.contains(&open));
    std::fs::write(dir.path().join("bulkhead.json5"), cfg.replace(&open, &closed)).unwrap();
    gw.signal("HUP");
    gw.wait_log("Config reloaded.").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while signal.opened() < before + 1 || signal.streams(GLOBEX) != 1 {
        assert!(std::time::Instant::now() < deadline, "globex did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(signal.opened(), before + 1, "only globex's stream was opened again");
    signal.dm(GLOBEX, BOB, "bob is refused now");
    signal.dm(GLOBEX, ALICE, "alice is allowed");
    signal.wait_sent(GLOBEX, ALICE.0, 1).await;
    signal.dm(ACME, ALICE, "acme kept its stream");
    signal.wait_sent(ACME, ALICE.0, 1).await;
    assert!(signal.sent_to(GLOBEX, BOB.0).is_empty(), "the new settings apply: {:?}", signal.sent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_replies_retry_daemon_errors_and_are_delivered_once() {
    let (signal, _gw) = setup().await;
    signal.fail_sends(2);
    let t0 = std::time::Instant::now();
    signal.dm(GLOBEX, BOB, "try again");
    let got = signal.wait_sent(GLOBEX, BOB.0, 1).await;
    assert_eq!(got[0].message, "echo: try again");
    assert!(got[0].at.duration_since(t0) >= Duration::from_millis(2500), "sent again after a backoff, not at once");
    let sends = signal.calls().iter().filter(|(m, _)| m == "send").count();
    assert_eq!(sends, 3, "two failed sends, then the one that went through");
    let (_, params) = signal.calls().into_iter().find(|(m, _)| m == "send").unwrap();
    assert_eq!(params["account"], GLOBEX, "multi-account mode: each request names its account");
    assert_eq!(params["recipient"], serde_json::json!([BOB.0]));
}

fn write(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("bulkhead.json5");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn signal_config_errors_name_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &format!(
            r#"{{ tenants: [ {{ id: "alpha" }}, {{ id: "bravo" }} ],
  agents: {{ list: [ {{ id: "a", tenant: "alpha", model: "demo/scripted" }}, {{ id: "b", tenant: "bravo", model: "demo/scripted" }} ] }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  bindings: [ {{ agentId: "a", match: {{ channel: "signal", accountId: "one" }} }},
              {{ agentId: "b", match: {{ channel: "signal", accountId: "two" }} }} ],
  channels: {{ signal: {{ accounts: {{
    one: {{ number: "{ACME}" }},
    two: {{ number: "+1 555 000 0001", allowFrom: ["alice"], groups: {{ "general": {{}} }} }},
  }} }} }} }}"#
        ),
    );
    let (code, out, _) = run_cli(&["config", "check", "--json", path.to_str().unwrap()], None);
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = v.to_string();
    for p in [
        "channels.signal.accounts.two.number",
        "channels.signal.accounts.two.allowFrom[0]",
        "channels.signal.accounts.two.groups.general",
    ] {
        assert!(text.contains(p), "{p} missing: {text}");
    }
    assert!(text.contains("the same number as channels.signal.accounts.one.number"), "{text}");

    // Valid, but the daemon is reached over plain HTTP off this machine: a warning.
    let path = write(
        dir.path(),
        &format!(
            r#"{{ store: {{ mode: "memory" }}, agents: {{ list: [ {{ id: "a" }} ] }}, bindings: [ {{ agentId: "a", match: {{ channel: "signal" }} }} ],
  channels: {{ signal: {{ accounts: {{ one: {{ number: "{ACME}", url: "http://192.0.2.7:8080" }} }} }} }} }}"#
        ),
    );
    let (code, out, _) = run_cli(&["config", "check", "--json", path.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("channels.signal.accounts.one.url")
            && warnings.contains("plain HTTP on a non-loopback address"),
        "{out}"
    );
}

/// `bulkhead doctor --config PATH`: (exit code, stdout).
fn doctor(path: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(BIN)
        .args(["doctor", "--config", path.to_str().unwrap()])
        .env_remove("BULKHEAD_CONFIG")
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_signal_daemon_and_each_number() {
    let signal = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let config = |url: &str| {
        format!(
            r#"{{ stateDir: "state", store: {{ mode: "memory" }}, models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "alpha" }}, {{ id: "bravo" }} ],
  agents: {{ list: [ {{ id: "a", tenant: "alpha", model: "demo/scripted" }}, {{ id: "b", tenant: "bravo", model: "demo/scripted" }} ] }},
  bindings: [ {{ agentId: "a", match: {{ channel: "signal", accountId: "acme" }} }},
              {{ agentId: "b", match: {{ channel: "signal", accountId: "ghost" }} }} ],
  channels: {{ signal: {{ url: "{url}", accounts: {{ acme: {{ number: "{ACME}" }}, ghost: {{ number: "+15559990123" }} }} }} }} }}"#
        )
    };
    let path = write(dir.path(), &config(&signal.url));
    let (code, out) = tokio::task::spawn_blocking(move || doctor(&path)).await.unwrap();
    assert!(out.contains("ok    signal/acme: signal-cli daemon 0.14.6 reachable at http://127.0.0.1:"), "{out}");
    assert!(out.contains("ok    signal/acme: number +…0001 is registered on the daemon"), "{out}");
    assert!(
        out.contains("FAIL  signal/ghost: number +…0123 is not registered on the daemon")
            && out.contains("bulkhead channels login --channel signal --account ghost"),
        "{out}"
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(!out.contains(ACME) && !out.contains("+15559990123"), "numbers are shown by their last digits: {out}");

    // A daemon that is not running: named, with how to start it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir2 = tempfile::tempdir().unwrap();
    let path = write(dir2.path(), &config(&url));
    let (_, out) = tokio::task::spawn_blocking(move || doctor(&path)).await.unwrap();
    assert!(
        out.contains("FAIL  signal/acme: the signal-cli daemon at http://127.0.0.1:")
            && out.contains("is not reachable"),
        "{out}"
    );
    assert!(out.contains("signal-cli daemon --http 127.0.0.1:8080"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_channels_login_shows_a_qr_code_and_links_the_number() {
    let signal = fake().await;
    let new = "+15554440004";
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &format!(
            r#"{{ models: {{ providers: {{ demo: {{ api: "scripted" }} }} }}, tenants: [ {{ id: "alpha" }} ],
  agents: {{ list: [ {{ id: "a", tenant: "alpha", model: "demo/scripted" }} ] }},
  bindings: [ {{ agentId: "a", match: {{ channel: "signal", accountId: "newbie" }} }} ],
  channels: {{ signal: {{ url: "{}", accounts: {{ newbie: {{ number: "{new}" }} }} }} }} }}"#,
            signal.url
        ),
    );
    let login = move |path: std::path::PathBuf, channel: &'static str| {
        tokio::task::spawn_blocking(move || {
            run_cli(
                &["channels", "login", "--channel", channel, "--account", "newbie", "--config", path.to_str().unwrap()],
                None,
            )
        })
    };
    signal.set_link_number(new);
    let (code, out, err) = login(path.clone(), "signal").await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let uri = "sgnl://linkdevice?uuid=Zm9vYmFyLWxpbmstdG9rZW4&pub_key=QUJDREVGR0hJSktMTU5PUA";
    assert!(out.contains(uri), "the link as text: {out}");
    let qr_rows = out.lines().filter(|l| l.contains('█') || l.contains('▀') || l.contains('▄')).count();
    assert!(qr_rows >= 10, "a QR code drawn in the terminal: {out}");
    assert!(out.contains(&format!("Linked {new}")), "{out}");
    let finish: Vec<serde_json::Value> =
        signal.calls().into_iter().filter(|(m, _)| m == "finishLink").map(|(_, p)| p).collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["deviceLinkUri"], uri, "finishLink gets the URI startLink gave");
    assert!(finish[0]["deviceName"].as_str().is_some_and(|d| d.contains("newbie")), "{finish:?}");

    // The phone of another number scanned it: said plainly, exit 1.
    signal.set_link_number("+15554440999");
    let (code, _, err) = login(path.clone(), "signal").await.unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("+15554440999") && err.contains("channels.signal.accounts.newbie.number is +15554440004"),
        "{err}"
    );
    // A channel with nothing to link, and an account that is not configured.
    let (code, _, err) = login(path.clone(), "telegram").await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no enabled account"), "{err}");
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &["channels", "login", "--channel", "signal", "--account", "nobody", "--config", path.to_str().unwrap()],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("channels.signal has no enabled account \"nobody\""), "{err}");
}

#[test]
fn signal_tenant_add_says_how_to_onboard_a_number_instead() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        r#"{ store: { mode: "memory" }, models: { providers: { demo: { api: "scripted" } } }, agents: { list: [ { id: "a", model: "demo/scripted" } ] } }"#,
    );
    let (code, out, err) = run_cli(
        &["tenant", "add", "--id", "newco", "--channel", "signal", "--yes", "--config", path.to_str().unwrap()],
        None,
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--channel signal") && err.contains("bulkhead channels login --channel signal"), "{err}");
    assert!(!dir.path().join("tenants.d").join("newco.json5").exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_ignores_its_own_other_numbers_and_refuses_a_single_account_daemon() {
    let (signal, gw) = setup().await;
    // Acme's number writes to globex's (open to anyone): two agents of this gateway would answer
    // each other for ever, so globex ignores it; a customer after it is answered.
    signal.dm(GLOBEX, (ACME, ACME_ACI), "hello from the other tenant");
    signal.dm(GLOBEX, BOB, "after it");
    let got = signal.wait_sent(GLOBEX, BOB.0, 1).await;
    assert_eq!(got[0].message, "echo: after it");
    assert!(signal.sent_to(GLOBEX, ACME).is_empty(), "{:?}", signal.sent());
    assert!(gw.logs().contains("Signal message from another number of this gateway ignored"), "{}", gw.logs());
    nothing_private_logged(&signal, &gw, &["hello from the other tenant"]);
    drop(gw);

    // A daemon started with -a would send every account's replies from its one number: an
    // account on it does not start.
    signal.set_single_account(true);
    let gw = Gateway::start(&config(&signal.url, "", "demo/scripted"), &[]).await;
    gw.wait_log("serves a single number (started with -a)").await;
    signal.dm(ACME, ALICE, "on a single-account daemon");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(signal.sent_to(ACME, ALICE.0).is_empty(), "nothing answered from a single-account daemon");
}

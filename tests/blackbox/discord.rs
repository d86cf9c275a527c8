//! The Discord channel through the real binary, against the fake Discord (REST + Gateway): the
//! seed's sample config answering mentions in allowed channels only (by name, kept current on
//! rename, threads by their parent), two tenants' bots never crossing, a dropped connection
//! resumed with nothing lost or answered twice, a rate-limited reply delivered after the wait,
//! malformed events skipped, refused intents named, and `doctor`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::fake_discord::FakeDiscord;
use crate::harness::{BIN, Gateway, repo_root};

const SEED: &str = "MTAwMA.seed-discord-bot-token-value";
const ACME: &str = "MTAwMQ.acme-discord-bot-token-value";
const BETA: &str = "MTAwMg.beta-discord-bot-token-value";
const GUILD: &str = "123456789012345678";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("SEED_DISCORD_TOKEN", SEED), ("ACME_DISCORD_TOKEN", ACME), ("BETA_DISCORD_TOKEN", BETA)]
}

/// The seed's sample config as written, with what a real deployment adds: a listener, a store
/// mode, a model for its agent, the token from the environment and the fake's URLs.
fn seed_config(fake: &FakeDiscord) -> String {
    let seed = std::fs::read_to_string(repo_root().join("tests/fixtures/configs/seed-sample.json5")).unwrap();
    let seed = seed
        .replacen(
            "{",
            r#"{ gateway: { bind: "127.0.0.1:0", shutdownGraceSec: 5 }, stateDir: "state", store: { mode: "memory" },
                 models: { providers: { demo: { api: "scripted" } } },"#,
            1,
        )
        .replace("agents: {\n    list: [", "agents: { defaults: { model: \"demo/scripted\" },\n    list: [")
        .replace(
            r#"token: "...","#,
            &format!(
                r#"token: {{ env: "SEED_DISCORD_TOKEN" }}, apiUrl: "{}", gatewayUrl: "{}","#,
                fake.api, fake.gateway
            ),
        );
    assert!(seed.contains("SEED_DISCORD_TOKEN") && seed.contains("demo/scripted"), "{seed}");
    seed
}

/// Waits until `token`'s bot has sent `n` messages, up to `within`.
async fn until_sent(fake: &FakeDiscord, token: &str, n: usize, within: Duration) -> Vec<crate::fake_discord::Sent> {
    let end = Instant::now() + within;
    loop {
        let sent = fake.sent(token);
        if sent.len() >= n || Instant::now() > end {
            return sent;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn seed_gateway() -> (FakeDiscord, Gateway) {
    let fake = FakeDiscord::start().await;
    fake.add_bot(SEED, 1000, "agency_bot", &[(GUILD, "Agency")]);
    fake.add_channel(GUILD, "4000", "general", None);
    fake.add_channel(GUILD, "4001", "support", None);
    fake.add_channel(GUILD, "4002", "random", None);
    fake.add_channel(GUILD, "4005", "a thread", Some("4000"));
    let gw = Gateway::start(&seed_config(&fake), &env()).await;
    assert!(fake.wait_connected(SEED, Duration::from_secs(15)).await, "{}", gw.logs());
    (fake, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_seed_sample_answers_mentions_in_allowed_channels_only() {
    let (fake, gw) = seed_gateway().await;
    let alice = (5000, "alice");
    fake.message(SEED, 3001, "4002", Some(GUILD), alice, "<@1000> are you in random?");
    fake.message(SEED, 3002, "4000", Some(GUILD), alice, "no mention here");
    fake.message(SEED, 3003, "4000", Some(GUILD), alice, "<@1000> hello");
    let sent = until_sent(&fake, SEED, 1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1, "{sent:?}\n{}", gw.logs());
    assert_eq!(
        (sent[0].channel.as_str(), sent[0].content.as_str()),
        ("4000", "echo: hello"),
        "the mention is not part of the text"
    );
    assert_eq!(sent[0].body["allowed_mentions"], json!({ "parse": [] }), "a reply pings nobody");
    assert!(fake.typing_count(SEED) >= 1, "typing while the run is in progress");
    // A thread of #general is its own conversation, answered in the thread.
    fake.message(SEED, 3004, "4005", Some(GUILD), alice, "<@1000> in a thread");
    let sent = until_sent(&fake, SEED, 2, Duration::from_secs(10)).await;
    assert_eq!((sent[1].channel.as_str(), sent[1].content.as_str()), ("4005", "echo: in a thread"));
    // Renames are followed: #random becomes #support (allowed), #support becomes #lobby (not).
    fake.dispatch(SEED, "CHANNEL_UPDATE", json!({ "id": "4001", "type": 0, "guild_id": GUILD, "name": "lobby" }));
    fake.dispatch(SEED, "CHANNEL_UPDATE", json!({ "id": "4002", "type": 0, "guild_id": GUILD, "name": "support" }));
    fake.message(SEED, 3005, "4001", Some(GUILD), alice, "<@1000> lobby?");
    fake.message(SEED, 3006, "4002", Some(GUILD), alice, "<@1000> renamed");
    let sent = until_sent(&fake, SEED, 3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent_now = fake.sent(SEED);
    assert_eq!(sent_now.len(), 3, "{sent_now:?}");
    assert_eq!((sent[2].channel.as_str(), sent[2].content.as_str()), ("4002", "echo: renamed"));
    // Another guild, not configured: ignored (groupPolicy allowlist).
    fake.add_channel("999999999999999999", "4100", "general", None);
    fake.message(SEED, 3007, "4100", Some("999999999999999999"), alice, "<@1000> other server");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(fake.sent(SEED).len(), 3);
    for s in fake.sent(SEED) {
        assert!(!s.content.to_lowercase().contains("bulkhead"), "product name leaked: {:?}", s.content);
    }
    let logs = gw.logs();
    assert!(!logs.contains(SEED) && !logs.contains("are you in random"), "no token or content in logs:\n{logs}");
}

fn two_bots(fake: &FakeDiscord) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 5 }},
  stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "alpha" }}, {{ id: "bravo" }} ],
  agents: {{ list: [
    {{ id: "acme-support", tenant: "alpha", model: "demo/scripted", identity: {{ name: "Acme Bot" }} }},
    {{ id: "beta-help", tenant: "bravo", model: "demo/scripted", identity: {{ name: "Beta Helper" }} }},
  ] }},
  bindings: [
    {{ agentId: "acme-support", match: {{ channel: "discord", accountId: "acme" }} }},
    {{ agentId: "beta-help", match: {{ channel: "discord", accountId: "beta" }} }},
  ],
  channels: {{ discord: {{ apiUrl: "{api}", gatewayUrl: "{gw}", groupPolicy: "open", accounts: {{
    acme: {{ token: {{ env: "ACME_DISCORD_TOKEN" }}, dmPolicy: "open", allowFrom: ["*"] }},
    beta: {{ token: {{ env: "BETA_DISCORD_TOKEN" }}, dmPolicy: "allowlist", allowFrom: ["discord:6000"] }},
  }} }} }},
}}"#,
        api = fake.api,
        gw = fake.gateway
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_two_tenants_bots_never_cross_and_a_disconnect_resumes_without_loss_or_repeats() {
    let fake = FakeDiscord::start().await;
    fake.add_bot(ACME, 1001, "acme_bot", &[]);
    fake.add_bot(BETA, 1002, "beta_bot", &[]);
    let gw = Gateway::start(&two_bots(&fake), &env()).await;
    assert!(fake.wait_connected(ACME, Duration::from_secs(15)).await, "{}", gw.logs());
    assert!(fake.wait_connected(BETA, Duration::from_secs(15)).await, "{}", gw.logs());
    // Direct messages: acme is open, beta answers only its allowlisted user.
    fake.message(ACME, 3100, "7001", None, (6000, "carol"), "hi acme");
    fake.message(BETA, 3101, "7002", None, (6001, "dave"), "hi beta");
    fake.message(BETA, 3102, "7003", None, (6000, "carol"), "hello beta");
    let a = until_sent(&fake, ACME, 1, Duration::from_secs(10)).await;
    let b = until_sent(&fake, BETA, 1, Duration::from_secs(10)).await;
    assert_eq!(
        a.iter().map(|s| (s.channel.as_str(), s.content.as_str())).collect::<Vec<_>>(),
        [("7001", "echo: hi acme")]
    );
    assert_eq!(
        b.iter().map(|s| (s.channel.as_str(), s.content.as_str())).collect::<Vec<_>>(),
        [("7003", "echo: hello beta")]
    );

    // The connection drops mid-conversation; a message sent meanwhile is replayed on RESUME and
    // answered once, the earlier one is not answered again.
    fake.disconnect(ACME);
    fake.message(ACME, 3103, "7001", None, (6000, "carol"), "while you were away");
    let a = until_sent(&fake, ACME, 2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let a_now = fake.sent(ACME);
    assert_eq!(
        a_now.iter().map(|s| s.content.as_str()).collect::<Vec<_>>(),
        ["echo: hi acme", "echo: while you were away"],
        "{a:?}\n{}",
        gw.logs()
    );
    assert_eq!(fake.resumes(ACME), 1, "resumed, not re-identified: {}", gw.logs());
    assert_eq!(fake.identifies(ACME), 1);
    assert_eq!(fake.identifies(BETA), 1, "the other bot never reconnected");
    assert_eq!(fake.sent(BETA).len(), 1, "nothing crossed to the other bot");

    // A rate-limited reply waits for retry_after and arrives once.
    fake.rate_limit_next(BETA, &[1.2]);
    let asked = Instant::now();
    fake.message(BETA, 3104, "7003", None, (6000, "carol"), "slow down");
    let b = until_sent(&fake, BETA, 2, Duration::from_secs(15)).await;
    assert_eq!(b.len(), 2, "{}", gw.logs());
    assert_eq!(b[1].content, "echo: slow down");
    assert!(b[1].at.duration_since(asked) >= Duration::from_millis(1200), "sent before retry_after passed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.sent(BETA).len(), 2, "delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_malformed_events_are_skipped_and_refused_intents_name_the_portal_toggle() {
    let fake = FakeDiscord::start().await;
    fake.add_bot(ACME, 1001, "acme_bot", &[]);
    fake.add_bot(BETA, 1002, "beta_bot", &[]);
    fake.refuse_intents(BETA);
    let gw = Gateway::start(&two_bots(&fake), &env()).await;
    assert!(fake.wait_connected(ACME, Duration::from_secs(15)).await, "{}", gw.logs());
    // A MESSAGE_CREATE missing its fields, an unknown event, a frame that is not JSON, an
    // oversized and an attachment-only message: none stops the account.
    fake.raw(ACME, r#"{"t":"MESSAGE_CREATE","s":null,"op":0,"d":{"id":"3200","content":"SECRET-CONTENT-1"}}"#);
    fake.dispatch(ACME, "SOMETHING_NEW", json!({ "content": "SECRET-CONTENT-2" }));
    fake.raw(ACME, "not json SECRET-CONTENT-3");
    fake.message(ACME, 3201, "7001", None, (6000, "carol"), &"x".repeat(30_000));
    let mut att = json!({ "id": "3202", "channel_id": "7001", "author": { "id": "6000", "username": "carol", "discriminator": "0", "avatar": null },
        "content": "", "timestamp": "2026-01-01T00:00:00.000000+00:00", "edited_timestamp": null, "tts": false, "mention_everyone": false,
        "mention_roles": [], "embeds": [], "pinned": false, "type": 0, "mentions": [] });
    att["attachments"] = json!([{ "id": "1", "filename": "a.png", "size": 10, "url": "https://cdn/a.png", "proxy_url": "https://cdn/a.png" }]);
    fake.dispatch(ACME, "MESSAGE_CREATE", att);
    fake.message(ACME, 3203, "7001", None, (6000, "carol"), "still there?");
    let sent = until_sent(&fake, ACME, 3, Duration::from_secs(15)).await;
    let texts: Vec<&str> = sent.iter().map(|s| s.content.as_str()).collect();
    assert!(texts.iter().all(|t| t.chars().count() <= 2000), "split at 2,000 characters");
    assert!(texts.iter().any(|t| t.contains("can only read text")), "{texts:?}");
    // Its reply queues behind the 16 paced sends of the 30,000-character echo: 15 s was not
    // always enough on a slow machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fake.sent(ACME).iter().any(|s| s.content == "echo: still there?") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent: Vec<String> = fake.sent(ACME).iter().map(|s| s.content.chars().take(40).collect()).collect();
    assert!(sent.iter().any(|s| s == "echo: still there?"), "sent {sent:?}\n{}", gw.logs());
    let logs = gw.logs();
    assert!(logs.contains("Skipped a Discord gateway message"), "{logs}");
    assert!(!logs.contains("SECRET-CONTENT"), "content never logged:\n{logs}");
    // The bot whose application lacks the intent: refused with the toggle named, and only it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains("4014") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = gw.logs();
    assert!(logs.contains("MESSAGE CONTENT INTENT") && logs.contains("Developer Portal"), "{logs}");
    assert!(!logs.contains(BETA) && !logs.contains(ACME), "tokens never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_discord_tokens_intents_and_guilds() {
    let fake = FakeDiscord::start().await;
    fake.add_bot(SEED, 1000, "agency_bot", &[("555555555555555555", "Elsewhere")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    std::fs::write(&path, seed_config(&fake)).unwrap();
    let doctor = || {
        let o = std::process::Command::new(BIN)
            .args(["doctor", "--config", path.to_str().unwrap()])
            .env_remove("BULKHEAD_CONFIG")
            .envs(env())
            .output()
            .unwrap();
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).to_string())
    };
    let (code, out) = doctor();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ok    discord/default: token accepted (bot agency_bot)"), "{out}");
    assert!(out.contains("ok    discord/default: MESSAGE CONTENT intent enabled"), "{out}");
    assert!(
        out.contains(&format!("FAIL  discord/default: the bot is not in guild {GUILD}"))
            && out.contains("https://discord.com/oauth2/authorize?client_id=1000&scope=bot&permissions="),
        "{out}"
    );
    fake.refuse_intents(SEED);
    let (_, out) = doctor();
    assert!(
        out.contains("FAIL  discord/default: the MESSAGE CONTENT intent is off")
            && out.contains("Privileged Gateway Intents"),
        "{out}"
    );
    assert!(!out.contains(SEED), "{out}");
}

const OPS: &str = "ops-token-discord-4b8e1c7a2f9d3e6b5a0c8f1d7e4b2a9c";

/// `two_bots` with an operator, and beta's account only when `beta` is set (its DM policy given).
fn reloadable(fake: &FakeDiscord, beta: Option<&str>) -> String {
    let mut text = two_bots(fake).replace(
        r#"gateway: { bind: "127.0.0.1:0", shutdownGraceSec: 5 },"#,
        r#"gateway: { bind: "127.0.0.1:0", shutdownGraceSec: 5, operators: [ { id: "ops", token: { env: "OPS_TOKEN" }, role: "admin" } ] },"#,
    );
    match beta {
        Some(dm) => text = text.replace(r#"dmPolicy: "allowlist", allowFrom: ["discord:6000"]"#, dm),
        None => {
            text = text
                .replace(r#"    beta: { token: { env: "BETA_DISCORD_TOKEN" }, dmPolicy: "allowlist", allowFrom: ["discord:6000"] },"#, "")
                .replace(r#"    { agentId: "beta-help", match: { channel: "discord", accountId: "beta" } },"#, "");
        }
    }
    text
}

async fn reload(gw: &Gateway) -> serde_json::Value {
    let r = crate::harness::http().post(gw.url("/admin/reload")).bearer_auth(OPS).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_accounts_follow_the_reload_and_unchanged_ones_never_reconnect() {
    let fake = FakeDiscord::start().await;
    fake.add_bot(ACME, 1001, "acme_bot", &[]);
    fake.add_bot(BETA, 1002, "beta_bot", &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut env = env();
    env.push(("OPS_TOKEN", OPS));
    let mut gw = Gateway::start_with(dir.path(), &reloadable(&fake, None), &env, &["--no-watch"]).await;
    assert!(fake.wait_connected(ACME, Duration::from_secs(15)).await, "{}", gw.logs());
    assert_eq!(fake.identifies(BETA), 0);
    // Added: beta connects and answers; acme is left alone.
    std::fs::write(dir.path().join("bulkhead.json5"), reloadable(&fake, Some(r#"dmPolicy: "open", allowFrom: ["*"]"#)))
        .unwrap();
    let report = reload(&gw).await;
    assert_eq!(report["accountsRestarted"], json!(["discord/beta"]), "{report}");
    assert!(fake.wait_connected(BETA, Duration::from_secs(15)).await, "{}", gw.logs());
    fake.message(BETA, 3300, "7010", None, (6002, "erin"), "hi new bot");
    assert_eq!(until_sent(&fake, BETA, 1, Duration::from_secs(10)).await[0].content, "echo: hi new bot");
    // Changed: only beta reconnects (a fresh IDENTIFY), and its new policy applies.
    std::fs::write(dir.path().join("bulkhead.json5"), reloadable(&fake, Some(r#"dmPolicy: "disabled""#))).unwrap();
    let report = reload(&gw).await;
    assert_eq!(report["accountsRestarted"], json!(["discord/beta"]), "{report}");
    let end = Instant::now() + Duration::from_secs(15);
    while fake.identifies(BETA) < 2 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.identifies(BETA), 2, "{}", gw.logs());
    assert!(fake.wait_connected(BETA, Duration::from_secs(15)).await);
    fake.message(BETA, 3301, "7010", None, (6002, "erin"), "are DMs off?");
    fake.message(ACME, 3302, "7011", None, (6002, "erin"), "acme still here?");
    assert_eq!(until_sent(&fake, ACME, 1, Duration::from_secs(10)).await[0].content, "echo: acme still here?");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fake.sent(BETA).len(), 1, "DMs disabled by the reload");
    assert_eq!(fake.identifies(ACME), 1, "the unchanged account never reconnected");
    assert_eq!(fake.resumes(ACME), 0);
    assert_eq!(gw.terminate().await, Some(0));
}

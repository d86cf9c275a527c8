//! `bulkhead tenant add` and `tenant remove` through the real binary, against a running gateway
//! and the fake Telegram and Discord servers: a new tenant serves its first message with no
//! restart; a bad token, a missing intent and a bot token already in use stop the wizard before
//! anything is written, naming the fix; an existing id is refused, never overwritten; missing
//! answers are listed at once; `remove` stops serving and keeps the file aside.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::fake_discord::FakeDiscord;
use crate::fake_telegram::FakeTelegram;
use crate::harness::{BIN, Gateway, http};

const OPS: &str = "ops-token-onboard-9c3e7a1f5b2d8e4c6a0f9b3d7e1c5a2f";
const ACME_TG: &str = "123456:ACME-onboarding-token";
const BAD_TG: &str = "999999:NOT-A-REAL-TOKEN";
const DC: &str = "MTAwMw.onboarding-discord-token";

fn main_config() -> String {
    r#"{
  gateway: { bind: "127.0.0.1:0", shutdownGraceSec: 5, operators: [ { id: "ops", token: { env: "OPS_TOKEN" }, role: "admin" } ] },
  stateDir: "state", store: { mode: "memory" },
  models: { providers: { demo: { api: "scripted" } } },
  agents: { defaults: { model: "demo/scripted" } },
}"#
    .into()
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("OPS_TOKEN", OPS),
        ("ACME_TG", ACME_TG),
        ("BAD_TG", BAD_TG),
        ("SECOND_TG", ACME_TG),
        ("DC_TOKEN", DC),
        ("SL_BOT", "xoxb-onboard-bot-token"),
        ("SL_APP", "xapp-onboard-app-token"),
        ("WA_TOKEN", "EAAG-onboard-whatsapp-token"),
        ("WA_SECRET", "onboard-whatsapp-app-secret"),
        ("WA_VERIFY", "onboard-whatsapp-verify"),
    ]
}

/// Runs `bulkhead --config <dir>/bulkhead.json5 tenant <args>` with the test's environment.
fn tenant(dir: &Path, gw: &Gateway, args: &[&str]) -> (i32, String, String) {
    let config = dir.join("bulkhead.json5");
    let out = std::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "tenant"])
        .args(args)
        .args(["--url", gw.base.as_str()])
        .env_remove("BULKHEAD_CONFIG")
        .envs(env())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn nothing_written(dir: &Path, id: &str) {
    assert!(!dir.join(format!("tenants.d/{id}.json5")).exists(), "no tenant file for {id}");
    assert!(!dir.join(format!("secrets/{id}.api-token")).exists(), "no token file for {id}");
}

async fn models(gw: &Gateway, token: &str) -> u16 {
    http().get(gw.url("/v1/models")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_add_onboards_a_telegram_tenant_live_and_refuses_what_would_break() {
    let tg = FakeTelegram::start().await;
    tg.add_bot(ACME_TG, 123456, "acme_bot");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start_in(d, &main_config(), &env()).await;

    // Missing answers, without a terminal: every one named, exit 2, nothing written.
    let (code, _, err) = tenant(d, &gw, &["add", "--yes", "--channel", "telegram", "--template", "nope"]);
    assert_eq!(code, 2, "{err}");
    for want in ["--id", "--template", "--token-file or --token-env"] {
        assert!(err.contains(want), "{want}: {err}");
    }

    // A token Telegram rejects: stopped before anything is written, with the fix named.
    let api = tg.base.clone();
    let (code, _, err) = tenant(
        d,
        &gw,
        &["add", "--id", "badco", "--channel", "telegram", "--token-env", "BAD_TG", "--api-url", &api, "--yes"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("getMe failed") && err.contains("@BotFather") && err.contains("nothing was written"), "{err}");
    assert!(!err.contains(BAD_TG), "the token is never shown");
    nothing_written(d, "badco");

    // The real thing: a support tenant with its bot, applied with no restart.
    let started = Instant::now();
    let (code, out, err) = tenant(
        d,
        &gw,
        &[
            "add",
            "--id",
            "acme",
            "--name",
            "Acme Co",
            "--template",
            "support",
            "--channel",
            "telegram",
            "--token-env",
            "ACME_TG",
            "--api-url",
            &api,
            "--dm-policy",
            "open",
            "--allow-from",
            "*",
            "--test-message",
            "-1009",
            "--yes",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}\n{}", gw.logs());
    let test = tg.wait_sent(ACME_TG, -1009, 1).await;
    assert_eq!(test[0].text, "This is Acme Co: this chat is connected.", "in the tenant's name, never the product's");
    assert!(err.contains("test message sent"), "{err}");
    let token = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("API token: "))
        .expect("the API token is printed once")
        .to_string();
    let file = std::fs::read_to_string(d.join("tenants.d/acme.json5")).unwrap();
    assert!(file.contains(r#"{ env: "ACME_TG" }"#) && !file.contains(ACME_TG), "secrets are references: {file}");
    assert!(!file.contains(&token), "the API token is in its own file, not the tenant file");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("secrets/acme.api-token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is private");
    assert_eq!(models(&gw, &token).await, 200, "{}", gw.logs());
    let chat = tg.dm(ACME_TG, 4242, "hello");
    let sent = tg.wait_sent(ACME_TG, 4242, 1).await;
    assert_eq!(sent[0].text, "echo: hello", "chat {chat}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "onboarding took {took:?}");
    assert!(out.contains("Still to do") && out.contains("pairing approve"), "{out}");

    // The same id again: refused, never overwritten.
    let before = std::fs::read_to_string(d.join("tenants.d/acme.json5")).unwrap();
    let (code, _, err) = tenant(d, &gw, &["add", "--id", "acme", "--yes"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already exists") && err.contains("never overwrites"), "{err}");
    assert_eq!(std::fs::read_to_string(d.join("tenants.d/acme.json5")).unwrap(), before);

    // Another tenant with the same bot token: one bot, one tenant — refused, nothing written.
    let (code, _, err) = tenant(
        d,
        &gw,
        &["add", "--id", "second", "--channel", "telegram", "--token-env", "SECOND_TG", "--api-url", &api, "--yes"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("same bot token") && err.contains("nothing was written"), "{err}");
    nothing_written(d, "second");

    // Remove: the token stops working at once, the file is kept aside.
    let (code, out, err) = tenant(d, &gw, &["remove", "acme"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(models(&gw, &token).await, 401);
    assert!(!d.join("tenants.d/acme.json5").exists());
    assert!(std::fs::read_dir(d.join("tenants.d/.removed")).unwrap().count() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_add_checks_a_discord_bot_and_names_the_missing_intent() {
    let dc = FakeDiscord::start().await;
    dc.add_bot(DC, 1003, "studio_bot", &[("2000", "Studio")]);
    dc.refuse_intents(DC);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start_in(d, &main_config(), &env()).await;
    let args = [
        "add",
        "--id",
        "studio",
        "--template",
        "analyst",
        "--channel",
        "discord",
        "--token-env",
        "DC_TOKEN",
        "--api-url",
        &dc.api,
        "--gateway-url",
        &dc.gateway,
        "--guild",
        "2000",
        "--yes",
    ];
    let (code, _, err) = tenant(d, &gw, &args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("MESSAGE CONTENT") && err.contains("Privileged Gateway Intents"), "{err}");
    nothing_written(d, "studio");
    // The client flips the toggle: onboarded, and its bot connects without a restart.
    dc.allow_intents(DC);
    let (code, out, err) = tenant(d, &gw, &args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(dc.wait_connected(DC, Duration::from_secs(15)).await, "{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_add_onboards_a_slack_workspace_and_names_missing_scopes() {
    let slack = crate::fake_slack::FakeSlack::start().await;
    slack.add_team("T0", "xoxb-onboard-bot-token", "xapp-onboard-app-token", "U0BOT");
    slack.set_scopes("xoxb-onboard-bot-token", "chat:write");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start_in(d, &main_config(), &env()).await;
    let args = [
        "add",
        "--id",
        "globex",
        "--channel",
        "slack",
        "--token-env",
        "SL_BOT",
        "--app-token-env",
        "SL_APP",
        "--api-url",
        &slack.api,
        "--dm-policy",
        "open",
        "--allow-from",
        "*",
        "--yes",
    ];
    let (code, _, err) = tenant(d, &gw, &args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("scope") && err.contains("nothing was written"), "a missing scope is named: {err}");
    nothing_written(d, "globex");
    slack.set_scopes("xoxb-onboard-bot-token", crate::fake_slack::ALL_SCOPES);
    let (code, out, err) = tenant(d, &gw, &args);
    assert_eq!(code, 0, "{out}\n{err}\n{}", gw.logs());
    slack.wait_connected("xoxb-onboard-bot-token", 1).await;
    slack.dm("xoxb-onboard-bot-token", "U0ALICE", "hello slack");
    let sent = slack.wait_sent("xoxb-onboard-bot-token", "D0ALICE", 1).await;
    assert_eq!(sent[0].text, "echo: hello slack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_add_onboards_a_whatsapp_number_from_its_adapters_keys_and_it_serves() {
    use crate::fake_whatsapp::{FakeWhatsApp, delivery, signature};
    let wa = FakeWhatsApp::start().await;
    wa.add_number("1065", "EAAG-onboard-whatsapp-token", "+1 555-000-1065");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start_in(d, &main_config(), &env()).await;
    let base = ["add", "--id", "initech", "--channel", "whatsapp", "--api-url", &wa.api, "--dm-policy", "open"];
    // Missing keys are named by the adapter's own names, and a credential is never inline.
    let (code, _, err) = tenant(d, &gw, &[&base[..], &["--set", "appSecret=plain", "--yes"]].concat());
    assert_eq!(code, 2, "{err}");
    for want in [
        "--set phoneNumberId=VALUE: missing",
        "--token-file or --token-env (or --secret accessToken=env:VAR): missing",
        "--secret verifyToken=env:VAR or --secret verifyToken=file:PATH: missing",
        "--set appSecret: a credential is never written inline",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    nothing_written(d, "initech");
    // A phone number id the token cannot read: the live check stops it, nothing written.
    let full = |pnid: &'static str| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend([
            "--set",
            pnid,
            "--token-env",
            "WA_TOKEN",
            "--secret",
            "appSecret=env:WA_SECRET",
            "--secret",
            "verifyToken=env:WA_VERIFY",
            "--allow-from",
            "*",
            "--yes",
        ]);
        v
    };
    let (code, _, err) = tenant(d, &gw, &full("phoneNumberId=9999"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("phone number id 9999 not readable") && err.contains("nothing was written"), "{err}");
    nothing_written(d, "initech");
    let (code, out, err) = tenant(d, &gw, &full("phoneNumberId=1065"));
    assert_eq!(code, 0, "{out}\n{err}\n{}", gw.logs());
    assert!(out.contains("Callback URL"), "what is left to do is the adapter's: {out}");
    let file = std::fs::read_to_string(d.join("tenants.d/initech.json5")).unwrap();
    assert!(file.contains("phoneNumberId: \"1065\"") && file.contains("appSecret: { env: \"WA_SECRET\" }"), "{file}");
    assert!(!file.contains("onboard-whatsapp-app-secret"), "secrets are references: {file}");
    // The new number serves, with no restart.
    let url = gw.url("/channels/whatsapp/initech/webhook");
    let body = delivery("1065", &[("15550109999", "wamid.ONB1", "hello whatsapp")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http()
            .post(&url)
            .header("x-hub-signature-256", signature("onboard-whatsapp-app-secret", &body))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the new account never took the delivery: {}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = wa.wait_sent("1065", 1).await;
    assert_eq!((sent[0].to.as_str(), sent[0].text.as_str()), ("15550109999", "echo: hello whatsapp"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_add_asks_on_a_real_terminal_and_the_answers_onboard_the_tenant() {
    use std::io::Write;
    let tg = FakeTelegram::start().await;
    tg.add_bot(ACME_TG, 123456, "acme_bot");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Gateway::start_in(d, &main_config(), &env()).await;
    let config = d.join("bulkhead.json5");
    let cmd = [
        BIN,
        "--config",
        config.to_str().unwrap(),
        "tenant",
        "add",
        "--url",
        &gw.base,
        "--api-url",
        &tg.base,
        "--dm-policy",
        "open",
        "--allow-from",
        "*",
    ];
    let line: Vec<String> = cmd.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect();
    // `script` gives the command a pseudo-terminal; the answers are typed at its prompts.
    let mut child = std::process::Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env_remove("BULKHEAD_CONFIG")
        .envs(env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs the wizard on a pseudo-terminal");
    let mut stdin = child.stdin.take().unwrap();
    for answer in ["termco", "Term Co", "analyst", "telegram", "env:ACME_TG"] {
        std::thread::sleep(Duration::from_millis(200));
        writeln!(stdin, "{answer}").unwrap();
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    drop(stdin);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for q in ["? Tenant id", "? Display name", "? Template", "? Chat channel", "? The bot token"] {
        assert!(text.contains(q), "asked {q:?}: {text}");
    }
    let file = std::fs::read_to_string(d.join("tenants.d/termco.json5")).unwrap();
    assert!(
        file.contains("termco-analyst") && file.contains("policies/untrusted.json5") && file.contains("Term Co"),
        "{file}"
    );
    tg.dm(ACME_TG, 5151, "from the terminal");
    assert_eq!(tg.wait_sent(ACME_TG, 5151, 1).await[0].text, "echo: from the terminal");
}

//! The operator console (`/console`) in real headless Chromium against the real binary, with a
//! fake Telegram: an admin sees tenants, accounts and the audit chain, approves a pairing code
//! (and the sender is then answered) and reloads (the result is shown); an auditor sees the same
//! but has no reload or approve button, and the server refuses both (403) when called anyway;
//! an operator may act but not read the audit trail; a tenant token gets nothing.
//!
//! A screenshot of every page state is written to `<target dir>/console-screenshots/` (the path
//! is printed).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cdp::Browser;
use crate::fake_telegram::FakeTelegram;
use crate::harness::{Gateway, http, repo_root, run_cli};

const ACME: &str = "123456:ACME-console-token-value";
const ADMIN: &str = "ops-admin-console-7c2e9a4f1b8d3e6a5c9f2b7d4e1a8c3f";
const OPERATOR: &str = "ops-operator-console-3b8e1d6a9f4c2e7b5d1a8f3c6e9b2d4a";
const AUDITOR: &str = "ops-auditor-console-9d4a2f7c1e8b5d3a6f9c2e4b7d1a8f5c";
const TENANT: &str = "tok-alpha-console-5e2b8d1f4a7c9e3b6d2f8a1c5e9b3d7f";
const STRANGER: i64 = 424_242_424;
/// Parsed as markup, it would set `window.__pwned`.
const HOSTILE: &str = "<img src=x onerror='window.__pwned=1'>";
const WAIT: Duration = Duration::from_secs(15);

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ACME_TG_TOKEN", ACME),
        ("ADMIN_TOKEN", ADMIN),
        ("OPERATOR_TOKEN", OPERATOR),
        ("AUDITOR_TOKEN", AUDITOR),
        ("TENANT_TOKEN", TENANT),
    ]
}

fn config(api: &str, key: &std::path::Path) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 5, auth: {{ maxFailures: 50 }},
              operators: [ {{ id: "root", token: {{ env: "ADMIN_TOKEN" }}, role: "admin" }},
                           {{ id: "oncall", token: {{ env: "OPERATOR_TOKEN" }}, role: "operator" }},
                           {{ id: "soc2", token: {{ env: "AUDITOR_TOKEN" }}, role: "auditor" }} ] }},
  stateDir: "state",
  store: {{ masterKey: {{ file: {key:?} }} }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  tenants: [ {{ id: "alpha", name: "Alpha Co", apiTokens: [ {{ env: "TENANT_TOKEN" }} ] }},
             {{ id: "bravo", name: "Bravo {HOSTILE}" }} ],
  agents: {{ list: [
    {{ id: "acme-support", tenant: "alpha", model: "demo/scripted", identity: {{ name: "Acme Bot" }} }},
    {{ id: "bravo-bot", tenant: "bravo", model: "demo/scripted" }},
  ] }},
  bindings: [ {{ agentId: "acme-support", match: {{ channel: "telegram", accountId: "acme" }} }} ],
  channels: {{ telegram: {{ accounts: {{
    acme: {{ token: {{ env: "ACME_TG_TOKEN" }}, apiUrl: "{api}" }},
  }} }} }},
}}"#
    )
}

struct Setup {
    tg: FakeTelegram,
    gw: Gateway,
    dir: tempfile::TempDir,
    config: String,
}

/// The fake Telegram with the bot, a master key, and the gateway serving (no file watcher: the
/// reloads here are the console's).
async fn setup() -> Setup {
    let tg = FakeTelegram::start().await;
    tg.add_bot(ACME, 123456, "acme_bot");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let (code, out, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    let config = config(&tg.base, &key);
    let gw = Gateway::start_with(dir.path(), &config, &env(), &["--no-watch"]).await;
    Setup { tg, gw, dir, config }
}

fn shots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(browser: &Browser, name: &str) -> anyhow::Result<()> {
    let path = shots().join(format!("{name}.png"));
    browser.screenshot(&path).await?;
    println!("console screenshot: {}", path.display());
    Ok(())
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

async fn open(gw: &Gateway) -> anyhow::Result<Browser> {
    let browser = Browser::launch().await?;
    browser.set_viewport(1280, 1600).await?;
    browser.navigate(&gw.url("/console")).await?;
    browser.wait_for("document.body.dataset.state === 'signed-out'", WAIT).await?;
    Ok(browser)
}

async fn sign_in(browser: &Browser, token: &str) -> anyhow::Result<()> {
    browser
        .eval(&format!(
            "document.getElementById('token').value = {}; document.getElementById('sign-in').click()",
            js(token)
        ))
        .await?;
    Ok(())
}

async fn ready(browser: &Browser) -> anyhow::Result<()> {
    browser.wait_for("document.body.dataset.state === 'ready'", WAIT).await?;
    Ok(())
}

async fn click_refresh(browser: &Browser) -> anyhow::Result<()> {
    browser.eval("document.getElementById('refresh').click()").await?;
    ready(browser).await
}

/// What the whole page says, as text (never markup was made of server data).
async fn page_text(browser: &Browser) -> anyhow::Result<String> {
    Ok(browser.eval("document.body.innerText").await?.as_str().unwrap_or_default().to_string())
}

async fn no_product_name_and_not_pwned(browser: &Browser) -> anyhow::Result<()> {
    let html = browser.eval("document.documentElement.outerHTML.toLowerCase()").await?;
    assert!(!html.as_str().unwrap().contains("bulkhead"), "the console is white-label");
    assert_eq!(browser.eval("window.__pwned === undefined").await?, json!(true), "server data was parsed as markup");
    assert_eq!(browser.eval("document.querySelectorAll('main img').length").await?, json!(0));
    Ok(())
}

/// A code the stranger is given by the bot.
async fn stranger_code(tg: &FakeTelegram, n: usize) -> String {
    tg.dm(ACME, STRANGER, "hello, anyone?");
    let got = tg.wait_sent(ACME, STRANGER, n).await;
    got[n - 1].text.split("pairing code is ").nth(1).expect("a pairing code").chars().take(8).collect()
}

/// `fetch` from inside the page with `token`: the status the server answers.
async fn fetch_status(
    browser: &Browser,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<u64> {
    let body = body.map_or("undefined".to_string(), |b| js(&b.to_string()));
    let expr = format!(
        "fetch({}, {{ method: {}, headers: {{ Authorization: 'Bearer ' + {}, 'Content-Type': 'application/json' }}, body: {body} }}).then(r => r.status)",
        js(path),
        js(method),
        js(token)
    );
    Ok(browser.eval(&expr).await?.as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_admin_sees_everything_approves_a_pairing_code_and_reloads() -> anyhow::Result<()> {
    let s = setup().await;
    let browser = open(&s.gw).await?;
    assert_eq!(browser.eval("document.title").await?, json!("Operator console"));
    let csp = http().get(s.gw.url("/console")).send().await?;
    let csp = csp.headers()["content-security-policy"].to_str()?.to_string();
    assert!(csp.contains("script-src 'sha256-") && !csp.contains("unsafe-inline"), "{csp}");
    no_product_name_and_not_pwned(&browser).await?;
    shot(&browser, "01-signed-out").await?;

    sign_in(&browser, ADMIN).await?;
    ready(&browser).await?;
    assert_eq!(browser.eval("document.getElementById('who').textContent").await?, json!("Signed in as root (admin)"));
    assert_eq!(browser.eval("document.getElementById('token').value").await?, json!(""));
    let tenants = browser.eval("[...document.querySelectorAll('#tenants-body tr')].map(r => r.dataset.tenant)").await?;
    assert_eq!(tenants, json!(["alpha", "bravo"]));
    let text = page_text(&browser).await?;
    assert!(text.contains("acme-support (Acme Bot)") && text.contains(&format!("Bravo {HOSTILE}")), "{text}");
    browser
        .wait_for(
            "(document.getElementById('refresh').click(), document.querySelector('#accounts-body tr[data-account=\"telegram/acme\"] td.state').textContent === 'running')",
            WAIT,
        )
        .await?;
    ready(&browser).await?;
    // The audit chain: the host log and each tenant's, verified, with their checkpoints.
    let logs = browser
        .eval("[...document.querySelectorAll('#audit-body tr')].map(r => [r.dataset.log, r.querySelector('td.verified').textContent])")
        .await?;
    assert_eq!(
        logs,
        json!([["host", "verified"], ["tenant:alpha", "verified"], ["tenant:bravo", "verified"]]),
        "{logs}"
    );
    assert!(browser.eval("document.getElementById('usage-chart-alpha') !== null").await?.as_bool().unwrap());
    no_product_name_and_not_pwned(&browser).await?;
    shot(&browser, "02-admin").await?;

    // A stranger asks; the code shows up in the console, and approving it lets them talk.
    let code = stranger_code(&s.tg, 1).await;
    browser
        .wait_for(
            &format!(
                "(document.getElementById('refresh').click(), document.querySelector('#pairing-body tr[data-code={}] button.approve') !== null)",
                js(&code)
            ),
            WAIT,
        )
        .await?;
    ready(&browser).await?;
    shot(&browser, "03-admin-pairing-pending").await?;
    browser
        .eval(&format!("document.querySelector('#pairing-body tr[data-code={}] button.approve').click()", js(&code)))
        .await?;
    browser
        .wait_for("document.body.dataset.state === 'ready' && !document.getElementById('pairing-empty').hidden", WAIT)
        .await?;
    s.tg.dm(ACME, STRANGER, "thanks!");
    let got = s.tg.wait_sent(ACME, STRANGER, 2).await;
    assert_eq!(got[1].text, "echo: thanks!", "the approved sender is answered");

    // Another stranger's code is denied from the console: it is gone, and they get no answer.
    s.tg.dm(ACME, STRANGER + 1, "me too");
    let got = s.tg.wait_sent(ACME, STRANGER + 1, 1).await;
    let other: String = got[0].text.split("pairing code is ").nth(1).unwrap().chars().take(8).collect();
    let row = format!("#pairing-body tr[data-code={}]", js(&other));
    browser
        .wait_for(
            &format!(
                "(document.getElementById('refresh').click(), document.querySelector('{row} button.deny') !== null)"
            ),
            WAIT,
        )
        .await?;
    ready(&browser).await?;
    browser.eval(&format!("document.querySelector('{row} button.deny').click()")).await?;
    browser
        .wait_for(&format!("document.body.dataset.state === 'ready' && document.querySelector('{row}') === null"), WAIT)
        .await?;
    let v: Value = http().get(s.gw.url("/admin/pairing")).bearer_auth(ADMIN).send().await?.json().await?;
    assert_eq!(v["pending"], json!([]), "{v}");

    // Accessible: every control is labelled, every table has column headers.
    let a11y = browser
        .eval(
            "[[...document.querySelectorAll('button')].every(b => (b.getAttribute('aria-label') || b.textContent).trim().length > 0),
              [...document.querySelectorAll('input')].every(i => i.labels.length > 0),
              [...document.querySelectorAll('table')].every(t => t.querySelectorAll('thead th[scope=col]').length > 0 && t.caption),
              [...document.querySelectorAll('section')].every(s => s.querySelector('h2') && s.getAttribute('aria-labelledby'))]",
        )
        .await?;
    assert_eq!(a11y, json!([true, true, true, true]), "labels, headers, headings");

    // A broken config is refused, with its errors shown; the fixed one is applied.
    let path = s.dir.path().join("bulkhead.json5");
    std::fs::write(&path, "{ this is not json5")?;
    browser.eval("document.getElementById('reload').click()").await?;
    browser
        .wait_for(
            "document.body.dataset.state === 'ready' && document.getElementById('reload-result').dataset.applied === 'false'",
            WAIT,
        )
        .await?;
    let result = browser.eval("document.getElementById('reload-result').innerText").await?;
    assert!(
        result.as_str().unwrap().contains("Refused (admin") && result.as_str().unwrap().contains("Errors:"),
        "{result}"
    );
    shot(&browser, "04-admin-reload-refused").await?;
    std::fs::write(&path, &s.config)?;
    browser.eval("document.getElementById('reload').click()").await?;
    browser
        .wait_for(
            "document.body.dataset.state === 'ready' && document.getElementById('reload-result').dataset.applied === 'true'",
            WAIT,
        )
        .await?;
    let result = browser.eval("document.getElementById('reload-result').innerText").await?;
    assert!(result.as_str().unwrap().contains("Applied (admin"), "{result}");
    shot(&browser, "05-admin-reload-applied").await?;

    // An account whose connection ends (the bot token revoked) shows as stopped.
    s.tg.revoke(ACME);
    browser
        .wait_for(
            "(document.getElementById('refresh').click(), document.querySelector('#accounts-body tr[data-account=\"telegram/acme\"] td.state').textContent === 'stopped')",
            Duration::from_secs(60),
        )
        .await?;
    ready(&browser).await?;
    shot(&browser, "05b-admin-account-stopped").await?;

    // Both reloads are counted, and every metric the observability kit names is exported.
    let metrics = http().get(s.gw.url("/metrics")).bearer_auth(ADMIN).send().await?.text().await?;
    assert!(metrics.contains("gateway_reloads_total{outcome=\"refused\"} 1"), "{metrics}");
    assert!(metrics.contains("gateway_reloads_total{outcome=\"applied\"} 1"), "{metrics}");
    assert!(metrics.contains("gateway_audit_write_failures_total 0"), "{metrics}");
    for file in ["ops/grafana-dashboard.json", "ops/prometheus-alerts.yml"] {
        let body = std::fs::read_to_string(repo_root().join(file))?;
        for name in body.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if name.starts_with("gateway_") || name.starts_with("process_") {
                let exported = metrics
                    .lines()
                    .any(|l| l.strip_prefix("# TYPE ").map_or(l, |r| r).split(['{', ' ']).next() == Some(name));
                assert!(exported, "{file} names {name}, which /metrics does not serve");
            }
        }
    }
    browser.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_auditor_sees_tenants_and_audit_but_cannot_reload_or_approve() -> anyhow::Result<()> {
    let s = setup().await;
    let code = stranger_code(&s.tg, 1).await;
    let browser = open(&s.gw).await?;
    sign_in(&browser, AUDITOR).await?;
    ready(&browser).await?;
    assert_eq!(browser.eval("document.getElementById('who').textContent").await?, json!("Signed in as soc2 (auditor)"));
    // The server is the enforcement: whatever the page shows, the calls
    // made from it anyway are refused.
    assert_eq!(fetch_status(&browser, "POST", "/admin/reload", AUDITOR, None).await?, 403);
    let body = json!({ "code": code });
    assert_eq!(fetch_status(&browser, "POST", "/admin/pairing/approve", AUDITOR, Some(body.clone())).await?, 403);
    assert_eq!(fetch_status(&browser, "POST", "/admin/pairing/deny", AUDITOR, Some(body)).await?, 403);
    let tenants = browser.eval("[...document.querySelectorAll('#tenants-body tr')].map(r => r.dataset.tenant)").await?;
    assert_eq!(tenants, json!(["alpha", "bravo"]));
    let logs =
        browser.eval("[...document.querySelectorAll('#audit-body tr td.verified')].map(t => t.textContent)").await?;
    assert_eq!(logs, json!(["verified", "verified", "verified"]), "{logs}");
    assert_eq!(browser.eval("document.getElementById('audit-denied').hidden").await?, json!(true));
    // The pending code is listed, with no way to decide it; there is no reload button.
    assert_eq!(
        browser.eval(&format!("document.querySelector('#pairing-body tr[data-code={}]') !== null", js(&code))).await?,
        json!(true)
    );
    assert_eq!(browser.eval("document.querySelectorAll('#pairing-body button').length").await?, json!(0));
    assert_eq!(browser.eval("document.getElementById('reload') === null").await?, json!(true));
    assert!(page_text(&browser).await?.contains("Your role may not reload the configuration."));
    no_product_name_and_not_pwned(&browser).await?;
    shot(&browser, "06-auditor").await?;

    s.tg.dm(ACME, STRANGER, "still there?");
    let got = s.tg.wait_sent(ACME, STRANGER, 2).await;
    assert!(got[1].text.contains(&code), "still not paired: {:?}", got[1].text);
    click_refresh(&browser).await?;
    assert!(page_text(&browser).await?.contains("No reload since the gateway started."));

    // An operator may act but not read the audit trail.
    browser.eval("document.getElementById('sign-out').click()").await?;
    browser.wait_for("document.body.dataset.state === 'signed-out'", WAIT).await?;
    assert_eq!(browser.eval("sessionStorage.length").await?, json!(0));
    sign_in(&browser, OPERATOR).await?;
    ready(&browser).await?;
    assert_eq!(browser.eval("document.getElementById('audit-denied').hidden").await?, json!(false));
    assert_eq!(browser.eval("document.querySelectorAll('#audit-body tr').length").await?, json!(0));
    assert_eq!(browser.eval("document.getElementById('reload') !== null").await?, json!(true));
    assert_eq!(browser.eval("document.querySelectorAll('#pairing-body button.approve').length").await?, json!(1));
    assert_eq!(fetch_status(&browser, "GET", "/admin/audit/status", OPERATOR, None).await?, 403);
    shot(&browser, "07-operator").await?;
    // The token survives a page reload in the same tab (sessionStorage), never in the URL.
    browser.navigate(&gw_console(&s.gw)).await?;
    ready(&browser).await?;
    assert_eq!(browser.eval("location.search + location.hash").await?, json!(""));
    browser.close().await?;
    Ok(())
}

fn gw_console(gw: &Gateway) -> String {
    gw.url("/console")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_tenant_token_gets_nothing() -> anyhow::Result<()> {
    let s = setup().await;
    let browser = open(&s.gw).await?;
    sign_in(&browser, TENANT).await?;
    browser.wait_for("document.body.dataset.state === 'denied'", WAIT).await?;
    assert_eq!(browser.eval("document.getElementById('main').hidden").await?, json!(true));
    assert_eq!(browser.eval("sessionStorage.length").await?, json!(0), "a refused token is not kept");
    assert_eq!(browser.eval("document.getElementById('token').value").await?, json!(""), "nor left in the field");
    let text = page_text(&browser).await?;
    assert!(text.contains("This token is not an operator token."), "{text}");
    for secret in ["alpha", "Alpha Co", "bravo", "acme", "host"] {
        assert!(!text.contains(secret), "the page shows {secret:?} to a tenant token:\n{text}");
    }
    let rows = browser.eval("document.querySelectorAll('tbody tr').length").await?;
    assert_eq!(rows, json!(0));
    no_product_name_and_not_pwned(&browser).await?;
    shot(&browser, "08-tenant-token-refused").await?;
    for (method, path) in [
        ("GET", "/admin/whoami"),
        ("GET", "/admin/status"),
        ("GET", "/admin/audit/status"),
        ("GET", "/admin/pairing"),
        ("GET", "/admin/usage"),
        ("POST", "/admin/reload"),
    ] {
        assert_eq!(fetch_status(&browser, method, path, TENANT, None).await?, 401, "{method} {path}");
        let r = http().request(method.parse()?, s.gw.url(path)).bearer_auth(TENANT).send().await?;
        assert_eq!(r.status().as_u16(), 401, "{method} {path}");
    }
    browser.close().await?;
    Ok(())
}

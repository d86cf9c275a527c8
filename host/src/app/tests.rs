//! In-process tests of the application root: build, serve on port 0, reload, shut down.

use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};

use super::{App, Source};
use crate::audit::{Actor, AuditReader, Scope};
use crate::store::{EncryptedStore, MasterKey};

const ACME: &str = "tok-acme-6f1c9e2b7d4a8f3e5c0b9a7d6e2f1c4b";
const GLOBEX: &str = "tok-globex-0d9c8b7a6f5e4d3c2b1a09f8e7d6c5b4";

/// A model server answering every completion after `delay` (plain JSON, not streamed).
async fn slow_model(delay: Duration) -> String {
    let app = Router::new().route(
        "/chat/completions",
        post(move || async move {
            tokio::time::sleep(delay).await;
            axum::Json(json!({
                "choices": [{ "message": { "role": "assistant", "content": "slow reply" }, "finish_reason": "stop" }],
                "usage": { "prompt_tokens": 3, "completion_tokens": 2 }
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn config_text(model: &str, with_globex: bool) -> String {
    let globex = if with_globex { format!(r#"{{ id: "globex", apiTokens: ["{GLOBEX}"] }},"#) } else { String::new() };
    let globex_agent = if with_globex { r#"{ id: "globex-bot", tenant: "globex" },"# } else { "" };
    format!(
        r#"{{
      gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 10 }},
      stateDir: "state",
      store: {{ masterKey: {{ file: "master.key" }} }},
      models: {{ providers: {{ slow: {{ api: "openai", baseUrl: "{model}", apiKey: "sk-test-not-a-real-key", allowSharedKey: true }} }} }},
      tenants: [ {{ id: "acme", apiTokens: ["{ACME}"] }}, {globex} ],
      agents: {{ defaults: {{ model: "slow/m" }}, list: [ {{ id: "acme-bot", tenant: "acme" }}, {globex_agent} ] }},
    }}"#
    )
}

fn write_key(dir: &Path) -> MasterKey {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = MasterKey::generate("test".into());
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join("master.key")).unwrap();
    f.write_all(key.to_text().as_bytes()).unwrap();
    key
}

async fn build(path: &Path) -> App {
    let loaded = crate::config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let source = Source { watch: false, ..Source::file(path, &loaded) };
    App::build(loaded.config, source).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Serves `app` on port 0 until the returned sender fires: its base URL, the sender, the run.
async fn serve(app: &App) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = app.clone();
    let running = tokio::spawn(async move {
        app.run(listener, async move {
            let _ = stopped.await;
        })
        .await
    });
    (base, stop, running)
}

async fn models(base: &str, token: &str) -> u16 {
    let r = reqwest::Client::new().get(format!("{base}/v1/models")).bearer_auth(token).send().await.unwrap();
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_serves_reloads_and_drains_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let master = write_key(dir.path());
    let model = slow_model(Duration::from_millis(1500)).await;
    let path = dir.path().join("bulkhead.json5");
    std::fs::write(&path, config_text(&model, false)).unwrap();
    let app = build(&path).await;
    let (base, stop, running) = serve(&app).await;
    assert_eq!(models(&base, ACME).await, 200);
    assert_eq!(models(&base, GLOBEX).await, 401, "not configured yet");

    // Reload: a tenant added, the first keeps working.
    std::fs::write(&path, config_text(&model, true)).unwrap();
    let report = app.reload_from_source(Actor::Cli).await;
    assert!(report.applied, "{report:?}");
    assert_eq!(report.tenants_added, ["globex"]);
    assert_eq!(report.policies_changed, ["globex-bot"]);
    assert_eq!(models(&base, GLOBEX).await, 200);
    assert_eq!(models(&base, ACME).await, 200);

    // A refused reload changes nothing.
    std::fs::write(&path, config_text(&model, true).replace("127.0.0.1:0", "127.0.0.1:1")).unwrap();
    let report = app.reload_from_source(Actor::Cli).await;
    assert!(!report.applied);
    assert!(report.errors.iter().any(|e| e.contains("gateway.bind") && e.contains("restart")), "{report:?}");
    assert_eq!(models(&base, GLOBEX).await, 200);

    // A turn in flight when the shutdown comes completes, and its reply is stored.
    let turn = {
        let base = base.clone();
        tokio::spawn(async move {
            let body = json!({ "model": "acme-bot", "messages": [{ "role": "user", "content": "hello" }] });
            let r = reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(ACME)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.send(()).unwrap();
    let (status, reply) = turn.await.unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["choices"][0]["message"]["content"], "slow reply");
    running.await.unwrap().unwrap();
    drop(app);

    // After exit: the reply is in the store and the audit records are on disk.
    let config = crate::config::load_file(&path).unwrap();
    let store = EncryptedStore::open(&config).unwrap_or_else(|e| panic!("{e}"));
    let sessions = store.read_tenant(&crate::ids::TenantId::parse("acme").unwrap()).unwrap();
    let records = serde_json::to_string(&sessions.iter().map(|s| &s.records).collect::<Vec<_>>()).unwrap();
    assert!(records.contains("slow reply"), "{records}");
    let reader = AuditReader::open(&crate::audit::audit_dir(&config), &master).unwrap();
    let kinds: Vec<String> =
        reader.records(&Scope::Host).unwrap().iter().map(|r| r["kind"].as_str().unwrap_or("").to_string()).collect();
    let at = |k: &str| kinds.iter().position(|x| x == k).unwrap_or_else(|| panic!("{k} missing from {kinds:?}"));
    assert!(at("gateway.start") < at("config.reload") && at("config.reload") < at("gateway.stop"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "config.reload").count(), 1, "the refused reload is not recorded");
    let reload = &reader.records(&Scope::Host).unwrap()[at("config.reload")];
    assert_eq!(reload["tenantsAdded"], json!(["globex"]));
    assert!(reload["configDigest"].as_str().unwrap().starts_with("sha256:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_tenant_is_refused_at_once_and_its_run_in_flight_finishes() {
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path());
    let model = slow_model(Duration::from_millis(1200)).await;
    let path = dir.path().join("bulkhead.json5");
    std::fs::write(&path, config_text(&model, true)).unwrap();
    let app = build(&path).await;
    let (base, stop, running) = serve(&app).await;
    let turn = {
        let base = base.clone();
        tokio::spawn(async move {
            let body = json!({ "model": "globex-bot", "messages": [{ "role": "user", "content": "hi" }] });
            let r = reqwest::Client::new()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(GLOBEX)
                .json(&body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, config_text(&model, false)).unwrap();
    let report = app.reload_from_source(Actor::Cli).await;
    assert_eq!(report.tenants_removed, ["globex"], "{report:?}");
    assert_eq!(models(&base, GLOBEX).await, 401, "refused at once");
    assert_eq!(turn.await.unwrap(), 200, "the run in flight keeps its snapshot and finishes");
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    drop(app);
    let config = crate::config::load_file(&path).unwrap();
    let store = EncryptedStore::open(&config).unwrap();
    assert!(store.tenants().iter().any(|t| t.as_str() == "globex"), "its data stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_the_audit_log_cannot_record_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path());
    let model = slow_model(Duration::from_millis(10)).await;
    let path = dir.path().join("bulkhead.json5");
    std::fs::write(&path, config_text(&model, false)).unwrap();
    let app = build(&path).await;
    let (base, stop, running) = serve(&app).await;
    // The audit writer stops (as when its disk fails): nothing may change unrecorded.
    app.inner.audit.close().await;
    std::fs::write(&path, config_text(&model, true)).unwrap();
    let report = app.reload_from_source(Actor::Cli).await;
    assert!(!report.applied, "{report:?}");
    assert!(report.errors.iter().any(|e| e.contains("audit log") && e.contains("not applied")), "{report:?}");
    assert_eq!(models(&base, GLOBEX).await, 401, "the new tenant was not let in");
    assert_eq!(models(&base, ACME).await, 200, "the running config keeps serving");
    stop.send(()).unwrap();
    let _ = running.await;
}

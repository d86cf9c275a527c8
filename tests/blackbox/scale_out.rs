//! Several gateways on one PostgreSQL database, through the real binary: API traffic spread over
//! three gateways keeps every conversation whole and in order; `kill -9` of the gateway that owns
//! a Telegram bot hands the bot to another within the lease time, and every message the fake Bot
//! API delivered is answered exactly once; a gateway cut off from the database stops polling
//! before its lease can be taken over, and rejoins when the partition heals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::fake_telegram::FakeTelegram;
use crate::harness::{Gateway, http, run_cli};
use crate::pg_common::Pg;

const BOT: &str = "777001:SCALE-secret-token-value";
const LEASE_SECS: u64 = 3;
const OWNS: &str = "This gateway owns the account now.";

/// One site: the database, the master key every gateway shares, the fakes.
struct Site {
    dir: tempfile::TempDir,
    pg: Pg,
    key: std::path::PathBuf,
    tg: FakeTelegram,
    model: crate::fakes::Running,
}

impl Site {
    async fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        let (code, out, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
        assert_eq!(code, 0, "{out}{err}");
        let tg = FakeTelegram::start().await;
        tg.add_bot(BOT, 777001, "scale_bot");
        Site { dir, pg: Pg::start(), key, tg, model: crate::fakes::start().await }
    }

    fn config(&self, url_env: &str) -> String {
        format!(
            r#"{{
  gateway: {{ bind: "127.0.0.1:0", shutdownGraceSec: 5,
              operators: [ {{ id: "ops", token: {{ env: "OPS_TOKEN" }}, role: "admin" }} ] }},
  stateDir: "state",
  store: {{ masterKey: {{ file: {key:?} }}, backend: "postgres", url: {{ env: "{url_env}" }}, leaseSeconds: {LEASE_SECS} }},
  models: {{ providers: {{
    fakeai: {{ api: "openai", baseUrl: "{model}", apiKey: {{ env: "FAKE_OPENAI_KEY" }}, timeoutSec: 15 }},
    demo: {{ api: "scripted" }},
  }} }},
  tenants: [ {{ id: "alpha", apiTokens: [ {{ env: "TOKEN_A" }} ] }} ],
  agents: {{ list: [
    {{ id: "a-openai", tenant: "alpha", model: "fakeai/gpt-fake" }},
  ] }},
  bindings: [ {{ agentId: "a-openai", match: {{ channel: "telegram", accountId: "scale" }} }} ],
  channels: {{ telegram: {{ accounts: {{
    scale: {{ token: {{ env: "SCALE_TG_TOKEN" }}, apiUrl: "{api}", dmPolicy: "open", allowFrom: ["*"] }},
  }} }} }},
}}"#,
            key = self.key.to_str().unwrap(),
            model = self.model.base,
            api = self.tg.base,
        )
    }

    /// Gateway `n`, with its own directory (its own audit log) and `url` for the database.
    async fn gateway(&self, n: usize, url: &str) -> Gateway {
        let dir = self.dir.path().join(format!("gw{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut env = crate::env();
        env.push(("SCALE_TG_TOKEN", BOT));
        let url_env = format!("BH_PG_URL_{n}");
        let env_owned: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([(url_env.clone(), url.to_string())])
            .collect();
        let env_refs: Vec<(&str, &str)> = env_owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Gateway::start_in(&dir, &self.config(&url_env), &env_refs).await
    }
}

async fn chat(gw: &Gateway, user: &str, text: &str) -> (u16, Value) {
    let body = json!({ "model": "a-openai", "user": user, "messages": [{ "role": "user", "content": text }] });
    let resp =
        http().post(gw.url("/v1/chat/completions")).bearer_auth(crate::TOKEN_A).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Waits until exactly one of `gws` logs that it owns the bot; returns its index.
async fn owner(gws: &[&Gateway], since: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owners: Vec<usize> = (0..gws.len()).filter(|&i| gws[i].logs()[since[i]..].contains(OWNS)).collect();
        if owners.len() == 1 {
            return owners[0];
        }
        assert!(owners.len() <= 1, "two gateways own the bot at once: {owners:?}");
        assert!(Instant::now() < deadline, "no gateway took the bot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every DM text answered exactly once (the fake model's "fake says: TEXT"), within a minute.
async fn answered_exactly_once(tg: &FakeTelegram, from: i64, texts: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = tg.sent_to(BOT, from);
        let counts: Vec<usize> =
            texts.iter().map(|t| sent.iter().filter(|s| s.text == format!("fake says: {t}")).count()).collect();
        assert!(counts.iter().all(|c| *c <= 1), "a message was answered twice: {counts:?} {sent:?}");
        if counts.iter().all(|c| *c == 1) {
            return;
        }
        assert!(Instant::now() < deadline, "not every message was answered: {counts:?} {sent:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The user texts of the last model request whose newest message is `last`, in order.
fn context_of(model: &crate::fakes::Running, last: &str) -> Vec<String> {
    let reqs = model.requests();
    let req = reqs
        .iter()
        .rev()
        .find(|r| {
            r.body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()) == Some(last)
        })
        .unwrap_or_else(|| panic!("no model request ended with {last:?}"));
    req.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_keep_conversations_in_order_and_a_killed_bot_owner_is_taken_over() {
    let site = Site::new().await;
    let mut gws = Vec::new();
    for n in 0..3 {
        gws.push(site.gateway(n, &site.pg.url).await);
    }
    // API traffic: three conversations, each turn to another gateway, conversations at once.
    let turns = 6;
    let refs: Vec<&Gateway> = gws.iter().collect();
    let convs = (0..3).map(|c| {
        let refs = &refs;
        async move {
            for t in 0..turns {
                let (status, body) = chat(refs[(c + t) % 3], &format!("user-{c}"), &format!("c{c}-t{t}")).await;
                assert_eq!(status, 200, "{body}");
            }
        }
    });
    futures_util::future::join_all(convs).await;
    for c in 0..3 {
        let expected: Vec<String> = (0..turns).map(|t| format!("c{c}-t{t}")).collect();
        assert_eq!(context_of(&site.model, &format!("c{c}-t{}", turns - 1)), expected, "conversation {c}");
    }

    // The bot: exactly one owner; messages before and after its owner dies, each answered once.
    let starts = vec![0; 3];
    let first = owner(&refs, &starts).await;
    let mut texts: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    for t in &texts {
        site.tg.dm(BOT, 4242, t);
    }
    answered_exactly_once(&site.tg, 4242, &texts).await;
    let marks: Vec<usize> = gws.iter().map(|g| g.logs().len()).collect();
    gws[first].kill().await;
    let killed = Instant::now();
    let after: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    for t in &after {
        site.tg.dm(BOT, 4242, t);
    }
    texts.extend(after);
    answered_exactly_once(&site.tg, 4242, &texts).await;
    let takeover = killed.elapsed();
    let survivors: Vec<&Gateway> = (0..3).filter(|&i| i != first).map(|i| &gws[i]).collect();
    let marks: Vec<usize> = (0..3).filter(|&i| i != first).map(|i| marks[i]).collect();
    owner(&survivors, &marks).await;
    assert!(
        takeover < Duration::from_secs(LEASE_SECS * 3),
        "the bot was taken over in {takeover:?} (lease {LEASE_SECS} s)"
    );
    // No acknowledged turn is lost: a survivor continues a conversation with its whole history.
    let (status, body) = chat(survivors[0], "user-0", "c0-after").await;
    assert_eq!(status, 200, "{body}");
    let mut expected: Vec<String> = (0..turns).map(|t| format!("c0-t{t}")).collect();
    expected.push("c0-after".into());
    assert_eq!(context_of(&site.model, "c0-after"), expected);
    // Who holds the bot, as an operator sees it.
    let status: Value = http()
        .get(survivors[0].url("/admin/status"))
        .bearer_auth(crate::OPS_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let leases = status["cluster"]["leases"].as_array().expect("leases in /admin/status");
    assert_eq!(leases.len(), 1, "{status}");
    assert_eq!(leases[0]["name"], "telegram/scale");
    assert!(leases[0]["fence"].as_i64().unwrap() >= 2, "a takeover raises the fence: {status}");
}

/// A TCP relay between one gateway and the database that can stop relaying (a partition: the
/// sockets stay open, nothing gets through) and resume (what waited is delivered, as TCP would).
struct Relay {
    url: String,
    cut: Arc<AtomicBool>,
}

impl Relay {
    async fn start(to_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    while c.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", to_port)).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, c.clone()));
                    tokio::spawn(pump(sr, cw, c));
                });
            }
        });
        Relay { url: format!("postgres://bulkhead@127.0.0.1:{port}/postgres"), cut }
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, cut: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_cut_off_from_the_database_stops_polling_before_its_lease_is_taken_and_rejoins() {
    let site = Site::new().await;
    let relay = Relay::start(site.pg.port).await;
    // Gateway A reaches the database through the relay and takes the bot first.
    let a = site.gateway(0, &relay.url).await;
    a.wait_log(OWNS).await;
    let b = site.gateway(1, &site.pg.url).await;
    b.wait_log("Another gateway owns the account; standing by.").await;
    site.tg.dm(BOT, 5151, "warm-up");
    answered_exactly_once(&site.tg, 5151, &["warm-up".to_string()]).await;

    // A turn in flight when the partition starts: A must not send its reply once it has lost
    // the bot (B resumes the turn from the shared inbox and answers it).
    let inflight = "sleep-ms:4000 inflight".to_string();
    site.tg.dm(BOT, 5151, &inflight);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !site.model.requests().iter().any(|r| r.body.to_string().contains("inflight")) {
        assert!(Instant::now() < deadline, "the in-flight turn never reached the model");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    // While partitioned, messages keep arriving; A must not answer them, B takes over.
    let texts: Vec<String> = (0..6).map(|i| format!("during-{i}")).collect();
    for t in &texts[..3] {
        site.tg.dm(BOT, 5151, t);
    }
    // A gives the bot up (on its own clock) before B can take it (on the database's).
    let (mut a_lost, mut b_took) = (None, None);
    while b_took.is_none() {
        assert!(cut_at.elapsed() < Duration::from_secs(60), "B never took the bot over");
        if a_lost.is_none() && a.logs().contains("lost the account's lease") {
            a_lost = Some(Instant::now());
        }
        if b.logs().contains(OWNS) {
            b_took = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a_lost = a_lost.unwrap_or_else(|| panic!("B took the bot while A still held it:\n{}", a.logs()));
    assert!(a_lost <= b_took.unwrap());
    for t in &texts[3..] {
        site.tg.dm(BOT, 5151, t);
    }
    let mut all = vec!["warm-up".to_string(), inflight];
    all.extend(texts.clone());
    answered_exactly_once(&site.tg, 5151, &all).await;

    // Healed: A rejoins as a standby and serves API traffic again; nothing is answered twice.
    relay.cut.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = chat(&a, "user-heal", "after-heal").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "A did not come back after the partition");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    site.tg.dm(BOT, 5151, "after-heal");
    all.push("after-heal".into());
    answered_exactly_once(&site.tg, 5151, &all).await;
    tokio::time::sleep(Duration::from_secs(LEASE_SECS)).await;
    answered_exactly_once(&site.tg, 5151, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_export_and_crypto_shredding_work_on_the_database() {
    let site = Site::new().await;
    let gw = site.gateway(0, &site.pg.url).await;
    let (status, body) = chat(&gw, "user-x", "remember the blue heron").await;
    assert_eq!(status, 200, "{body}");
    // The operator's commands run from another host's directory (its own audit log).
    let dir = site.dir.path().join("ops-host");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bulkhead.json5");
    std::fs::write(&config, site.config("BH_PG_URL_OPS")).unwrap();
    let mut env = crate::env();
    env.push(("SCALE_TG_TOKEN", BOT));
    env.push(("BH_PG_URL_OPS", &site.pg.url));
    let cfg = config.to_str().unwrap();
    let (code, out, err) = crate::harness::run_cli_env(&["doctor", "--config", cfg], Some(&dir), &env);
    assert!(out.contains("ok    database reachable, schema version 1"), "{out}{err}");
    assert!(out.contains("ok    database clock within"), "{out}");
    let _ = code;
    let archive = site.dir.path().join("alpha.jsonl");
    let (code, out, err) = crate::harness::run_cli_env(
        &["tenant", "export", "alpha", "--out", archive.to_str().unwrap(), "--config", cfg],
        Some(&dir),
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&archive).unwrap();
    assert!(text.contains("remember the blue heron") && text.contains("fake says"), "{text}");
    let (code, out, err) =
        crate::harness::run_cli_env(&["tenant", "delete", "alpha", "--yes", "--config", cfg], Some(&dir), &env);
    assert_eq!(code, 0, "{out}{err}");
    for table in ["bh_tenants", "bh_sessions", "bh_records", "bh_documents"] {
        let n = site.pg.psql(&format!("SELECT count(*) FROM {table} WHERE tenant = 'alpha'"));
        assert_eq!(n, "0", "{table} still holds tenant alpha");
    }
    // A database that refuses connections is a clear doctor failure, not a hang.
    let mut env = crate::env();
    env.push(("SCALE_TG_TOKEN", BOT));
    env.push(("BH_PG_URL_OPS", "postgres://bulkhead@127.0.0.1:1/postgres"));
    let (code, out, _) = crate::harness::run_cli_env(&["doctor", "--config", cfg], Some(&dir), &env);
    assert_ne!(code, 0);
    assert!(out.contains("FAIL  database: not reachable"), "{out}");
}

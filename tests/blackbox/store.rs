//! The encrypted session store through the real binary: no plaintext at rest after real traffic,
//! persistence across restarts, SIGKILL crash safety, key refusals, export and crypto-shredding.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{BIN, Gateway, http, run_cli};
use crate::{TOKEN_A, TOKEN_B, env, fakes};

const SECRET_A: &str = "Alpha plans to acquire Zebulon Holdings for 93 million";
const SECRET_B: &str = "Bravo's patient record 55-1234 lists a penicillin allergy";

/// A state dir with a master key file beside it (outside the state dir, mode 0600).
pub struct Site {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Site {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("keys").join("master.key");
        std::fs::create_dir_all(key.parent().unwrap()).unwrap();
        let (code, out, err) = run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        Site { dir, key }
    }
    pub fn config(&self, model_base: &str) -> String {
        self.config_with_key(model_base, &format!("{{ file: {:?} }}", self.key.to_str().unwrap()))
    }
    pub fn config_with_key(&self, model_base: &str, key: &str) -> String {
        let base = crate::two_tenant_config(model_base, "");
        // Insert the store block at the top level.
        base.replacen("store: { mode: \"memory\" },", &format!("store: {{ masterKey: {key} }},"), 1)
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("bulkhead.json5")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

pub async fn chat(gw: &Gateway, token: &str, model: &str, user: &str, text: &str) -> (u16, Value) {
    let body = json!({ "model": model, "user": user, "messages": [{ "role": "user", "content": text }] });
    let resp = http().post(gw.url("/v1/chat/completions")).bearer_auth(token).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The user texts the fake model saw in its last request whose final message is `last`.
fn seen_by_model(fake: &fakes::Running, last: &str) -> Vec<String> {
    let reqs = fake.requests();
    let req = reqs
        .iter()
        .rev()
        .find(|r| r.body["messages"].as_array().and_then(|m| m.last()).is_some_and(|m| m["content"] == last))
        .unwrap_or_else(|| panic!("no model request ended with {last:?}"));
    req.body["messages"].as_array().unwrap().iter().filter_map(|m| m["content"].as_str().map(str::to_string)).collect()
}

#[tokio::test]
async fn known_sentences_never_reach_the_disk_or_the_logs_and_survive_a_restart() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = site.config(&fake.base);
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    for i in 0..3 {
        let (s, b) = chat(&gw, TOKEN_A, "a-openai", "conv-a", &format!("{SECRET_A} #{i}")).await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = chat(&gw, TOKEN_A, "a-demo", "conv-demo", SECRET_A).await;
    assert_eq!(s, 200, "{b}");
    // A tool call: its policy decision is logged at the default level, without the peer.
    let (s, b) = chat(&gw, TOKEN_A, "a-demo", "conv-demo", r#"/tool read {"path":"nope.txt"}"#).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = chat(&gw, TOKEN_B, "b-secret", "conv-b", SECRET_B).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(gw.terminate().await, Some(0));

    let files = files_under(&site.state());
    assert!(files.iter().any(|p| p.extension().is_some_and(|e| e == "pack")), "transcripts were written: {files:?}");
    for p in &files {
        let bytes = std::fs::read(p).unwrap();
        let name = p.to_string_lossy();
        // Usage files (billing counters, `usage.rs`) name tenant and agent ids, as the config does;
        // nothing else of a conversation.
        let usage = p.starts_with(site.state().join("usage"));
        for needle in [SECRET_A, SECRET_B, "Zebulon", "penicillin", "fake says", "conv-a", "conv-b", "a-openai"] {
            if usage && needle == "a-openai" {
                continue;
            }
            assert!(!contains(&bytes, needle), "{name} holds {needle:?} in plaintext");
            assert!(!name.contains(needle), "{name} names {needle:?}");
        }
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
    }
    let logs = gw.logs();
    assert!(logs.contains("Tool call decided."), "the tool call was logged:\n{logs}");
    for needle in [SECRET_A, SECRET_B, "Zebulon", "AGE-SECRET-KEY", "conv-a", "conv-b", "conv-demo"] {
        assert!(!logs.contains(needle), "logs hold {needle:?}:\n{logs}");
    }

    // After a restart the gateway still has the conversation: the model sees the earlier turns.
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    let (s, b) = chat(&gw, TOKEN_A, "a-openai", "conv-a", "after restart").await;
    assert_eq!(s, 200, "{b}");
    let seen = seen_by_model(&fake, "after restart");
    let want: Vec<String> = (0..3)
        .flat_map(|i| [format!("{SECRET_A} #{i}"), format!("fake says: {SECRET_A} #{i}")])
        .chain(["after restart".to_string()])
        .collect();
    assert_eq!(seen, want);
    assert_eq!(gw.terminate().await, Some(0));
}

#[tokio::test]
async fn sigkill_during_appends_loses_no_acknowledged_turn() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = site.config(&fake.base);
    // One session per (round, task), at most 60 turns each: the agent's context (200 messages)
    // then holds the whole session, so the model's request shows every stored turn.
    let mut acked: Vec<(String, Vec<String>)> = Vec::new();
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    for round in 0..4 {
        let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
        let base = gw.base.clone();
        let mut tasks = Vec::new();
        for t in 0..3 {
            let base = base.clone();
            let user = format!("crash-r{round}-t{t}");
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
                let mut ok = Vec::new();
                for n in 0..60 {
                    let text = format!("r{round}-t{t}-n{n}");
                    let body = json!({ "model": "a-openai", "user": user,
                        "messages": [{ "role": "user", "content": text }] });
                    let resp = client
                        .post(format!("{base}/v1/chat/completions"))
                        .bearer_auth(TOKEN_A)
                        .json(&body)
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status().as_u16() == 200 => ok.push(text),
                        _ => break,
                    }
                }
                (user, ok)
            }));
        }
        // A pseudo-random kill point between 100 and 1000 ms in.
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(100 + (seed >> 33) % 900)).await;
        gw.kill().await;
        for task in tasks {
            acked.push(task.await.unwrap());
        }
    }
    let counts: Vec<usize> = acked.iter().map(|(_, a)| a.len()).collect();
    eprintln!("acknowledged turns per session before SIGKILL: {counts:?}");
    assert!(acked.iter().any(|(_, a)| !a.is_empty()), "some turns were acknowledged before the kills");
    assert!(counts.iter().any(|&c| c < 60), "at least one kill landed mid-stream: {counts:?}");
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    for (user, acks) in &acked {
        let check = format!("check-{user}");
        let (s, b) = chat(&gw, TOKEN_A, "a-openai", user, &check).await;
        assert_eq!(s, 200, "{b}\n{}", gw.logs());
        let seen = seen_by_model(&fake, &check);
        // Every acknowledged turn is there, in order, with its reply.
        let mut pos = 0;
        for a in acks {
            let at = seen[pos..].iter().position(|m| m == a).map(|i| i + pos);
            let at = at.unwrap_or_else(|| panic!("acknowledged turn {a:?} lost after SIGKILL"));
            assert_eq!(seen.get(at + 1), Some(&format!("fake says: {a}")), "reply of {a:?}");
            pos = at + 1;
        }
    }
    assert_eq!(gw.terminate().await, Some(0));
}

#[tokio::test]
async fn wrong_missing_or_exposed_master_keys_refuse_to_start() {
    let fake = fakes::start().await;
    let site = Site::new();
    let mut gw = Gateway::start_in(site.path(), &site.config(&fake.base), &env()).await;
    assert_eq!(chat(&gw, TOKEN_A, "a-openai", "u", "keep me").await.0, 200);
    assert_eq!(gw.terminate().await, Some(0));
    let before: Vec<(PathBuf, Vec<u8>)> =
        files_under(&site.state()).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();

    let serve = |config: String, envs: &[(&str, &str)]| {
        std::fs::write(site.config_path(), config).unwrap();
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["serve", "--config", site.config_path().to_str().unwrap()]).env_remove("BULKHEAD_CONFIG");
        for (k, v) in env().into_iter().chain(envs.iter().copied()) {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let other = site.path().join("keys").join("other.key");
    assert_eq!(run_cli(&["keys", "init", "--out", other.to_str().unwrap()], None).0, 0);
    let (code, err) =
        serve(site.config_with_key(&fake.base, &format!("{{ file: {:?} }}", other.to_str().unwrap())), &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("wrong master key"), "{err}");

    let (code, err) = serve(site.config_with_key(&fake.base, "{ env: \"BULKHEAD_TEST_NO_SUCH_KEY\" }"), &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("BULKHEAD_TEST_NO_SUCH_KEY"), "{err}");

    // No store block at all, but an encrypted store exists: refuse rather than run in memory.
    let plain = crate::two_tenant_config(&fake.base, "");
    let (code, err) = serve(plain, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("store.masterKey is not configured"), "{err}");

    std::fs::set_permissions(&site.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = serve(site.config(&fake.base), &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&site.key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let after: Vec<(PathBuf, Vec<u8>)> =
        files_under(&site.state()).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    let mut b = before.clone();
    let mut a = after.clone();
    b.sort();
    a.sort();
    assert_eq!(a, b, "refusals change nothing on disk");

    // The right key still opens everything.
    let mut gw = Gateway::start_in(site.path(), &site.config(&fake.base), &env()).await;
    assert_eq!(chat(&gw, TOKEN_A, "a-openai", "u", "still here?").await.0, 200);
    assert_eq!(seen_by_model(&fake, "still here?"), ["keep me", "fake says: keep me", "still here?"]);
    assert_eq!(gw.terminate().await, Some(0));
}

#[tokio::test]
async fn export_then_crypto_shredding_delete_from_the_cli() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = site.config(&fake.base);
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    assert_eq!(chat(&gw, TOKEN_A, "a-openai", "conv-1", SECRET_A).await.0, 200);
    assert_eq!(chat(&gw, TOKEN_B, "b-secret", "conv-b", SECRET_B).await.0, 200);

    // While the gateway runs, destructive commands are refused (the store is locked).
    let cfg = site.config_path();
    let cfg = cfg.to_str().unwrap();
    let (code, _, err) = run_cli(&["--config", cfg, "tenant", "delete", "alpha", "--yes"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in use"), "{err}");
    assert_eq!(gw.terminate().await, Some(0));

    let out = site.path().join("alpha-export.jsonl");
    let (code, stdout, err) =
        run_cli(&["--config", cfg, "tenant", "export", "alpha", "--out", out.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stdout}{err}");
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["type"], "bulkhead-export");
    assert_eq!(lines[0]["tenant"], "alpha");
    let msgs: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l["type"] == "message")
        .map(|l| (l["role"].as_str().unwrap(), l["text"].as_str().unwrap()))
        .collect();
    assert_eq!(msgs, [("user", SECRET_A), ("assistant", &*format!("fake says: {SECRET_A}"))]);
    assert!(lines.iter().any(|l| l["type"] == "session" && l["session"] == "agent:a-openai:api:direct:conv-1"));
    assert!(!text.contains(SECRET_B), "only alpha's data");
    let inside = site.state().join("x.jsonl");
    let (code, _, err) =
        run_cli(&["--config", cfg, "tenant", "export", "alpha", "--out", inside.to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");

    // Without a terminal and without --yes, delete refuses.
    let (code, _, err) = run_cli(&["--config", cfg, "tenant", "delete", "alpha"], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--yes"), "{err}");
    // The tenant's sandbox workspace goes with it; bravo's stays.
    for t in ["alpha", "bravo"] {
        std::fs::create_dir_all(site.state().join("workspaces").join(t)).unwrap();
        std::fs::write(site.state().join("workspaces").join(t).join("notes.txt"), "workspace file").unwrap();
    }
    let (code, stdout, err) = run_cli(&["--config", cfg, "tenant", "delete", "alpha", "--yes"], None);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(!site.state().join("store/tenants/alpha").exists());
    assert!(!site.state().join("workspaces/alpha").exists(), "alpha's workspace is removed");
    assert!(site.state().join("workspaces/bravo/notes.txt").exists(), "bravo's workspace is untouched");

    // Bravo is untouched; alpha starts empty.
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    assert_eq!(chat(&gw, TOKEN_A, "a-openai", "conv-1", "anyone?").await.0, 200);
    assert_eq!(seen_by_model(&fake, "anyone?"), ["anyone?"]);
    assert_eq!(gw.terminate().await, Some(0));
    let (code, _, err) = run_cli(
        &["--config", cfg, "tenant", "export", "bravo", "--out", site.path().join("b.jsonl").to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(site.path().join("b.jsonl")).unwrap().contains(SECRET_B));

    // Rotation from the CLI keeps the data readable.
    let (code, stdout, err) = run_cli(&["--config", cfg, "keys", "rotate", "--tenant", "bravo"], None);
    assert_eq!(code, 0, "{stdout}{err}");
    let (code, _, err) = run_cli(
        &["--config", cfg, "tenant", "export", "bravo", "--out", site.path().join("b2.jsonl").to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let b2 = std::fs::read_to_string(site.path().join("b2.jsonl")).unwrap();
    assert!(b2.contains(SECRET_B));
    assert!(
        b2.lines().any(|l| l.contains(r#""type":"file""#) && l.contains(r#""data":"workspace file""#)),
        "the export carries the tenant's workspace files: {b2}"
    );

    // Master-key rotation from the CLI: the old key stops opening the store, the new one reads it.
    let new_key = site.path().join("keys").join("next.key");
    assert_eq!(run_cli(&["keys", "init", "--out", new_key.to_str().unwrap()], None).0, 0);
    let (code, stdout, err) =
        run_cli(&["--config", cfg, "keys", "rotate-master", "--new-key", site.key.to_str().unwrap()], None);
    assert_eq!(code, 2, "the key in use is refused: {stdout}{err}");
    let (code, stdout, err) =
        run_cli(&["--config", cfg, "keys", "rotate-master", "--new-key", new_key.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("store.masterKey"), "tells the operator what to do next: {stdout}");
    let b3 = site.path().join("b3.jsonl");
    let (code, _, err) = run_cli(&["--config", cfg, "tenant", "export", "bravo", "--out", b3.to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("wrong master key"), "{err}");
    std::fs::write(
        site.config_path(),
        site.config_with_key(&fake.base, &format!("{{ file: {:?} }}", new_key.to_str().unwrap())),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["--config", cfg, "tenant", "export", "bravo", "--out", b3.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&b3).unwrap().contains(SECRET_B));
}

/// The memory-only store keeps at most `store.cacheMb` of conversations: once that is full, many
/// more distinct conversations (each ~80 KB, 48 MB in all) leave the gateway's resident memory
/// where it was, read from `/proc` (no timing involved: only what was served counts).
#[tokio::test]
async fn many_distinct_conversations_stay_under_the_configured_memory_bound() {
    let fake = fakes::start().await;
    let config = crate::two_tenant_config(&fake.base, "").replacen(
        "store: { mode: \"memory\" }",
        "store: { mode: \"memory\", cacheMb: 1 }",
        1,
    );
    let mut gw = Gateway::start(&config, &env()).await;
    let text = "m".repeat(40_000);
    let client = http();
    let send = |from: usize, to: usize| {
        let (gw, text, client) = (&gw, &text, &client);
        async move {
            for i in from..to {
                let body = json!({ "model": "a-demo", "user": format!("c{i}"), "messages": [{ "role": "user", "content": text }] });
                let r =
                    client.post(gw.url("/v1/chat/completions")).bearer_auth(TOKEN_A).json(&body).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                r.bytes().await.unwrap();
            }
        }
    };
    // 200 conversations fill the 1 MiB bound many times over (and warm every buffer and pool).
    send(0, 200).await;
    let full = gw.rss_kib();
    send(200, 800).await;
    let after = gw.rss_kib();
    eprintln!("RSS with the cache full: {full} KiB; after 600 more conversations (48 MB of turns): {after} KiB");
    assert!(after < full + 12 * 1024, "memory grew with the conversations: {full} KiB -> {after} KiB");
    assert_eq!(gw.terminate().await, Some(0));
}

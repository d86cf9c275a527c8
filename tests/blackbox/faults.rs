//! Fault injection through the real binary: SIGKILL at random points of store appends, audit
//! appends and checkpoints (a serving gateway), of tenant key rotation and of master-key
//! rotation (the CLI), each kill followed by a full `audit verify` and a transcript check.
//!
//! Kill points come from a seed printed at the start (`FAULTS_SEED=N` replays a run); each loop
//! runs `FAULTS_KILLS` kills (default 100).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{BIN, Gateway, run_cli};
use crate::store::Site;
use crate::{OPS_TOKEN, TOKEN_A, env, fakes};

fn kills() -> usize {
    std::env::var("FAULTS_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(100)
}

/// A small PRNG for kill points, seeded from `FAULTS_SEED` or the clock (printed to replay).
struct Rng(u64);

impl Rng {
    fn new(what: &str) -> Rng {
        let seed = std::env::var("FAULTS_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64
        });
        eprintln!("{what}: FAULTS_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    run_cli(&all, None)
}

/// The whole audit trail verifies (a torn tail is reported, not a failure).
fn assert_audit_verifies(config: &Path, after: &str) {
    let (code, out, err) = cli(config, &["audit", "verify"]);
    assert_eq!(code, 0, "audit verify failed {after}:\n{out}{err}");
}

/// Every session of a tenant, from `tenant export`: session key → (role, text) in order.
fn transcripts(config: &Path, dir: &Path, tenant: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let out = dir.join(format!("{tenant}-export.jsonl"));
    let _ = std::fs::remove_file(&out);
    let (code, stdout, err) = cli(config, &["tenant", "export", tenant, "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "tenant export failed:\n{stdout}{err}");
    let mut sessions = BTreeMap::new();
    let mut current = String::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        match v["type"].as_str() {
            Some("session") => {
                current = v["session"].as_str().unwrap().to_string();
                sessions.entry(current.clone()).or_insert_with(Vec::new);
            }
            Some("message") => sessions.get_mut(&current).expect("a message after its session").push((
                v["role"].as_str().unwrap_or_default().to_string(),
                v["text"].as_str().unwrap_or_default().to_string(),
            )),
            _ => {}
        }
    }
    sessions
}

/// The store and audit log of `site`, served without sandboxes (the loops measure the store
/// and the audit log, not sandbox start-up).
fn serve_config(site: &Site, model_base: &str) -> String {
    without_sandbox(&site.config(model_base))
}

fn without_sandbox(config: &str) -> String {
    config.replace(r#"sandbox: { mode: "all", backend: "wasm" }"#, r#"sandbox: { mode: "off" }"#)
}

/// One client's turns, acknowledged or not: `(user text, acknowledged)`.
async fn client(base: String, user: String, prefix: String, tool_calls: bool) -> Vec<String> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut acked = Vec::new();
    for n in 0.. {
        let (model, text) = if tool_calls && n % 2 == 1 {
            ("a-sessions", r#"/tool sessions_list {}"#.to_string())
        } else {
            ("a-openai", format!("{prefix}-{n}"))
        };
        let body = json!({ "model": model, "user": user, "messages": [{ "role": "user", "content": text }] });
        let resp = http.post(format!("{base}/v1/chat/completions")).bearer_auth(TOKEN_A).json(&body).send().await;
        match resp {
            Ok(r) if r.status().as_u16() == 200 => {
                if model == "a-openai" {
                    acked.push(text);
                }
            }
            _ => break,
        }
    }
    acked
}

/// Checkpoints the tenant log through the admin API until the gateway is gone.
async fn checkpointer(base: String) -> usize {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut n = 0;
    loop {
        let r = http.get(format!("{base}/admin/audit?tenant=alpha")).bearer_auth(OPS_TOKEN).send().await;
        match r {
            Ok(r) if r.status().is_success() => n += 1,
            _ => return n,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigkill_during_store_appends_audit_appends_and_checkpoints_loses_nothing_acknowledged() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = serve_config(&site, &fake.base);
    let cfg = site.config_path();
    let mut rng = Rng::new("store/audit kill loop");
    let started = Instant::now();
    // Session (user) → every turn acknowledged in it, across all rounds.
    let mut acked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut checkpoints, mut mid) = (0, 0);
    for round in 0..kills() {
        let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
        let mut tasks = Vec::new();
        for t in 0..3 {
            let user = format!("u{t}");
            tasks.push((user.clone(), tokio::spawn(client(gw.base.clone(), user, format!("r{round}-t{t}"), t == 0))));
        }
        let cp = tokio::spawn(checkpointer(gw.base.clone()));
        tokio::time::sleep(Duration::from_millis(10 + rng.below(300))).await;
        gw.kill().await;
        for (user, task) in tasks {
            let got = task.await.unwrap();
            mid += usize::from(!got.is_empty());
            acked.entry(user).or_default().extend(got);
        }
        checkpoints += cp.await.unwrap();
        assert_audit_verifies(&cfg, &format!("after kill {round}"));
        if round % 10 == 9 || round + 1 == kills() {
            check_transcripts(&cfg, site.path(), &acked, &format!("after kill {round}"));
        }
    }
    let total: usize = acked.values().map(Vec::len).sum();
    eprintln!(
        "{} kills in {:?}: {total} acknowledged turns, {checkpoints} checkpoints, {mid} client runs cut mid-way",
        kills(),
        started.elapsed()
    );
    assert!(total > 0 && checkpoints > 0, "the kills landed while work was being acknowledged");
    // After all the kills, the gateway serves on and the sessions continue.
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    let (s, b) = crate::store::chat(&gw, TOKEN_A, "a-openai", "u1", "after the kills").await;
    assert_eq!(s, 200, "{b}\n{}", gw.logs());
    assert_eq!(gw.terminate().await, Some(0));
    assert_audit_verifies(&cfg, "after a clean restart");
}

/// Every acknowledged turn is in its session, in order, each followed by its reply.
fn check_transcripts(cfg: &Path, dir: &Path, acked: &BTreeMap<String, Vec<String>>, when: &str) {
    let sessions = transcripts(cfg, dir, "alpha");
    for (user, turns) in acked {
        let key = format!("agent:a-openai:api:direct:{user}");
        let msgs = sessions.get(&key).map(Vec::as_slice).unwrap_or_default();
        let mut pos = 0;
        for turn in turns {
            let at = msgs[pos..].iter().position(|(role, text)| role == "user" && text == turn).map(|i| i + pos);
            let at = at.unwrap_or_else(|| panic!("acknowledged turn {turn:?} of {key} lost {when}"));
            assert_eq!(
                msgs.get(at + 1),
                Some(&("assistant".to_string(), format!("fake says: {turn}"))),
                "the reply of {turn:?} {when}"
            );
            pos = at + 2;
        }
    }
}

/// Runs a CLI command and SIGKILLs it after `delay` (if it is still running); true when it
/// finished by itself with exit 0.
fn run_and_kill(config: &Path, args: &[&str], delay: Duration) -> bool {
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("BULKHEAD_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + delay;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// How long a command takes when not interrupted (to spread the kill points over it).
fn duration_of(config: &Path, args: &[&str]) -> Duration {
    let t = Instant::now();
    assert!(run_and_kill(config, args, Duration::from_secs(60)), "{args:?} fails uninterrupted");
    t.elapsed()
}

/// Some traffic for tenant alpha (sessions in several segments' worth of records), then stopped.
async fn with_transcripts(site: &Site, config: &str) {
    let mut gw = Gateway::start_in(site.path(), config, &env()).await;
    for i in 0..12 {
        let (s, b) = crate::store::chat(&gw, TOKEN_A, "a-openai", &format!("c{}", i % 3), &format!("turn {i}")).await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = crate::store::chat(&gw, TOKEN_A, "a-sessions", "c0", r#"/tool sessions_list {}"#).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(gw.terminate().await, Some(0));
}

#[tokio::test]
async fn sigkill_during_tenant_key_rotation_keeps_every_transcript_readable() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = serve_config(&site, &fake.base);
    with_transcripts(&site, &config).await;
    let cfg = site.config_path();
    let before = transcripts(&cfg, site.path(), "alpha");
    assert!(before.values().map(Vec::len).sum::<usize>() >= 24, "{before:?}");
    let args = ["keys", "rotate", "--tenant", "alpha"];
    let span = duration_of(&cfg, &args);
    let mut rng = Rng::new("tenant key rotation kill loop");
    let started = Instant::now();
    let mut finished = 0;
    for round in 0..kills() {
        let delay = Duration::from_micros(rng.below(span.as_micros() as u64 * 12 / 10));
        finished += usize::from(run_and_kill(&cfg, &args, delay));
        assert_audit_verifies(&cfg, &format!("after kill {round} of a tenant key rotation"));
        assert_eq!(transcripts(&cfg, site.path(), "alpha"), before, "transcripts changed by kill {round}");
    }
    eprintln!(
        "{} kills of `keys rotate` (~{span:?} each) in {:?}; {finished} finished first",
        kills(),
        started.elapsed()
    );
    assert!(finished < kills(), "some kills landed mid-rotation");
}

#[tokio::test]
async fn sigkill_during_master_key_rotation_leaves_exactly_one_key_that_opens_everything() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = serve_config(&site, &fake.base);
    with_transcripts(&site, &config).await;
    let cfg = site.config_path();
    let before = transcripts(&cfg, site.path(), "alpha");
    let keys = site.path().join("keys");
    let mut rng = Rng::new("master key rotation kill loop");
    let started = Instant::now();
    let (mut switched, mut span) = (0, Duration::from_millis(50));
    for round in 0..kills() {
        let next = keys.join(format!("next-{round}.key"));
        assert_eq!(run_cli(&["keys", "init", "--out", next.to_str().unwrap()], None).0, 0);
        let delay = Duration::from_micros(rng.below(span.as_micros() as u64 * 12 / 10));
        let t = Instant::now();
        if run_and_kill(&cfg, &["keys", "rotate-master", "--new-key", next.to_str().unwrap()], delay) {
            span = t.elapsed();
        }
        // Whichever key the store now answers to, it is exactly one of the two, and it reads
        // everything.
        let out = site.path().join("probe.jsonl");
        let (code, _, err) = cli(&cfg, &["tenant", "export", "alpha", "--out", out.to_str().unwrap()]);
        if code != 0 {
            assert!(err.contains("wrong master key"), "after kill {round}: {err}");
            let key = format!("{{ file: {:?} }}", next.to_str().unwrap());
            std::fs::write(&cfg, without_sandbox(&site.config_with_key(&fake.base, &key))).unwrap();
            switched += 1;
        }
        assert_audit_verifies(&cfg, &format!("after kill {round} of a master-key rotation"));
        assert_eq!(transcripts(&cfg, site.path(), "alpha"), before, "transcripts changed by kill {round}");
    }
    eprintln!(
        "{} kills of `keys rotate-master` in {:?}; the new key took over {switched} times",
        kills(),
        started.elapsed()
    );
    assert!(switched > 0 && switched < kills(), "kills landed both before and after the switch ({switched})");
}

/// `runsFailed` of a tenant, live from `GET /admin/usage`.
async fn runs_failed(gw: &Gateway, tenant: &str) -> u64 {
    let r = crate::harness::http()
        .get(gw.url(&format!("/admin/usage?tenant={tenant}")))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    v["tenants"][0]["total"]["runsFailed"].as_u64().unwrap_or_else(|| panic!("no runsFailed in {v}"))
}

#[tokio::test]
async fn a_provider_that_drops_fails_or_stalls_gives_a_clear_message_and_a_failed_run() {
    let fake = fakes::start().await;
    let gw = Gateway::start(&crate::two_tenant_config(&fake.base, ""), &env()).await;
    let http = crate::harness::http();
    let mut failures = 0;
    // (what the provider does, what the user is told), both providers, streamed and not.
    for (text, told) in [
        ("drop-stream", "failed to answer"),
        ("upstream-500", "failed to answer"),
        ("upstream-429", "busy"),
        ("slow", "too long"),
    ] {
        for agent in ["a-openai", "a-claude"] {
            for stream in [false, true] {
                let body = json!({ "model": agent, "user": "faults", "stream": stream,
                    "messages": [{ "role": "user", "content": text }] });
                let r =
                    http.post(gw.url("/v1/chat/completions")).bearer_auth(TOKEN_A).json(&body).send().await.unwrap();
                let status = r.status().as_u16();
                let body = r.text().await.unwrap();
                let message = if stream {
                    assert_eq!(status, 200, "{agent} {text}: {body}");
                    let error = body
                        .lines()
                        .filter_map(|l| l.strip_prefix("data: "))
                        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                        .find(|v| v.get("error").is_some())
                        .unwrap_or_else(|| panic!("{agent} {text}: no error event in the stream:\n{body}"));
                    assert!(body.trim_end().ends_with("data: [DONE]"), "the stream is closed properly: {body}");
                    error["error"]["message"].as_str().unwrap().to_string()
                } else {
                    assert_eq!(status, 502, "{agent} {text}: {body}");
                    let v: Value = serde_json::from_str(&body).unwrap();
                    v["error"]["message"].as_str().unwrap().to_string()
                };
                assert!(message.contains(told), "{agent} {text} (stream {stream}): {message:?}");
                for leak in ["127.0.0.1", "http", "sk-", "dropped", "connection"] {
                    assert!(!message.contains(leak), "{agent} {text}: {message:?} shows {leak:?}");
                }
                failures += 1;
            }
        }
    }
    assert_eq!(runs_failed(&gw, "alpha").await, failures, "every failed turn is recorded as failed");
    // And the next turn works.
    let (s, b) = crate::store::chat(&gw, TOKEN_A, "a-openai", "faults", "recovered").await;
    assert_eq!((s, b["choices"][0]["message"]["content"].as_str()), (200, Some("fake says: recovered")), "{b}");
}

/// A tmpfs of `mb` MiB mounted at `dir` (this suite runs as root, as CI does), unmounted on drop.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    pub fn mount(dir: &Path, mb: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "cannot mount a small tmpfs state dir: {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file until it is full; returns the file.
pub fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5a_u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let byte = [0u8; 1];
    while f.write_all(&byte).is_ok() {}
    path
}

#[tokio::test]
async fn a_full_state_disk_fails_turns_clearly_corrupts_nothing_and_recovers() {
    let fake = fakes::start().await;
    let site = Site::new();
    let _disk = SmallDisk::mount(&site.state(), 8);
    let config = serve_config(&site, &fake.base);
    let cfg = site.config_path();
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    let mut acked = BTreeMap::new();
    let mut ok = Vec::new();
    for i in 0..3 {
        let text = format!("before the disk filled {i}");
        let (s, b) = crate::store::chat(&gw, TOKEN_A, "a-openai", "full", &text).await;
        assert_eq!(s, 200, "{b}");
        ok.push(text);
    }
    let filler = fill(&site.state());
    let mut refused = 0;
    for i in 0..5 {
        // Larger than a page, so a turn cannot fit in what the segment's last page has left.
        let text = format!("while the disk is full {i} {}", "x".repeat(20_000));
        let (s, b) = crate::store::chat(&gw, TOKEN_A, "a-openai", "full", &text).await;
        if s == 200 {
            // Written before the disk was quite full (the page cache can still take a little).
            ok.push(text);
            continue;
        }
        refused += 1;
        assert!((500..600).contains(&s), "a turn that cannot be stored fails as a server error: {s} {b}");
        let message = b["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty() && !message.contains('/'), "a clear message without paths: {b}");
    }
    assert!(refused > 0, "turns were refused while the disk was full");
    let logs = gw.logs();
    assert!(logs.contains("No space left") || logs.contains("space"), "the operator sees why: {logs}");
    std::fs::remove_file(&filler).unwrap();
    let text = "after space came back".to_string();
    let (s, b) = crate::store::chat(&gw, TOKEN_A, "a-openai", "full", &text).await;
    assert_eq!(s, 200, "the gateway recovers when space returns: {b}\n{}", gw.logs());
    ok.push(text);
    assert_eq!(gw.terminate().await, Some(0));
    assert_audit_verifies(&cfg, "after the disk was full");
    acked.insert("full".to_string(), ok);
    check_transcripts(&cfg, site.path(), &acked, "after the disk was full");
}

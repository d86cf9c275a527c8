//! The CLI surface: exit codes, `config check`, and `serve` refusing what it cannot run.

use serde_json::Value;

use crate::harness::{repo_root, run_cli};

/// `bulkhead config check PATH` with `env` set: (exit code, stdout + stderr).
fn check_with_env(path: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    crate::harness::run_with_env(&["config", "check", path.to_str().unwrap()], env)
}

#[test]
fn config_check_accepts_the_shipped_configs_with_their_secrets_and_refuses_the_seed_sample() {
    // The shipped configs as an operator runs them: beside their master key, secrets set.
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let key = dir.path().join(".bulkhead-master.key");
    assert_eq!(run_cli(&["keys", "init", "--out", key.to_str().unwrap()], None).0, 0);
    let env = [
        ("BULKHEAD_DEMO_TOKEN", "tok-demo-5e2b8c1f7a4d9e3b6c0f8a2d5b9e1c7f"),
        ("BULKHEAD_OPERATOR_TOKEN", "ops-token-7c1f4a9d2e6b8c3f5a0d7e2b9c4f1a6d"),
        ("ACME_TG_TOKEN", "123456:ACME-shipped-config-token"),
        ("GLOBEX_TG_TOKEN", "654321:GLOBEX-shipped-config-token"),
        ("AGENCY_DISCORD_TOKEN", "MTAwMA.agency-shipped-config-token"),
        ("STUDIO_DISCORD_TOKEN", "MTAwMQ.studio-shipped-config-token"),
        ("ACME_SLACK_BOT_TOKEN", "xoxb-acme-shipped-config-token"),
        ("ACME_SLACK_APP_TOKEN", "xapp-acme-shipped-config-token"),
        ("GLOBEX_SLACK_BOT_TOKEN", "xoxb-globex-shipped-config-token"),
        ("GLOBEX_SLACK_SIGNING_SECRET", "globex-shipped-config-signing-secret"),
        ("ACME_WA_TOKEN", "EAAG-acme-shipped-config-token"),
        ("ACME_WA_APP_SECRET", "acme-shipped-config-app-secret"),
        ("ACME_WA_VERIFY", "acme-shipped-config-verify"),
        ("GLOBEX_WA_TOKEN", "EAAG-globex-shipped-config-token"),
        ("GLOBEX_WA_APP_SECRET", "globex-shipped-config-app-secret"),
        ("GLOBEX_WA_VERIFY", "globex-shipped-config-verify"),
        ("ACME_BLUEBUBBLES_PASSWORD", "acme-shipped-config-bridge-password"),
        ("ACME_IMESSAGE_WEBHOOK_SECRET", "acme-shipped-config-webhook-secret"),
        ("GLOBEX_BLUEBUBBLES_PASSWORD", "globex-shipped-config-bridge-password"),
        ("GLOBEX_IMESSAGE_WEBHOOK_SECRET", "globex-shipped-config-webhook-secret"),
    ];
    for f in [
        "bulkhead.json5",
        "telegram.json5",
        "discord.json5",
        "slack.json5",
        "whatsapp.json5",
        "signal.json5",
        "imessage.json5",
    ] {
        let path = dir.path().join("config").join(f);
        std::fs::copy(root.join("config").join(f), &path).unwrap();
        let (code, out) = check_with_env(&path, &env);
        assert_eq!(code, 0, "{f}: {out}");
        assert!(out.contains(": ok"), "{out}");
        // A secret that cannot be resolved refuses `serve`, so `config check` refuses it too.
        let (code, out) = check_with_env(&path, &[]);
        assert_eq!(code, 2, "{f}: {out}");
        assert!(out.contains("is not set"), "{f}: {out}");
    }
    // The seed's sample as written names no store mode (OpenClaw has none): refused for that
    // alone, as `serve` refuses it; its Discord block checks clean (tests/blackbox/discord.rs
    // serves it with a store mode and a model added).
    let seed = root.join("tests/fixtures/configs/seed-sample.json5");
    let (code, out, _) = run_cli(&["config", "check", "--json", seed.to_str().unwrap()], None);
    assert_eq!(code, 2, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let errors = v["errors"].to_string();
    assert!(errors.contains("store") && !errors.contains("channels.discord"), "{errors}");
}

#[test]
fn config_check_refuses_everything_serve_refuses_with_the_same_words() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    let strong = "tok-strong-6f1c9e2b7d4a8f3e5c0b9a7d6e2f1c4b";
    let cases: [(String, &str); 7] = [
        // A channel block with a key its adapter does not have (every seed channel is built now).
        (
            format!(
                "store: {{ mode: 'memory' }}, tenants: [ {{ id: 't', apiTokens: ['{strong}'] }} ], channels: {{ imessage: {{ account: '+15550001' }} }},"
            ),
            "channels.imessage.account: unknown field `account`",
        ),
        // A weak token.
        (
            "store: { mode: 'memory' }, tenants: [ { id: 't', apiTokens: ['demo-token'] } ],".into(),
            "tenant \"t\" apiTokens[0]",
        ),
        // One token, two holders.
        (
            format!(
                "store: {{ mode: 'memory' }}, tenants: [ {{ id: 't', apiTokens: ['{strong}'] }}, {{ id: 'u', apiTokens: ['{strong}'] }} ],"
            ),
            "same token",
        ),
        // A secret that cannot be resolved.
        (
            "store: { mode: 'memory' }, tenants: [ { id: 't', apiTokens: [ { env: 'BULKHEAD_TEST_UNSET_VAR' } ] } ],"
                .into(),
            "BULKHEAD_TEST_UNSET_VAR",
        ),
        // No store named.
        (
            format!("tenants: [ {{ id: 't', apiTokens: ['{strong}'] }} ],"),
            "store: neither store.masterKey nor store.mode is set",
        ),
        // A master key that cannot be read.
        (
            format!(
                "store: {{ masterKey: {{ file: 'missing.key' }} }}, tenants: [ {{ id: 't', apiTokens: ['{strong}'] }} ],"
            ),
            "store.masterKey",
        ),
        // A memory bound of nothing.
        (
            format!("store: {{ mode: 'memory', cacheMb: 0 }}, tenants: [ {{ id: 't', apiTokens: ['{strong}'] }} ],"),
            "store.cacheMb",
        ),
    ];
    for (body, want) in cases {
        let text = format!(
            "{{ gateway: {{ bind: '127.0.0.1:0' }}, stateDir: 'state', {body} agents: {{ list: [ {{ id: 'x', tenant: 't' }} ] }} }}"
        );
        std::fs::write(&path, &text).unwrap();
        let (code, out) = check_with_env(&path, &[]);
        assert_eq!(code, 2, "config check accepted {text}: {out}");
        assert!(out.contains(want), "config check: {want:?} missing from {out}");
        let (code, err) = serve_expecting_refusal(&path);
        assert_eq!(code, Some(2), "serve: {text}: {err}");
        assert!(err.contains(want), "serve: {want:?} missing from {err}");
        assert!(!out.contains("demo-token") && !err.contains("demo-token"), "never the token itself");
    }
}

#[test]
fn config_check_reports_every_error_with_its_path_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json5");
    std::fs::write(
        &path,
        "{ agents: { list: [ { id: 'a', tools: { allow: ['exce'] } }, { id: 'a' } ] }, bindings: [ { agentId: 'ghost', match: { channel: 'telegram' } } ], colour: 'blue' }",
    )
    .unwrap();
    let (code, out, _) = run_cli(&["config", "check", "--json", path.to_str().unwrap()], None);
    assert_eq!(code, 2);
    let v: Value = serde_json::from_str(&out).unwrap();
    let paths: Vec<&str> = v["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    for p in ["colour", "agents.list[0].tools.allow[0]", "agents.list[1].id", "bindings[0].agentId"] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    std::fs::write(&path, "{ agents: { list: [ { id: 'a' }\n  ] ,, }").unwrap();
    let (code, _, err) = run_cli(&["config", "check", path.to_str().unwrap()], None);
    assert_eq!(code, 2);
    assert!(err.contains("line 2"), "syntax errors carry line:column: {err}");
    let (code, _, err) = run_cli(&["config", "check", dir.path().join("missing.json5").to_str().unwrap()], None);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn serve_refuses_a_channel_key_its_adapter_does_not_have_naming_it() {
    // Every channel of the schema has an adapter in this build, and each adapter reads a closed
    // set of keys: one it does not have is refused by its path, its literal never echoed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imessage.json5");
    std::fs::write(
        &path,
        "{ store: { mode: \"memory\" }, channels: { imessage: { account: \"+15550001\", token: \"s3cr3t-literal\" } } }",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["serve", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 2);
    assert!(err.contains("channels.imessage.token: unknown field `token`"), "{err}");
    assert!(!err.contains("s3cr3t-literal"), "the literal is never echoed");
    for channel in ["telegram", "discord", "slack", "whatsapp", "signal", "imessage"] {
        assert!(!err.contains(&format!("the {channel} adapter is not built")), "{err}");
    }
}

#[test]
fn serve_refuses_unresolvable_secrets_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    std::fs::write(&path, "{ gateway: { bind: '127.0.0.1:0' }, store: { mode: 'memory' }, tenants: [ { id: 't', apiTokens: [ { env: 'BULKHEAD_TEST_UNSET_VAR' } ] } ], agents: { list: [ { id: 'x', tenant: 't' } ] } }").unwrap();
    let (code, _, err) = run_cli(&["serve", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 2);
    assert!(err.contains("BULKHEAD_TEST_UNSET_VAR"), "{err}");
}

#[test]
fn serve_refuses_a_token_shared_by_two_holders_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    let agents = "agents: { list: [ { id: 'x', tenant: 't' }, { id: 'y', tenant: 'u' } ] }";
    for (tenants, operators, holders) in [
        (
            "[ { id: 't', apiTokens: [ 'tok-shared-1-8c3f6a9d2e5b7c1f4a8d3e6b9c2f5a7d' ] }, { id: 'u', apiTokens: [ 'tok-shared-1-8c3f6a9d2e5b7c1f4a8d3e6b9c2f5a7d' ] } ]",
            "[]",
            ["tenant \"u\"", "tenant \"t\""],
        ),
        (
            "[ { id: 't', apiTokens: [ 'tok-shared-1-8c3f6a9d2e5b7c1f4a8d3e6b9c2f5a7d' ] }, { id: 'u', apiTokens: [ 'tok-u-2b7e5c9a4f1d8b3e6c2a9f5d7b4e1c8a' ] } ]",
            "[ { id: 'ops', token: 'tok-shared-1-8c3f6a9d2e5b7c1f4a8d3e6b9c2f5a7d', role: 'admin' } ]",
            ["operator \"ops\"", "tenant \"t\""],
        ),
    ] {
        std::fs::write(
            &path,
            format!("{{ gateway: {{ bind: '127.0.0.1:0', operators: {operators} }}, store: {{ mode: 'memory' }}, tenants: {tenants}, {agents} }}"),
        )
        .unwrap();
        let (code, _, err) = run_cli(&["serve", "--config", path.to_str().unwrap()], None);
        assert_eq!(code, 2, "{err}");
        assert!(holders.iter().all(|h| err.contains(h)) && err.contains("same token"), "{err}");
        assert!(!err.contains("tok-shared-1-8c3f"), "the token is never echoed: {err}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, _) = run_cli(&["no-such-command"], None);
    assert_eq!(code, 2);
}

/// `bulkhead serve --config PATH`, expected to refuse: its exit code and stderr. A gateway that
/// starts instead is killed after a while and reported as exit code `None`.
pub fn serve_expecting_refusal(path: &std::path::Path) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .env_remove("BULKHEAD_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (code, err)
}

#[tokio::test]
async fn serve_refuses_a_config_that_names_no_store_and_memory_mode_must_be_said() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    let config = |store: &str| {
        format!(
            "{{ gateway: {{ bind: '127.0.0.1:0' }}, stateDir: 'state', {store} agents: {{ list: [ {{ id: 'x' }} ] }} }}"
        )
    };
    std::fs::write(&path, config("")).unwrap();
    let (code, err) = serve_expecting_refusal(&path);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("error: store: neither store.masterKey nor store.mode is set"), "{err}");
    assert!(!dir.path().join("state").join("workspaces").exists(), "nothing was started");
    // `config check` refuses it as `serve` does; `doctor` fails it.
    let (code, _, err) = run_cli(&["config", "check", path.to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("store: neither store.masterKey nor store.mode is set"), "{err}");
    let (code, out, _) = run_cli(&["--config", path.to_str().unwrap(), "doctor"], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  store: neither store.masterKey nor store.mode is set"), "{out}");

    // Said explicitly, memory mode serves, with a warning in the log, `config check` and `doctor`.
    std::fs::write(&path, config("store: { mode: 'memory' },")).unwrap();
    let gw = crate::harness::Gateway::start_in(dir.path(), &std::fs::read_to_string(&path).unwrap(), &[]).await;
    let health = crate::harness::http().get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(gw.logs().contains("store.mode is \"memory\": not for production"), "{}", gw.logs());
    drop(gw);
    let path = dir.path().join("bulkhead.json5");
    let (code, out, _) = run_cli(&["config", "check", path.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: store.mode is \"memory\": not for production"), "{out}");
    let (_, out, _) = run_cli(&["--config", path.to_str().unwrap(), "doctor"], None);
    assert!(out.contains("warn  store.mode \"memory\" is not for production"), "{out}");

    // A mode that contradicts the key, or an unknown mode, is a config error.
    for (store, want) in [
        ("store: { mode: 'memory', masterKey: { env: 'K' } },", "store.mode: \"memory\" keeps nothing on disk"),
        ("store: { mode: 'encrypted' },", "store.masterKey: missing key (store.mode is \"encrypted\")"),
        ("store: { mode: 'disk' },", "store.mode: invalid value \"disk\""),
    ] {
        std::fs::write(&path, config(store)).unwrap();
        let (code, _, err) = run_cli(&["config", "check", path.to_str().unwrap()], None);
        assert_eq!(code, 2, "{store}: {err}");
        assert!(err.contains(want), "{store}: {err}");
    }
}

#[test]
fn serve_refuses_weak_tokens_naming_the_key_not_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    std::fs::write(
        &path,
        "{ gateway: { bind: '127.0.0.1:0', operators: [ { id: 'ops', token: { env: 'WEAK_OPS_TOKEN' }, role: 'admin' } ] },
           store: { mode: 'memory' },
           tenants: [ { id: 't', apiTokens: [ 'tok-strong-6f1c9e2b7d4a8f3e5c0b9a7d6e2f1c4b', 'demo-token' ] } ],
           agents: { list: [ { id: 'x', tenant: 't' } ] } }",
    )
    .unwrap();
    // A gateway that accepts the tokens would serve forever: give it 30 s, then fail.
    let mut child = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .env_remove("BULKHEAD_CONFIG")
        .env("WEAK_OPS_TOKEN", "ops-token-123")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started with weak tokens");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tenant \"t\" apiTokens[1]") && err.contains("gateway.operators[0].token"), "{err}");
    assert!(!err.contains("apiTokens[0]: token too weak"), "the strong token passes: {err}");
    assert!(err.contains("128"), "the rule is named: {err}");
    for value in ["demo-token", "ops-token-123"] {
        assert!(!err.contains(value), "the token is never echoed: {err}");
    }
}

/// Runs `config check` on `text` and returns (exit code, output, how long it took).
fn check_timed(text: &str) -> (i32, String, std::time::Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.json5");
    std::fs::write(&path, text).unwrap();
    let started = std::time::Instant::now();
    let (code, out, err) = run_cli(&["config", "check", path.to_str().unwrap()], None);
    (code, format!("{out}{err}"), started.elapsed())
}

#[test]
fn config_check_answers_hostile_files_quickly_with_exit_2() {
    // A generous bound for a debug binary on a busy machine; the figures in BENCHMARKS.md are far
    // below it, and the quadratic validation this guards against took minutes in a debug build.
    let bound = std::time::Duration::from_secs(15);
    // 200,000 nested `[` once overflowed the parser's stack (exit 134).
    let (code, out, took) = check_timed(&format!("{{ agents: {}", "[".repeat(200_000)));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("nested more than 64 levels") && out.contains("line 1, column 74"), "{out}");
    assert!(took < bound, "took {took:?}");
    // Deep nesting inside strings and comments is only text (a store is named: `serve` needs one).
    let (code, out, _) = check_timed(&format!(
        "{{ store: {{ mode: \"memory\" }}, /* {} */ agents: {{ list: [ {{ id: \"x\", name: \"{}\" }} ] }} }}",
        "[".repeat(100_000),
        "{".repeat(100_000)
    ));
    assert_eq!(code, 0, "{out}");
    // 100,000 agents and one bad binding once took 13 s (quadratic cross-checks).
    let agents: Vec<String> = (0..100_000).map(|i| format!("{{ id: \"agent-{i}\" }}")).collect();
    let text = format!(
        "{{ agents: {{ list: [ {} ] }}, bindings: [ {{ agentId: \"ghost\", match: {{ channel: \"telegram\" }} }} ] }}",
        agents.join(", ")
    );
    let (code, out, took) = check_timed(&text);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("bindings[0].agentId") && out.contains("unknown agent \"ghost\""), "{out}");
    assert!(took < bound, "took {took:?}");
}

#[test]
fn cli_output_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    // Enough output to outgrow a pipe buffer, so the command is still writing when the reader goes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.json5");
    let agents: Vec<String> = (0..5_000).map(|i| format!("{{ id: \"agent-{i}\", name: \"Agent {i}\" }}")).collect();
    std::fs::write(&path, format!("{{ agents: {{ list: [ {} ] }} }}", agents.join(", "))).unwrap();
    let mut child = std::process::Command::new(crate::harness::BIN)
        .args(["tenant", "list", "--config", path.to_str().unwrap()])
        .env_remove("BULKHEAD_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -1`: read one line, then hang up.
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("agent-"), "{first}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the output was cut short: exit 1, not a panic (101): {err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
}

#[test]
fn tenant_export_and_delete_name_a_store_directory_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    std::fs::write(&path, "{ stateDir: 'no-such-state', agents: { list: [ { id: 'x' } ] } }").unwrap();
    let cfg = path.to_str().unwrap();
    let out = dir.path().join("x.jsonl");
    for args in [
        vec!["--config", cfg, "tenant", "export", "x", "--out", out.to_str().unwrap()],
        vec!["--config", cfg, "tenant", "delete", "x", "--yes"],
        vec!["--config", cfg, "keys", "rotate", "--tenant", "x"],
    ] {
        let (code, _, err) = run_cli(&args, None);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("does not exist") && err.contains("no-such-state/store"), "{args:?}: {err}");
        assert!(!err.contains("holds an encrypted store"), "{args:?}: {err}");
    }
    assert!(!dir.path().join("no-such-state").exists(), "nothing was created");
}

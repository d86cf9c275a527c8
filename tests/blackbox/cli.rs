//! The CLI surface: exit codes, `config check`, and `serve` refusing what it cannot run.

use serde_json::Value;

use crate::harness::{repo_root, run_cli};

#[test]
fn config_check_accepts_the_shipped_configs_and_the_seed_sample() {
    let root = repo_root();
    for f in ["config/bulkhead.json5", "config/telegram.json5", "tests/fixtures/configs/seed-sample.json5"] {
        let (code, out, err) = run_cli(&["config", "check", root.join(f).to_str().unwrap()], None);
        assert_eq!(code, 0, "{f}: {out}{err}");
        assert!(out.contains(": ok"), "{out}");
    }
    let (code, out, _) = run_cli(
        &["config", "check", "--json", root.join("tests/fixtures/configs/seed-sample.json5").to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true);
    assert!(v["warnings"][0].as_str().unwrap().contains("channels.discord.token"));
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
fn serve_refuses_adapters_that_are_not_built_naming_the_channel() {
    let (code, _, err) = run_cli(
        &["serve", "--config", repo_root().join("tests/fixtures/configs/seed-sample.json5").to_str().unwrap()],
        None,
    );
    assert_eq!(code, 2);
    assert!(err.contains("channels.discord") && err.contains("not built"), "{err}");
    assert!(!err.contains("\"...\""), "the literal token is never echoed");
}

#[test]
fn serve_refuses_unresolvable_secrets_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json5");
    std::fs::write(&path, "{ gateway: { bind: '127.0.0.1:0' }, tenants: [ { id: 't', apiTokens: [ { env: 'BULKHEAD_TEST_UNSET_VAR' } ] } ], agents: { list: [ { id: 'x', tenant: 't' } ] } }").unwrap();
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
            "[ { id: 't', apiTokens: [ 'tok-shared-1' ] }, { id: 'u', apiTokens: [ 'tok-shared-1' ] } ]",
            "[]",
            ["tenant \"u\"", "tenant \"t\""],
        ),
        (
            "[ { id: 't', apiTokens: [ 'tok-shared-1' ] }, { id: 'u', apiTokens: [ 'tok-u' ] } ]",
            "[ { id: 'ops', token: 'tok-shared-1', role: 'admin' } ]",
            ["operator \"ops\"", "tenant \"t\""],
        ),
    ] {
        std::fs::write(
            &path,
            format!("{{ gateway: {{ bind: '127.0.0.1:0', operators: {operators} }}, tenants: {tenants}, {agents} }}"),
        )
        .unwrap();
        let (code, _, err) = run_cli(&["serve", "--config", path.to_str().unwrap()], None);
        assert_eq!(code, 2, "{err}");
        assert!(holders.iter().all(|h| err.contains(h)) && err.contains("same token"), "{err}");
        assert!(!err.contains("tok-shared-1"), "the token is never echoed: {err}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, _) = run_cli(&["no-such-command"], None);
    assert_eq!(code, 2);
}

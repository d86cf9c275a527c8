//! Config tests: shipped configs load, and a table of broken configs each names its error path.

use std::path::Path;

use super::*;

fn errors(text: &str) -> Vec<ConfigError> {
    load_str(text, Path::new(".")).expect_err("config should be invalid")
}

fn paths(text: &str) -> Vec<String> {
    errors(text).into_iter().map(|e| e.path).collect()
}

#[test]
fn shipped_configs_and_the_seed_sample_check_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<_> = std::fs::read_dir(root.join("config")).unwrap().map(|e| e.unwrap().path()).collect();
    files.push(root.join("tests/fixtures/configs/seed-sample.json5"));
    let mut checked = 0;
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "json5")) {
        if let Err(e) = load_file(f) {
            panic!("{e}");
        }
        checked += 1;
    }
    assert!(checked >= 2, "expected the default config and the seed sample");
    let seed = load_file(&root.join("tests/fixtures/configs/seed-sample.json5")).unwrap();
    assert_eq!(seed.agents[0].id.as_str(), "agency-client");
    assert_eq!(seed.agents[0].tenant.as_str(), "agency-client", "an agent without tenant is its own tenant");
    assert!(seed.warnings.iter().any(|w| w.contains("channels.discord.token")), "literal secret must warn");
    assert!(!seed.warnings.iter().any(|w| w.contains("...")), "the secret value is never echoed");
}

#[test]
fn broken_configs_name_their_paths() {
    let table: &[(&str, &[&str])] = &[
        ("{ gatway: {} }", &["gatway"]),
        ("{ gateway: { bind: 'nowhere' } }", &["gateway.bind"]),
        ("{ gateway: { bind: 7878 } }", &["gateway.bind"]),
        ("{ gateway: { tls: { cert: 'c.pem' } } }", &["gateway.tls.key"]),
        ("{ gateway: { tls: { key: 'k.pem', requird: true } } }", &["gateway.tls.requird"]),
        ("{ gateway: { bind: '0.0.0.0:7878', tls: { required: true } } }", &["gateway.tls.required"]),
        ("{ agents: { list: [ { id: 'a', toolz: {} } ] } }", &["agents.list[0].toolz"]),
        ("{ agents: { list: [ { id: 'Bad Id!' } ] } }", &["agents.list[0].id"]),
        ("{ agents: { list: [ { name: 'no id' } ] } }", &["agents.list[0].id"]),
        ("{ agents: { list: [ { id: 'a' }, { id: 'A' } ] } }", &["agents.list[1].id"]),
        ("{ agents: { list: [ { id: 'a', tenant: 'ghost' } ] } }", &["agents.list[0].tenant"]),
        ("{ agents: { list: [ { id: 'a', tools: { allow: ['exce'] } } ] } }", &["agents.list[0].tools.allow[0]"]),
        ("{ agents: { list: [ { id: 'a', model: 'nope/x' } ] } }", &["agents.list[0].model"]),
        ("{ agents: { list: [ { id: 'a', sandbox: { mode: 'sometimes' } } ] } }", &["agents.list[0].sandbox.mode"]),
        (
            "{ agents: { list: [ { id: 'a', sandbox: { docker: { network: 'host' } } } ] } }",
            &["agents.list[0].sandbox.docker.network"],
        ),
        (
            "{ agents: { list: [ { id: 'a' } ] }, bindings: [ { agentId: 'b', match: { channel: 'telegram' } } ] }",
            &["bindings[0].agentId"],
        ),
        (
            "{ agents: { list: [ { id: 'a' } ] }, bindings: [ { agentId: 'a', match: { channel: 'icq' } } ] }",
            &["bindings[0].match.channel"],
        ),
        // A binding to a channel that is not configured can never match.
        (
            "{ agents: { list: [ { id: 'a' } ] }, bindings: [ { agentId: 'a', match: { channel: 'telegram' } } ] }",
            &["bindings[0].match.channel"],
        ),
        (
            "{ agents: { list: [ { id: 'a' } ] }, channels: { telegram: { accounts: { one: {} } } }, bindings: [ { agentId: 'a', match: { channel: 'telegram', accountId: 'two' } } ] }",
            &["bindings[0].match.accountId"],
        ),
        (
            "{ agents: { list: [ { id: 'a' } ] }, channels: { telegram: {} }, bindings: [ { agentId: 'a', match: { channel: 'telegram' } }, { agentId: 'a', match: { channel: 'telegram' } } ] }",
            &["bindings[1]"],
        ),
        ("{ channels: { telegram: { guilds: {} } } }", &["channels.telegram.guilds"]),
        ("{ channels: { telegram: { dmPolicy: 'open' } } }", &["channels.telegram.allowFrom"]),
        ("{ tenants: [ { id: 't', apiTokens: [ { vault: 'x' } ] } ] }", &["tenants[0].apiTokens[0]"]),
        ("{ tenants: [ { id: 't' }, { id: 't' } ] }", &["tenants[1].id"]),
        ("{ models: { providers: { p: { api: 'gemini' } } } }", &["models.providers.p.api"]),
    ];
    for (text, expected) in table {
        let got = paths(text);
        for e in *expected {
            assert!(got.iter().any(|g| g == e), "config {text}\n  expected an error at {e}, got {got:?}");
        }
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let errs = errors(
        "{ gateway: { bind: 'x', colour: 1 }, agents: { list: [ { id: 'a', tools: { allow: ['exce', 'nope'] } }, { id: '!' } ] } }",
    );
    let p: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "gateway.colour",
        "gateway.bind",
        "agents.list[0].tools.allow[0]",
        "agents.list[0].tools.allow[1]",
        "agents.list[1].id",
    ] {
        assert!(p.contains(&want), "missing {want} in {p:?}");
    }
    assert!(errs.iter().any(|e| e.message.contains("did you mean \"exec\"")));
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let errs = errors("{\n  agents: {\n    list: [ { id: 'a' }, ]\n  ,,\n}");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].line.is_some() && errs[0].column.is_some(), "{errs:?}");
    assert!(errs[0].message.starts_with("invalid JSON5"));
}

#[test]
fn literal_secrets_are_never_echoed_in_errors() {
    let errs = errors("{ tenants: [ { id: 't', apiTokens: ['sk-very-secret-value', 42] } ] }");
    for e in &errs {
        assert!(!e.to_string().contains("sk-very-secret"), "{e}");
    }
}

#[test]
fn agent_defaults_and_implicit_tenants() {
    let c = load_str(
        "{ agents: { defaults: { sandbox: { scope: 'session', backend: 'wasm' } }, list: [ { id: 'solo' }, { id: 'x', sandbox: { scope: 'shared' } } ] } }",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(c.agents[0].tenant.as_str(), "solo");
    assert_eq!(c.agents[0].sandbox.scope, SandboxScope::Session);
    assert_eq!(c.agents[1].sandbox.scope, SandboxScope::Shared);
    assert_eq!(c.agents[0].model.provider, "scripted", "no providers means the offline scripted one");
}

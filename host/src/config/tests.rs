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
    let discord = seed.channels.account("discord", "default").expect("the implicit account");
    assert_eq!(discord.tenant.as_ref().map(|t| t.as_str()), Some("agency-client"));
    assert!(!seed.warnings.iter().any(|w| w.contains("...")), "a secret value is never echoed");
}

#[test]
fn an_adapter_checks_its_own_keys_and_sender_ids_come_out_canonical() {
    let c = crate::config::load_str(
        "{ channels: { telegram: { token: { env: 'T' }, allowFrom: ['tg:42', 'telegram:7', '9', '*'], accounts: { one: {}, two: { token: 'literal', allowFrom: ['5'] } } } } }",
        Path::new("."),
    )
    .unwrap();
    let one = c.channels.account("telegram", "one").unwrap();
    assert_eq!(one.access.allow_from, ["42", "7", "9", "*"], "inherited, canonical");
    assert_eq!(
        c.channels.account("telegram", "two").unwrap().access.allow_from,
        ["5"],
        "an account's own list replaces it"
    );
    assert!(
        c.warnings.iter().any(|w| w.starts_with("channels.telegram.accounts.two.token: literal secret")),
        "{:?}",
        c.warnings
    );
    assert!(!c.warnings.iter().any(|w| w.contains("literal\"") || w.contains(": literal\n")));
    let tg = c.channels.platform::<crate::channels::telegram::config::TelegramSettings>("telegram").unwrap();
    assert_eq!(tg.accounts.len(), 2);
    assert_ne!(one.fingerprint(), c.channels.account("telegram", "two").unwrap().fingerprint());
}

#[test]
fn broken_configs_name_their_paths() {
    let table: &[(&str, &[&str])] = &[
        ("{ gatway: {} }", &["gatway"]),
        (
            "{ gateway: { operators: [ { id: 'o', token: 'aaaaaaaaaaaaaaaaaaaa' }, { id: 'o', token: 'bbbbbbbbbbbbbbbbbbbb' } ] } }",
            &["gateway.operators[1].id"],
        ),
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
        (
            "{ channels: { telegram: { token: 't', accounts: { a: { apiUrl: 5, tokn: 'x' } } } } }",
            &["channels.telegram.accounts.a.apiUrl", "channels.telegram.accounts.a.tokn"],
        ),
        (
            "{ channels: { telegram: { token: 't', groups: { general: {} }, allowFrom: ['@bob'] } } }",
            &["channels.telegram.groups.general", "channels.telegram.allowFrom[0]"],
        ),
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

use crate::ids::TenantId;

const KEYED: &str = r#"{
  models: { providers: {
    open: { api: "openai", baseUrl: "http://127.0.0.1:1/v1", apiKey: { env: "OPERATOR_KEY" } },
    own:  { api: "openai", baseUrl: "http://127.0.0.1:1/v1", apiKey: { env: "OPERATOR_KEY" }, allowSharedKey: false,
            maxConcurrent: 2, maxRetries: 5 },
  } },
  quotas: { messagesPerMinute: 30, modelTokensPerDay: 100000 },
  tenants: [
    { id: "payer", modelKeys: { own: { env: "PAYER_KEY" } }, quotas: { messagesPerMinute: 5, toolCallsPerMinute: 10 } },
    { id: "guest" },
  ],
  agents: { list: [
    { id: "p", tenant: "payer", model: "own/m" },
    { id: "g", tenant: "guest", model: "open/m" },
  ] },
}"#;

#[test]
fn quotas_inherit_key_by_key_and_tenant_keys_load() {
    let c = load_str(KEYED, Path::new(".")).unwrap();
    let payer = TenantId::parse("payer").unwrap();
    let guest = TenantId::parse("guest").unwrap();
    let p = c.quotas.for_tenant(&payer);
    assert_eq!(p.messages_per_minute, Some(5));
    assert_eq!(p.tool_calls_per_minute, Some(10));
    assert_eq!(p.model_tokens_per_day, Some(100_000), "inherited from the global quotas");
    assert_eq!(c.quotas.for_tenant(&guest).messages_per_minute, Some(30));
    assert_eq!(c.quotas.for_tenant(&guest).sandbox_seconds_per_day, None, "unset is unlimited");
    assert!(c.model_keys[&payer].contains_key("own"));
    assert!(!c.providers["own"].allow_shared_key);
    assert_eq!((c.providers["own"].max_concurrent, c.providers["own"].max_retries), (2, 5));
    assert!(c.providers["open"].allow_shared_key, "sharing the operator's key is the default");
}

#[test]
fn a_tenant_without_its_own_key_cannot_use_an_unshared_provider() {
    let text = KEYED.replace(r#"model: "open/m""#, r#"model: "own/m""#);
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "agents.list[1].model");
    assert!(errs[0].message.contains("allowSharedKey: false"), "{}", errs[0].message);
    assert!(errs[0].message.contains("tenants[1].modelKeys.own"), "{}", errs[0].message);
}

#[test]
fn broken_quotas_and_keys_name_their_paths() {
    let table: &[(&str, &[&str])] = &[
        ("{ quotas: { messagesPerMinute: 0 } }", &["quotas.messagesPerMinute"]),
        ("{ quotas: { tokensPerDay: 5 } }", &["quotas.tokensPerDay"]),
        (
            "{ tenants: [ { id: 't', quotas: { sandboxSecondsPerDay: 0 } } ] }",
            &["tenants[0].quotas.sandboxSecondsPerDay"],
        ),
        ("{ tenants: [ { id: 't', modelKeys: { ghost: { env: 'K' } } } ] }", &["tenants[0].modelKeys.ghost"]),
        (
            "{ models: { providers: { s: { api: 'scripted' } } }, tenants: [ { id: 't', modelKeys: { s: { env: 'K' } } } ] }",
            &["tenants[0].modelKeys.s"],
        ),
        (
            "{ models: { providers: { o: { api: 'openai', maxConcurrent: 0, maxRetries: 11 } } } }",
            &["models.providers.o.maxConcurrent", "models.providers.o.maxRetries"],
        ),
    ];
    for (text, expected) in table {
        assert_eq!(paths(text), *expected, "{text}");
    }
}

#[test]
fn a_docker_network_needs_allow_network_and_is_warned_about() {
    let load = |docker: &str| {
        let text =
            format!("{{ agents: {{ list: [ {{ id: 'a', sandbox: {{ backend: 'docker', docker: {docker} }} }} ] }} }}");
        load_str(&text, Path::new("."))
    };
    let warned = |c: &crate::config::Config| c.warnings.iter().any(|w| w.contains("sandbox.docker.network"));
    // `none` (the default, or said explicitly): no warning.
    for docker in ["{}", "{ network: 'none' }", "{ network: 'none', allowNetwork: false }"] {
        let c = load(docker).unwrap();
        assert_eq!(c.agents[0].sandbox.docker.network, "none", "{docker}");
        assert!(!warned(&c), "{docker}: {:?}", c.warnings);
    }
    // Any other network only with the explicit key, and then with a warning naming the agent.
    for net in ["bridge", "tenant-net"] {
        let c = load(&format!("{{ network: '{net}', allowNetwork: true }}")).unwrap();
        assert_eq!(c.agents[0].sandbox.docker.network, net);
        assert!(warned(&c) && c.warnings.iter().any(|w| w.contains("\"a\"")), "{:?}", c.warnings);
        let err = load(&format!("{{ network: '{net}' }}")).unwrap_err();
        assert!(format!("{err:?}").contains("allowNetwork"), "{err:?}");
    }
    // `host` stays refused, whatever allowNetwork says.
    assert!(load("{ network: 'host', allowNetwork: true }").is_err());
}

#[test]
fn docker_settings_have_safe_defaults_and_refuse_weakening() {
    let c = load_str("{ agents: { list: [ { id: 'a', sandbox: { backend: 'docker' } } ] } }", Path::new(".")).unwrap();
    assert_eq!(c.agents[0].sandbox.docker, DockerSettings::default());
    let d = DockerSettings::default();
    assert_eq!((d.network.as_str(), d.pids_limit, d.memory_bytes, d.nofile), ("none", 256, 512 << 20, 1024));
    let c = load_str(
        "{ agents: { defaults: { sandbox: { docker: { memory: '256m', cpus: 0.5, pidsLimit: 64 } } },
           list: [ { id: 'a', sandbox: { docker: { memory: '1g', memorySwap: '1g', ulimits: { nofile: 4096 },
             tmpfsMb: 16, idleSec: 60, timeoutSec: 5, runtime: 'runsc', user: '1000:1000' } } } ] } }",
        Path::new("."),
    )
    .unwrap();
    let s = &c.agents[0].sandbox.docker;
    assert_eq!((s.memory_bytes, s.nano_cpus, s.pids_limit, s.nofile), (1 << 30, 500_000_000, 64, 4096));
    assert_eq!((s.tmpfs_bytes, s.idle.as_secs(), s.timeout.as_secs()), (16 << 20, 60, 5));
    assert_eq!((s.runtime.as_deref(), s.user.as_deref()), (Some("runsc"), Some("1000:1000")));
    let p = "agents.list[0].sandbox.docker";
    for (docker, key) in [
        ("{ user: '0' }", "user"),
        ("{ user: '1000:0' }", "user"),
        ("{ user: 'root' }", "user"),
        ("{ readOnlyRoot: false }", "readOnlyRoot"),
        ("{ capDrop: ['NET_RAW'] }", "capDrop"),
        ("{ env: { API_KEY: 'x' } }", "env"),
        ("{ memory: '1m' }", "memory"),
        ("{ memory: 'lots' }", "memory"),
        ("{ memory: '256m', memorySwap: '1g' }", "memorySwap"),
        ("{ pidsLimit: 0 }", "pidsLimit"),
        ("{ cpus: 0 }", "cpus"),
        ("{ ulimits: { nproc: 10 } }", "ulimits.nproc"),
        ("{ seccompProfile: 'unconfined' }", "seccompProfile"),
        ("{ apparmorProfile: 'unconfined' }", "apparmorProfile"),
        ("{ network: 'container:x' }", "network"),
        ("{ network: 'bridge' }", "network"),
        ("{ network: 'tenant-net' }", "network"),
        ("{ network: 'bridge', allowNetwork: false }", "network"),
        ("{ tmpfs: ['/run'] }", "tmpfs"),
        ("{ idleSec: 1 }", "idleSec"),
        ("{ maxContainers: 0 }", "maxContainers"),
    ] {
        let text = format!("{{ agents: {{ list: [ {{ id: 'a', sandbox: {{ docker: {docker} }} }} ] }} }}");
        assert_eq!(paths(&text), [format!("{p}.{key}")], "{docker}");
    }
    // An error in the defaults names the defaults' key.
    assert_eq!(
        paths("{ agents: { defaults: { sandbox: { docker: { user: '0' } } }, list: [ { id: 'a' } ] } }"),
        ["agents.defaults.sandbox.docker.user"]
    );
}

#[test]
fn an_operator_without_a_role_is_a_read_only_auditor() {
    let c = load_str(
        "{ gateway: { operators: [ { id: 'o', token: 'aaaaaaaaaaaaaaaaaaaa' }, { id: 'p', token: 'bbbbbbbbbbbbbbbbbbbb', role: 'admin' } ] } }",
        Path::new("."),
    )
    .unwrap();
    let roles: Vec<OperatorRole> = c.gateway.operators.iter().map(|o| o.role).collect();
    assert_eq!(roles, [OperatorRole::Auditor, OperatorRole::Admin]);
}

#[test]
fn warnings_that_say_the_same_of_many_places_are_summarized_for_people() {
    let lit = |p: &str| format!("{p}: literal secret in the config; use {{ env: \"NAME\" }} or {{ file: \"PATH\" }}");
    let mut ws: Vec<String> = (0..10).map(|i| lit(&format!("tenants[{i}].apiTokens[0]"))).collect();
    ws.insert(1, "tenant \"b\" has no agents".into());
    ws.push(lit("channels.discord.token").replace("literal secret", "something else"));
    let shown = super::summarize_warnings(&ws);
    assert_eq!(
        shown,
        vec![
            format!("tenants[0].apiTokens[0], tenants[1].apiTokens[0], tenants[2].apiTokens[0] and 7 more: {}", &lit("x")[3..]),
            "tenant \"b\" has no agents".to_string(),
            lit("channels.discord.token").replace("literal secret", "something else"),
        ]
    );
    // Three or fewer of a kind are shown as they are.
    let few: Vec<String> = (0..3).map(|i| lit(&format!("t{i}"))).collect();
    assert_eq!(super::summarize_warnings(&few), few);
}

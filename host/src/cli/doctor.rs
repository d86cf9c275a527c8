//! `bulkhead doctor`: checks the environment an operator is about to serve from.

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::gateway::{Gateway, Parts};

pub fn run(source: &ConfigSource) -> i32 {
    let mut failures = 0;
    let config = match source.load(true) {
        Ok(c) => {
            println!(
                "ok    config {} ({} tenant(s), {} agent(s))",
                source.path.display(),
                c.tenants.len(),
                c.agents.len()
            );
            c
        }
        Err(e) => {
            println!("FAIL  config");
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    for w in &config.warnings {
        println!("warn  {w}");
    }
    match std::fs::create_dir_all(&config.state_dir) {
        Ok(()) => println!("ok    state directory {}", config.state_dir.display()),
        Err(e) => {
            failures += 1;
            println!("FAIL  state directory {}: {e}", config.state_dir.display());
        }
    }
    match crate::sandbox::wasm::WasmSandbox::new(&config.state_dir) {
        Ok(_) => println!("ok    wasm sandbox backend (runner compiled)"),
        Err(e) => {
            failures += 1;
            println!("FAIL  wasm sandbox backend: {e}");
        }
    }
    let docker_agents: Vec<_> = config
        .agents
        .iter()
        .filter(|a| a.sandbox.backend == crate::config::SandboxBackend::Docker)
        .map(|a| a.id.to_string())
        .collect();
    if !docker_agents.is_empty() {
        failures += 1;
        println!(
            "FAIL  agents {} use the docker backend, which this version does not include: their tool calls will fail",
            docker_agents.join(", ")
        );
    }
    let tenants_without_tokens: Vec<_> =
        config.tenants.values().filter(|t| t.api_tokens.is_empty()).map(|t| t.id.to_string()).collect();
    if !tenants_without_tokens.is_empty() {
        println!(
            "warn  tenants without API tokens (reachable only through chat channels): {}",
            tenants_without_tokens.join(", ")
        );
    }
    if config.store.master_key.is_some() {
        println!("ok    audit log on ({})", crate::audit::audit_dir(&config).display());
    } else {
        println!("warn  audit log off: store.masterKey is not configured (it holds the audit keys)");
    }
    match &config.gateway.tls {
        Some(files) => match crate::gateway::tls::acceptor(files) {
            Ok(_) => println!("ok    TLS certificate and key ({})", files.cert.display()),
            Err(e) => {
                failures += 1;
                println!("FAIL  {e}");
            }
        },
        None if !config.gateway.bind.ip().is_loopback() => println!(
            "warn  plaintext HTTP on {}: configure gateway.tls (with required: true) or a TLS proxy",
            config.gateway.bind
        ),
        None => {}
    }
    let gate: std::sync::Arc<dyn crate::policy::PolicyGate> = match crate::policy::PolicyEngine::load(&config) {
        Ok(engine) => {
            println!("ok    policies load ({} agent(s))", engine.agents().count());
            std::sync::Arc::new(engine)
        }
        Err(errors) => {
            failures += errors.len();
            for e in &errors {
                println!("FAIL  policy: {e}");
            }
            std::sync::Arc::new(crate::policy::DenyAll)
        }
    };
    match Gateway::start(config, Parts { gate, ..Parts::fail_closed() }) {
        Ok(_) => println!("ok    secrets resolve, channels and providers start"),
        Err(errors) => {
            failures += errors.len();
            for e in errors {
                println!("FAIL  {e}");
            }
        }
    }
    if failures == 0 { EXIT_OK } else { EXIT_FAILURE }
}

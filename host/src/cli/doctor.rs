//! `bulkhead doctor`: checks the environment an operator is about to serve from.

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::gateway::{Gateway, Parts};

/// The Docker backend: daemon reachable (API version negotiated) and every image agents use
/// present and speaking this runner protocol. Returns the number of failures.
fn check_docker(config: &crate::config::Config) -> usize {
    let mut images: Vec<(&str, Vec<String>)> = Vec::new();
    for a in config.agents.iter().filter(|a| a.sandbox.backend == crate::config::SandboxBackend::Docker) {
        let img = a.sandbox.docker.image.as_str();
        match images.iter_mut().find(|(i, _)| *i == img) {
            Some((_, agents)) => agents.push(a.id.to_string()),
            None => images.push((img, vec![a.id.to_string()])),
        }
    }
    if images.is_empty() {
        return 0;
    }
    let mut failures = 0;
    let with_workspace: Vec<String> = config
        .agents
        .iter()
        .filter(|a| a.sandbox.backend == crate::config::SandboxBackend::Docker)
        .filter(|a| a.sandbox.workspace_access != crate::config::WorkspaceAccess::None)
        .map(|a| a.id.to_string())
        .collect();
    if let Some(p) = crate::sandbox::docker::gateway_handover_problem()
        && !with_workspace.is_empty()
    {
        outln!("FAIL  docker sandbox backend: {p} (agents {})", with_workspace.join(", "));
        failures += 1;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            outln!("FAIL  docker sandbox backend: cannot start the async runtime: {e}");
            return failures + 1;
        }
    };
    rt.block_on(async {
        let docker = match crate::sandbox::docker::connect(None).await {
            Ok(d) => d,
            Err(e) => {
                outln!("FAIL  docker sandbox backend: {e}; tool calls of agents on it will fail until it is up");
                return failures + 1;
            }
        };
        let version = docker.version().await.ok().and_then(|v| v.version).unwrap_or_else(|| "?".into());
        outln!("ok    docker daemon {version} (API {})", docker.client_version());
        let mut failures = failures;
        for (image, agents) in images {
            match crate::sandbox::docker::check_image(&docker, image).await {
                Ok(_) => outln!("ok    sandbox image {image} (agents {})", agents.join(", ")),
                Err(e) => {
                    failures += 1;
                    outln!("FAIL  {e} (agents {})", agents.join(", "));
                }
            }
        }
        failures
    })
}

pub fn run(source: &ConfigSource) -> i32 {
    let mut failures = 0;
    let config = match source.load(true) {
        Ok(c) => {
            outln!(
                "ok    config {} ({} tenant(s), {} agent(s))",
                source.path.display(),
                c.tenants.len(),
                c.agents.len()
            );
            c
        }
        Err(e) => {
            outln!("FAIL  config");
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    for w in &config.warnings {
        outln!("warn  {w}");
    }
    match std::fs::create_dir_all(&config.state_dir) {
        Ok(()) => outln!("ok    state directory {}", config.state_dir.display()),
        Err(e) => {
            failures += 1;
            outln!("FAIL  state directory {}: {e}", config.state_dir.display());
        }
    }
    match crate::sandbox::wasm::WasmSandbox::new(&config.state_dir) {
        Ok(_) => outln!("ok    wasm sandbox backend (runner compiled)"),
        Err(e) => {
            failures += 1;
            outln!("FAIL  wasm sandbox backend: {e}");
        }
    }
    failures += check_docker(&config);
    let tenants_without_tokens: Vec<_> =
        config.tenants.values().filter(|t| t.api_tokens.is_empty()).map(|t| t.id.to_string()).collect();
    if !tenants_without_tokens.is_empty() {
        outln!(
            "warn  tenants without API tokens (reachable only through chat channels): {}",
            tenants_without_tokens.join(", ")
        );
    }
    failures += telegram(&config);
    match config.store.require_mode() {
        Ok(crate::config::StoreMode::Encrypted) => {
            outln!("ok    audit log on ({})", crate::audit::audit_dir(&config).display())
        }
        Ok(crate::config::StoreMode::Memory) => {
            outln!("warn  store.mode \"memory\" is not for production: nothing is kept and the audit log is off")
        }
        Err(e) => {
            failures += 1;
            outln!("FAIL  store: {e}");
        }
    }
    match &config.gateway.tls {
        Some(files) => match crate::gateway::tls::acceptor(files) {
            Ok(_) => outln!("ok    TLS certificate and key ({})", files.cert.display()),
            Err(e) => {
                failures += 1;
                outln!("FAIL  {e}");
            }
        },
        None if !config.gateway.bind.ip().is_loopback() => outln!(
            "warn  plaintext HTTP on {}: configure gateway.tls (with required: true) or a TLS proxy",
            config.gateway.bind
        ),
        None => {}
    }
    let gate: std::sync::Arc<dyn crate::policy::PolicyGate> = match crate::policy::PolicyEngine::load(&config) {
        Ok(engine) => {
            outln!("ok    policies load ({} agent(s))", engine.agents().count());
            for w in engine.warnings() {
                outln!("warn  {w}");
            }
            std::sync::Arc::new(engine)
        }
        Err(errors) => {
            failures += errors.len();
            for e in &errors {
                outln!("FAIL  policy: {e}");
            }
            std::sync::Arc::new(crate::policy::DenyAll)
        }
    };
    match Gateway::start(config, Parts { gate, ..Parts::fail_closed() }) {
        Ok(_) => outln!("ok    secrets resolve, channels and providers start"),
        Err(errors) => {
            failures += errors.len();
            for e in errors {
                outln!("FAIL  {e}");
            }
        }
    }
    if failures == 0 { EXIT_OK } else { EXIT_FAILURE }
}

/// Checks each Telegram bot: the token (`getMe`), privacy mode against `requireMention`, and a
/// webhook that would make long polling fail. Returns the number of failures.
fn telegram(config: &crate::config::Config) -> usize {
    use crate::channels::telegram::{Connection, MeError};
    if config.channels.telegram.is_empty() {
        return 0;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            outln!("FAIL  telegram: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let mut failures = 0;
    for acc in &config.channels.telegram {
        let label = format!("telegram/{}", acc.id);
        let conn = match acc.token.resolve(&config.base_dir).and_then(|t| Connection::new(t.expose(), &acc.api_url)) {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                outln!("FAIL  {label}: {e}");
                continue;
            }
        };
        let me = match rt.block_on(conn.get_me()) {
            Ok(me) => me,
            Err(e) => {
                failures += 1;
                let hint = if e == MeError::Unauthorized { "; check the token with @BotFather" } else { "" };
                outln!("FAIL  {label}: getMe failed: {e}{hint}");
                continue;
            }
        };
        outln!("ok    {label}: token accepted (bot @{})", me.user.username.as_deref().unwrap_or("?"));
        let wants_all =
            !acc.access.require_mention || acc.access.groups.values().any(|g| g.require_mention == Some(false));
        let groups_on = acc.access.group_policy != crate::config::channels::GroupPolicy::Disabled;
        if groups_on && wants_all && !me.can_read_all_group_messages {
            outln!(
                "warn  {label}: privacy mode is on, so in groups the bot only receives commands, replies to it and @mentions; groups set to requireMention: false will miss other messages. Turn privacy off with @BotFather (/setprivacy, Disable), then remove and re-add the bot to each group"
            );
        } else if groups_on && me.can_read_all_group_messages && !wants_all {
            outln!(
                "note  {label}: privacy mode is off: the bot receives every group message, but only answers @mentions and replies (requireMention); turning privacy on with @BotFather (/setprivacy) keeps other group messages away from the host"
            );
        }
        match rt.block_on(conn.webhook()) {
            Ok(None) => outln!("ok    {label}: no webhook set (long polling can receive updates)"),
            Ok(Some(url)) => {
                failures += 1;
                outln!(
                    "FAIL  {label}: a webhook is set (to {}), so long polling is refused with 409 Conflict; remove it with the Bot API's deleteWebhook method or stop whatever set it",
                    url.host_str().unwrap_or("an unknown host")
                );
            }
            Err(e) => {
                failures += 1;
                outln!("FAIL  {label}: getWebhookInfo failed: {e}");
            }
        }
    }
    failures
}

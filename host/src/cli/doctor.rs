//! `bulkhead doctor`: checks the environment an operator is about to serve from.

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};

/// The Docker backend: every engine reachable (API version negotiated) and every image agents
/// use present there and speaking this runner protocol; with several engines, where each tenant
/// is placed and whether its workspace volumes are on another engine. Returns the number of
/// failures.
fn check_docker(config: &crate::config::Config) -> usize {
    use crate::sandbox::docker;
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
    // With several engines workspaces are volumes: the gateway hands no directory over.
    if config.engines.is_none()
        && let Some(p) = docker::gateway_handover_problem()
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
        let Some(engines) = &config.engines else {
            let docker = match docker::connect(None).await {
                Ok(d) => d,
                Err(e) => {
                    outln!("FAIL  docker sandbox backend: {e}; tool calls of agents on it will fail until it is up");
                    return failures + 1;
                }
            };
            let version = docker.version().await.ok().and_then(|v| v.version).unwrap_or_else(|| "?".into());
            outln!("ok    docker daemon {version} (API {})", docker.client_version());
            return failures + check_images(&docker, &images, "").await;
        };
        let gateway = docker::volume_owner(config);
        let mut up = Vec::new();
        for e in &engines.engines {
            match docker::connect_endpoint(&e.endpoint).await {
                Ok(d) => {
                    let version = d.version().await.ok().and_then(|v| v.version).unwrap_or_else(|| "?".into());
                    outln!(
                        "ok    docker engine {} at {} (Docker {version}, API {}, weight {})",
                        e.name,
                        e.endpoint,
                        d.client_version(),
                        e.weight
                    );
                    failures += check_images(&d, &images, &format!(" on engine {}", e.name)).await;
                    up.push((e.name.as_str(), d));
                }
                Err(err) => {
                    failures += 1;
                    let then = if engines.failover {
                        "its tenants are served on their next engine (failover)"
                    } else {
                        "its tenants' tool calls fail until it is up"
                    };
                    outln!("FAIL  docker engine {}: {err}; {then}", e.name);
                }
            }
        }
        // Where each tenant with Docker agents is placed, and volumes it left on other engines
        // (a tenant moved by a change of the engine list finds an empty workspace).
        let candidates: Vec<_> = engines
            .engines
            .iter()
            .map(|e| crate::sandbox::placement::Candidate { name: &e.name, weight: e.weight })
            .collect();
        let mut tenants: Vec<(&str, Option<&str>)> = Vec::new();
        for a in config.agents.iter().filter(|a| a.sandbox.backend == crate::config::SandboxBackend::Docker) {
            if !tenants.iter().any(|(t, _)| *t == a.tenant.as_str()) {
                tenants.push((a.tenant.as_str(), a.sandbox.docker.engine.as_deref()));
            }
        }
        for (tenant, pin) in tenants {
            let order = crate::sandbox::placement::order(tenant, pin, &candidates);
            let home = candidates[order[0]].name;
            let how = if pin.is_some() { "pinned" } else { "placed" };
            outln!("ok    tenant {tenant} {how} on engine {home}");
            for (name, d) in &up {
                if *name == home {
                    continue;
                }
                match docker::tenant_volumes(d, &gateway, tenant).await {
                    Ok(v) if !v.is_empty() => outln!(
                        "warn  tenant {tenant} has {} workspace volume(s) on engine {name}, but is placed on {home} \
                         (moved by an engine-list change, or served there by failover); pin it with \
                         tenants[].sandbox.engine to keep it there",
                        v.len()
                    ),
                    Ok(_) => {}
                    Err(e) => outln!("warn  engine {name}: {e}"),
                }
            }
        }
        failures
    })
}

/// Every image agents use, on one engine; returns the failures.
async fn check_images(docker: &bollard::Docker, images: &[(&str, Vec<String>)], on: &str) -> usize {
    let mut failures = 0;
    for (image, agents) in images {
        match crate::sandbox::docker::check_image(docker, image).await {
            Ok(_) => outln!("ok    sandbox image {image}{on} (agents {})", agents.join(", ")),
            Err(e) => {
                failures += 1;
                outln!("FAIL  {e}{on} (agents {})", agents.join(", "));
            }
        }
    }
    failures
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
    // The start-up checks `serve` and `config check` run, with the same words.
    match crate::app::check(&config) {
        Ok(checked) => {
            for w in crate::config::summarize_warnings(&checked.warnings) {
                outln!("warn  {w}");
            }
            outln!("ok    policies load ({} agent(s))", checked.gate.agents().count());
            if let Some(files) = &config.gateway.tls {
                outln!("ok    TLS certificate and key ({})", files.cert.display());
            }
            outln!("ok    secrets resolve, tokens are strong and unique, every enabled channel has an adapter");
        }
        Err(errors) => {
            for w in crate::config::summarize_warnings(&config.warnings) {
                outln!("warn  {w}");
            }
            failures += errors.len();
            for e in errors {
                outln!("FAIL  {e}");
            }
        }
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
    failures += check_database(&config);
    let tenants_without_tokens: Vec<_> =
        config.tenants.values().filter(|t| t.api_tokens.is_empty()).map(|t| t.id.to_string()).collect();
    if !tenants_without_tokens.is_empty() {
        outln!(
            "warn  tenants without API tokens (reachable only through chat channels): {}",
            tenants_without_tokens.join(", ")
        );
    }
    for adapter in crate::channels::adapter::ADAPTERS {
        for c in crate::channels::adapter::doctor(*adapter, &config, None) {
            use crate::channels::adapter::Level;
            let tag = match c.level {
                Level::Ok => "ok   ",
                Level::Note => "note ",
                Level::Warn => "warn ",
                Level::Fail => {
                    failures += 1;
                    "FAIL "
                }
            };
            outln!("{tag} {}", c.text);
        }
    }
    match config.store.require_mode() {
        Ok(crate::config::StoreMode::Encrypted) => {
            outln!("ok    audit log on ({})", crate::audit::audit_dir(&config).display())
        }
        Ok(crate::config::StoreMode::Memory) => {
            outln!("warn  store.mode \"memory\" is not for production: nothing is kept and the audit log is off")
        }
        // Reported by the start-up checks above.
        Err(_) => {}
    }
    if config.gateway.tls.is_none() && !config.gateway.bind.ip().is_loopback() {
        outln!(
            "warn  plaintext HTTP on {}: configure gateway.tls (with required: true) or a TLS proxy",
            config.gateway.bind
        );
    }
    if failures == 0 { EXIT_OK } else { EXIT_FAILURE }
}

/// `store.backend: "postgres"`: the database answers, its schema is one this gateway can use,
/// and its clock agrees with ours. Looks only (the first gateway to start migrates).
fn check_database(config: &crate::config::Config) -> usize {
    let crate::config::StoreBackend::Postgres { url, .. } = &config.store.backend else { return 0 };
    let fail = |what: String| {
        outln!("FAIL  database: {what}");
        1
    };
    let url = match url.resolve(&config.base_dir) {
        Ok(u) => u,
        Err(e) => return fail(format!("store.url cannot be read: {e}")),
    };
    let rt = match crate::channels::adapter::command_runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let db = match crate::cluster::Db::open(&url, 2, "doctor".into()) {
        Ok(db) => db,
        Err(e) => return fail(e.to_string()),
    };
    let (version, skew, _ahead) = match rt.block_on(db.status()) {
        Ok(s) => s,
        Err(e) => return fail(format!("not reachable: {e}")),
    };
    let known = crate::cluster::Db::known_version();
    if version > known {
        return fail(format!("schema version {version} is newer than this gateway knows ({known}): upgrade it"));
    }
    if version < known {
        outln!("note  database reachable; schema version {version}, the gateway applies {known} when it starts");
    } else {
        outln!("ok    database reachable, schema version {version}");
    }
    if skew > std::time::Duration::from_secs(2) {
        outln!(
            "warn  the database's clock is {} ms off this host's (leases use the database's clock; timestamps in the store use this host's)",
            skew.as_millis()
        );
    } else {
        outln!("ok    database clock within {} ms of this host's", skew.as_millis());
    }
    0
}

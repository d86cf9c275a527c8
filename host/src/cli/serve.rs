//! `bulkhead serve`: runs the gateway until SIGINT/SIGTERM.

use std::io::Write;
use std::sync::Arc;

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::audit::{Actor, Audit, Event, LogWriter, Scope};
use crate::config::{LogFormat, SandboxBackend, StoreMode};
use crate::gateway::{self, Gateway, Parts};
use crate::sandbox::wasm::WasmSandbox;
use crate::sandbox::{Deferred, Sandboxes};
use crate::session::{MemoryStore, SessionStore};
use crate::store::{Retention, store_root};

/// How often retention runs while serving.
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The encrypted store when `store.masterKey` is set (refusing to start on any key problem);
/// in memory only when the config says `store: { mode: "memory" }`, unless an encrypted store
/// already exists (then refuse). A config that says neither is refused: no silent memory mode.
fn open_session_store(config: &crate::config::Config) -> Result<Arc<dyn SessionStore>, i32> {
    let mode = config.store.require_mode().map_err(|e| {
        eprintln!("error: store: {e}");
        EXIT_INVALID
    })?;
    if mode == StoreMode::Memory {
        if store_root(config).join("store.age").exists() {
            eprintln!(
                "error: {} holds an encrypted store but store.masterKey is not configured",
                store_root(config).display()
            );
            return Err(EXIT_INVALID);
        }
        // The config's own warning (logged at start) says this is not for production.
        return Ok(Arc::new(MemoryStore::default()));
    }
    let store = super::open_store(config)?;
    let retention = Retention::from_config(config);
    if retention.default_days.is_some() || !retention.per_tenant.is_empty() {
        let s = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RETENTION_INTERVAL);
            loop {
                tick.tick().await;
                let (s, r) = (s.clone(), retention.clone());
                let res =
                    tokio::task::spawn_blocking(move || s.apply_retention(&r, std::time::SystemTime::now())).await;
                match res {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "Retention failed."),
                    Err(e) => tracing::error!(error = %e, "Retention task failed."),
                }
            }
        });
    }
    tracing::info!(tenants = store.tenants().len(), "Encrypted session store open.");
    Ok(Arc::new(store))
}

/// The audit log when a master key holds its keys; otherwise off, with a warning.
fn open_audit(config: &crate::config::Config) -> Result<Audit, i32> {
    match LogWriter::open_config(config) {
        Ok(Some(w)) => Audit::start(w).map_err(|e| {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }),
        Ok(None) => {
            tracing::warn!("store.mode is \"memory\": the audit log is off.");
            Ok(Audit::off())
        }
        Err(e @ crate::audit::AuditOpenError::Locked { .. }) => {
            eprintln!("error: {e}");
            Err(EXIT_FAILURE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(EXIT_INVALID)
        }
    }
}

/// SHA-256 of the config file's bytes (of the embedded default when there is no file).
fn config_digest(source: &ConfigSource) -> String {
    let bytes = std::fs::read(&source.path).unwrap_or_else(|_| crate::config::EMBEDDED_DEFAULT.as_bytes().to_vec());
    format!("sha256:{}", crate::crypto::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()))
}

pub fn run(source: &ConfigSource, log_format: Option<LogFormat>) -> i32 {
    let config = match source.load(true) {
        Ok(c) => c,
        Err(e) => {
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    crate::logging::init(log_format.unwrap_or(config.logging.format), &config.logging.level);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    runtime.block_on(async move {
        let store: Arc<dyn SessionStore> = match open_session_store(&config) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let audit = match open_audit(&config) {
            Ok(a) => a,
            Err(code) => return code,
        };
        let tls = match config.gateway.tls.as_ref().map(gateway::tls::acceptor).transpose() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_INVALID;
            }
        };
        let bind = config.gateway.bind;
        let (tenants, agents) = (config.tenants.len(), config.agents.len());
        // The wasm runner compiles in the background so the gateway accepts requests at once.
        let state_dir = config.state_dir.clone();
        let (lifecycle, rt) = (audit.clone(), tokio::runtime::Handle::current());
        let wasm = Deferred::spawn("wasm", move || {
            let made = WasmSandbox::new(&state_dir).map(|s| Arc::new(s) as Arc<dyn crate::sandbox::Sandbox>);
            let state = if made.is_ok() { "ready" } else { "failed" };
            let event = Event::SandboxLifecycle { backend: "wasm".into(), state: state.into() };
            rt.spawn(async move { lifecycle.record(Scope::Host, Actor::System, event).await });
            made
        });
        let mut sandboxes = Sandboxes::default()
            .with(SandboxBackend::Wasm, Arc::new(wasm))
            .with_disk_floor(&config.state_dir, config.gateway.min_free_disk_bytes);
        // The Docker backend connects in the background and recovers by itself when the daemon
        // comes back; it exists only when an agent uses it.
        if config.agents.iter().any(|a| a.sandbox.backend == SandboxBackend::Docker) {
            let opts = crate::sandbox::docker::DockerOptions { audit: audit.clone(), ..Default::default() };
            let docker = crate::sandbox::docker::DockerSandbox::start(&config.state_dir, opts);
            docker.prewarm_agents(&config.agents);
            sandboxes = sandboxes.with(SandboxBackend::Docker, docker);
        }
        let gate = match crate::policy::PolicyEngine::load(&config) {
            Ok(engine) => {
                for w in engine.warnings() {
                    tracing::warn!("{w}");
                }
                Arc::new(engine)
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return EXIT_INVALID;
            }
        };
        // The start is on disk before anything is served; the policy loads are queued behind it
        // (each tenant's log is opened and verified by the writer in the background, and its
        // first tool call waits for them). A tenant whose log fails verification does not stop
        // the others: its records, and so its tool calls, are refused.
        let start = Event::GatewayStart { config_digest: config_digest(source), tenants, agents, tls: tls.is_some() };
        if let Err(e) = audit.append(Scope::Host, Actor::System, start).await {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
        for a in &config.agents {
            if let Some(p) = gate.agent(&a.id) {
                let event = Event::PolicyLoad { agent: a.id.to_string(), digest: p.digest.clone() };
                audit.record(Scope::Tenant(a.tenant.clone()), Actor::System, event).await;
            }
        }
        let parts = Parts { store, sandboxes, gate, audit: audit.clone() };
        let gw = match Gateway::start(config, parts) {
            Ok(g) => Arc::new(g),
            Err(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return EXIT_INVALID;
            }
        };
        let tenants_in_config: Vec<_> = gw.config().tenants.keys().cloned().collect();
        match gw.pairing.restore(tenants_in_config).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(approvals = n, "Chat pairing approvals restored."),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILURE;
            }
        }
        let channels = match crate::channels::Channels::start(&gw.runtime, &gw.pairing) {
            Ok(c) => c,
            Err(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return EXIT_INVALID;
            }
        };
        let listener = match tokio::net::TcpListener::bind(bind).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {bind}: {e}");
                return EXIT_FAILURE;
            }
        };
        let shutdown = shutdown_signal();
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, tenants, agents, tls = tls.is_some(), "Gateway listening.");
        // A stable line on stdout so scripts and tests can find an ephemeral port. The gateway
        // keeps serving if nobody reads it.
        let scheme = if tls.is_some() { "https" } else { "http" };
        let _ = writeln!(std::io::stdout(), "listening on {scheme}://{addr}");
        let grace = gw.config().gateway.shutdown_grace;
        let shutdown = async move {
            shutdown.await;
            // Chat adapters stop taking messages first; runs already accepted are drained below.
            channels.stop(grace).await;
        };
        let served = gateway::run(gw, listener, tls, shutdown).await;
        if let Err(e) = audit.append(Scope::Host, Actor::System, Event::GatewayStop {}).await {
            tracing::error!(error = %e, "Cannot record the gateway's stop.");
        }
        audit.close().await;
        match served {
            Ok(()) => {
                tracing::info!("Gateway stopped.");
                EXIT_OK
            }
            Err(e) => {
                tracing::error!(error = %e, "Gateway failed.");
                EXIT_FAILURE
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM. The SIGTERM handler is installed when this is called (before
/// the "listening" line), so a SIGTERM right after start still drains instead of killing.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term_signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async move {
            match term_signal {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {},
            () = term => {},
        }
        tracing::info!("Shutdown requested: no longer accepting requests.");
    }
}

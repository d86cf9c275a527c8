//! `bulkhead serve`: runs the gateway until SIGINT/SIGTERM.

use std::sync::Arc;

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::config::{LogFormat, SandboxBackend};
use crate::gateway::{self, Gateway, Parts};
use crate::sandbox::wasm::WasmSandbox;
use crate::sandbox::{Deferred, Sandboxes};
use crate::session::{MemoryStore, SessionStore};
use crate::store::{Retention, store_root};

/// How often retention runs while serving.
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The encrypted store when `store.masterKey` is set (refusing to start on any key problem);
/// otherwise transcripts stay in memory, unless an encrypted store already exists (then refuse).
fn open_session_store(config: &crate::config::Config) -> Result<Arc<dyn SessionStore>, i32> {
    if config.store.master_key.is_none() {
        if store_root(config).join("store.age").exists() {
            eprintln!(
                "error: {} holds an encrypted store but store.masterKey is not configured",
                store_root(config).display()
            );
            return Err(EXIT_INVALID);
        }
        tracing::warn!("store.masterKey is not configured: transcripts are kept in memory only and lost on restart.");
        if !config.channels.telegram.is_empty() {
            tracing::warn!(
                "store.masterKey is not configured: chat pairing approvals are kept in memory only and lost on restart."
            );
        }
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
        let bind = config.gateway.bind;
        let (tenants, agents) = (config.tenants.len(), config.agents.len());
        // The wasm runner compiles in the background so the gateway accepts requests at once.
        let state_dir = config.state_dir.clone();
        let wasm = Deferred::spawn("wasm", move || {
            WasmSandbox::new(&state_dir).map(|s| Arc::new(s) as Arc<dyn crate::sandbox::Sandbox>)
        });
        let mut sandboxes = Sandboxes::default().with(SandboxBackend::Wasm, Arc::new(wasm));
        // The Docker backend connects in the background and recovers by itself when the daemon
        // comes back; it exists only when an agent uses it.
        if config.agents.iter().any(|a| a.sandbox.backend == SandboxBackend::Docker) {
            let docker = crate::sandbox::docker::DockerSandbox::start(&config.state_dir, Default::default());
            docker.prewarm_agents(&config.agents);
            sandboxes = sandboxes.with(SandboxBackend::Docker, docker);
        }
        let gate = match crate::policy::PolicyEngine::load(&config) {
            Ok(engine) => Arc::new(engine),
            Err(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return EXIT_INVALID;
            }
        };
        let gw = match Gateway::start(config, Parts { store, sandboxes, gate }) {
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
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, tenants, agents, "Gateway listening.");
        // A stable line on stdout so scripts and tests can find an ephemeral port.
        println!("listening on http://{addr}");
        let grace = gw.config().gateway.shutdown_grace;
        let shutdown = async move {
            shutdown_signal().await;
            // Chat adapters stop taking messages first; runs already accepted are drained below.
            channels.stop(grace).await;
        };
        match gateway::run(gw, listener, shutdown).await {
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
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

//! The application root: builds everything from a checked `Config`, owns every task it starts,
//! swaps the running snapshot on reload, and stops in one order.
//!
//! - [`App::build`] runs the start-up checks ([`checks::check`], the same `config check` and
//!   `doctor` run), opens the store, the audit log and the usage meter, starts the sandbox
//!   backends and records the start in the host audit log.
//! - [`App::run`] serves a listener until `shutdown`, with the reload triggers (`SIGHUP`, the
//!   config file and its drop-in folder), then drains in one order: chat accounts stop taking
//!   input → HTTP stops accepting (open requests and streams finish) → runs in flight finish
//!   within `gateway.shutdownGraceSec` → background tasks stop, usage is flushed, the stop is
//!   recorded and the audit log closed.
//! - [`App::reload`] applies a new config as a diff, or refuses it whole (see `reload.rs`).

pub mod checks;
mod reload;
mod triggers;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use checks::{Checked, check};

use crate::agent::Runtime;
use crate::audit::{Actor, Audit, AuditOpenError, Event, LogWriter, Scope};
use crate::channels::Channels;
use crate::channels::pairing::Pairing;
use crate::config::{Config, SandboxBackend, StoreMode};
use crate::dispatch::Dispatcher;
use crate::gateway::admin::{ReloadReport, Reloader};
use crate::gateway::{self, Gateway, Live, Snapshot};
use crate::metrics::Metrics;
use crate::policy::PolicyEngine;
use crate::quota::Quotas;
use crate::sandbox::docker::DockerSandbox;
use crate::sandbox::wasm::WasmSandbox;
use crate::sandbox::{Deferred, Sandboxes};
use crate::scheduler::Scheduler;
use crate::session::{MemoryStore, SessionStore};
use crate::store::{Retention, StoreOpenError, store_root};
use crate::usage::{FLUSH_INTERVAL, UsageMeter};

/// How often retention runs while serving.
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Why the application did not start. The CLI maps each to its exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config (or what it references: secrets, policies, TLS files) is not servable.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreOpenError),
    #[error(transparent)]
    Audit(#[from] AuditOpenError),
    /// Something at run time (the state directory, the listener, the runtime) failed.
    #[error("{0}")]
    Failed(String),
}

/// Where the running config came from, so a reload can read it again.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The main config file; `None` (the embedded default) turns reload off.
    pub file: Option<PathBuf>,
    /// Its drop-in tenant folder (watched with the file).
    pub tenants_dir: Option<PathBuf>,
    /// The digest of what was loaded (`config::Loaded::digest`).
    pub digest: String,
    /// Poll the file and the folder for changes (every `triggers::WATCH_INTERVAL`).
    pub watch: bool,
}

impl Source {
    /// The source of a loaded config file, watched.
    pub fn file(path: &std::path::Path, loaded: &crate::config::Loaded) -> Self {
        Self {
            file: Some(path.to_path_buf()),
            tenants_dir: Some(loaded.tenants_dir.clone()),
            digest: loaded.digest.clone(),
            watch: true,
        }
    }
}

/// The running application (a handle: clones share it).
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    live: Live,
    gateway: Arc<Gateway>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    source: Source,
    audit: Audit,
    usage: Arc<UsageMeter>,
    /// Serialises reloads; holds what a reload changes besides the snapshot.
    state: tokio::sync::Mutex<Running>,
    /// The Docker backend, once an agent uses it (a reload may start it).
    docker: Mutex<Option<Arc<DockerSandbox>>>,
    /// Tasks started by `build` (retention), joined at the end of `run`.
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What a reload changes besides the snapshot.
struct Running {
    channels: Option<Channels>,
    digest: String,
    gate: Arc<PolicyEngine>,
}

impl App {
    /// Checks `config` and builds the application (nothing is served yet).
    pub async fn build(config: Config, source: Source) -> Result<App, StartError> {
        let checked = check(&config).map_err(StartError::Invalid)?;
        for w in crate::config::summarize_warnings(&checked.warnings) {
            tracing::warn!("{w}");
        }
        let (store, encrypted) = open_session_store(&config).await?;
        let audit = open_audit(&config)?;
        let usage = Arc::new(
            UsageMeter::open(&UsageMeter::dir_in(&config.state_dir)).map_err(|e| StartError::Failed(e.to_string()))?,
        );
        let mut sandboxes = Sandboxes::default()
            .with(SandboxBackend::Wasm, Arc::new(wasm_backend(&config, &audit)))
            .with_disk_floor(&config.state_dir, config.gateway.min_free_disk_bytes);
        let mut docker = None;
        if uses_docker(&config) {
            let d = start_docker(&config, &audit);
            sandboxes = sandboxes.with(SandboxBackend::Docker, d.clone());
            docker = Some(d);
        }
        // The start is on disk before anything is served; the policy loads are queued behind it
        // (each tenant's log is opened and verified by the writer in the background, and its
        // first tool call waits for them). A tenant whose log fails verification does not stop
        // the others: its records, and so its tool calls, are refused.
        let start = Event::GatewayStart {
            config_digest: source.digest.clone(),
            tenants: config.tenants.len(),
            agents: config.agents.len(),
            tls: checked.tls.is_some(),
        };
        audit.append(Scope::Host, Actor::System, start).await.map_err(|e| StartError::Failed(e.to_string()))?;
        for a in &config.agents {
            if let Some(p) = checked.gate.agent(&a.id) {
                let event = Event::PolicyLoad { agent: a.id.to_string(), digest: p.digest.clone() };
                audit.record(Scope::Tenant(a.tenant.clone()), Actor::System, event).await;
            }
        }
        let runtime = Runtime {
            scheduler: Arc::new(Scheduler::with_shares(
                config.max_concurrent,
                config.scheduling_default,
                config.tenants.values().map(|t| (t.id.clone(), t.share)),
            )),
            metrics: Arc::new(Metrics::for_tenants(config.tenants.keys())),
            quotas: Arc::new(Quotas::new(config.quotas.clone())),
            usage: usage.clone(),
            providers: checked.providers,
            dispatcher: Dispatcher { gate: checked.gate.clone(), sandboxes, audit: audit.clone() },
            audit: audit.clone(),
            store: store.clone(),
            tasks: TaskTracker::new(),
            config: Arc::new(config),
        };
        if let Some(d) = docker.as_ref().filter(|_| runtime.config.engines.is_some()) {
            let d = Arc::downgrade(d);
            runtime.metrics.watch_engines(Arc::new(move || d.upgrade().map(|d| d.engines_health()).unwrap_or_default()));
        }
        let tenants: Vec<_> = runtime.config.tenants.keys().cloned().collect();
        let snapshot = Snapshot {
            runtime: Arc::new(runtime),
            tenant_tokens: checked.tenant_tokens,
            operator_tokens: checked.operator_tokens,
        };
        let live: Live = Arc::new(ArcSwap::from_pointee(snapshot));
        let pairing = Arc::new(Pairing::new(store));
        match pairing.restore(tenants).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(approvals = n, "Chat pairing approvals restored."),
            Err(e) => return Err(StartError::Failed(e)),
        }
        let cluster = encrypted.as_ref().and_then(|s| s.db()).cloned();
        let channels = Channels::new(&live, &pairing, cluster.clone());
        // Daily budgets count every gateway's usage when several share the database.
        let usage_sync = cluster.clone().map(|db| tokio::spawn(crate::cluster::usage::run(db, usage.clone())));
        let routes = channels.routes();
        let retention = encrypted.map(|s| spawn_retention(&live, s));
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| {
            let reloader: Option<Arc<dyn Reloader>> = source.file.is_some().then(|| Arc::new(Hook(me.clone())) as _);
            Inner {
                gateway: Arc::new(Gateway::new(live.clone(), pairing, reloader, routes).with_cluster(cluster)),
                live,
                tls: checked.tls,
                audit,
                usage,
                state: tokio::sync::Mutex::new(Running {
                    channels: Some(channels),
                    digest: source.digest.clone(),
                    gate: checked.gate,
                }),
                docker: Mutex::new(docker),
                background: Mutex::new(retention.into_iter().chain(usage_sync).collect()),
                source,
            }
        });
        Ok(App { inner })
    }

    /// The current snapshot (tests and benches look at what is being served).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.live.load_full()
    }

    /// Whether HTTPS is served.
    pub fn tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// Applies `config` (loaded with digest `digest`) as a diff, or refuses it whole; see
    /// `reload.rs`. `by` is recorded in the audit log.
    pub async fn reload(&self, config: Config, digest: String, by: Actor) -> ReloadReport {
        self.inner.reload(config, digest, trigger_name(&by), by).await
    }

    /// Reads the config file (and its drop-ins) again and reloads it.
    pub async fn reload_from_source(&self, by: Actor) -> ReloadReport {
        self.inner.reload_from_source(trigger_name(&by), by, false).await
    }

    /// Serves on `listener` until `shutdown` resolves, then stops in order (see the module doc).
    pub async fn run(
        &self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let inner = self.inner.clone();
        let config = inner.live.load().runtime.config.clone();
        {
            let mut state = inner.state.lock().await;
            if let Some(channels) = state.channels.as_mut() {
                let (_, failed) = channels.apply(&config, config.gateway.shutdown_grace).await;
                for e in failed {
                    tracing::error!(error = %e, "A chat account did not start.");
                }
            }
        }
        let flusher = tokio::spawn(flush_usage_periodically(inner.usage.clone()));
        let triggers = triggers::spawn(&inner);
        let stopping = inner.clone();
        let shutdown = async move {
            shutdown.await;
            tracing::info!("Shutdown requested: no longer accepting requests.");
            // Chat accounts stop taking messages first; runs already accepted are drained below.
            let mut state = stopping.state.lock().await;
            let grace = stopping.live.load().runtime.config.gateway.shutdown_grace;
            if let Some(channels) = state.channels.take() {
                channels.stop(grace).await;
            }
        };
        let served = gateway::serve(inner.gateway.clone(), listener, inner.tls.clone(), shutdown).await;
        for t in triggers {
            t.abort();
            let _ = t.await;
        }
        let runtime = inner.live.load().runtime.clone();
        let grace = runtime.config.gateway.shutdown_grace;
        runtime.tasks.close();
        tracing::info!(in_flight = runtime.tasks.len(), grace_secs = grace.as_secs(), "Draining runs in flight.");
        if tokio::time::timeout(grace, runtime.tasks.wait()).await.is_err() {
            tracing::warn!(abandoned = runtime.tasks.len(), "Grace period over; runs still in flight are abandoned.");
        }
        flusher.abort();
        let _ = flusher.await;
        flush_usage(inner.usage.clone()).await;
        let background: Vec<_> = std::mem::take(&mut *inner.background.lock().expect("background lock"));
        for t in background {
            t.abort();
            let _ = t.await;
        }
        let docker = inner.docker.lock().expect("docker lock").take();
        if let Some(d) = docker {
            d.stop().await;
        }
        if let Err(e) = inner.audit.append(Scope::Host, Actor::System, Event::GatewayStop {}).await {
            tracing::error!(error = %e, "Cannot record the gateway's stop.");
        }
        inner.audit.close().await;
        served
    }
}

/// `POST /admin/reload` → the application (weak: the gateway must not keep the app alive).
struct Hook(Weak<Inner>);

#[async_trait::async_trait]
impl Reloader for Hook {
    async fn reload(&self, by: Actor) -> ReloadReport {
        match self.0.upgrade() {
            Some(inner) => inner.reload_from_source("admin", by, false).await,
            None => ReloadReport { errors: vec!["the gateway is stopping".into()], ..Default::default() },
        }
    }

    fn accounts(&self) -> Option<Vec<(String, String, bool)>> {
        let inner = self.0.upgrade()?;
        // A reload in progress holds the accounts: the console says "configured" meanwhile.
        let state = inner.state.try_lock().ok()?;
        Some(state.channels.as_ref().map(Channels::accounts).unwrap_or_default())
    }
}

fn trigger_name(by: &Actor) -> &'static str {
    match by {
        Actor::Operator(_) => "admin",
        Actor::Cli => "cli",
        _ => "api",
    }
}

fn uses_docker(config: &Config) -> bool {
    config.agents.iter().any(|a| a.sandbox.backend == SandboxBackend::Docker)
}

/// The Docker backend connects in the background and recovers by itself when the daemon comes
/// back; it exists only when an agent uses it.
fn start_docker(config: &Config, audit: &Audit) -> Arc<DockerSandbox> {
    let opts = crate::sandbox::docker::DockerOptions {
        audit: audit.clone(),
        engines: config.engines.clone(),
        fleet: crate::sandbox::docker::Fleet::of(config),
        ..Default::default()
    };
    let docker = DockerSandbox::start(&config.state_dir, opts);
    docker.prewarm_agents(&config.agents);
    docker
}

/// The wasm runner compiles in the background so the gateway accepts requests at once.
fn wasm_backend(config: &Config, audit: &Audit) -> Deferred {
    let state_dir = config.state_dir.clone();
    let (lifecycle, rt) = (audit.clone(), tokio::runtime::Handle::current());
    Deferred::spawn("wasm", move || {
        let made = WasmSandbox::new(&state_dir).map(|s| Arc::new(s) as Arc<dyn crate::sandbox::Sandbox>);
        let state = if made.is_ok() { "ready" } else { "failed" };
        let event = Event::SandboxLifecycle { backend: "wasm".into(), state: state.into() };
        rt.spawn(async move { lifecycle.record(Scope::Host, Actor::System, event).await });
        made
    })
}

/// The encrypted store when `store.masterKey` is set (files, or the shared database; refusing to
/// start on any key or database problem); in memory only when the config says `store: { mode:
/// "memory" }`, unless an encrypted store already exists (then refuse). The checks already
/// refused a config that says neither.
async fn open_session_store(
    config: &Config,
) -> Result<(Arc<dyn SessionStore>, Option<crate::store::Durable>), StartError> {
    let mode = config.store.require_mode().map_err(|e| StartError::Invalid(vec![format!("store: {e}")]))?;
    if mode == StoreMode::Memory {
        if store_root(config).join("store.age").exists() {
            return Err(StartError::Invalid(vec![format!(
                "{} holds an encrypted store but store.masterKey is not configured",
                store_root(config).display()
            )]));
        }
        // The config's own warning (logged at start) says this is not for production.
        return Ok((Arc::new(MemoryStore::with_max_bytes(config.store.cache_bytes)), None));
    }
    let store = crate::store::Durable::open(config).await?;
    match store.db() {
        Some(db) => tracing::info!(gateway = db.gateway(), "Encrypted session store open on PostgreSQL."),
        None => tracing::info!("Encrypted session store open."),
    }
    Ok((store.sessions(), Some(store)))
}

/// Applies retention to the encrypted store every `RETENTION_INTERVAL` with the current
/// config's settings (a reload's retention applies from the next run).
fn spawn_retention(live: &Live, store: crate::store::Durable) -> tokio::task::JoinHandle<()> {
    let live = live.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            tick.tick().await;
            let retention = Retention::from_config(&live.load().runtime.config);
            if retention.default_days.is_none() && retention.per_tenant.is_empty() {
                continue;
            }
            if let Err(e) = store.apply_retention(retention, std::time::SystemTime::now()).await {
                tracing::error!(error = %e, "Retention failed.");
            }
        }
    })
}

/// The audit log when a master key holds its keys; otherwise off, with a warning.
fn open_audit(config: &Config) -> Result<Audit, StartError> {
    match LogWriter::open_config(config) {
        Ok(Some(w)) => Audit::start(w).map_err(StartError::Failed),
        Ok(None) => {
            tracing::warn!("store.mode is \"memory\": the audit log is off.");
            Ok(Audit::off())
        }
        Err(e) => Err(StartError::Audit(e)),
    }
}

/// Writes changed usage to disk every `FLUSH_INTERVAL` (off the async threads: it fsyncs).
async fn flush_usage_periodically(usage: Arc<UsageMeter>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush_usage(usage.clone()).await;
    }
}

async fn flush_usage(usage: Arc<UsageMeter>) {
    match tokio::task::spawn_blocking(move || usage.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "Cannot write usage; will retry."),
        Err(e) => tracing::error!(error = %e, "Usage flush task failed."),
    }
}

#[cfg(test)]
mod tests;

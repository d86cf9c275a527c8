//! The HTTP front door: OpenAI-compatible API, web chat (page + WebSocket), health and metrics.
//!
//! `Gateway::start` turns a checked `Config` into a running runtime (secrets resolved, providers,
//! policy gate, sandboxes, session store); `run` serves it on a listener until `shutdown`
//! resolves, then drains in-flight runs within the configured grace period.

pub mod admin;
mod auth;
mod openai_api;
mod pairing_api;
pub mod tls;
mod webchat;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use auth::{Throttle, TokenIndex, TrustedProxy, bearer};
pub use openai_api::ChatRequest;

use crate::agent::Runtime;
use crate::audit::Audit;
use crate::audit::{Actor, Event, Scope};
use crate::config::{BUILT_CHANNELS, Config};
use crate::dispatch::Dispatcher;
use crate::ids::TenantId;
use crate::metrics::Metrics;
use crate::model::pool::Providers;
use crate::policy::{DenyAll, PolicyGate};
use crate::quota::Quotas;
use crate::sandbox::Sandboxes;
use crate::scheduler::Scheduler;
use crate::session::{MemoryStore, SessionStore};
use crate::usage::{FLUSH_INTERVAL, UsageMeter};

/// A gateway ready to serve.
pub struct Gateway {
    pub runtime: Arc<Runtime>,
    tenant_tokens: TokenIndex<TenantId>,
    operator_tokens: TokenIndex<admin::Operator>,
    /// Failed tenant-token attempts per client.
    tenant_throttle: Throttle,
    /// Failed operator-token attempts per client, on a budget of their own: a client that is
    /// allowed to use the API gains no operator guesses from it.
    operator_throttle: Throttle,
    /// Chat pairing requests and approvals (shared with the channel adapters).
    pub pairing: Arc<crate::channels::pairing::Pairing>,
}

/// The backends a gateway runs with; tests substitute their own.
pub struct Parts {
    pub gate: Arc<dyn PolicyGate>,
    pub sandboxes: Sandboxes,
    pub store: Arc<dyn SessionStore>,
    pub audit: Audit,
}

impl Parts {
    /// What `serve` uses until the policy engine and sandbox backends are configured: a gate
    /// that denies every tool (fail closed), no sandbox backend, transcripts in memory only.
    pub fn fail_closed() -> Self {
        Self {
            gate: Arc::new(DenyAll),
            sandboxes: Sandboxes::default(),
            store: Arc::new(MemoryStore::default()),
            audit: Audit::off(),
        }
    }
}

impl Gateway {
    /// Resolves secrets and builds the runtime. Every problem is reported, none is fatal alone.
    pub fn start(config: Config, parts: Parts) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        for ch in &config.channels.enabled {
            if !BUILT_CHANNELS.contains(ch) {
                errors.push(format!(
                    "channels.{ch}: the {ch} adapter is not built into this version; remove the block or set enabled: false"
                ));
            }
        }
        let mut tenant_tokens = TokenIndex::new();
        let mut unique = auth::UniqueTokens::default();
        for t in config.tenants.values() {
            for (i, tok) in t.api_tokens.iter().enumerate() {
                match tok.resolve(&config.base_dir) {
                    Ok(s) => {
                        if let Err(e) = unique.check(s.expose(), format!("tenant {:?}", t.id.as_str())) {
                            errors.push(format!("tenant {:?} apiTokens[{i}]: {e}", t.id.as_str()));
                        }
                        if let Err(e) = auth::check_token_strength(s.expose()) {
                            errors.push(format!("tenant {:?} apiTokens[{i}]: {e}", t.id.as_str()));
                        }
                        tenant_tokens.insert(s.expose(), t.id.clone())
                    }
                    Err(e) => errors.push(format!("tenant {:?} apiTokens[{i}]: {e}", t.id.as_str())),
                }
            }
        }
        for acc in &config.channels.telegram {
            if let Err(e) = acc.token.resolve(&config.base_dir) {
                errors.push(format!("channels.telegram account {:?} token: {e}", acc.id));
            }
        }
        let mut operator_tokens = TokenIndex::new();
        for (i, op) in config.gateway.operators.iter().enumerate() {
            match op.token.resolve(&config.base_dir) {
                Ok(s) => {
                    if let Err(e) = unique.check(s.expose(), format!("operator {:?}", op.id)) {
                        errors.push(format!("gateway.operators[{i}].token: {e}"));
                    }
                    if let Err(e) = auth::check_token_strength(s.expose()) {
                        errors.push(format!("gateway.operators[{i}].token: {e}"));
                    }
                    operator_tokens.insert(s.expose(), admin::Operator { id: op.id.clone(), role: op.role })
                }
                Err(e) => errors.push(format!("gateway.operators[{i}].token: {e}")),
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| vec![format!("cannot build the HTTP client: {e}")])?;
        let providers = Providers::build(&config, &http).unwrap_or_else(|e| {
            errors.extend(e);
            Providers::default()
        });
        let usage = UsageMeter::open(&UsageMeter::dir_in(&config.state_dir)).unwrap_or_else(|e| {
            errors.push(e.to_string());
            UsageMeter::in_memory()
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        let g = &config.gateway;
        let tenant_throttle = Throttle::new(g.auth_max_failures, g.auth_window, g.auth_lockout);
        let operator_throttle = Throttle::new(g.auth_max_failures, g.auth_window, g.auth_lockout);
        let runtime = Runtime {
            scheduler: Scheduler::with_shares(
                config.max_concurrent,
                config.scheduling_default,
                config.tenants.values().map(|t| (t.id.clone(), t.share)),
            ),
            metrics: Metrics::for_tenants(config.tenants.keys()),
            quotas: Quotas::new(config.quotas.clone()),
            usage: Arc::new(usage),
            config: Arc::new(config),
            providers,
            dispatcher: Dispatcher { gate: parts.gate, sandboxes: parts.sandboxes, audit: parts.audit.clone() },
            audit: parts.audit,
            store: parts.store.clone(),
            tasks: TaskTracker::new(),
        };
        let pairing = Arc::new(crate::channels::pairing::Pairing::new(parts.store));
        Ok(Self {
            runtime: Arc::new(runtime),
            tenant_tokens,
            operator_tokens,
            tenant_throttle,
            operator_throttle,
            pairing,
        })
    }

    pub fn config(&self) -> &Config {
        &self.runtime.config
    }

    /// The address a request is throttled and audited under: the peer's, or the one a trusted
    /// proxy (`gateway.auth.trustedProxy`) names when the peer is that proxy.
    fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        match &self.config().gateway.trusted_proxy {
            Some(proxy) => proxy.client(peer.ip(), headers),
            None => peer.ip(),
        }
    }

    /// Resolves a tenant token, applying the failure throttle. The error is ready to send.
    fn tenant_for(&self, token: Option<&str>, client: IpAddr) -> Result<TenantId, AuthFailure> {
        self.tenant_on("api", token, client)
    }

    /// `tenant_for` for a named front door (`api`, `webchat`, ...), as recorded in the audit log.
    fn tenant_on(&self, surface: &'static str, token: Option<&str>, client: IpAddr) -> Result<TenantId, AuthFailure> {
        if let Some(secs) = self.tenant_throttle.locked(client) {
            return Err(AuthFailure::Throttled(secs));
        }
        match token.and_then(|t| self.tenant_tokens.lookup(t)) {
            Some(t) => Ok(t),
            None => {
                self.tenant_throttle.failure(client);
                self.runtime.metrics.auth_failure();
                tracing::info!(client = %client, "Rejected API token.");
                self.audit_auth_failure(surface, client, if token.is_some() { "invalid token" } else { "no token" });
                Err(AuthFailure::Invalid)
            }
        }
    }

    /// Resolves an operator token (for `/admin/` and `/metrics`), on the operator throttle.
    fn operator_for(
        &self,
        token: Option<&str>,
        client: IpAddr,
        surface: &'static str,
    ) -> Result<admin::Operator, AuthFailure> {
        // A locked-out client is not audited again per request (its failures already were).
        if let Some(secs) = self.operator_throttle.locked(client) {
            return Err(AuthFailure::Throttled(secs));
        }
        match token.and_then(|t| self.operator_tokens.lookup(t)) {
            Some(op) => Ok(op),
            None => {
                self.operator_throttle.failure(client);
                self.runtime.metrics.auth_failure();
                tracing::info!(client = %client, surface, "Rejected operator token.");
                let reason = match token {
                    None => "no token",
                    Some(t) if self.tenant_tokens.lookup(t).is_some() => "tenant token",
                    Some(_) => "invalid token",
                };
                self.audit_auth_failure(surface, client, reason);
                Err(AuthFailure::Invalid)
            }
        }
    }

    /// Queues an auth failure for the host audit log (the client address as a keyed digest).
    fn audit_auth_failure(&self, surface: &str, client: IpAddr, reason: &str) {
        let audit = self.runtime.audit.clone();
        if !audit.is_on() {
            return;
        }
        let event = Event::AuthFailure {
            surface: surface.to_string(),
            client: audit.digest(&Scope::Host, "client", client.to_string().as_bytes()),
            reason: reason.to_string(),
        };
        tokio::spawn(async move { audit.record(Scope::Host, Actor::Anonymous, event).await });
    }
}

#[derive(Debug, Clone, Copy)]
enum AuthFailure {
    Invalid,
    Throttled(u64),
}

/// Builds the router. Exposed for tests that drive the gateway in-process.
pub fn router(gw: Arc<Gateway>) -> Router {
    let limit = gw.config().gateway.max_body_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(webchat::page))
        .route("/ws", get(webchat::upgrade))
        .route("/v1/models", get(openai_api::models))
        .route("/v1/chat/completions", post(openai_api::chat_completions))
        .route("/metrics", get(metrics))
        .nest("/admin", admin::routes(gw.clone()))
        .fallback(|| async { openai_api::error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(gw)
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn metrics(
    State(gw): State<Arc<Gateway>>,
    axum::extract::ConnectInfo(client): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match gw.operator_for(bearer(&headers), gw.client_ip(client, &headers), "metrics") {
        Ok(_op) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            gw.runtime.metrics.render_all(&gw.runtime.scheduler),
        )
            .into_response(),
        Err(AuthFailure::Throttled(_)) => {
            (StatusCode::TOO_MANY_REQUESTS, "too many failed authentication attempts\n").into_response()
        }
        Err(AuthFailure::Invalid) => (StatusCode::UNAUTHORIZED, "operator token required\n").into_response(),
    }
}

/// Serves until `shutdown` resolves, then stops accepting and drains runs in flight. With
/// `tls`, every connection is HTTPS (see `tls.rs`).
pub async fn run(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let runtime = gw.runtime.clone();
    let grace = gw.config().gateway.shutdown_grace;
    let app = router(gw).into_make_service_with_connect_info::<SocketAddr>();
    let flusher = tokio::spawn(flush_usage_periodically(runtime.usage.clone()));
    match tls {
        Some(acceptor) => {
            // `tap_io` makes axum's connect-info (the client address) available for this listener.
            let listener = axum::serve::ListenerExt::tap_io(tls::TlsListener::new(listener, acceptor)?, |_| {});
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
        }
        None => {
            // Streamed replies are many small writes: do not let Nagle hold them for delayed ACKs.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
        }
    }
    runtime.tasks.close();
    tracing::info!(in_flight = runtime.tasks.len(), grace_secs = grace.as_secs(), "Draining runs in flight.");
    if tokio::time::timeout(grace, runtime.tasks.wait()).await.is_err() {
        tracing::warn!(abandoned = runtime.tasks.len(), "Grace period over; runs still in flight are abandoned.");
    }
    flusher.abort();
    flush_usage(runtime.usage.clone()).await;
    Ok(())
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

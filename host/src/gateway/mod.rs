//! The HTTP front door: OpenAI-compatible API, web chat (page + WebSocket), health and metrics.
//!
//! The gateway serves the current [`Snapshot`] of the running config (tokens, and through its
//! runtime tenants, agents, bindings, policies and providers), loaded once per request from
//! [`Live`]; the application root (`crate::app`) builds snapshots and swaps them on reload. A
//! request (and the run it starts) keeps the snapshot it loaded.

pub mod admin;
mod auth;
mod console;
mod openai_api;
mod pairing_api;
pub mod tls;
mod webchat;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

pub use auth::{Throttle, TokenIndex, TrustedProxy, UniqueTokens, bearer, check_token_strength};
pub use openai_api::ChatRequest;

use crate::agent::Runtime;
use crate::audit::{Actor, Event, Scope};
use crate::config::Config;
use crate::ids::TenantId;

/// One running config as the front doors see it: the runtime runs are started on, and the
/// token indexes resolved from the same config.
pub struct Snapshot {
    pub runtime: Arc<Runtime>,
    pub tenant_tokens: TokenIndex<TenantId>,
    pub operator_tokens: TokenIndex<admin::Operator>,
}

impl Snapshot {
    pub fn config(&self) -> &Config {
        &self.runtime.config
    }
}

/// The current snapshot, swapped atomically by a reload.
pub type Live = Arc<ArcSwap<Snapshot>>;

/// A gateway ready to serve.
pub struct Gateway {
    live: Live,
    /// Failed tenant-token attempts per client.
    tenant_throttle: Throttle,
    /// Failed operator-token attempts per client, on a budget of their own: a client that is
    /// allowed to use the API gains no operator guesses from it.
    operator_throttle: Throttle,
    /// Chat pairing requests and approvals (shared with the channel adapters).
    pub pairing: Arc<crate::channels::pairing::Pairing>,
    /// What `POST /admin/reload` calls; `None`: the endpoint says reload is not available.
    reloader: Option<Arc<dyn admin::Reloader>>,
    /// Routes channel adapters serve on this server (webhooks), merged into the router.
    extra_routes: Router<()>,
    /// The last reload's outcome (any trigger), for the operator console.
    last_reload: std::sync::Mutex<Option<admin::LastReload>>,
    /// The database several gateways share, when they do (leases in `/admin/status`).
    pub cluster: Option<crate::cluster::Db>,
}

impl Gateway {
    /// A gateway over `live`. Throttle settings come from the snapshot at start (restart-only).
    pub fn new(
        live: Live,
        pairing: Arc<crate::channels::pairing::Pairing>,
        reloader: Option<Arc<dyn admin::Reloader>>,
        extra_routes: Router<()>,
    ) -> Self {
        let snap = live.load_full();
        let g = &snap.runtime.config.gateway;
        let tenant_throttle = Throttle::new(g.auth_max_failures, g.auth_window, g.auth_lockout);
        let operator_throttle = Throttle::new(g.auth_max_failures, g.auth_window, g.auth_lockout);
        Self {
            live,
            tenant_throttle,
            operator_throttle,
            pairing,
            reloader,
            extra_routes,
            last_reload: Default::default(),
            cluster: None,
        }
    }

    /// The gateway as one of several sharing `db`.
    pub fn with_cluster(mut self, db: Option<crate::cluster::Db>) -> Self {
        self.cluster = db;
        self
    }

    /// Records a reload's outcome (by any trigger): counted in `/metrics`, kept for the console.
    pub fn note_reload(&self, trigger: &str, report: &admin::ReloadReport) {
        self.runtime().metrics.reload(report.applied);
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = admin::LastReload { at, trigger: trigger.to_string(), report: report.clone() };
        *self.last_reload.lock().expect("last reload lock") = Some(last);
    }

    /// The last reload's outcome since the gateway started, if any.
    pub fn last_reload(&self) -> Option<admin::LastReload> {
        self.last_reload.lock().expect("last reload lock").clone()
    }

    /// The current snapshot: load it once per request and use it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// The current runtime (for what does not depend on one request's snapshot).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.live.load().runtime.clone()
    }

    /// The address a request is throttled and audited under: the peer's, or the one a trusted
    /// proxy (`gateway.auth.trustedProxy`) names when the peer is that proxy.
    fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        match &self.live.load().runtime.config.gateway.trusted_proxy {
            Some(proxy) => proxy.client(peer.ip(), headers),
            None => peer.ip(),
        }
    }

    /// Resolves a tenant token against `snap`, applying the failure throttle. The error is
    /// ready to send.
    fn tenant_for(&self, snap: &Snapshot, token: Option<&str>, client: IpAddr) -> Result<TenantId, AuthFailure> {
        self.tenant_on(snap, "api", token, client)
    }

    /// `tenant_for` for a named front door (`api`, `webchat`, ...), as recorded in the audit log.
    fn tenant_on(
        &self,
        snap: &Snapshot,
        surface: &'static str,
        token: Option<&str>,
        client: IpAddr,
    ) -> Result<TenantId, AuthFailure> {
        if let Some(secs) = self.tenant_throttle.locked(client) {
            return Err(AuthFailure::Throttled(secs));
        }
        match token.and_then(|t| snap.tenant_tokens.lookup(t)) {
            Some(t) => Ok(t),
            None => {
                self.tenant_throttle.failure(client);
                snap.runtime.metrics.auth_failure();
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
        let snap = self.snapshot();
        match token.and_then(|t| snap.operator_tokens.lookup(t)) {
            Some(op) => Ok(op),
            None => {
                self.operator_throttle.failure(client);
                snap.runtime.metrics.auth_failure();
                tracing::info!(client = %client, surface, "Rejected operator token.");
                let reason = match token {
                    None => "no token",
                    Some(t) if snap.tenant_tokens.lookup(t).is_some() => "tenant token",
                    Some(_) => "invalid token",
                };
                self.audit_auth_failure(surface, client, reason);
                Err(AuthFailure::Invalid)
            }
        }
    }

    /// Queues an auth failure for the host audit log (the client address as a keyed digest).
    fn audit_auth_failure(&self, surface: &str, client: IpAddr, reason: &str) {
        let audit = self.runtime().audit.clone();
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
    let limit = gw.runtime().config.gateway.max_body_bytes;
    let extra = gw.extra_routes.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(webchat::page))
        .route("/ws", get(webchat::upgrade))
        .route("/console", get(console::page))
        .route("/v1/models", get(openai_api::models))
        .route("/v1/chat/completions", post(openai_api::chat_completions))
        .route("/metrics", get(metrics))
        .nest("/admin", admin::routes(gw.clone()))
        .fallback(|| async { openai_api::error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(gw)
        .merge(extra)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(security_headers))
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
        Ok(_op) => {
            let rt = gw.runtime();
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], rt.metrics.render_all(&rt.scheduler))
                .into_response()
        }
        Err(AuthFailure::Throttled(_)) => {
            (StatusCode::TOO_MANY_REQUESTS, "too many failed authentication attempts\n").into_response()
        }
        Err(AuthFailure::Invalid) => (StatusCode::UNAUTHORIZED, "operator token required\n").into_response(),
    }
}

/// Serves HTTP until `shutdown` resolves, then stops accepting and lets open requests finish
/// (streams included). Runs in flight are drained by the caller (`App::run`). With `tls`, every
/// connection is HTTPS (see `tls.rs`).
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(gw).into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(acceptor) => {
            // `tap_io` makes axum's connect-info (the client address) available for this listener.
            let listener = axum::serve::ListenerExt::tap_io(tls::TlsListener::new(listener, acceptor)?, |_| {});
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
        None => {
            // Streamed replies are many small writes: do not let Nagle hold them for delayed ACKs.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
    }
}

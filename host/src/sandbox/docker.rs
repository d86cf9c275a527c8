//! The Docker sandbox backend: tools run in a hardened container per tenant scope, via bollard.
//!
//! The container's main process — PID 1, with no init beside it — is the sandbox runner
//! (`--serve --native-exec`); the host keeps its stdin/stdout attached, sends it a fresh channel
//! key in the first frame, then one request frame per tool call, so a warm call costs a message,
//! not a `docker exec`. Only the non-dumpable runner holds those pipes, and every response must be
//! sealed with the container's key for the request's id: a response that is not is refused and
//! the container removed. Containers are created lazily on the first call of their scope
//! (session, agent or shared — always inside one tenant), labelled with the gateway, tenant, agent,
//! scope and a hash of everything that shaped them, recreated when that hash changes or the
//! container dies, removed when idle, and reconciled when the gateway starts (every container a
//! previous run of this gateway left behind is removed). If the daemon is unreachable calls fail
//! with `Unavailable` — never a host fallback — and the next call connects again.
//!
//! With `sandbox.docker.engines` the same containers run on several engines: each tenant on the
//! engine `placement` names (or its pin), found by `select`, which fails a call closed while that
//! engine is down unless the operator allows failover; engines are health-checked in the
//! background; a scope's workspace is a volume on the engine (never a host directory), its quota
//! measured by the engine (`volume_usage`), and export reads it back through the engine
//! (`fetch_volumes`, `volume_archive`).
//!
//! Hardening (each item has a test in `tests/sandbox_docker.rs`, see SECURITY.md): all
//! capabilities dropped, `no-new-privileges`, read-only root, a sized noexec `/tmp` tmpfs, network
//! `none` by default, pids/memory(=swap)/CPU/nofile limits, the runner as a non-dumpable PID 1
//! that reaps orphans, a non-root user,
//! Docker's default seccomp profile (or a reviewed one from config), no host path but the scope's
//! workspace, no environment from the host.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountBindOptions, MountType, MountVolumeOptions, ResourcesUlimits,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};
use sandbox_runner::protocol::{self, ChannelKey, PROTOCOL_VERSION, Request, RequestLimits, WORKSPACE_DIR};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Sandbox, SandboxCall, SandboxError, TenantLocks, ToolOutput, check_call, finish};
use crate::config::{DockerSettings, Endpoint, EnginesConfig, WorkspaceAccess};
use crate::tools::Tool;

/// Label on every container this backend creates.
pub const LABEL_SANDBOX: &str = "org.bulkhead.sandbox";
/// Which gateway (state directory) owns the container.
pub const LABEL_GATEWAY: &str = "org.bulkhead.gateway";
pub const LABEL_TENANT: &str = "org.bulkhead.tenant";
pub const LABEL_AGENT: &str = "org.bulkhead.agent";
/// The scope's workspace, relative to the tenant (`agents/<id>`, `shared`, `sessions/<digest>`).
pub const LABEL_SCOPE: &str = "org.bulkhead.scope";
/// Hash of the image id and every setting the container was created with.
pub const LABEL_CONFIG: &str = "org.bulkhead.config-hash";
/// Image label naming the runner protocol version the image speaks.
pub const IMAGE_PROTOCOL_LABEL: &str = "org.bulkhead.protocol";
/// The user sandboxes run as when the config names none (the image's `sandbox` user).
pub const DEFAULT_USER: (u32, u32) = (65532, 65532);
/// Time a call may take beyond its own timeout (the runner enforces that one) before the host
/// gives up on the container and removes it.
const HOST_GRACE: Duration = Duration::from_secs(10);
/// How long a resolved image id is trusted before the image is inspected again.
const IMAGE_RECHECK: Duration = Duration::from_secs(5);
/// Bytes of runner stderr kept for logs.
const STDERR_CAP: usize = 4096;

/// Tunables of the backend; `Default` is what the gateway uses.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// The daemon's Unix socket; `None`: `$DOCKER_HOST` or `/var/run/docker.sock`. Ignored when
    /// `engines` is set.
    pub socket: Option<PathBuf>,
    /// `sandbox.docker.engines`: tenants are placed on several engines, their workspaces are
    /// volumes there. `None`: the one daemon of `socket`, workspaces under the state directory.
    pub engines: Option<EnginesConfig>,
    /// How often idle containers are looked for.
    pub reap_every: Duration,
    /// Timeout of one Engine API request until its response headers (streams such as the
    /// attached runner and the container wait outlive it).
    pub request_timeout: Duration,
    /// Where container starts are recorded (the tenant's audit log); off by default.
    pub audit: crate::audit::Audit,
    /// Set when several gateways share tenants: their volumes and session names are shared.
    pub fleet: Option<Fleet>,
}

impl Default for DockerOptions {
    fn default() -> Self {
        Self {
            socket: None,
            engines: None,
            fleet: None,
            reap_every: Duration::from_secs(15),
            request_timeout: Duration::from_secs(60),
            audit: crate::audit::Audit::off(),
        }
    }
}

/// The Docker backend.
pub struct DockerSandbox {
    workspaces: super::Workspaces,
    gateway: String,
    /// The owner label of workspace volumes (the fleet's, or `gateway`).
    volumes: String,
    opts: DockerOptions,
    /// One, or `sandbox.docker.engines` in declaration order (a `SlotKey` names its index).
    engines: Vec<Engine>,
    /// With `sandbox.docker.engines`: workspaces are volumes, engines are health-checked.
    multi: Option<Multi>,
    slots: Mutex<HashMap<SlotKey, Arc<tokio::sync::Mutex<Option<Live>>>>>,
    tenant_locks: TenantLocks,
    create_locks: TenantLocks,
    /// Image name → (id, when checked).
    images: Mutex<HashMap<String, (String, Instant)>>,
    /// The idle-container reaper and the engines' health checks, stopped by `stop`.
    reaper: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What several engines add.
struct Multi {
    failover: bool,
    health_every: Duration,
}

/// One Docker engine.
struct Engine {
    /// `sandbox.docker.engines[].name` (`default` for the one local daemon).
    name: String,
    /// `None`: the local daemon (`DockerOptions::socket`, `$DOCKER_HOST`, `/var/run/docker.sock`).
    endpoint: Option<Endpoint>,
    weight: u32,
    client: tokio::sync::Mutex<Option<Docker>>,
    /// The last health check's verdict (several engines only; starts up, so the first call
    /// does not wait for a check).
    up: AtomicBool,
    /// Bytes each tenant's workspace volumes hold here, and when that measurement started.
    usage: tokio::sync::Mutex<Option<(Instant, TenantBytes)>>,
}

/// Bytes per tenant (`None`: the engine could not size one of its volumes).
type TenantBytes = HashMap<String, Option<u64>>;

impl Engine {
    fn new(name: &str, endpoint: Option<Endpoint>, weight: u32) -> Self {
        Self {
            name: name.to_string(),
            endpoint,
            weight,
            client: tokio::sync::Mutex::new(None),
            up: AtomicBool::new(true),
            usage: tokio::sync::Mutex::new(None),
        }
    }
}

/// One container: a tenant's scope under one configuration, on one engine.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SlotKey {
    engine: usize,
    tenant: String,
    scope: String,
    agent: String,
    config: String,
}

/// A running container with its attached runner.
struct Live {
    id: String,
    input: std::pin::Pin<Box<dyn AsyncWrite + Send>>,
    output: std::pin::Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    buf: Vec<u8>,
    /// This container's channel key (sent in the hello frame; responses are sealed with it).
    key: ChannelKey,
    /// The id of the last request sent.
    last_id: u64,
    dead: Arc<AtomicBool>,
    last_used: Instant,
    idle: Duration,
}

/// Everything that shapes a container; its hash is the config label.
struct Plan {
    key: SlotKey,
    image_id: String,
    /// The workspace and whether it is mounted read-only.
    workspace: Option<(Workspace, bool)>,
    user: String,
    seccomp: Option<String>,
    settings: DockerSettings,
}

/// Where a container's workspace comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Workspace {
    /// A directory of the gateway's state dir, bind-mounted (the one local daemon).
    Host(PathBuf),
    /// A Docker volume on the container's engine (several engines).
    Volume(String),
}

/// The label value that ties containers to the gateway whose state lives in `state_dir`.
pub fn gateway_label(state_dir: &Path) -> String {
    let canon = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    crate::crypto::sha256_hex(canon.to_string_lossy().as_bytes(), 8)
}

/// Connects to the daemon and negotiates the API version (Debian's Engine speaks 1.41).
pub async fn connect(socket: Option<&Path>) -> Result<Docker, String> {
    let docker = match socket {
        Some(p) => Docker::connect_with_unix(&p.to_string_lossy(), 30, bollard::API_DEFAULT_VERSION),
        None => Docker::connect_with_local_defaults(),
    }
    .map_err(|e| format!("cannot reach the Docker daemon: {e}"))?;
    docker.negotiate_version().await.map_err(|e| format!("cannot reach the Docker daemon: {e}"))
}

/// Connects to one of `sandbox.docker.engines` and negotiates the API version. Errors name the
/// endpoint and the TLS files by path, never their contents.
pub async fn connect_endpoint(endpoint: &Endpoint) -> Result<Docker, String> {
    let docker = match endpoint {
        Endpoint::Unix(p) => Docker::connect_with_unix(&p.to_string_lossy(), 30, bollard::API_DEFAULT_VERSION),
        Endpoint::Tcp { addr, tls } => {
            Docker::connect_with_ssl(addr, &tls.key, &tls.cert, &tls.ca, 30, bollard::API_DEFAULT_VERSION)
        }
    }
    .map_err(|e| format!("cannot reach the Docker engine at {endpoint}: {}", tls_safe(&e)))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| format!("cannot reach the Docker engine at {endpoint}: {}", tls_safe(&e)))
}

/// A bollard error as text, cut to its first line (TLS errors can quote PEM parsing state).
fn tls_safe(e: &bollard::errors::Error) -> String {
    let t = e.to_string();
    t.lines().next().unwrap_or("").chars().take(300).collect()
}

/// What the gateways of one fleet (sharing a database and a master key) share in their Docker
/// sandboxes: the owner label of workspace volumes, so every gateway mounts a tenant scope's one
/// volume, and the secret that names session workspaces. Derived from the master key, so two
/// fleets on one engine never share a volume, and no file has to be copied between gateways.
#[derive(Clone)]
pub struct Fleet {
    pub volumes: String,
    pub scope_secret: [u8; 32],
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("volumes", &self.volumes).finish_non_exhaustive()
    }
}

impl Fleet {
    /// The fleet of a config whose store is shared (`store.backend: "postgres"`); `None` on one
    /// host, or when the master key cannot be loaded (the store refuses the start then anyway).
    pub fn of(config: &crate::config::Config) -> Option<Fleet> {
        if !matches!(config.store.backend, crate::config::StoreBackend::Postgres { .. }) {
            return None;
        }
        let master = crate::store::config_master(config).ok()?;
        let volumes = format!("f{}", &master.mac(&[b"bulkhead/fleet/v1/volumes"])[..15]);
        let secret = crate::crypto::unhex(&master.mac(&[b"bulkhead/fleet/v1/sandbox-scope"]))?;
        Some(Fleet { volumes, scope_secret: secret.try_into().ok()? })
    }
}

/// Whose workspace volumes a config's gateway uses: its fleet's, else its own (state dir).
pub fn volume_owner(config: &crate::config::Config) -> String {
    Fleet::of(config).map_or_else(|| gateway_label(&config.state_dir), |f| f.volumes)
}

/// The volume that is a tenant scope's workspace on an engine.
pub fn volume_name(gateway: &str, tenant: &str, scope: &str) -> String {
    format!("bulkhead-{gateway}-{tenant}-{}", scope.replace('/', "."))
}

/// Removes every workspace volume of `tenant` this gateway made on `docker`; returns how many.
/// Its containers must be gone first (a volume in use is not removed).
pub async fn remove_volumes(docker: &Docker, gateway: &str, tenant: &str) -> Result<usize, String> {
    let mut n = 0;
    for (name, _) in tenant_volumes(docker, gateway, tenant).await? {
        match docker.remove_volume(&name, Some(RemoveVolumeOptionsBuilder::default().force(true).build())).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => n += 1,
            Err(e) => return Err(format!("cannot remove workspace volume {name}: {e}")),
        }
    }
    Ok(n)
}

/// Unpacks every workspace volume of `tenant` on `docker` into `into/<scope>` (the layout of
/// workspace directories, so `tenant export` writes both alike). Each volume is read through a
/// container that is created but never started — nothing of the tenant runs — with the volume
/// mounted read-only, and removed afterwards. Scopes in `skip` (already taken from another
/// engine) are left out and returned. Returns the scopes unpacked and what was skipped.
pub async fn fetch_volumes(
    docker: &Docker,
    gateway: &str,
    tenant: &str,
    image: &str,
    into: &Path,
    skip: &[String],
) -> Result<(Vec<String>, super::volume_archive::Unpacked), String> {
    use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
    let mut done = Vec::new();
    let mut total = super::volume_archive::Unpacked::default();
    for (volume, scope) in tenant_volumes(docker, gateway, tenant).await? {
        // The scope label is ours, but is checked like any input before it names a directory.
        let rel = Path::new(&scope);
        if scope.is_empty() || !rel.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
            return Err(format!("workspace volume {volume} has an invalid scope label"));
        }
        if skip.contains(&scope) {
            total
                .skipped
                .push(format!("{scope} (a second copy of this workspace, left on another engine by failover)"));
            continue;
        }
        let dest = into.join(rel);
        std::fs::create_dir_all(&dest).map_err(|e| format!("cannot create {}: {}", dest.display(), e.kind()))?;
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            user: Some(format!("{}:{}", DEFAULT_USER.0, DEFAULT_USER.1)),
            network_disabled: Some(true),
            env: Some(vec![]),
            labels: Some(HashMap::from([
                (LABEL_SANDBOX.to_string(), "1".to_string()),
                (LABEL_GATEWAY.to_string(), gateway.to_string()),
                (LABEL_TENANT.to_string(), tenant.to_string()),
                (LABEL_SCOPE.to_string(), scope.clone()),
            ])),
            host_config: Some(HostConfig {
                cap_drop: Some(vec!["ALL".into()]),
                privileged: Some(false),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                readonly_rootfs: Some(true),
                network_mode: Some("none".into()),
                mounts: Some(vec![Mount {
                    target: Some(WORKSPACE_DIR.into()),
                    source: Some(volume.clone()),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(true),
                    volume_options: Some(MountVolumeOptions { no_copy: Some(true), ..Default::default() }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = docker
            .create_container(Some(CreateContainerOptionsBuilder::default().build()), body)
            .await
            .map_err(|e| format!("cannot read workspace volume {volume}: {e}"))?
            .id;
        let archive = into.join(format!(".{volume}.tar"));
        let fetched = async {
            let mut f = tokio::fs::File::create(&archive)
                .await
                .map_err(|e| format!("cannot write the archive: {}", e.kind()))?;
            let mut stream = docker.download_from_container(
                &id,
                Some(DownloadFromContainerOptionsBuilder::default().path(WORKSPACE_DIR).build()),
            );
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("cannot read workspace volume {volume}: {e}"))?;
                f.write_all(&chunk).await.map_err(|e| format!("cannot write the archive: {}", e.kind()))?;
            }
            f.flush().await.map_err(|e| format!("cannot write the archive: {}", e.kind()))?;
            Ok::<(), String>(())
        }
        .await;
        let _ = remove(docker, &id).await;
        let unpacked = fetched.and_then(|()| {
            let f = std::fs::File::open(&archive).map_err(|e| format!("cannot read the archive: {}", e.kind()))?;
            let strip = WORKSPACE_DIR.trim_start_matches('/').rsplit('/').next().unwrap_or("workspace").to_string();
            super::volume_archive::unpack(std::io::BufReader::new(f), &strip, &dest)
        });
        let _ = std::fs::remove_file(&archive);
        let u = unpacked?;
        total.files += u.files;
        total.skipped.extend(u.skipped.into_iter().map(|s| format!("{scope}/{s}")));
        done.push(scope);
    }
    Ok((done, total))
}

/// The workspace volumes of `tenant` this gateway made on `docker`: (volume name, scope).
pub async fn tenant_volumes(docker: &Docker, gateway: &str, tenant: &str) -> Result<Vec<(String, String)>, String> {
    let filters: HashMap<String, Vec<String>> = HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_SANDBOX}=1"), format!("{LABEL_GATEWAY}={gateway}"), format!("{LABEL_TENANT}={tenant}")],
    )]);
    let list = docker
        .list_volumes(Some(ListVolumesOptionsBuilder::default().filters(&filters).build()))
        .await
        .map_err(|e| format!("cannot list workspace volumes: {e}"))?;
    Ok(list
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| {
            let scope = v.labels.get(LABEL_SCOPE).cloned()?;
            Some((v.name, scope))
        })
        .collect())
}

/// Removes every sandbox container of `tenant`, whichever gateway made it (a fleet's tenant
/// deletion); returns how many.
pub async fn remove_tenant_containers_of_fleet(docker: &Docker, tenant: &str) -> Result<usize, String> {
    remove_labelled(docker, vec![format!("{LABEL_SANDBOX}=1"), format!("{LABEL_TENANT}={tenant}")]).await
}

/// Removes every container labelled for `gateway` (and, if given, `tenant`); returns how many.
pub async fn remove_containers(docker: &Docker, gateway: &str, tenant: Option<&str>) -> Result<usize, String> {
    let mut labels = vec![format!("{LABEL_SANDBOX}=1"), format!("{LABEL_GATEWAY}={gateway}")];
    if let Some(t) = tenant {
        labels.push(format!("{LABEL_TENANT}={t}"));
    }
    remove_labelled(docker, labels).await
}

async fn remove_labelled(docker: &Docker, labels: Vec<String>) -> Result<usize, String> {
    let filters: HashMap<String, Vec<String>> = HashMap::from([("label".to_string(), labels)]);
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
        .await
        .map_err(|e| format!("cannot list sandbox containers: {e}"))?;
    let mut n = 0;
    for c in list {
        if let Some(id) = c.id {
            remove(docker, &id).await?;
            n += 1;
        }
    }
    Ok(n)
}

async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    match docker.remove_container(id, Some(RemoveContainerOptionsBuilder::default().force(true).v(true).build())).await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        // Already being removed (auto-remove or a concurrent reap).
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
        Err(e) => Err(format!("cannot remove sandbox container {}: {e}", &id[..id.len().min(12)])),
    }
}

/// Whether `image` exists locally and speaks this runner protocol; its id if so.
pub async fn check_image(docker: &Docker, image: &str) -> Result<String, String> {
    let info = docker.inspect_image(image).await.map_err(|e| match e {
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => {
            format!("sandbox image {image:?} is missing; build it with images/build.sh")
        }
        e => format!("cannot inspect sandbox image {image:?}: {e}"),
    })?;
    let proto = info.config.as_ref().and_then(|c| c.labels.as_ref()).and_then(|l| l.get(IMAGE_PROTOCOL_LABEL)).cloned();
    if proto.as_deref() != Some(&PROTOCOL_VERSION.to_string()) {
        return Err(format!(
            "sandbox image {image:?} speaks runner protocol {}, this gateway speaks {PROTOCOL_VERSION}; rebuild it with images/build.sh",
            proto.unwrap_or_else(|| "none".into())
        ));
    }
    info.id.ok_or_else(|| format!("sandbox image {image:?} has no id"))
}

impl DockerSandbox {
    /// Starts the backend: connects in the background, removes containers a previous run of this
    /// gateway left behind, and reaps idle containers from then on. Never fails: an unreachable
    /// daemon only makes calls fail until it is back.
    pub fn start(state_dir: &Path, opts: DockerOptions) -> Arc<Self> {
        // The gateway label hashes the canonical state dir, which must exist to be canonical.
        let _ = std::fs::create_dir_all(state_dir);
        let (engines, multi) = match &opts.engines {
            None => (vec![Engine::new("default", None, 1)], None),
            Some(c) => (
                c.engines.iter().map(|e| Engine::new(&e.name, Some(e.endpoint.clone()), e.weight)).collect(),
                Some(Multi { failover: c.failover, health_every: c.health_every }),
            ),
        };
        let me = Arc::new(Self {
            workspaces: match &opts.fleet {
                Some(f) => super::Workspaces::with_secret(state_dir, f.scope_secret),
                None => super::Workspaces::open(state_dir),
            },
            gateway: gateway_label(state_dir),
            volumes: opts.fleet.as_ref().map_or_else(|| gateway_label(state_dir), |f| f.volumes.clone()),
            opts,
            engines,
            multi,
            slots: Mutex::new(HashMap::new()),
            tenant_locks: TenantLocks::default(),
            create_locks: TenantLocks::default(),
            images: Mutex::new(HashMap::new()),
            reaper: Mutex::new(Vec::new()),
        });
        let mut tasks = vec![tokio::spawn(reaper(Arc::downgrade(&me)))];
        if me.multi.is_some() {
            // The first check connects to (and reconciles) every engine.
            tasks.push(tokio::spawn(health(Arc::downgrade(&me))));
        } else {
            let weak = Arc::downgrade(&me);
            tokio::spawn(async move {
                if let Some(me) = weak.upgrade()
                    && let Err(e) = me.docker(0).await
                {
                    tracing::warn!(error = %e, "Docker sandbox backend: daemon not reachable yet; calls fail until it is.");
                }
            });
        }
        *me.reaper.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        me
    }

    /// Stops the idle-container reaper and waits for it (containers are left to the next start's
    /// reconciliation, as after any stop).
    pub async fn stop(&self) {
        let tasks = std::mem::take(&mut *self.reaper.lock().unwrap_or_else(|p| p.into_inner()));
        for r in tasks {
            r.abort();
            let _ = r.await;
        }
    }

    /// This gateway's label value.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// The names of the engines and whether the last health check found each up (one engine:
    /// `default`, always reported up — its calls connect on demand).
    pub fn engines_health(&self) -> Vec<(String, bool)> {
        self.engines.iter().map(|e| (e.name.clone(), e.up.load(Ordering::Acquire))).collect()
    }

    /// The engine a tenant is placed on (its first choice, up or not), by name.
    pub fn placement(&self, tenant: &str, pinned: Option<&str>) -> String {
        let order = self.order(tenant, pinned);
        self.engines[order[0]].name.clone()
    }

    /// The tenant's engines in its placement order (one engine: just it).
    fn order(&self, tenant: &str, pinned: Option<&str>) -> Vec<usize> {
        if self.multi.is_none() {
            return vec![0];
        }
        let c: Vec<_> =
            self.engines.iter().map(|e| super::placement::Candidate { name: &e.name, weight: e.weight }).collect();
        super::placement::order(tenant, pinned, &c)
    }

    /// The engine that serves `call` and its client: the tenant's first engine; if that one is
    /// down, the call fails closed with the reason — unless failover is allowed, then the next
    /// engine of its order that is up. Nothing has run anywhere when this fails.
    async fn select(&self, call: &SandboxCall) -> Result<(usize, Docker), SandboxError> {
        let Some(multi) = &self.multi else { return Ok((0, self.docker(0).await?)) };
        let order = self.order(call.tenant.as_str(), call.settings.docker.engine.as_deref());
        let first = &self.engines[order[0]].name;
        let tried = if multi.failover { order.len() } else { 1 };
        for (n, &i) in order.iter().take(tried).enumerate() {
            if !self.engines[i].up.load(Ordering::Acquire) {
                continue;
            }
            match self.docker(i).await {
                Ok(d) => {
                    if n > 0 {
                        tracing::warn!(tenant = %call.tenant, engine = %first, to = %self.engines[i].name, "Docker engine down: tenant served on another engine (failover).");
                    }
                    return Ok((i, d));
                }
                Err(_) => self.mark(i, false),
            }
        }
        Err(SandboxError::Unavailable(if multi.failover {
            format!(
                "every Docker engine this tenant can use is down (its own is {first:?}); tool calls fail until one is back"
            )
        } else {
            format!(
                "this tenant's Docker engine {first:?} is down; its tool calls fail until it is back \
                 (the operator has not allowed failover to another engine)"
            )
        }))
    }

    /// Records an engine's health, logging changes.
    fn mark(&self, i: usize, up: bool) {
        let e = &self.engines[i];
        if e.up.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::info!(engine = %e.name, "Docker engine is up again.");
            } else {
                tracing::warn!(engine = %e.name, "Docker engine is down: its tenants' tool calls fail until it is back.");
            }
        }
    }

    /// Checks every engine once, all at the same time (an engine that hangs delays no other's
    /// verdict): a ping on the open client, or a new connection (which reconciles). A failed
    /// check drops the client.
    async fn check_engines(&self) {
        let limit = self
            .multi
            .as_ref()
            .map_or(Duration::from_secs(5), |m| m.health_every.clamp(Duration::from_secs(1), Duration::from_secs(5)));
        let checks = (0..self.engines.len()).map(|i| async move {
            let client = self.engines[i].client.lock().await.clone();
            let ok = match client {
                Some(d) => matches!(tokio::time::timeout(limit, d.ping()).await, Ok(Ok(_))),
                None => matches!(tokio::time::timeout(limit * 2, self.docker(i)).await, Ok(Ok(_))),
            };
            if !ok {
                self.reset_client(i).await;
            }
            self.mark(i, ok);
        });
        futures_util::future::join_all(checks).await;
    }

    /// The client of engine `i`, connecting (and reconciling) first if there is none.
    async fn docker(&self, i: usize) -> Result<Docker, SandboxError> {
        let engine = &self.engines[i];
        let mut guard = engine.client.lock().await;
        if let Some(d) = guard.as_ref() {
            return Ok(d.clone());
        }
        let connected = match &engine.endpoint {
            None => connect(self.opts.socket.as_deref()).await,
            Some(ep) => connect_endpoint(ep).await,
        };
        let docker = connected.map(|d| d.with_timeout(self.opts.request_timeout)).map_err(|e| {
            // Details (socket path, transport error) go to the operator's log, not to the model.
            tracing::warn!(engine = %engine.name, error = %e, "Docker sandbox backend: daemon unreachable.");
            if self.multi.is_some() {
                SandboxError::Unavailable(format!(
                    "the Docker engine {:?} is unreachable; calls fail until it is back",
                    engine.name
                ))
            } else {
                SandboxError::Unavailable("the Docker daemon is unreachable; calls fail until it is back".into())
            }
        })?;
        // Reconcile: containers of a previous run of this gateway are not adopted (their
        // runner's stream state is unknown); they are removed and recreated on demand.
        let live: Vec<String> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .iter()
                .filter(|(k, _)| k.engine == i)
                .filter_map(|(_, s)| s.try_lock().ok().and_then(|l| l.as_ref().map(|l| l.id.clone())))
                .collect()
        };
        if live.is_empty() {
            match remove_containers(&docker, &self.gateway, None).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "Docker sandbox backend: removed containers of a previous run."),
                Err(e) => return Err(SandboxError::Unavailable(e)),
            }
        }
        *guard = Some(docker.clone());
        Ok(docker)
    }

    /// Forgets an engine's client after a connection failure so the next call connects again.
    async fn reset_client(&self, i: usize) {
        *self.engines[i].client.lock().await = None;
    }

    /// Removes every container of `tenant` this gateway runs, on every engine (tenant
    /// deletion); with several engines, its workspace volumes too. An unreachable engine is an
    /// error: nothing of the tenant may be left behind silently.
    pub async fn remove_tenant(&self, tenant: &str) -> Result<usize, String> {
        let slots: Vec<_> = {
            let mut m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<SlotKey> = m.keys().filter(|k| k.tenant == tenant).cloned().collect();
            keys.into_iter().filter_map(|k| m.remove(&k)).collect()
        };
        for s in slots {
            *s.lock().await = None;
        }
        let mut n = 0;
        for i in 0..self.engines.len() {
            let docker = self.docker(i).await.map_err(|e| e.to_string())?;
            n += remove_containers(&docker, &self.gateway, Some(tenant)).await?;
            if self.multi.is_some() {
                remove_volumes(&docker, &self.volumes, tenant).await?;
            }
        }
        Ok(n)
    }

    /// The container id serving a call's scope right now, if any (tests and diagnostics).
    pub async fn container_of(&self, call: &SandboxCall) -> Option<String> {
        let slots: Vec<_> = {
            let m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let scope = self.scope_of(call).ok()?;
            m.iter()
                .filter(|(k, _)| k.tenant == call.tenant.as_str() && k.scope == scope && k.agent == call.agent.as_str())
                .map(|(_, v)| v.clone())
                .collect()
        };
        for s in slots {
            if let Some(l) = s.lock().await.as_ref() {
                return Some(l.id.clone());
            }
        }
        None
    }

    /// The scope label of a call (its workspace relative to the tenant; keyed for sessions).
    fn scope_of(&self, call: &SandboxCall) -> Result<String, SandboxError> {
        self.workspaces.scope(call).map(|p| p.to_string_lossy().into_owned())
    }

    async fn call_inner(&self, call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
        check_call(call)?;
        let settings = &call.settings.docker;
        let timeout = super::call_timeout(call, settings.timeout)?;
        let mount = call.settings.workspace_access;
        let access = call.limits.workspace_access.min(mount);
        // A native command can write wherever the mount lets it; it runs only with the access
        // the container was created with, never with a narrower per-call one it could exceed.
        if call.tool == Tool::Exec && access != mount {
            return Err(SandboxError::InvalidArguments(format!(
                "exec needs this agent's full workspace access ({mount:?}); policy allows only {access:?} for this call"
            )));
        }
        let mutating = access == WorkspaceAccess::Rw && matches!(call.tool, Tool::Write | Tool::Edit | Tool::Exec);
        let lock = self.tenant_locks.of(call.tenant.as_str());
        let _guard = if mutating { Some(lock.lock().await) } else { None };
        let (engine, docker) = self.select(call).await?;
        let budget = if mutating {
            let left = if self.multi.is_some() {
                // The tenant's volumes on this engine, as the engine measures them.
                let used = self.tenant_usage(engine, &docker, call.tenant.as_str()).await?;
                settings.disk_quota_bytes.saturating_sub(used)
            } else {
                let root = self.workspaces.tenant_root(call.tenant.as_str());
                super::workspace::remaining_quota(root, settings.disk_quota_bytes).await?
            };
            // A native command can write without asking the runner: nothing left is refused here.
            match left {
                0 => return Err(SandboxError::Quota),
                left => Some(left),
            }
        } else {
            None
        };
        let mut args = call.args.clone();
        if call.tool == Tool::Exec
            && let Some(o) = args.as_object_mut()
        {
            // The runner enforces the effective timeout (policy ∧ config ∧ request) itself.
            o.insert("timeoutSec".into(), serde_json::json!(timeout.as_secs_f64()));
        }
        let limits = RequestLimits {
            max_output_bytes: call.limits.max_output_bytes as u64,
            access: super::protocol_access(access),
            disk_budget_bytes: budget,
        };
        let max_frame = protocol::max_response_frame(call.limits.max_output_bytes);

        let (docker, mut live) = self.running(call, engine, docker).await?;
        let Some(l) = live.as_mut() else {
            return Err(SandboxError::Unavailable("the sandbox container could not be started".into()));
        };
        l.last_id += 1;
        let req = Request::new(l.last_id, call.tool.name(), args, limits);
        let result = tokio::time::timeout(timeout + HOST_GRACE, l.roundtrip(&req, max_frame)).await;
        let resp = match result {
            Ok(Ok(resp)) => resp,
            Ok(Err(failure)) => {
                let id = l.id.clone();
                *live = None;
                let err = match failure {
                    Broken::Protocol(m) => SandboxError::Protocol(m),
                    Broken::Ended => self.why_ended(&docker, &id).await,
                };
                let _ = remove(&docker, &id).await;
                return Err(err);
            }
            Err(_) => {
                let id = l.id.clone();
                *live = None;
                let _ = remove(&docker, &id).await;
                return Err(SandboxError::Timeout(timeout));
            }
        };
        l.last_used = Instant::now();
        finish(resp, call.limits.max_output_bytes, timeout)
    }

    /// The call's container on engine `engine`, created (or replaced, if it died) as needed,
    /// locked for the call.
    async fn running(
        &self,
        call: &SandboxCall,
        engine: usize,
        docker: Docker,
    ) -> Result<(Docker, tokio::sync::OwnedMutexGuard<Option<Live>>), SandboxError> {
        let plan = match self.plan(&docker, engine, call).await {
            Ok(p) => p,
            Err(e) => {
                self.forget_client_if_down(engine, &e).await;
                return Err(e);
            }
        };
        let slot = {
            let mut m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(plan.key.clone()).or_default().clone()
        };
        let mut live = slot.lock_owned().await;
        if live.as_ref().is_some_and(|l| l.dead.load(Ordering::Acquire)) {
            let old = live.take().map(|l| l.id);
            if let Some(id) = old {
                let _ = remove(&docker, &id).await;
            }
        }
        if live.is_none() {
            // Creations of one tenant are serialised so its container cap holds.
            let creating = self.create_locks.of(&plan.key.tenant);
            let _creating = creating.lock().await;
            self.forget_replaced(&plan.key);
            self.make_room(&docker, &plan.key, plan.settings.max_containers).await?;
            match self.create(&docker, &plan).await {
                Ok(l) => *live = Some(l),
                Err(e) => {
                    self.forget_client_if_down(engine, &e).await;
                    return Err(e);
                }
            }
        }
        if let Some(l) = live.as_mut() {
            l.last_used = Instant::now();
            // A prewarmed container stays up however long it is idle.
            l.idle = if plan.settings.prewarm { Duration::MAX } else { plan.settings.idle };
        }
        Ok((docker, live))
    }

    /// Forgets the slots of this agent's scope under another configuration: `create` removes
    /// their containers, and a stale slot must neither count against the tenant's cap nor answer.
    fn forget_replaced(&self, key: &SlotKey) {
        let stale: Vec<_> = {
            let mut m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<SlotKey> = m
                .keys()
                .filter(|k| {
                    k.engine == key.engine
                        && k.tenant == key.tenant
                        && k.scope == key.scope
                        && k.agent == key.agent
                        && *k != key
                })
                .cloned()
                .collect();
            keys.iter().filter_map(|k| m.remove(k)).collect()
        };
        for s in stale {
            if let Ok(mut l) = s.try_lock() {
                *l = None;
            }
        }
    }

    /// Keeps a tenant under `max` containers: the least recently used idle one of its others
    /// goes; if all are busy the call is refused.
    async fn make_room(&self, docker: &Docker, key: &SlotKey, max: u32) -> Result<(), SandboxError> {
        let others: Vec<_> = {
            let m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            m.iter().filter(|(k, _)| k.tenant == key.tenant && *k != key).map(|(k, s)| (k.engine, s.clone())).collect()
        };
        let mut running = 0usize;
        let mut idle = Vec::new();
        for (engine, s) in others {
            match s.clone().try_lock_owned() {
                Ok(g) if g.is_some() => {
                    running += 1;
                    idle.push((engine, g));
                }
                Ok(_) => {}
                Err(_) => running += 1,
            }
        }
        if running < max as usize {
            return Ok(());
        }
        idle.sort_by_key(|(_, g)| g.as_ref().map(|l| l.last_used));
        let Some((engine, mut lru)) = idle.into_iter().next() else {
            return Err(SandboxError::Unavailable(format!(
                "this tenant already runs {running} sandbox containers, all busy (the limit is {max}); try again shortly"
            )));
        };
        if let Some(l) = lru.take() {
            tracing::debug!(tenant = %key.tenant, "Docker sandbox: container cap reached; removing the least recently used.");
            // It may run on another engine (failover): removed through that engine's client.
            let other = if engine == key.engine { None } else { self.engines[engine].client.lock().await.clone() };
            match other {
                Some(d) => remove(&d, &l.id).await.map_err(SandboxError::Unavailable)?,
                None if engine == key.engine => remove(docker, &l.id).await.map_err(SandboxError::Unavailable)?,
                // Its engine is unreachable: the container is dropped from this gateway's count
                // and removed by that engine's reconciliation when it is back.
                None => {}
            }
        }
        Ok(())
    }

    /// Prewarms, in the background, the container of every agent configured with
    /// `sandbox.docker.prewarm` on this backend (agent and shared scopes; a session's container
    /// cannot exist before its session). Failures are logged; the first call retries.
    pub fn prewarm_agents(self: &Arc<Self>, agents: &[crate::config::AgentConfig]) {
        for a in agents {
            let s = &a.sandbox;
            if s.backend != crate::config::SandboxBackend::Docker
                || !s.docker.prewarm
                || s.scope == crate::config::SandboxScope::Session
            {
                continue;
            }
            let Ok(session) =
                crate::ids::SessionKey::new(a.id.clone(), "prewarm", crate::ids::PeerKind::Direct, "gateway")
            else {
                continue;
            };
            let call = SandboxCall {
                tenant: a.tenant.clone(),
                agent: a.id.clone(),
                session,
                tool: Tool::Exec,
                args: serde_json::json!({}),
                limits: super::ToolLimits::default(),
                settings: s.clone(),
            };
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.prewarm(&call).await {
                    tracing::warn!(agent = %call.agent, error = %e, "Docker sandbox: prewarm failed; the first call retries.");
                }
            });
        }
    }

    /// Creates the container of an agent- or shared-scope call ahead of its first tool call
    /// (`sandbox.docker.prewarm`); it is then exempt from idle reaping.
    pub async fn prewarm(&self, call: &SandboxCall) -> Result<(), SandboxError> {
        let (engine, docker) = self.select(call).await?;
        self.running(call, engine, docker).await.map(|_| ())
    }

    async fn forget_client_if_down(&self, engine: usize, e: &SandboxError) {
        if matches!(e, SandboxError::Unavailable(m) if m.contains("daemon")) {
            self.reset_client(engine).await;
            if self.multi.is_some() {
                self.mark(engine, false);
            }
        }
    }

    /// Bytes `tenant`'s workspace volumes on engine `i` hold, as the engine measures them (the
    /// daemon, as root, sees every file; the gateway cannot walk a remote volume). One
    /// measurement of the engine answers every call that asked before it started, so callers
    /// waiting together share it; a call never uses one that started before it asked.
    async fn tenant_usage(&self, i: usize, docker: &Docker, tenant: &str) -> Result<u64, SandboxError> {
        let asked = Instant::now();
        let mut cache = self.engines[i].usage.lock().await;
        let fresh = cache.as_ref().is_some_and(|(at, _)| *at >= asked);
        if !fresh {
            let started = Instant::now();
            let Some(endpoint) = self.engines[i].endpoint.as_ref() else {
                return Err(SandboxError::Unavailable("no engine endpoint to measure volumes on".into()));
            };
            let api = docker.client_version().to_string();
            let mut sizes = super::volume_usage::volume_sizes(endpoint, &api).await;
            if sizes.is_err() {
                // One measurement at a time per engine: someone else's (`docker system df`) may be running.
                tokio::time::sleep(Duration::from_millis(250)).await;
                sizes = super::volume_usage::volume_sizes(endpoint, &api).await;
            }
            let sizes = sizes.map_err(|e| {
                tracing::warn!(engine = %self.engines[i].name, error = %e, "Docker sandbox: workspace volumes not measured.");
                SandboxError::Unavailable("Docker daemon: cannot measure the workspace against its quota".into())
            })?;
            let mut by_tenant: TenantBytes = HashMap::new();
            for v in sizes {
                let labels = &v.labels;
                if labels.get(LABEL_SANDBOX).map(String::as_str) != Some("1")
                    || labels.get(LABEL_GATEWAY) != Some(&self.gateway)
                {
                    continue;
                }
                let Some(t) = labels.get(LABEL_TENANT) else { continue };
                let entry = by_tenant.entry(t.clone()).or_insert(Some(0));
                *entry = match (*entry, v.size) {
                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                    _ => None,
                };
            }
            *cache = Some((started, by_tenant));
        }
        match cache.as_ref().and_then(|(_, m)| m.get(tenant).copied()) {
            None => Ok(0),
            Some(Some(n)) => Ok(n),
            // The engine could not size a volume: no budget can be given.
            Some(None) => {
                Err(SandboxError::Unavailable("Docker daemon: cannot measure the workspace against its quota".into()))
            }
        }
    }

    /// Why a container's runner stream ended mid-call: OOM, or it stopped.
    async fn why_ended(&self, docker: &Docker, id: &str) -> SandboxError {
        let state = docker.inspect_container(id, None).await.ok().and_then(|i| i.state);
        match state {
            Some(s) if s.oom_killed == Some(true) => SandboxError::Memory,
            Some(s) => SandboxError::Unavailable(format!(
                "the sandbox container stopped during the call (exit code {}); the next call starts a new one",
                s.exit_code.unwrap_or(-1)
            )),
            None => SandboxError::Unavailable(
                "the sandbox container is gone (removed, or the daemon restarted); the next call starts a new one"
                    .into(),
            ),
        }
    }

    /// The id of `image`, checked at most every `IMAGE_RECHECK` (a rebuilt image is picked up,
    /// and its containers recreated, within that time).
    async fn image_id(&self, docker: &Docker, engine: usize, image: &str) -> Result<String, SandboxError> {
        let cache_key = format!("{engine}\0{image}");
        if let Some((id, at)) = self.images.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key)
            && at.elapsed() < IMAGE_RECHECK
        {
            return Ok(id.clone());
        }
        let id = check_image(docker, image).await.map_err(|e| {
            if e.contains("cannot inspect") {
                SandboxError::Unavailable(format!("Docker daemon: {e}"))
            } else {
                SandboxError::Unavailable(e)
            }
        })?;
        self.images.lock().unwrap_or_else(|p| p.into_inner()).insert(cache_key, (id.clone(), Instant::now()));
        Ok(id)
    }

    /// Resolves everything a call's container depends on.
    async fn plan(&self, docker: &Docker, engine: usize, call: &SandboxCall) -> Result<Plan, SandboxError> {
        let s = &call.settings.docker;
        let image_id = self.image_id(docker, engine, &s.image).await?;
        let scope = self.scope_of(call)?;
        let ro = call.settings.workspace_access == WorkspaceAccess::Ro;
        let workspace = match call.settings.workspace_access {
            WorkspaceAccess::None => None,
            _ if self.multi.is_some() => {
                Some((Workspace::Volume(volume_name(&self.volumes, call.tenant.as_str(), &scope)), ro))
            }
            _ => Some((Workspace::Host(self.workspaces.dir(call)?), ro)),
        };
        let (uid, gid) = sandbox_user(s.user.as_deref(), gateway_uid())?;
        match &workspace {
            Some((Workspace::Host(dir), _)) => prepare_workspace(dir, uid, gid).await?,
            Some((Workspace::Volume(name), _)) => {
                self.ensure_volume(docker, name, call.tenant.as_str(), &scope).await?
            }
            None => {}
        }
        let seccomp = match &s.seccomp_profile {
            Some(p) => Some(tokio::fs::read_to_string(p).await.map_err(|e| {
                // The path is the operator's; the model sees only that the profile is unreadable.
                tracing::error!(path = %p.display(), error = %e, "Docker sandbox: seccomp profile unreadable.");
                SandboxError::Unavailable(format!("cannot read the configured seccomp profile: {}", e.kind()))
            })?),
            None => None,
        };
        let mut plan = Plan {
            key: SlotKey {
                engine,
                tenant: call.tenant.as_str().to_string(),
                scope,
                agent: call.agent.as_str().to_string(),
                config: String::new(),
            },
            image_id,
            workspace,
            user: format!("{uid}:{gid}"),
            seccomp,
            settings: s.clone(),
        };
        plan.key.config = plan.hash();
        Ok(plan)
    }

    /// Creates the workspace volume of a tenant scope on an engine if it is not there (a volume
    /// of that name that exists is kept: it is the scope's workspace from before). A new volume
    /// is filled from the image's `/workspace`, which gives it the sandbox user as owner.
    async fn ensure_volume(&self, docker: &Docker, name: &str, tenant: &str, scope: &str) -> Result<(), SandboxError> {
        let labels = HashMap::from([
            (LABEL_SANDBOX.to_string(), "1".to_string()),
            (LABEL_GATEWAY.to_string(), self.volumes.clone()),
            (LABEL_TENANT.to_string(), tenant.to_string()),
            (LABEL_SCOPE.to_string(), scope.to_string()),
        ]);
        let req = VolumeCreateRequest {
            name: Some(name.to_string()),
            driver: Some("local".into()),
            labels: Some(labels),
            ..Default::default()
        };
        let v = docker.create_volume(req).await.map_err(|e| {
            SandboxError::Unavailable(format!("Docker daemon: cannot create the workspace volume: {e}"))
        })?;
        // A volume of that name made by someone else (other labels) is not this scope's.
        if v.labels.get(LABEL_TENANT).map(String::as_str) != Some(tenant)
            || v.labels.get(LABEL_GATEWAY) != Some(&self.volumes)
        {
            return Err(SandboxError::Unavailable(
                "a volume with this workspace's name exists on the engine but was not made by this gateway; refused"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Creates, attaches and starts a container for `plan`; replaces older ones of its scope.
    async fn create(&self, docker: &Docker, plan: &Plan) -> Result<Live, SandboxError> {
        let down = |e: bollard::errors::Error| SandboxError::Unavailable(format!("Docker daemon: {e}"));
        // An agent's scope has one container: an older one (config or image changed, or dead)
        // goes. Other agents sharing the scope (`shared`) keep theirs.
        remove_labelled(
            docker,
            vec![
                format!("{LABEL_SANDBOX}=1"),
                format!("{LABEL_GATEWAY}={}", self.gateway),
                format!("{LABEL_TENANT}={}", plan.key.tenant),
                format!("{LABEL_SCOPE}={}", plan.key.scope),
                format!("{LABEL_AGENT}={}", plan.key.agent),
            ],
        )
        .await
        .map_err(|e| SandboxError::Unavailable(format!("Docker daemon: {e}")))?;
        let body = plan.body(&self.gateway);
        let created = docker
            .create_container(Some(CreateContainerOptionsBuilder::default().build()), body)
            .await
            .map_err(down)?;
        let id = created.id;
        let attached = docker
            .attach_container(
                &id,
                Some(
                    AttachContainerOptionsBuilder::default().stdin(true).stdout(true).stderr(true).stream(true).build(),
                ),
            )
            .await;
        let attached = match attached {
            Ok(a) => a,
            Err(e) => {
                let _ = remove(docker, &id).await;
                return Err(down(e));
            }
        };
        let mut input = attached.input;
        if let Err(e) = docker.start_container(&id, None).await {
            let _ = remove(docker, &id).await;
            return Err(SandboxError::Unavailable(format!("cannot start the sandbox container: {e}")));
        }
        // The key goes to the runner first, before any command can run in the container.
        let key = match super::channel_key() {
            Ok(k) => k,
            Err(e) => {
                let _ = remove(docker, &id).await;
                return Err(e);
            }
        };
        if input.write_all(&key.hello()).await.is_err() || input.flush().await.is_err() {
            let _ = remove(docker, &id).await;
            return Err(SandboxError::Unavailable("cannot reach the runner of the new sandbox container".into()));
        }
        let dead = Arc::new(AtomicBool::new(false));
        let (d2, dead2, id2) = (docker.clone(), dead.clone(), id.clone());
        tokio::spawn(async move {
            let mut w =
                d2.wait_container(&id2, Some(WaitContainerOptionsBuilder::default().condition("not-running").build()));
            // Any outcome (exit, error, daemon gone) means this container can no longer serve.
            let _ = w.next().await;
            dead2.store(true, Ordering::Release);
        });
        tracing::debug!(tenant = %plan.key.tenant, scope = %plan.key.scope, container = %id.get(..12).unwrap_or_default(), "Sandbox container started.");
        if let Ok(tenant) = crate::ids::TenantId::parse(&plan.key.tenant) {
            use crate::audit::{Actor, Event, Scope};
            let event = Event::SandboxContainer {
                agent: plan.key.agent.clone(),
                scope: plan.key.scope.clone(),
                state: "started".into(),
            };
            self.opts.audit.record(Scope::Tenant(tenant), Actor::Agent(plan.key.agent.clone()), event).await;
        }
        Ok(Live {
            id,
            input,
            output: attached.output,
            buf: Vec::new(),
            key,
            last_id: 0,
            dead,
            last_used: Instant::now(),
            idle: plan.settings.idle,
        })
    }

    /// Removes containers idle longer than their configured idle time.
    async fn reap_idle(&self) {
        for i in 0..self.engines.len() {
            self.reap_idle_on(i).await;
        }
        // Forget empty slots nobody is about to use (a call holds a clone of the Arc).
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| Arc::strong_count(s) > 1 || s.try_lock().map_or(true, |l| l.is_some()));
    }

    async fn reap_idle_on(&self, engine: usize) {
        let slots: Vec<_> = {
            let m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            m.iter().filter(|(k, _)| k.engine == engine).map(|(_, v)| v.clone()).collect()
        };
        let Some(docker) = self.engines[engine].client.lock().await.clone() else { return };
        for s in slots {
            let Ok(mut l) = s.try_lock() else { continue };
            if let Some(live) = l.as_ref()
                && (live.last_used.elapsed() >= live.idle || live.dead.load(Ordering::Acquire))
            {
                let id = live.id.clone();
                *l = None;
                if let Err(e) = remove(&docker, &id).await {
                    tracing::warn!(error = %e, "Docker sandbox backend: idle container not removed.");
                }
            }
        }
    }
}

async fn health(me: Weak<DockerSandbox>) {
    loop {
        let every = match me.upgrade() {
            Some(m) => {
                m.check_engines().await;
                m.multi.as_ref().map_or(Duration::from_secs(5), |x| x.health_every)
            }
            None => return,
        };
        tokio::time::sleep(every).await;
    }
}

async fn reaper(me: Weak<DockerSandbox>) {
    loop {
        let every = match me.upgrade() {
            Some(m) => m.opts.reap_every,
            None => return,
        };
        tokio::time::sleep(every).await;
        match me.upgrade() {
            Some(m) => m.reap_idle().await,
            None => return,
        }
    }
}

/// The uid the gateway runs as.
fn gateway_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Why a gateway running as `uid` cannot serve Docker agents that have a workspace, if it cannot
/// (`doctor` says so before the first call is refused).
pub fn handover_problem(uid: u32) -> Option<String> {
    (uid != 0).then(|| {
        format!(
            "the gateway runs as uid {uid}, not root: it cannot hand workspaces to the sandbox user, so tool calls \
             of Docker agents with workspace access are refused; run it as root (SECURITY.md, operator duties)"
        )
    })
}

/// `handover_problem` for this process.
pub fn gateway_handover_problem() -> Option<String> {
    handover_problem(gateway_uid())
}

/// The uid:gid a sandbox runs as: the configured non-root user, else the image's (65532) —
/// never root and never the gateway's own uid (a command that got out of the container would
/// then own the gateway's keys and every tenant's data).
pub fn sandbox_user(configured: Option<&str>, gateway_uid: u32) -> Result<(u32, u32), SandboxError> {
    let (uid, gid) = match configured {
        Some(u) => {
            let (a, b) = u.split_once(':').unwrap_or((u, u));
            match (a.parse::<u32>(), b.parse::<u32>()) {
                (Ok(a), Ok(b)) => (a, b),
                _ => return Err(SandboxError::Unavailable(format!("sandbox.docker.user {u:?} is not numeric"))),
            }
        }
        None => DEFAULT_USER,
    };
    if uid == 0 || gid == 0 {
        return Err(SandboxError::Unavailable("sandboxes never run as root (sandbox.docker.user)".into()));
    }
    if uid == gateway_uid {
        return Err(SandboxError::Unavailable(format!(
            "sandbox.docker.user {uid} is the gateway's own uid; sandboxes never run as the gateway's user"
        )));
    }
    Ok((uid, gid))
}

/// Creates the workspace and hands it to the sandbox user (files the wasm backend or the operator
/// left there included, so a tenant can switch backends). Handing over needs a root gateway; a
/// workspace the sandbox user does not own is refused, never shared by running the container as
/// the gateway's uid.
async fn prepare_workspace(dir: &Path, uid: u32, gid: u32) -> Result<(), SandboxError> {
    let dir = dir.to_path_buf();
    let owner = tokio::task::spawn_blocking(move || -> std::io::Result<u32> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&dir)?;
        let root = gateway_uid() == 0;
        if root && std::fs::metadata(&dir)?.uid() != uid {
            hand_over(&dir, uid, gid)?;
        }
        if root {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(std::fs::metadata(&dir)?.uid())
    })
    .await
    .map_err(|e| SandboxError::Unavailable(format!("cannot prepare the workspace: {e}")))?
    .map_err(|e| SandboxError::Unavailable(format!("cannot prepare the workspace: {}", e.kind())))?;
    if owner != uid {
        return Err(SandboxError::Unavailable(format!(
            "the workspace belongs to uid {owner}, not to the sandbox user {uid}, and only a gateway running as root \
             can hand it over; run the gateway as root (see SECURITY.md, operator duties)"
        )));
    }
    Ok(())
}

/// Most entries `hand_over` visits.
const MAX_HANDOVER_ENTRIES: usize = 100_000;

/// `lchown`s a workspace tree to the sandbox user: symlinks are not followed, and a file with
/// more than one link is left alone (it might be linked to a file outside).
fn hand_over(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))?;
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            seen += 1;
            if seen > MAX_HANDOVER_ENTRIES {
                return Err(std::io::Error::other("workspace too large to hand over"));
            }
            let m = e.path().symlink_metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && m.nlink() > 1 {
                continue;
            }
            std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// How a runner stream failed.
enum Broken {
    Protocol(String),
    Ended,
}

impl Live {
    /// Sends one request and reads its response, which must be sealed with this container's key
    /// for this request's id: anything else breaks the stream (the caller removes the container).
    async fn roundtrip(&mut self, req: &Request, max: usize) -> Result<protocol::Response, Broken> {
        let frame = protocol::encode(req);
        if self.input.write_all(&frame).await.is_err() || self.input.flush().await.is_err() {
            return Err(Broken::Ended);
        }
        let mut stderr = Vec::new();
        loop {
            if self.buf.len() >= 4 {
                let len = protocol::frame_len([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                if len > max {
                    return Err(Broken::Protocol(format!("runner response of {len} bytes exceeds {max}")));
                }
                if self.buf.len() >= 4 + len {
                    let rest = self.buf.split_off(4 + len);
                    let frame = std::mem::replace(&mut self.buf, rest);
                    return self.key.open(&frame, req.id, max).map_err(|e| {
                        Broken::Protocol(format!(
                            "refused a response that the runner did not send or that answers another request: {e}"
                        ))
                    });
                }
            }
            match self.output.next().await {
                Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => {
                    self.buf.extend_from_slice(&message)
                }
                Some(Ok(LogOutput::StdErr { message })) => {
                    if stderr.len() < STDERR_CAP {
                        stderr.extend_from_slice(&message[..message.len().min(STDERR_CAP - stderr.len())]);
                        tracing::debug!(stderr = %String::from_utf8_lossy(&stderr), "Sandbox runner wrote to stderr.");
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(Broken::Ended),
            }
        }
    }
}

impl Plan {
    fn hash(&self) -> String {
        let s = &self.settings;
        let text = format!(
            "v2|{}|{:?}|{}|{}|{}|{}|{}|{}|{}|{:?}|{:?}|{:?}|{}",
            self.image_id,
            self.workspace,
            self.user,
            s.network,
            s.pids_limit,
            s.memory_bytes,
            s.nano_cpus,
            s.nofile,
            s.tmpfs_bytes,
            s.runtime,
            s.apparmor_profile,
            self.seccomp.as_deref().map(|j| crate::crypto::sha256_hex(j.as_bytes(), 8)),
            self.key.agent,
        );
        crate::crypto::sha256_hex(text.as_bytes(), 8)
    }

    /// The container: see the module docs for why each setting is what it is.
    fn body(&self, gateway: &str) -> ContainerCreateBody {
        let s = &self.settings;
        let mut security_opt = vec!["no-new-privileges:true".to_string()];
        if let Some(json) = &self.seccomp {
            // Through the API the profile is passed as JSON content, not a path.
            security_opt.push(format!("seccomp={json}"));
        }
        if let Some(a) = &s.apparmor_profile {
            security_opt.push(format!("apparmor={a}"));
        }
        let mounts = self.workspace.as_ref().map(|(ws, ro)| match ws {
            Workspace::Host(dir) => vec![Mount {
                target: Some(WORKSPACE_DIR.into()),
                source: Some(dir.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(*ro),
                bind_options: Some(MountBindOptions {
                    propagation: Some(bollard::models::MountBindOptionsPropagationEnum::RPRIVATE),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            // The scope's volume on this engine; never a host path of the engine's machine.
            Workspace::Volume(name) => vec![Mount {
                target: Some(WORKSPACE_DIR.into()),
                source: Some(name.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(*ro),
                volume_options: Some(MountVolumeOptions { no_copy: Some(false), ..Default::default() }),
                ..Default::default()
            }],
        });
        let host = HostConfig {
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: None,
            privileged: Some(false),
            security_opt: Some(security_opt),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_string(),
                format!("rw,noexec,nosuid,nodev,size={},mode=1777", s.tmpfs_bytes),
            )])),
            network_mode: Some(s.network.clone()),
            pids_limit: Some(s.pids_limit),
            memory: Some(s.memory_bytes),
            memory_swap: Some(s.memory_bytes),
            nano_cpus: Some(s.nano_cpus),
            ulimits: Some(vec![
                ResourcesUlimits { name: Some("nofile".into()), soft: Some(s.nofile), hard: Some(s.nofile) },
                ResourcesUlimits { name: Some("core".into()), soft: Some(0), hard: Some(0) },
            ]),
            // No init: the runner itself is PID 1 (it reaps orphans), so no process a command
            // can reach (same uid, dumpable, like docker-init) holds the protocol pipes.
            init: Some(false),
            ipc_mode: Some("private".into()),
            mounts,
            runtime: s.runtime.clone(),
            log_config: Some(bollard::models::HostConfigLogConfig { typ: Some("none".into()), config: None }),
            ..Default::default()
        };
        let labels = HashMap::from([
            (LABEL_SANDBOX.to_string(), "1".to_string()),
            (LABEL_GATEWAY.to_string(), gateway.to_string()),
            (LABEL_TENANT.to_string(), self.key.tenant.clone()),
            (LABEL_AGENT.to_string(), self.key.agent.clone()),
            (LABEL_SCOPE.to_string(), self.key.scope.clone()),
            (LABEL_CONFIG.to_string(), self.key.config.clone()),
        ]);
        ContainerCreateBody {
            image: Some(self.image_id.clone()),
            user: Some(self.user.clone()),
            // Nothing from the host's environment: the image's PATH is all there is.
            env: Some(vec![]),
            working_dir: Some(WORKSPACE_DIR.into()),
            network_disabled: Some(s.network == "none"),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(false),
            tty: Some(false),
            hostname: Some("sandbox".into()),
            labels: Some(labels),
            host_config: Some(host),
            ..Default::default()
        }
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn call(&self, call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
        self.call_inner(call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_never_run_as_root_or_the_gateways_uid() {
        assert_eq!(sandbox_user(None, 0), Ok(DEFAULT_USER));
        assert_eq!(sandbox_user(None, 1000), Ok(DEFAULT_USER));
        assert_eq!(sandbox_user(Some("4242:4243"), 1000), Ok((4242, 4243)));
        assert_eq!(sandbox_user(Some("4242"), 1000), Ok((4242, 4242)));
        for (user, gateway) in [(None, 65532), (Some("1000:1000"), 1000), (Some("1000"), 1000)] {
            let e = sandbox_user(user, gateway).unwrap_err();
            assert!(e.to_string().contains("gateway's own uid"), "{user:?} under {gateway}: {e}");
        }
        for user in ["0", "0:1000", "1000:0", "x", "1000:y"] {
            assert!(sandbox_user(Some(user), 1000).is_err(), "{user}");
        }
    }

    #[test]
    fn only_a_root_gateway_can_hand_workspaces_over() {
        assert_eq!(handover_problem(0), None);
        let p = handover_problem(1000).unwrap();
        assert!(p.contains("uid 1000") && p.contains("refused"), "{p}");
    }

    #[test]
    fn gateway_labels_differ_by_state_dir() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_ne!(gateway_label(a.path()), gateway_label(b.path()));
        assert_eq!(gateway_label(a.path()), gateway_label(a.path()));
        assert_eq!(gateway_label(a.path()).len(), 16);
    }
}

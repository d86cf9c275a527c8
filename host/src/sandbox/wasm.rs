//! The wasmtime sandbox backend: tools run in the embedded runner module under WASI preview 1.
//!
//! One engine per gateway, the runner compiled once and pre-instantiated, a pooling allocator and
//! a fresh `Store` per call. Every call is bounded by fuel, an epoch deadline, a tokio timeout
//! around the async call (so a guest blocked in a host call is cut off too), memory/table/instance
//! limits and capped output pipes. The guest sees no network, an empty environment and exactly one
//! preopened directory: the workspace of its scope under `<stateDir>/workspaces/<tenant>/`.
//! `exec` stages that name an operator-installed module (`<stateDir>/wasm-modules/<tenant>/<name>.wasm`)
//! run that module with the same limits and the workspace read-only.

use sandbox_runner::protocol::cap_text;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use sandbox_runner::protocol::{self, Access, Failure, Request, RequestLimits, Response, WORKSPACE_DIR};
use sandbox_runner::shell::{self, BUILTINS, Connector, Script};
use tokio::sync::Semaphore;
use wasmtime::{
    Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::{Sandbox, SandboxCall, SandboxError, TenantLocks, ToolOutput, check_call, finish, short, workspace};
use crate::tools::Tool;

/// The runner module, built for `wasm32-wasip1` by `host/build.rs`.
pub static RUNNER_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sandbox-runner.wasm"));

/// Largest linear memory any call may get, whatever the config says.
pub const MAX_MEMORY_BYTES: u64 = 1 << 30;
/// Most table elements a guest may grow a table to.
pub const MAX_TABLE_ELEMENTS: usize = 10_000;
/// Largest operator-installed command module accepted.
pub const MAX_MODULE_BYTES: u64 = 64 << 20;
/// Bytes of a guest's stderr kept.
const STDERR_CAP: usize = 16 << 10;

/// Tunables of the backend; `Default` is what the gateway uses.
#[derive(Debug, Clone)]
pub struct WasmOptions {
    /// Use the pooling instance allocator (and pre-instantiation); off only for comparisons.
    pub pooling: bool,
    /// Calls running at once (pool slots); more wait their turn.
    pub max_concurrent: u32,
    /// Epoch tick: the granularity of the wall-clock deadline and of yielding to other tasks.
    pub tick: Duration,
}

impl Default for WasmOptions {
    fn default() -> Self {
        Self { pooling: true, max_concurrent: 64, tick: Duration::from_millis(5) }
    }
}

/// The wasmtime backend.
pub struct WasmSandbox {
    engine: Engine,
    linker: Linker<State>,
    runner: Module,
    runner_pre: Option<InstancePre<State>>,
    /// The runner came precompiled from `host/build.rs` (not compiled at start).
    precompiled: bool,
    state_dir: PathBuf,
    workspaces: super::Workspaces,
    slots: Semaphore,
    modules: Mutex<HashMap<PathBuf, CachedModule>>,
    tenant_locks: TenantLocks,
    stop_ticker: Arc<AtomicBool>,
}

struct CachedModule {
    stamp: (SystemTime, u64),
    pre: InstancePre<State>,
}

/// Per-call store data.
struct State {
    wasi: WasiP1Ctx,
    limits: Limits,
}

/// Memory/table/instance limits that also remember which one was hit.
struct Limits {
    memory_bytes: usize,
    hit_memory: bool,
    hit_table: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_bytes;
        self.hit_memory |= !ok;
        Ok(ok)
    }
    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let ok = desired <= MAX_TABLE_ELEMENTS;
        self.hit_table |= !ok;
        Ok(ok)
    }
    fn instances(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        4
    }
    fn memories(&self) -> usize {
        1
    }
}

/// What one guest run produced.
struct Run {
    stdout: Vec<u8>,
    stdout_full: bool,
    stderr: Vec<u8>,
    /// `Ok(code)` when the guest exited; `Err(message)` when it trapped for another reason.
    exit: Result<i32, String>,
}

/// Everything a call needs besides the guest to run.
struct CallCtx {
    workspace: Option<(PathBuf, Access)>,
    timeout: Duration,
    fuel: u64,
    memory_bytes: usize,
    max_output: usize,
}

impl WasmSandbox {
    /// Starts the backend for a gateway whose state lives in `state_dir`: builds the engine,
    /// compiles the embedded runner and starts the epoch ticker.
    pub fn new(state_dir: &Path) -> Result<Self, String> {
        Self::with_options(state_dir, WasmOptions::default())
    }

    pub fn with_options(state_dir: &Path, opts: WasmOptions) -> Result<Self, String> {
        // wasmtime is built without its `threads` feature (host/Cargo.toml), so guests cannot
        // use shared memories or atomics-based threads at all; no switch is needed here.
        let mut cfg = super::wasm_engine::config();
        if opts.pooling {
            let n = opts.max_concurrent.max(1) * 2;
            let mut pool = PoolingAllocationConfig::new();
            pool.total_core_instances(n)
                .total_memories(n)
                .total_tables(n)
                .total_stacks(n)
                .max_memory_size(MAX_MEMORY_BYTES as usize)
                .table_elements(MAX_TABLE_ELEMENTS);
            cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&cfg).map_err(|e| format!("cannot start wasmtime: {e}"))?;
        let mut linker: Linker<State> = Linker::new(&engine);
        p1::add_to_linker_async(&mut linker, |s: &mut State| &mut s.wasi)
            .map_err(|e| format!("cannot link WASI: {e}"))?;
        let (runner, precompiled) = match super::precompiled::runner(&engine) {
            Ok(m) => (m, true),
            Err(e) => {
                // Not expected (build.rs used the same settings): compile it here instead.
                tracing::warn!(error = %e, "The precompiled sandbox runner does not fit this engine; compiling it.");
                let m =
                    Module::new(&engine, RUNNER_WASM).map_err(|e| format!("cannot compile the sandbox runner: {e}"))?;
                (m, false)
            }
        };
        let runner_pre = if opts.pooling {
            Some(linker.instantiate_pre(&runner).map_err(|e| format!("cannot prepare the sandbox runner: {e}"))?)
        } else {
            None
        };
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (weak, stop, tick) = (engine.weak(), stop_ticker.clone(), opts.tick);
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
        Ok(Self {
            engine,
            linker,
            runner,
            runner_pre,
            precompiled,
            state_dir: state_dir.to_path_buf(),
            workspaces: super::Workspaces::open(state_dir),
            slots: Semaphore::new(opts.max_concurrent.max(1) as usize),
            modules: Mutex::new(HashMap::new()),
            tenant_locks: TenantLocks::default(),
            stop_ticker,
        })
    }

    /// Whether the runner was loaded precompiled (`sandbox::precompiled`) rather than compiled.
    pub fn runner_is_precompiled(&self) -> bool {
        self.precompiled
    }

    /// The host directory holding every workspace of `tenant`.
    pub fn tenant_root(&self, tenant: &str) -> PathBuf {
        self.workspaces.tenant_root(tenant)
    }

    /// The host directory preopened for a call (see `sandbox::Workspaces`).
    pub fn workspace_dir(&self, call: &SandboxCall) -> Result<PathBuf, SandboxError> {
        self.workspaces.dir(call)
    }

    /// Where an operator installs command module `name` for `tenant`.
    pub fn module_path(&self, tenant: &str, name: &str) -> PathBuf {
        workspace::modules_dir(&self.state_dir, tenant).join(format!("{name}.wasm"))
    }

    async fn call_inner(&self, call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
        check_call(call)?;
        let wasm = &call.settings.wasm;
        let timeout = super::call_timeout(call, wasm.timeout)?;
        let access = super::protocol_access(call.limits.workspace_access.min(call.settings.workspace_access));
        let dir = self.workspace_dir(call)?;
        if access != Access::None {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| SandboxError::Unavailable(format!("cannot create the workspace: {}", e.kind())))?;
        }
        let ctx = CallCtx {
            workspace: (access != Access::None).then_some((dir, access)),
            timeout,
            fuel: wasm.fuel,
            memory_bytes: wasm.memory_bytes.min(MAX_MEMORY_BYTES) as usize,
            max_output: call.limits.max_output_bytes,
        };
        // Calls that may grow the workspace are serialised per tenant, so the quota holds.
        let mutating = access == Access::Rw && matches!(call.tool, Tool::Write | Tool::Edit | Tool::Exec);
        let lock = self.tenant_locks.of(call.tenant.as_str());
        let _guard = if mutating { Some(lock.lock().await) } else { None };
        let quota = mutating.then_some(wasm.disk_quota_bytes);
        let deadline = Instant::now() + timeout;
        let work = async {
            if call.tool == Tool::Exec
                && let Some(cmd) = call.args.get("command").and_then(|c| c.as_str())
                && let Ok(script) = shell::parse(cmd)
                && script.stages().any(|s| self.is_module(call.tenant.as_str(), &s.argv[0]))
            {
                return self.exec_with_modules(call, &script, &ctx, quota).await;
            }
            let resp = self.runner_call(call, call.tool.name(), call.args.clone(), &ctx, quota).await?;
            finish(resp, ctx.max_output, ctx.timeout)
        };
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(r) => r,
            Err(_) => Err(SandboxError::Timeout(timeout)),
        }
    }

    fn is_module(&self, tenant: &str, name: &str) -> bool {
        !BUILTINS.contains(&name) && valid_module_name(name) && self.module_path(tenant, name).is_file()
    }

    /// One request to the runner module.
    async fn runner_call(
        &self,
        call: &SandboxCall,
        tool: &str,
        args: serde_json::Value,
        ctx: &CallCtx,
        quota: Option<u64>,
    ) -> Result<Response, SandboxError> {
        let budget = match quota {
            Some(q) => Some(workspace::remaining_quota(self.tenant_root(call.tenant.as_str()), q).await?),
            None => None,
        };
        let access = ctx.workspace.as_ref().map_or(Access::None, |w| w.1);
        let limits = RequestLimits { max_output_bytes: ctx.max_output as u64, access, disk_budget_bytes: budget };
        // One request per instance: a fresh key for each, and the id is always 1.
        let key = super::channel_key()?;
        let mut input = key.hello();
        input.extend_from_slice(&protocol::encode(&Request::new(1, tool, args, limits)));
        let cap = protocol::max_response_frame(ctx.max_output);
        let run = self.run_guest(None, &["sandbox-runner".to_string()], input, ctx, access, cap).await?;
        match run.exit {
            Ok(0) => {}
            Ok(code) => return Err(SandboxError::Protocol(format!("runner exited with status {code}"))),
            Err(trap) => return Err(SandboxError::Protocol(format!("runner failed: {trap}"))),
        }
        if run.stdout_full {
            return Err(SandboxError::Protocol(format!("runner response exceeds {cap} bytes")));
        }
        key.open(&run.stdout, 1, cap)
            .map_err(|e| SandboxError::Protocol(format!("runner sent an invalid response: {e}")))
    }

    /// Instantiates and runs a guest (the runner when `module` is `None`) with fresh WASI state.
    async fn run_guest(
        &self,
        module: Option<&InstancePre<State>>,
        argv: &[String],
        stdin: Vec<u8>,
        ctx: &CallCtx,
        access: Access,
        stdout_cap: usize,
    ) -> Result<Run, SandboxError> {
        let _permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| SandboxError::Unavailable("the wasm backend is shut down".into()))?;
        let stdout = MemoryOutputPipe::new(stdout_cap);
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        let mut b = WasiCtxBuilder::new();
        // No env, no inherited stdio, no network (WASI's defaults deny sockets and name lookup).
        b.args(argv).stdin(MemoryInputPipe::new(stdin)).stdout(stdout.clone()).stderr(stderr.clone());
        if let Some((dir, _)) = &ctx.workspace {
            let perms = if access == Access::Rw { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            b.preopened_dir(dir, WORKSPACE_DIR, perms)
                .map_err(|e| SandboxError::Unavailable(format!("cannot open the workspace: {e}")))?;
        }
        let state = State {
            wasi: b.build_p1(),
            limits: Limits { memory_bytes: ctx.memory_bytes, hit_memory: false, hit_table: false },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_fuel(ctx.fuel).map_err(|e| SandboxError::Unavailable(format!("cannot set fuel: {e}")))?;
        let deadline = Instant::now() + ctx.timeout;
        store.set_epoch_deadline(1);
        // Each tick: stop at the deadline, otherwise yield so other tasks (tenants) get the thread.
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });
        let instance = match module {
            Some(pre) => pre.instantiate_async(&mut store).await,
            None => match &self.runner_pre {
                Some(pre) => pre.instantiate_async(&mut store).await,
                None => self.linker.instantiate_async(&mut store, &self.runner).await,
            },
        };
        let result = match instance {
            Ok(instance) => match instance.get_typed_func::<(), ()>(&mut store, "_start") {
                Ok(start) => start.call_async(&mut store, ()).await,
                Err(e) => return Ok(failed_run(format!("module has no usable _start export: {e}"))),
            },
            Err(_) if store.data().limits.hit_memory || store.data().limits.hit_table => {
                return Err(SandboxError::Memory);
            }
            Err(e) => return Ok(failed_run(format!("cannot instantiate: {}", short(&e.to_string())))),
        };
        let limits = &store.data().limits;
        let exit = match result {
            Ok(()) => Ok(0),
            Err(e) => {
                if let Some(x) = e.downcast_ref::<I32Exit>() {
                    Ok(x.0)
                } else if let Some(trap) = e.downcast_ref::<Trap>() {
                    match trap {
                        Trap::OutOfFuel => return Err(SandboxError::OutOfFuel),
                        Trap::Interrupt => return Err(SandboxError::Timeout(ctx.timeout)),
                        Trap::StackOverflow => return Err(SandboxError::Memory),
                        _ if limits.hit_memory || limits.hit_table => return Err(SandboxError::Memory),
                        t => Err(format!("trapped: {t}")),
                    }
                } else if limits.hit_memory || limits.hit_table {
                    return Err(SandboxError::Memory);
                } else {
                    Err(short(&e.to_string()))
                }
            }
        };
        let out = stdout.contents();
        Ok(Run { stdout_full: out.len() >= stdout_cap, stdout: out.to_vec(), stderr: stderr.contents().to_vec(), exit })
    }

    /// Compiles (once per file version) a tenant's command module.
    async fn module(&self, tenant: &str, name: &str) -> Result<InstancePre<State>, String> {
        let path = self.module_path(tenant, name);
        let meta = tokio::fs::metadata(&path).await.map_err(|e| format!("{name}: cannot read module: {}", e.kind()))?;
        if meta.len() > MAX_MODULE_BYTES {
            return Err(format!("{name}: module is larger than {MAX_MODULE_BYTES} bytes"));
        }
        let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
        if let Some(c) = self.modules.lock().unwrap_or_else(|p| p.into_inner()).get(&path)
            && c.stamp == stamp
        {
            return Ok(c.pre.clone());
        }
        let (engine, linker, p) = (self.engine.clone(), self.linker.clone(), path.clone());
        let name2 = name.to_string();
        let pre = tokio::task::spawn_blocking(move || -> Result<InstancePre<State>, String> {
            let bytes = std::fs::read(&p).map_err(|e| format!("{name2}: cannot read module: {}", e.kind()))?;
            let m = Module::new(&engine, &bytes)
                .map_err(|e| format!("{name2}: not a valid command module: {}", short(&e.to_string())))?;
            linker.instantiate_pre(&m).map_err(|e| {
                format!("{name2}: module needs imports this sandbox does not offer: {}", short(&e.to_string()))
            })
        })
        .await
        .map_err(|e| format!("{name}: compile task failed: {e}"))??;
        self.modules.lock().unwrap_or_else(|p| p.into_inner()).insert(path, CachedModule { stamp, pre: pre.clone() });
        Ok(pre)
    }

    /// Runs a command line in which some stages are tenant command modules: built-in stages and
    /// all file access go through the runner (quota-checked), module stages run with the
    /// workspace read-only.
    async fn exec_with_modules(
        &self,
        call: &SandboxCall,
        script: &Script,
        ctx: &CallCtx,
        quota: Option<u64>,
    ) -> Result<ToolOutput, SandboxError> {
        let tenant = call.tenant.as_str();
        let mut output = Vec::new();
        let mut code = 0;
        let mut truncated = false;
        let runner = |command: String, stdin: Vec<u8>| {
            let args = serde_json::json!({ "command": command, "stdin": String::from_utf8_lossy(&stdin) });
            async move {
                let r = self.runner_call(call, "exec", args, ctx, quota).await?;
                if r.failure == Some(Failure::Quota) {
                    return Err(SandboxError::Quota);
                }
                Ok::<_, SandboxError>((r.output.into_bytes(), r.exit_code.unwrap_or(i32::from(r.is_error))))
            }
        };
        for p in &script.pipelines {
            match p.connector {
                Connector::And if code != 0 => continue,
                Connector::Or if code == 0 => continue,
                _ => {}
            }
            let mut data = Vec::new();
            for st in &p.stages {
                let name = &st.argv[0];
                if !self.is_module(tenant, name) {
                    let mut cmd: Vec<String> = st.argv.iter().map(|a| shell::quote(a)).collect();
                    if let Some(f) = &st.stdin_from {
                        cmd.push(format!("< {}", shell::quote(f)));
                    }
                    if let Some(r) = &st.stdout_to {
                        cmd.push(format!("{} {}", if r.append { ">>" } else { ">" }, shell::quote(&r.path)));
                    }
                    (data, code) = runner(cmd.join(" "), std::mem::take(&mut data)).await?;
                    continue;
                }
                let input = match &st.stdin_from {
                    Some(f) => {
                        let (d, c) = runner(format!("cat {}", shell::quote(f)), Vec::new()).await?;
                        if c != 0 {
                            (data, code) = (d, c);
                            continue;
                        }
                        d
                    }
                    None => std::mem::take(&mut data),
                };
                let pre = match self.module(tenant, name).await {
                    Ok(pre) => pre,
                    Err(msg) => {
                        (data, code) = (format!("{msg}\n").into_bytes(), 126);
                        continue;
                    }
                };
                let access = if ctx.workspace.is_some() { Access::Ro } else { Access::None };
                let run = self.run_guest(Some(&pre), &st.argv, input, ctx, access, ctx.max_output).await?;
                truncated |= run.stdout_full;
                let mut out = run.stdout;
                out.extend_from_slice(&run.stderr);
                code = match run.exit {
                    Ok(c) => c,
                    Err(msg) => {
                        out.extend_from_slice(format!("{name}: {msg}\n").as_bytes());
                        134
                    }
                };
                if let Some(r) = &st.stdout_to {
                    let op = if r.append { ">>" } else { ">" };
                    let (msg, c) = runner(format!("cat {op} {}", shell::quote(&r.path)), out).await?;
                    out = msg;
                    if c != 0 {
                        code = c;
                    }
                }
                data = out;
            }
            output.extend_from_slice(&data);
        }
        let (text, cut) = cap_text(String::from_utf8_lossy(&output).into_owned(), ctx.max_output);
        Ok(ToolOutput { text, is_error: code != 0, exit_code: Some(code), truncated: truncated || cut })
    }
}

impl Drop for WasmSandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl Sandbox for WasmSandbox {
    fn name(&self) -> &'static str {
        "wasm"
    }

    async fn call(&self, call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
        self.call_inner(call).await
    }
}

fn failed_run(msg: String) -> Run {
    Run { stdout: Vec::new(), stdout_full: false, stderr: Vec::new(), exit: Err(msg) }
}

/// A command module name: `[a-z0-9_-]{1,64}`.
pub fn valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

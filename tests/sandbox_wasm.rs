//! The wasm sandbox backend, attacked from inside: escape attempts by the runner's own tools and by
//! malicious command modules (written as WAT), resource attacks, quotas and argument limits.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead::config::{
    DockerSettings, SandboxBackend, SandboxConfig, SandboxMode, SandboxScope, WasmSettings, WorkspaceAccess,
};
use bulkhead::ids::{AgentId, SessionKey, TenantId};
use bulkhead::sandbox::wasm::WasmSandbox;
use bulkhead::sandbox::{Sandbox, SandboxCall, SandboxError, ToolLimits, ToolOutput};
use bulkhead::tools::Tool;
use serde_json::{Value, json};

struct Env {
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    sb: WasmSandbox,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let sb = WasmSandbox::new(&state).unwrap();
    Env { _dir: dir, state, sb }
}

fn settings() -> SandboxConfig {
    SandboxConfig {
        mode: SandboxMode::All,
        scope: SandboxScope::Agent,
        backend: SandboxBackend::Wasm,
        workspace_access: WorkspaceAccess::Rw,
        wasm: WasmSettings {
            fuel: 2_000_000_000,
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(10),
            disk_quota_bytes: 1 << 20,
        },
        docker: DockerSettings::default(),
    }
}

fn mk(tenant: &str, tool: Tool, args: Value) -> SandboxCall {
    SandboxCall {
        tenant: TenantId::parse(tenant).unwrap(),
        agent: AgentId::parse(&format!("{tenant}-bot")).unwrap(),
        session: SessionKey::parse(&format!("agent:{tenant}-bot:telegram:direct:peer-42")).unwrap(),
        tool,
        args,
        limits: ToolLimits::default(),
        settings: settings(),
    }
}

async fn run(e: &Env, tenant: &str, tool: Tool, args: Value) -> Result<ToolOutput, SandboxError> {
    e.sb.call(&mk(tenant, tool, args)).await
}

async fn sh(e: &Env, tenant: &str, cmd: &str) -> ToolOutput {
    run(e, tenant, Tool::Exec, json!({ "command": cmd })).await.unwrap()
}

/// A secret next to (outside) the state dir, and the agent workspace of tenant `acme`.
fn plant_secret(e: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    let secret = e.state.parent().unwrap().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET").unwrap();
    let ws = e.state.join("workspaces/acme/agents/acme-bot");
    std::fs::create_dir_all(&ws).unwrap();
    (secret, ws)
}

fn install_module(e: &Env, tenant: &str, name: &str, wat: &str) {
    let dir = e.state.join("wasm-modules").join(tenant);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.wasm")), wat::parse_str(wat).unwrap()).unwrap();
}

#[tokio::test]
async fn tools_work_end_to_end() {
    let e = env();
    let w = run(&e, "acme", Tool::Write, json!({"path": "notes/a.txt", "content": "alpha\nbeta\n"})).await.unwrap();
    assert!(!w.is_error, "{w:?}");
    let r = run(&e, "acme", Tool::Read, json!({"path": "notes/a.txt"})).await.unwrap();
    assert_eq!(r.text, "alpha\nbeta\n");
    run(&e, "acme", Tool::Edit, json!({"path": "notes/a.txt", "oldText": "beta", "newText": "gamma"})).await.unwrap();
    assert_eq!(sh(&e, "acme", "cat notes/a.txt | grep -c gamma").await.text, "1\n");
    assert_eq!(run(&e, "acme", Tool::List, json!({})).await.unwrap().text, "notes/");
    let x = sh(&e, "acme", "echo hi | wc -c").await;
    assert_eq!((x.text.as_str(), x.exit_code, x.is_error), ("3\n", Some(0), false));
    assert!(sh(&e, "acme", "python3 -c 1").await.text.contains("command not found"));
    // The workspace is where the docs say it is.
    assert!(e.state.join("workspaces/acme/agents/acme-bot/notes/a.txt").is_file());
}

#[tokio::test]
async fn traversal_and_absolute_paths_fail() {
    let e = env();
    let (secret, _) = plant_secret(&e);
    let abs = secret.display().to_string();
    for p in ["../../../../secret.txt", "/etc/passwd", abs.as_str(), "a/../../x", "/workspace/../secret.txt"] {
        let r = run(&e, "acme", Tool::Read, json!({ "path": p })).await.unwrap();
        assert!(r.is_error && !r.text.contains("TOP-SECRET"), "{p}: {r:?}");
        let w = run(&e, "acme", Tool::Write, json!({ "path": p, "content": "pwned" })).await.unwrap();
        assert!(w.is_error, "{p}: {w:?}");
        let c = sh(&e, "acme", &format!("cat '{p}'")).await;
        assert!(c.is_error && !c.text.contains("TOP-SECRET"), "{p}: {c:?}");
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "TOP-SECRET");
}

#[tokio::test]
async fn symlinks_made_before_the_call_do_not_leave_the_workspace() {
    let e = env();
    let (secret, ws) = plant_secret(&e);
    std::os::unix::fs::symlink(&secret, ws.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../../../../secret.txt", ws.join("rel-link")).unwrap();
    std::os::unix::fs::symlink(secret.parent().unwrap(), ws.join("dir-link")).unwrap();
    for cmd in ["cat abs-link", "cat rel-link", "cat dir-link/secret.txt", "ls dir-link", "cp rel-link copy"] {
        let r = sh(&e, "acme", cmd).await;
        assert!(r.is_error && !r.text.contains("TOP-SECRET"), "{cmd}: {r:?}");
    }
    let r = run(&e, "acme", Tool::Read, json!({"path": "dir-link/secret.txt"})).await.unwrap();
    assert!(r.is_error && !r.text.contains("TOP-SECRET"), "{r:?}");
    let w = run(&e, "acme", Tool::Write, json!({"path": "abs-link", "content": "pwned"})).await.unwrap();
    assert!(w.is_error, "{w:?}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "TOP-SECRET");
}

#[tokio::test]
async fn symlinks_swapped_during_calls_do_not_leave_the_workspace() {
    let e = env();
    let (secret, ws) = plant_secret(&e);
    std::fs::write(ws.join("inside.txt"), "harmless").unwrap();
    let link = ws.join("flip");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, link, secret) = (stop.clone(), link.clone(), secret.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tmp = link.with_extension(format!("tmp{n}"));
                let target: &Path = if n.is_multiple_of(2) { &secret } else { Path::new("inside.txt") };
                let _ = std::os::unix::fs::symlink(target, &tmp);
                let _ = std::fs::rename(&tmp, &link);
                n += 1;
            }
        })
    };
    let mut harmless = 0;
    for _ in 0..60 {
        let r = run(&e, "acme", Tool::Read, json!({"path": "flip"})).await.unwrap();
        assert!(!r.text.contains("TOP-SECRET"), "{r:?}");
        harmless += usize::from(r.text == "harmless");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    assert!(harmless > 0, "the link never resolved inside; the race did not run");
}

#[tokio::test]
async fn hard_links_cannot_reach_outside() {
    let e = env();
    let (secret, ws) = plant_secret(&e);
    let r = sh(&e, "acme", "ln ../../../../../secret.txt stolen").await;
    assert!(r.is_error, "{r:?}");
    std::os::unix::fs::symlink(&secret, ws.join("link")).unwrap();
    let r = sh(&e, "acme", "ln link hard; cat hard").await;
    assert!(!r.text.contains("TOP-SECRET"), "{r:?}");
    assert!(!ws.join("stolen").exists());
}

#[tokio::test]
async fn the_preopens_parent_and_other_tenants_are_unreachable() {
    let e = env();
    run(&e, "acme", Tool::Write, json!({"path": "acme-only.txt", "content": "ACME-DATA"})).await.unwrap();
    let acme_abs = e.state.join("workspaces/acme/agents/acme-bot/acme-only.txt").display().to_string();
    for p in [
        "..",
        "../../acme/agents/acme-bot/acme-only.txt",
        "../../../acme/agents/acme-bot/acme-only.txt",
        "/workspace/../../acme/agents/acme-bot/acme-only.txt",
        acme_abs.as_str(),
    ] {
        let r = run(&e, "globex", Tool::Read, json!({ "path": p })).await.unwrap();
        assert!(r.is_error && !r.text.contains("ACME-DATA"), "{p}: {r:?}");
        let l = run(&e, "globex", Tool::List, json!({ "path": p })).await.unwrap();
        assert!(l.is_error, "{p}: {l:?}");
    }
    let r = sh(&e, "globex", "find / -name *.txt").await;
    assert!(!r.text.contains("acme-only"), "{r:?}");
}

fn probe_wat(paths: &[&str]) -> String {
    // For each path: path_open from the preopen (fd 3), following symlinks; prints D (denied) or A.
    let mut data = String::new();
    let mut calls = String::new();
    let mut off = 1024;
    for p in paths {
        data.push_str(&format!("(data (i32.const {off}) \"{p}\")\n"));
        calls.push_str(&format!("(call $report (call $open (i32.const {off}) (i32.const {})))\n", p.len()));
        off += p.len() + 1;
    }
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_link" (func $link (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "DA")
  (data (i32.const 600) "stolen")
  (data (i32.const 620) "../../../../../secret.txt")
  {data}
  (func $put (param $c i32)
    (i32.store (i32.const 0) (local.get $c)) (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $report (param $errno i32)
    (call $put (select (i32.const 512) (i32.const 513) (local.get $errno))))
  (func $open (param $p i32) (param $l i32) (result i32)
    (call $path_open (i32.const 3) (i32.const 1) (local.get $p) (local.get $l) (i32.const 0)
      (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16)))
  (func (export "_start")
    {calls}
    ;; hard link from outside into the workspace
    (call $report (call $link (i32.const 3) (i32.const 1) (i32.const 620) (i32.const 25) (i32.const 3) (i32.const 600) (i32.const 6)))
    ;; a socket on the preopen: no network capability exists
    (call $report (call $accept (i32.const 3) (i32.const 0) (i32.const 16)))
    ;; no second preopen (fd 4) and no environment
    (call $report (call $prestat (i32.const 4) (i32.const 32)))
    (drop (call $env (i32.const 40) (i32.const 44)))
    (call $report (i32.eqz (i32.load (i32.const 40))))
  ))"#
    )
}

#[tokio::test]
async fn a_malicious_module_cannot_read_outside_see_env_or_use_the_network() {
    let e = env();
    let (secret, ws) = plant_secret(&e);
    std::os::unix::fs::symlink(&secret, ws.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../../../../../", ws.join("up")).unwrap();
    std::fs::write(ws.join("ok.txt"), "fine").unwrap();
    let acme = e.state.join("workspaces/acme/agents/acme-bot/ok.txt").display().to_string();
    let paths = [
        "..",
        "../secret.txt",
        "../../../../../secret.txt",
        "/etc/passwd",
        acme.as_str(),
        "abs-link",
        "up/secret.txt",
        "up",
    ];
    install_module(&e, "globex", "probe", &probe_wat(&paths));
    install_module(&e, "globex", "control", &probe_wat(&["."]));
    let r = sh(&e, "globex", "probe").await;
    assert_eq!(r.text, "D".repeat(paths.len() + 4), "{r:?}");
    // Positive control: the same probe does open things that are inside.
    let c = sh(&e, "globex", "control").await;
    assert!(c.text.starts_with('A'), "{c:?}");
    // Installed for globex only: acme cannot run it.
    install_module(&e, "acme", "probe", &probe_wat(&paths));
    assert_eq!(sh(&e, "acme", "probe").await.text, "D".repeat(paths.len() + 4));
    assert!(sh(&e, "globex", "control | wc -c").await.text.starts_with(&format!("{}", 5)));
}

const LOOP: &str = r#"(module (func (export "_start") (loop $l (br $l))))"#;

#[tokio::test]
async fn an_infinite_loop_is_stopped_by_the_deadline_or_fuel() {
    let e = env();
    install_module(&e, "acme", "spin", LOOP);
    let mut c = mk("acme", Tool::Exec, json!({"command": "spin", "timeoutSec": 1}));
    c.settings.wasm.fuel = 1 << 60;
    let t = Instant::now();
    assert!(matches!(e.sb.call(&c).await, Err(SandboxError::Timeout(_))));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    c.settings.wasm.fuel = 10_000_000;
    assert_eq!(e.sb.call(&c).await, Err(SandboxError::OutOfFuel));
}

#[tokio::test]
async fn a_blocking_host_call_is_cut_off_at_the_deadline() {
    let e = env();
    // poll_oneoff on a one-hour relative clock subscription.
    let sleep = r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (i64.store (i32.const 0) (i64.const 7))
        (i32.store8 (i32.const 8) (i32.const 0))
        (i32.store (i32.const 16) (i32.const 1))
        (i64.store (i32.const 24) (i64.const 3600000000000))
        (i64.store (i32.const 32) (i64.const 0))
        (i32.store16 (i32.const 40) (i32.const 0))
        (drop (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200)))))"#;
    install_module(&e, "acme", "nap", sleep);
    let c = mk("acme", Tool::Exec, json!({"command": "nap", "timeoutSec": 1}));
    let t = Instant::now();
    assert!(matches!(e.sb.call(&c).await, Err(SandboxError::Timeout(_))));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test]
async fn memory_and_table_growth_are_bounded() {
    let e = env();
    install_module(
        &e,
        "acme",
        "grow",
        r#"(module (memory 1) (func (export "_start")
          (loop $l (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable)) (br $l))))"#,
    );
    install_module(
        &e,
        "acme",
        "tables",
        r#"(module (table 1 funcref) (func (export "_start")
          (loop $l (if (i32.eq (table.grow (ref.null func) (i32.const 1000)) (i32.const -1)) (then unreachable))
            (br $l))))"#,
    );
    assert_eq!(run(&e, "acme", Tool::Exec, json!({"command": "grow"})).await, Err(SandboxError::Memory));
    assert_eq!(run(&e, "acme", Tool::Exec, json!({"command": "tables"})).await, Err(SandboxError::Memory));
    // A module declaring more memory than allowed does not start.
    install_module(&e, "acme", "huge", r#"(module (memory 20000) (func (export "_start")))"#);
    let r = run(&e, "acme", Tool::Exec, json!({"command": "huge"})).await;
    assert!(matches!(&r, Err(SandboxError::Memory)) || r.as_ref().is_ok_and(|o| o.is_error), "{r:?}");
}

#[tokio::test]
async fn output_floods_are_capped_and_reported() {
    let e = env();
    install_module(
        &e,
        "acme",
        "flood",
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 2)
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const 65536))
            (loop $l (br_if $l (i32.eqz (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))))"#,
    );
    let r = run(&e, "acme", Tool::Exec, json!({"command": "flood"})).await.unwrap();
    assert!(r.truncated && r.text.len() <= ToolLimits::default().max_output_bytes, "{}", r.text.len());
    run(&e, "acme", Tool::Write, json!({"path": "big", "content": "y\n".repeat(100_000)})).await.unwrap();
    let r = sh(&e, "acme", "cat big big big").await;
    assert!(r.truncated && r.text.len() <= ToolLimits::default().max_output_bytes);
    let r = run(&e, "acme", Tool::Read, json!({"path": "big", "limit": 1000000})).await.unwrap();
    assert!(r.truncated && r.text.len() <= ToolLimits::default().max_output_bytes);
}

#[tokio::test]
async fn writes_past_the_tenant_quota_fail() {
    let e = env();
    let half = "x".repeat(600 << 10);
    run(&e, "acme", Tool::Write, json!({"path": "a", "content": half})).await.unwrap();
    // The quota is per tenant: another scope of the same tenant shares it.
    let mut c = mk("acme", Tool::Write, json!({"path": "b", "content": half}));
    c.settings.scope = SandboxScope::Shared;
    assert_eq!(e.sb.call(&c).await, Err(SandboxError::Quota));
    assert!(!e.state.join("workspaces/acme/shared/b").exists());
    assert_eq!(run(&e, "acme", Tool::Exec, json!({"command": "cat a a > b"})).await, Err(SandboxError::Quota));
    assert_eq!(
        run(&e, "acme", Tool::Exec, json!({"command": "mkdir -p d1/d2/d3/d4/d5 && cp -r d1 e1 && cp a c"})).await,
        Err(SandboxError::Quota)
    );
    // Another tenant is unaffected.
    assert!(!run(&e, "globex", Tool::Write, json!({"path": "b", "content": half})).await.unwrap().is_error);
    // A module's output redirected to a file goes through the same quota.
    install_module(&e, "acme", "control", &probe_wat(&["."]));
    let r = run(&e, "acme", Tool::Exec, json!({"command": "control > out.txt"})).await.unwrap();
    assert!(!r.is_error, "{r:?}");
    assert_eq!(std::fs::read_to_string(e.state.join("workspaces/acme/agents/acme-bot/out.txt")).unwrap(), "ADDDD");
}

#[tokio::test]
async fn nested_or_huge_arguments_are_refused() {
    let e = env();
    let mut deep = json!("x");
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let r = run(&e, "acme", Tool::Write, json!({"path": "a", "content": deep})).await;
    assert!(matches!(r, Err(SandboxError::InvalidArguments(_))), "{r:?}");
    let r = run(&e, "acme", Tool::Write, json!({"path": "a", "content": "x".repeat(2 << 20)})).await;
    assert!(matches!(r, Err(SandboxError::InvalidArguments(_))), "{r:?}");
    let r = run(&e, "acme", Tool::Read, json!({"path": 7})).await;
    assert!(matches!(r, Err(SandboxError::InvalidArguments(_))), "{r:?}");
    let r = run(&e, "acme", Tool::Exec, json!({"command": "echo $(id)"})).await;
    assert!(matches!(r, Err(SandboxError::InvalidArguments(_))), "{r:?}");
    let r = run(&e, "acme", Tool::Exec, json!({"command": "echo", "timeoutSec": -1})).await;
    assert!(matches!(r, Err(SandboxError::InvalidArguments(_))), "{r:?}");
}

#[tokio::test]
async fn read_only_and_session_scopes() {
    let e = env();
    let mut c = mk("acme", Tool::Write, json!({"path": "a", "content": "x"}));
    c.settings.workspace_access = WorkspaceAccess::Ro;
    let r = e.sb.call(&c).await.unwrap();
    assert!(r.is_error && r.text.contains("read-only"), "{r:?}");
    let mut c = mk("acme", Tool::Write, json!({"path": "a", "content": "session"}));
    c.settings.scope = SandboxScope::Session;
    e.sb.call(&c).await.unwrap();
    let sessions = |state: &Path| -> Vec<String> {
        std::fs::read_dir(state.join("workspaces/acme/sessions"))
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let names = sessions(&e.state);
    assert_eq!(names.len(), 1);
    let name = &names[0];
    assert!(!name.contains("peer-42") && name.len() == 32, "{names:?}");
    // Not an unkeyed digest of the session key (a peer id could be brute-forced from it) ...
    let key = c.session.to_string();
    for unkeyed in [&ring::digest::SHA256, &ring::digest::SHA512, &ring::digest::SHA1_FOR_LEGACY_USE_ONLY] {
        let hex: String =
            ring::digest::digest(unkeyed, key.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!hex.contains(name.as_str()) && !name.contains(&hex[..16]), "unkeyed digest: {name}");
    }
    // ... but keyed by a secret of this gateway: stable across restarts, different elsewhere.
    let again = WasmSandbox::new(&e.state).unwrap();
    let mut c2 = mk("acme", Tool::Read, json!({"path": "a"}));
    c2.settings.scope = SandboxScope::Session;
    assert_eq!(again.call(&c2).await.unwrap().text, "session", "a restart finds the session's workspace");
    let other = env();
    other.sb.call(&c).await.unwrap();
    assert_ne!(&sessions(&other.state)[0], name, "the name does not depend on the secret");
    // Per tenant: the same session key in another tenant gets an unrelated name.
    let mut b = c.clone();
    b.tenant = TenantId::parse("bravo").unwrap();
    e.sb.call(&b).await.unwrap();
    let bravo: Vec<String> = std::fs::read_dir(e.state.join("workspaces/bravo/sessions"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_ne!(&bravo[0], name);
    // The secret stays with the host: private, outside every workspace.
    use std::os::unix::fs::PermissionsExt;
    let secret = e.state.join(bulkhead::sandbox::SCOPE_KEY_FILE);
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&secret).unwrap().len(), 32);
}

//! Tool-call latency through the Docker sandbox backend against the real daemon, in one run:
//! cold start (create + attach + start + first result), warm calls over the attached runner
//! (`exec true`, `read` 4 KiB) p50/p99, the same work through `docker exec` (Engine API, as a
//! client would do it without a resident runner) as the baseline, and containers per host: warm
//! containers started one after another until a cold start degrades past 4× the first or the
//! count reaches `BENCH_DOCKER_MAX` (default 40).
//!
//! Run: `images/build.sh && cargo bench -p bulkhead --bench docker_sandbox` (prints Markdown).

use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bulkhead::config::{
    DockerSettings, SandboxBackend, SandboxConfig, SandboxMode, SandboxScope, WasmSettings, WorkspaceAccess,
};
use bulkhead::ids::{AgentId, SessionKey, TenantId};
use bulkhead::sandbox::docker::{self, DockerOptions, DockerSandbox};
use bulkhead::sandbox::{Sandbox, SandboxCall, ToolLimits};
use bulkhead::tools::Tool;
use futures_util::StreamExt;
use serde_json::{Value, json};

fn call(tenant: &str, tool: Tool, args: Value) -> SandboxCall {
    SandboxCall {
        tenant: TenantId::parse(tenant).unwrap(),
        agent: AgentId::parse("bench-bot").unwrap(),
        session: SessionKey::parse("agent:bench-bot:api:direct:u1").unwrap(),
        tool,
        args,
        limits: ToolLimits::default(),
        settings: SandboxConfig {
            mode: SandboxMode::All,
            scope: SandboxScope::Agent,
            backend: SandboxBackend::Docker,
            workspace_access: WorkspaceAccess::Rw,
            wasm: WasmSettings { fuel: 1, memory_bytes: 1 << 20, timeout: Duration::from_secs(1), disk_quota_bytes: 0 },
            docker: DockerSettings { memory_bytes: 128 << 20, ..DockerSettings::default() },
        },
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// One `docker exec` through the Engine API: create, start attached, drain, inspect the exit code.
async fn api_exec(d: &bollard::Docker, id: &str, cmd: &[&str]) {
    let exec = d
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    if let StartExecResults::Attached { mut output, .. } = d.start_exec(&exec.id, None).await.unwrap() {
        while let Some(x) = output.next().await {
            x.unwrap();
        }
    }
    let info = d.inspect_exec(&exec.id).await.unwrap();
    assert_eq!(info.exit_code, Some(0));
}

#[tokio::main]
async fn main() {
    let d = docker::connect(None).await.expect("the Docker daemon must be running");
    docker::check_image(&d, "bulkhead/sandbox:base").await.expect("run images/build.sh first");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let sb = DockerSandbox::start(&state, DockerOptions::default());
    let gateway = sb.gateway().to_string();
    let iters: usize = std::env::var("BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);

    // Cold starts: a new tenant each time (create + attach + start + first `exec true`).
    let mut cold = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        sb.call(&call(&format!("cold{i}"), Tool::Exec, json!({"command": "true"}))).await.unwrap();
        cold.push(t.elapsed());
        sb.remove_tenant(&format!("cold{i}")).await.unwrap();
    }

    let exec_true = call("bench", Tool::Exec, json!({"command": "true"}));
    let page = format!("{}\n", "x".repeat(63)).repeat(64);
    sb.call(&call("bench", Tool::Write, json!({"path": "page.txt", "content": page}))).await.unwrap();
    let read = call("bench", Tool::Read, json!({"path": "page.txt"}));
    let id = sb.container_of(&exec_true).await.unwrap();

    println!("| case | n | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    let mut c = cold.clone();
    println!(
        "| cold start (create+start+first `exec true`) | {} | {} | {} |",
        c.len(),
        ms(pct(&mut c, 0.5)),
        ms(pct(&mut c, 0.99))
    );
    for (label, case) in
        [("warm `exec true` (attached runner)", &exec_true), ("warm `read` 4 KiB (attached runner)", &read)]
    {
        for _ in 0..10 {
            sb.call(case).await.unwrap();
        }
        let mut v = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            let out = sb.call(case).await.unwrap();
            v.push(t.elapsed());
            assert!(!out.is_error);
        }
        println!("| {label} | {iters} | {} | {} |", ms(pct(&mut v, 0.5)), ms(pct(&mut v, 0.99)));
    }
    let base_iters = (iters / 3).max(20);
    for (label, cmd) in [
        ("`docker exec` API: `true`", &["true"][..]),
        ("`docker exec` API: `cat` 4 KiB", &["cat", "/workspace/page.txt"][..]),
    ] {
        let mut v = Vec::with_capacity(base_iters);
        for _ in 0..base_iters {
            let t = Instant::now();
            api_exec(&d, &id, cmd).await;
            v.push(t.elapsed());
        }
        println!("| {label} | {base_iters} | {} | {} |", ms(pct(&mut v, 0.5)), ms(pct(&mut v, 0.99)));
    }

    // Density: warm containers one after another until a cold start degrades or the cap.
    let max: usize = std::env::var("BENCH_DOCKER_MAX").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let first = pct(&mut cold, 0.5);
    let mut n = 0;
    let mut last = Duration::ZERO;
    let t_all = Instant::now();
    while n < max {
        let t = Instant::now();
        sb.call(&call(&format!("dense{n}"), Tool::Exec, json!({"command": "true"}))).await.unwrap();
        last = t.elapsed();
        n += 1;
        if last > first * 4 {
            break;
        }
    }
    let mut warm = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        sb.call(&call(&format!("dense{i}"), Tool::Exec, json!({"command": "true"}))).await.unwrap();
        warm.push(t.elapsed());
    }
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let avail = mem.lines().find(|l| l.starts_with("MemAvailable")).unwrap_or("").to_string();
    println!(
        "\ncontainers per host: {n} warm containers started in {:.1} s (last cold start {} ms); \
         one warm `exec true` across all of them p50 {} ms / p99 {} ms; {avail}",
        t_all.elapsed().as_secs_f64(),
        ms(last),
        ms(pct(&mut warm, 0.5)),
        ms(pct(&mut warm, 0.99)),
    );
    drop(sb);
    let removed = docker::remove_containers(&d, &gateway, None).await.unwrap();
    println!("removed {removed} bench containers");
}

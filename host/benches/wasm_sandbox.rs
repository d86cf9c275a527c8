//! Tool-call latency through the wasm sandbox backend: `read` of 4 KiB, `list`, `exec echo`;
//! cold and warm, p50/p99 and calls/s, pooled + pre-instantiated vs. plain instantiation.
//!
//! Run: `cargo bench -p bulkhead --bench wasm_sandbox` (prints a Markdown table).

use std::time::{Duration, Instant};

use bulkhead::config::{
    DockerSettings, SandboxBackend, SandboxConfig, SandboxMode, SandboxScope, WasmSettings, WorkspaceAccess,
};
use bulkhead::ids::{AgentId, SessionKey, TenantId};
use bulkhead::sandbox::wasm::{WasmOptions, WasmSandbox};
use bulkhead::sandbox::{Sandbox, SandboxCall, ToolLimits};
use bulkhead::tools::Tool;
use serde_json::{Value, json};

fn call(tool: Tool, args: Value) -> SandboxCall {
    SandboxCall {
        tenant: TenantId::parse("bench").unwrap(),
        agent: AgentId::parse("bench-bot").unwrap(),
        session: SessionKey::parse("agent:bench-bot:api:direct:u1").unwrap(),
        tool,
        args,
        limits: ToolLimits::default(),
        settings: SandboxConfig {
            mode: SandboxMode::All,
            scope: SandboxScope::Agent,
            backend: SandboxBackend::Wasm,
            workspace_access: WorkspaceAccess::Rw,
            wasm: WasmSettings {
                fuel: 2_000_000_000,
                memory_bytes: 64 << 20,
                timeout: Duration::from_secs(30),
                disk_quota_bytes: 100 << 20,
            },
            docker: DockerSettings::default(),
        },
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

async fn bench(label: &str, opts: WasmOptions, iters: usize) {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let sb = std::sync::Arc::new(WasmSandbox::with_options(dir.path(), opts).unwrap());
    let startup = t.elapsed();
    let ws = dir.path().join("workspaces/bench/agents/bench-bot");
    std::fs::create_dir_all(&ws).unwrap();

    std::fs::write(ws.join("page.txt"), format!("{}\n", "x".repeat(63)).repeat(64)).unwrap();
    let cases = [
        ("read 4 KiB", call(Tool::Read, json!({"path": "page.txt"}))),
        ("list", call(Tool::List, json!({}))),
        ("exec echo", call(Tool::Exec, json!({"command": "echo hello"}))),
    ];
    println!("\n### {label}\n\nstartup (engine + compile runner): {} ms\n", ms(startup));
    println!("| call | cold (first) ms | warm p50 ms | warm p99 ms | calls/s (4 tasks) |");
    println!("|---|---|---|---|---|");
    for (name, c) in &cases {
        let t = Instant::now();
        let out = sb.call(c).await.unwrap();
        let cold = t.elapsed();
        assert!(!out.is_error, "{name}: {out:?}");
        if *name == "read 4 KiB" {
            assert_eq!(out.text.len(), 4096);
        }
        let mut lat = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            sb.call(c).await.unwrap();
            lat.push(t.elapsed());
        }
        // Throughput: 4 concurrent callers on the runtime's worker threads for ~1.5 s.
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (sb, c) = (sb.clone(), c.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while t.elapsed() < Duration::from_millis(1500) {
                    sb.call(&c).await.unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        let rate = total as f64 / t.elapsed().as_secs_f64();
        println!("| {name} | {} | {} | {} | {rate:.0} |", ms(cold), ms(pct(&mut lat, 0.50)), ms(pct(&mut lat, 0.99)));
    }
}

fn main() {
    let iters = std::env::var("BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("wasm sandbox benchmark: {iters} warm calls per case, 2 worker threads");
    rt.block_on(bench("pooling allocator + InstancePre (gateway default)", WasmOptions::default(), iters));
    rt.block_on(bench(
        "on-demand allocator, Linker::instantiate per call (comparison)",
        WasmOptions { pooling: false, ..WasmOptions::default() },
        iters,
    ));
}

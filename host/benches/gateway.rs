//! Gateway benchmark: the real release binary against a zero-latency fake OpenAI model (one
//! prebuilt SSE reply, written at once, no pauses), driven by a minimal keep-alive HTTP/1.1
//! client (prebuilt requests, `Content-Length` replies), so neither the model nor the client sets
//! the ceiling. One run measures, for the memory-only and the durable (encrypted) store: start
//! time, RSS idle and after load, turns/s and p50/p99 at concurrency 1, 8 and 64 (each request a
//! new conversation), CPU per turn of the gateway (and of this process: the fake and the client),
//! files created per conversation; then start time and RSS with 10,000 tenants configured.
//! Run with `cargo bench -p bulkhead --bench gateway` (`BENCH_TURNS=N` scales the c=8/c=64 runs,
//! `BENCH_DIR` puts the state directories on the disk under test, `BENCH_BIN=A:B` measures the
//! gateway binaries A and B one after the other in the same run, e.g. before and after a change).
//! Figures are in BENCHMARKS.md.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

const TOKEN: &str = "bench-token-5f0c9a3e7b2d4f6a8c1e3b5d7f9a2c4e";

/// The fake model's whole reply: a streamed answer of three chunks, usage, stop, `[DONE]`.
fn sse_reply() -> &'static [u8] {
    static REPLY: OnceLock<Vec<u8>> = OnceLock::new();
    REPLY.get_or_init(|| {
        let chunk = |delta: &str, finish: &str| {
            format!(
                r#"data: {{"id":"c","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#
            ) + "\n\n"
        };
        let mut body = String::new();
        for w in ["fake ", "says ", "pong"] {
            body.push_str(&chunk(&format!(r#"{{"content":"{w}"}}"#), "null"));
        }
        body.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3}}\n\n");
        body.push_str(&chunk("{}", "\"stop\""));
        body.push_str("data: [DONE]\n\n");
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

/// Reads one HTTP/1.1 request or response (headers, then `Content-Length` bytes of body) into
/// `buf`, returning the header text length and the body range. `None` at EOF.
async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(usize, std::ops::Range<usize>)> {
    buf.clear();
    let mut tmp = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).ok()?.to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            let body = end + 4..end + 4 + len;
            while buf.len() < body.end {
                let n = s.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            return Some((end, body));
        }
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// The zero-latency fake model, on its own thread and single-threaded runtime: every request gets
/// the same prebuilt reply in one write.
fn start_fake_model() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                s.set_nodelay(true).unwrap();
                tokio::spawn(async move {
                    let mut buf = Vec::with_capacity(8192);
                    while read_message(&mut s, &mut buf).await.is_some() {
                        if s.write_all(sse_reply()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    });
    format!("http://{addr}/v1")
}

struct Gateway {
    child: Child,
    addr: String,
    started_in: Duration,
    state: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn config(model_base: &str, durable: bool, extra_tenants: usize) -> String {
    // The bench tenant may run 64 turns at once (a tenant's default is 4), so c=64 means 64 turns
    // in flight in the gateway, not 4 running and 60 queued; both store modes get the same.
    let mut tenants =
        r#"{ id: "bench", apiTokens: [ { env: "BENCH_TOKEN" } ], scheduling: { maxConcurrent: 64 } }"#.to_string();
    let mut agents = r#"{ id: "fast", tenant: "bench", model: "fake/bench-model" }"#.to_string();
    for i in 0..extra_tenants {
        // Every tenant its own token (a literal: accepted with a warning).
        tenants.push_str(&format!(r#", {{ id: "t{i}", apiTokens: [ "tok-{i:05}-7c1e9a4f2b6d8e3a5c7f9b1d3e5a" ] }}"#));
        agents.push_str(&format!(r#", {{ id: "agent{i}", tenant: "t{i}" }}"#));
    }
    let store = if durable { r#"{ masterKey: { file: "master.key" } }"# } else { r#"{ mode: "memory" }"# };
    format!(
        r#"{{ gateway: {{ bind: "127.0.0.1:0" }}, stateDir: "state", store: {store},
  models: {{ providers: {{ fake: {{ api: "openai", baseUrl: "{model_base}" }}, scripted: {{ api: "scripted" }} }} }},
  tenants: [ {tenants} ],
  agents: {{ defaults: {{ model: "scripted/scripted", maxConcurrent: 64 }}, list: [ {agents} ] }} }}"#
    )
}

async fn start(bin: &Path, cfg: &str, durable: bool) -> Gateway {
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    if durable {
        let key = dir.path().join("master.key");
        let st = std::process::Command::new(bin)
            .args(["keys", "init", "--out", key.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "keys init failed");
    }
    let t0 = Instant::now();
    let served = common::serve_in(bin, dir, cfg, &[("BENCH_TOKEN", TOKEN)]).await;
    let addr = served.base.trim_start_matches("http://").to_string();
    // Started = the first `/healthz` answered.
    loop {
        if let Ok(mut s) = TcpStream::connect(&addr).await {
            let req = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n");
            let mut buf = Vec::new();
            if s.write_all(req.as_bytes()).await.is_ok() && read_message(&mut s, &mut buf).await.is_some() {
                break;
            }
        }
    }
    let started_in = t0.elapsed();
    let state = served._dir.path().join("state");
    Gateway { child: served.child, addr, started_in, state, _dir: served._dir }
}

/// From `/proc/PID/status`: VmRSS in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process (`/proc/PID/stat` fields 14 and 15), in clock ticks (1/100 s).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Anonymous and file-backed resident memory (`/proc/PID/smaps_rollup`), in MiB.
fn smaps_rollup(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let get = |k: &str| {
        text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
    };
    let (rss, anon) = (get("Rss:").unwrap_or(0), get("Anonymous:").unwrap_or(0));
    format!("anonymous {:.1} MiB, file-backed {:.1} MiB", mib(anon), mib(rss.saturating_sub(anon)))
}

fn files_under(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten().map(|e| if e.path().is_dir() { 1 + files_under(&e.path()) } else { 1 }).sum()
}

/// `total` requests over `concurrency` keep-alive connections, each a new conversation. Returns
/// the sorted latencies and the wall time.
async fn load(addr: &str, run: &str, total: usize, concurrency: usize) -> (Vec<Duration>, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (addr, run, next) = (addr.to_string(), run.to_string(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut lat = Vec::new();
            let mut buf = Vec::with_capacity(8192);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = format!(
                    r#"{{"model":"fast","user":"{run}-{i}","messages":[{{"role":"user","content":"ping"}}]}}"#
                );
                let req = format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let t = Instant::now();
                s.write_all(req.as_bytes()).await.unwrap();
                let (head, _) = read_message(&mut s, &mut buf).await.expect("a reply");
                assert!(buf[..head].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = t0.elapsed();
    all.sort();
    (all, wall)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let scale: usize = std::env::var("BENCH_TURNS").ok().and_then(|v| v.parse().ok()).unwrap_or(16_000);
    let bins: Vec<std::path::PathBuf> = match std::env::var("BENCH_BIN") {
        Ok(v) => v.split(':').map(Into::into).collect(),
        Err(_) => vec![common::bin()],
    };
    let model = start_fake_model();
    // Every state directory is removed only at the end: on ext4 without a journal (this
    // machine's), inodes freed less than a minute before are skipped one by one when new ones
    // are allocated, so deleting one run's 40,000 files slows the next run's file creation.
    let mut kept = Vec::new();
    for bin in &bins {
        println!("== {}", bin.display());
        measure(bin, &model, scale, &mut kept).await;
    }
}

async fn measure(bin: &Path, model: &str, scale: usize, kept: &mut Vec<tempfile::TempDir>) {
    let me = std::process::id().to_string();
    let mut rates = Vec::new();
    for (mode, durable) in [("memory", false), ("durable", true)] {
        let gw = start(bin, &config(model, durable, 0), durable).await;
        let pid = gw.child.id().unwrap();
        // Idle = after the wasm runner is ready (compiled or loaded in the background at start).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = rss_kib(pid);
        let rollup = smaps_rollup(pid);
        println!(
            "[{mode}] start (spawn → /healthz 200) {:.1} ms, RSS idle {:.1} MiB ({rollup})",
            ms(gw.started_in),
            mib(idle)
        );
        let (_, _) = load(&gw.addr, &format!("{mode}-warm"), 500, 8).await;
        let files0 = files_under(&gw.state);
        let mut turns = 500;
        for (c, n) in [(1, scale / 8), (8, scale / 2), (64, scale)] {
            let (g0, b0) = (cpu_ticks(&pid.to_string()), cpu_ticks(&me));
            let (lat, wall) = load(&gw.addr, &format!("{mode}-c{c}"), n, c).await;
            let (g1, b1) = (cpu_ticks(&pid.to_string()), cpu_ticks(&me));
            turns += n;
            let rate = n as f64 / wall.as_secs_f64();
            println!(
                "[{mode}] c={c:<3} n={n:<6} {rate:>8.0} turns/s  p50 {:>7.3} ms  p99 {:>7.3} ms  gateway CPU {:>5.0} µs/turn  (fake model + client {:>4.0} µs/turn)",
                ms(common::pct(&lat, 0.5)),
                ms(common::pct(&lat, 0.99)),
                (g1 - g0) as f64 * 1e4 / n as f64,
                (b1 - b0) as f64 * 1e4 / n as f64,
            );
            rates.push((mode, c, rate));
        }
        let files = files_under(&gw.state);
        println!(
            "[{mode}] RSS idle {:.1} MiB → after {turns} turns {:.1} MiB; files+dirs under the state dir: {} (+{:.2} per new conversation)",
            mib(idle),
            mib(rss_kib(pid)),
            files,
            (files - files0) as f64 / (turns - 500) as f64
        );
        let Gateway { mut child, _dir, .. } = gw;
        let _ = child.kill().await;
        kept.push(_dir);
    }
    for c in [1, 8, 64] {
        let get = |m| rates.iter().find(|r| r.0 == m && r.1 == c).unwrap().2;
        println!("durable / memory at c={c}: {:.0}%", 100.0 * get("durable") / get("memory"));
    }

    let big = start(bin, &config(model, false, 10_000), false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "10,000 tenants configured (memory store): start {:.1} ms, RSS idle {:.1} MiB",
        ms(big.started_in),
        mib(rss_kib(big.child.id().unwrap()))
    );
}

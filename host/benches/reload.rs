//! Reload with 1,000 tenants configured (one drop-in file each, in-process application on
//! loopback, scripted provider, memory store): the time from trigger to applied, and the p50/p99
//! of API requests running continuously while the config is reloaded every 100 ms, against the
//! same load without reloads. Run with `cargo bench -p bulkhead --bench reload`; figures are
//! recorded in BENCHMARKS.md.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bulkhead::app::{App, Source};
use bulkhead::audit::Actor;

const TENANTS: usize = 1000;
const CLIENTS: usize = 4;
const LOAD_FOR: Duration = Duration::from_secs(5);

fn token(i: usize) -> String {
    format!("tok-bench-{i:04}-6f1c9e2b7d4a8f3e5c0b9a7d6e2f1c4b")
}

fn write_site(dir: &Path) {
    std::fs::write(
        dir.join("bulkhead.json5"),
        r#"{ gateway: { bind: "127.0.0.1:0" }, stateDir: "state", store: { mode: "memory" },
             models: { providers: { demo: { api: "scripted" } } },
             agents: { defaults: { model: "demo/scripted" } } }"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("tenants.d")).unwrap();
    for i in 0..TENANTS {
        write_tenant(dir, i, "");
    }
}

fn write_tenant(dir: &Path, i: usize, name: &str) {
    let text = format!(
        r#"{{ tenant: {{ name: "Tenant {i}{name}", apiTokens: ["{}"] }}, agents: [ {{ id: "a{i:04}" }} ] }}"#,
        token(i)
    );
    std::fs::write(dir.join("tenants.d").join(format!("t{i:04}.json5")), text).unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `CLIENTS` clients sending chat turns (each to its own tenant) until `stop`; every latency.
async fn load(base: String, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (base, stop) = (base.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut out = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let t = (c * 97 + n * 13) % TENANTS;
                n += 1;
                let body = serde_json::json!({ "model": format!("a{t:04}"), "user": format!("u{c}"),
                    "messages": [{ "role": "user", "content": "hello" }] });
                let start = Instant::now();
                let r = http
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(token(t))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
                out.push(start.elapsed());
            }
            out
        }));
    }
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    all.sort();
    all
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        write_site(dir.path());
        let path = dir.path().join("bulkhead.json5");
        let loaded = bulkhead::config::load(&path).unwrap();
        let source = Source { watch: false, ..Source::file(&path, &loaded) };
        let app = App::build(loaded.config, source).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop_app, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = {
            let app = app.clone();
            tokio::spawn(async move {
                app.run(listener, async move {
                    let _ = stopped.await;
                })
                .await
            })
        };

        // Trigger → applied: read 1,001 files, check, build the snapshot, swap; each reload
        // renames one tenant so there is a diff to apply.
        let mut took = Vec::new();
        for round in 0..20 {
            write_tenant(dir.path(), round, &format!(" r{round}"));
            let t0 = Instant::now();
            let report = app.reload_from_source(Actor::Cli).await;
            took.push(t0.elapsed());
            assert!(report.applied && report.tenants_changed.len() == 1, "{report:?}");
        }
        took.sort();
        println!(
            "reload, {TENANTS} tenants (1,001 files): trigger → applied p50 {:?}, max {:?} (20 reloads)",
            percentile(&took, 0.5),
            took[took.len() - 1]
        );

        // The same load without and with a reload every 100 ms.
        for reloading in [false, true] {
            let stop = Arc::new(AtomicBool::new(false));
            let running = tokio::spawn(load(base.clone(), stop.clone()));
            let start = Instant::now();
            let mut reloads = 0;
            while start.elapsed() < LOAD_FOR {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if reloading {
                    write_tenant(dir.path(), 999, &format!(" l{reloads}"));
                    assert!(app.reload_from_source(Actor::Cli).await.applied);
                    reloads += 1;
                }
            }
            stop.store(true, Ordering::Relaxed);
            let lat = running.await.unwrap();
            println!(
                "{CLIENTS} clients, chat turns for {LOAD_FOR:?}, {}: {} requests, p50 {:?}, p99 {:?}",
                if reloading { format!("{reloads} reloads (every 100 ms)") } else { "no reloads".into() },
                lat.len(),
                percentile(&lat, 0.5),
                percentile(&lat, 0.99)
            );
        }
        stop_app.send(()).unwrap();
        serving.await.unwrap().unwrap();
    });
}

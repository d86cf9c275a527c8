//! Shared by the benchmark programs that drive the real binary: start `serve` on a config.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running gateway: the child (killed on drop), its base URL, and the directory holding its
/// config and state.
pub struct Served {
    pub child: Child,
    pub base: String,
    pub _dir: tempfile::TempDir,
}

/// The gateway binary: this build's.
pub fn bin() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_bulkhead").into()
}

/// Writes `config` to a fresh directory, starts `bulkhead serve` on it with `env`, and returns
/// once the gateway has printed its listening line.
// Not every bench uses the default directory.
#[allow(dead_code)]
pub async fn serve(config: &str, env: &[(&str, &str)]) -> Served {
    serve_in(&bin(), tempfile::tempdir().unwrap(), config, env).await
}

/// [`serve`] of gateway binary `bin` in a directory the caller made (and may have put files in, a
/// master key say).
// Not every bench needs its own directory.
#[allow(dead_code)]
pub async fn serve_in(bin: &std::path::Path, dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Served {
    let path = dir.path().join("bench.json5");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(bin)
        .args(["serve", "--config", path.to_str().unwrap()])
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("listening line");
    let base = line.trim_start_matches("listening on ").to_string();
    Served { child, base, _dir: dir }
}

/// The `p` quantile of sorted latencies.
// Not every bench reports latencies.
#[allow(dead_code)]
pub fn pct(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Prints p50, p90 and p99 of `lat` (in ms) under `what`.
#[allow(dead_code)]
pub fn report(what: &str, mut lat: Vec<std::time::Duration>) {
    lat.sort();
    println!(
        "{what} ({} turns): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.9).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3
    );
}

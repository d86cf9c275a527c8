//! Hostile config files through the real binary: `bulkhead config check` on 200,000 nested `[`
//! (once a stack overflow, exit 134) and on 100,000 agents with one bad binding (once 13 s: the
//! cross-checks were quadratic). Both must answer exit 2 in well under a second. Run with
//! `cargo bench -p bulkhead --bench config` (or `--profile dev` for a debug build). Figures are
//! recorded in BENCHMARKS.md.

use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// Median wall time of `config check` on `text` over `runs`, and its exit code.
fn check(text: &str, runs: usize) -> (Duration, i32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.json5");
    std::fs::write(&path, text).unwrap();
    let mut times = Vec::new();
    let mut code = -1;
    for _ in 0..runs {
        let t0 = Instant::now();
        let out = Command::new(BIN).args(["config", "check", path.to_str().unwrap()]).output().unwrap();
        times.push(t0.elapsed());
        code = out.status.code().unwrap_or(-1);
    }
    times.sort();
    (times[times.len() / 2], code)
}

fn agents(n: usize) -> String {
    let list: Vec<String> = (0..n).map(|i| format!("{{ id: \"agent-{i}\" }}")).collect();
    format!(
        "{{ agents: {{ list: [ {} ] }}, bindings: [ {{ agentId: \"ghost\", match: {{ channel: \"telegram\" }} }} ] }}",
        list.join(", ")
    )
}

fn main() {
    let runs = 5;
    let (t, code) = check("{ agents: { list: [ { id: \"a\" } ] } }", runs);
    println!("baseline (one agent): {t:?} median of {runs}, exit {code}");
    let (t, code) = check(&format!("{{ agents: {}", "[".repeat(200_000)), runs);
    println!("200,000 nested `[`: {t:?} median of {runs}, exit {code}");
    for n in [10_000, 100_000] {
        let (t, code) = check(&agents(n), runs);
        println!("{n} agents + one bad binding: {t:?} median of {runs}, exit {code}");
    }
}

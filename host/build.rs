//! Builds the sandbox runner for `wasm32-wasip1` so the host can embed it (`include_bytes!`),
//! then compiles it to native code for the target with the gateway's own engine settings
//! (`src/sandbox/wasm_engine.rs`), so the gateway loads it without running Cranelift
//! (`sandbox::precompiled`).
//!
//! The runner is built by a nested `cargo build` into its own target directory
//! (`<target>/runner-wasm`), so it never waits on the outer build's lock. Set
//! `BULKHEAD_RUNNER_WASM=/path/to/sandbox-runner.wasm` to embed a prebuilt module instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "src/sandbox/wasm_engine.rs"]
mod wasm_engine;

fn main() {
    println!("cargo:rerun-if-changed=src/sandbox/wasm_engine.rs");
    // Relative relocations packed (DT_RELR, glibc 2.36+, binutils 2.38+): the loader reads a few
    // KiB at start instead of 1.4 MB of `.rela.dyn` (pages that stayed resident for nothing).
    if env::var("TARGET").is_ok_and(|t| t.ends_with("-linux-gnu")) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let wasm = out.join("sandbox-runner.wasm");
    build_runner(&wasm);
    precompile(&wasm, &out.join("sandbox-runner.cwasm"));
}

/// `Engine::precompile_module` of the runner for the target being built.
fn precompile(wasm: &Path, dest: &Path) {
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let mut cfg = wasm_engine::config();
    cfg.target(&target).unwrap_or_else(|e| panic!("wasmtime cannot compile for {target}: {e}"));
    let engine = wasmtime::Engine::new(&cfg).unwrap_or_else(|e| panic!("cannot start wasmtime: {e}"));
    let bytes = std::fs::read(wasm).unwrap_or_else(|e| panic!("cannot read {}: {e}", wasm.display()));
    let native = engine.precompile_module(&bytes).unwrap_or_else(|e| panic!("cannot precompile the runner: {e}"));
    std::fs::write(dest, native).unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
}

fn build_runner(dest: &Path) {
    println!("cargo:rerun-if-changed=../sandbox-runner/src");
    println!("cargo:rerun-if-changed=../sandbox-runner/Cargo.toml");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    println!("cargo:rerun-if-env-changed=BULKHEAD_RUNNER_WASM");
    let out = dest.parent().expect("OUT_DIR").to_path_buf();
    if let Some(prebuilt) = env::var_os("BULKHEAD_RUNNER_WASM") {
        copy(Path::new(&prebuilt), dest);
        return;
    }
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>/out; the target root holds CACHEDIR.TAG.
    let target_dir = out
        .ancestors()
        .find(|a| a.join("CACHEDIR.TAG").is_file())
        .map(|t| t.join("runner-wasm"))
        .unwrap_or_else(|| out.join("runner-wasm"));
    let manifest = Path::new(&env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("../sandbox-runner/Cargo.toml");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--bin", "sandbox-runner", "--target", "wasm32-wasip1"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    // Settings of the outer build (clippy's wrapper, host rustflags, a forced target) must not leak in.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_LLVM_COV",
        "RUSTC_BOOTSTRAP",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output().unwrap_or_else(|e| panic!("cannot run cargo to build the sandbox runner: {e}"));
    if !output.status.success() {
        panic!(
            "building the sandbox runner for wasm32-wasip1 failed (is the target installed? `rustup target add \
             wasm32-wasip1`; or set BULKHEAD_RUNNER_WASM to a prebuilt module):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    copy(&target_dir.join("wasm32-wasip1/release/sandbox-runner.wasm"), dest);
}

fn copy(from: &Path, to: &Path) {
    if let Err(e) = std::fs::copy(from, to) {
        panic!("cannot copy the sandbox runner module {}: {e}", from.display());
    }
}

//! The sandbox runner, precompiled to native code by `host/build.rs` and embedded, so the gateway
//! never runs Cranelift for it (no compile time at start, none of the compiler's memory after).
//! This is the crate's only module that may use `unsafe` (one call, below): its declaration in
//! `sandbox/mod.rs` is the crate's only `allow(unsafe_code)`.

use wasmtime::{Engine, Module};

/// `Engine::precompile_module` of the runner, under `sandbox::wasm_engine::config()`.
static RUNNER_CWASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sandbox-runner.cwasm"));

/// Loads the precompiled runner into `engine`; an error when the artifact does not match the
/// engine (then the caller compiles the runner instead).
pub fn runner(engine: &Engine) -> wasmtime::Result<Module> {
    // SAFETY: `Module::deserialize` trusts its bytes to be native code made by wasmtime's own
    // compiler; it must never see bytes an attacker could choose. These bytes are not read at run
    // time from anywhere: `host/build.rs` produced them with `Engine::precompile_module` of this
    // wasmtime version from the runner it built from this repository's source, and `include_bytes!`
    // put them inside this binary, so whoever can change them can change the binary itself.
    // `deserialize` also checks them against `engine` (wasmtime version, target, Cranelift flags,
    // wasm features and every compile-relevant tunable) and returns an error on any mismatch.
    unsafe { Module::deserialize(engine, RUNNER_CWASM) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_gateway_loads_the_runner_build_rs_compiled_instead_of_compiling_it() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = crate::sandbox::wasm::WasmSandbox::new(dir.path()).unwrap();
        assert!(sandbox.runner_is_precompiled(), "the embedded artifact does not match the gateway's engine");
    }
}

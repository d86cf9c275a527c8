//! The compile-relevant settings of the sandbox's wasmtime engine, in one place because two
//! programs build an engine from them: `host/build.rs`, which precompiles the embedded runner, and
//! the gateway (`sandbox::wasm`), which loads that artifact. `Module::deserialize` refuses an
//! artifact compiled under any other setting, so the two can never drift apart silently.

/// The engine config without the instance allocator (a runtime-only choice).
pub fn config() -> wasmtime::Config {
    let mut cfg = wasmtime::Config::new();
    cfg.consume_fuel(true).epoch_interruption(true).max_wasm_stack(1 << 20).memory_init_cow(true);
    cfg
}

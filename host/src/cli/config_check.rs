//! `bulkhead config check [PATH] [--json]`: validates a config and reports every error at once.

use serde_json::json;

use super::{ConfigSource, EXIT_INVALID, EXIT_OK};

pub fn run(source: &ConfigSource, as_json: bool) -> i32 {
    // Policy files referenced by the config are part of it (their cases included): load and
    // check them too. A config that names no store is valid, but `serve` refuses it: say so.
    let result = source.load(false).and_then(|mut c| {
        let error = |path: &str, message: String| crate::config::ConfigError {
            path: path.into(),
            line: None,
            column: None,
            message,
        };
        let mut errors = Vec::new();
        if let Err(e) = c.store.require_mode() {
            c.warnings.push(format!("store: {e}; `serve` refuses to start"));
        }
        match crate::policy::PolicyEngine::load(&c) {
            Ok(engine) => c.warnings.extend(engine.warnings()),
            Err(es) => errors.extend(es.into_iter().map(|m| error("policies", m))),
        }
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(crate::config::LoadError { source: source.path.display().to_string(), errors })
        }
    });
    let shown = source.path.display().to_string();
    match (result, as_json) {
        (Ok(c), false) => {
            outln!(
                "{shown}: ok ({} tenant(s), {} agent(s), {} binding(s))",
                c.tenants.len(),
                c.agents.len(),
                c.bindings.len()
            );
            for w in &c.warnings {
                outln!("warning: {w}");
            }
            EXIT_OK
        }
        (Ok(c), true) => {
            outln!("{}", json!({ "path": shown, "valid": true, "errors": [], "warnings": c.warnings }));
            EXIT_OK
        }
        (Err(e), false) => {
            super::report_load_error(&e);
            EXIT_INVALID
        }
        (Err(e), true) => {
            outln!("{}", json!({ "path": shown, "valid": false, "errors": e.errors, "warnings": [] }));
            EXIT_INVALID
        }
    }
}

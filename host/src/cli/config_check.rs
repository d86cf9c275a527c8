//! `bulkhead config check [PATH] [--json]`: validates a config and reports every error at once.

use serde_json::json;

use super::{ConfigSource, EXIT_INVALID, EXIT_OK};

pub fn run(source: &ConfigSource, as_json: bool) -> i32 {
    // Policy files referenced by the config are part of it: load and check them too.
    let result = source.load(false).and_then(|c| match crate::policy::PolicyEngine::load(&c) {
        Ok(_) => Ok(c),
        Err(errors) => Err(crate::config::LoadError {
            source: source.path.display().to_string(),
            errors: errors
                .into_iter()
                .map(|message| crate::config::ConfigError {
                    path: "policies".into(),
                    line: None,
                    column: None,
                    message,
                })
                .collect(),
        }),
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

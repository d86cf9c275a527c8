//! `bulkhead config check [PATH] [--json]`: validates a config with its drop-in tenant files
//! and runs the start-up checks `serve` runs (`app::check`: secrets resolve, tokens strong and
//! unique, policy files load and pass their cases, TLS files load, every enabled channel has an
//! adapter, the store is named), reporting every error at once. What it accepts, `serve` starts.

use serde_json::json;

use super::{ConfigSource, EXIT_INVALID, EXIT_OK};
use crate::config::{ConfigError, LoadError};

/// A start-up check's message (`<key path>: <problem>`) as a config error.
fn check_error(message: String) -> ConfigError {
    match message.split_once(": ") {
        Some((path, rest)) => ConfigError::at(path, rest),
        None => ConfigError::at("", message),
    }
}

pub fn run(source: &ConfigSource, as_json: bool) -> i32 {
    let result = source.load(false).and_then(|mut c| match crate::app::check(&c) {
        Ok(checked) => {
            c.warnings = checked.warnings;
            Ok(c)
        }
        Err(errors) => Err(LoadError {
            source: source.path.display().to_string(),
            errors: errors.into_iter().map(check_error).collect(),
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
            for w in crate::config::summarize_warnings(&c.warnings) {
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

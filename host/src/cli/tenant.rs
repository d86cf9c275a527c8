//! `bulkhead tenant ...`: the tenant data lifecycle.

use super::{ConfigSource, EXIT_INVALID, EXIT_OK};

/// `tenant list`: tenants with their agents and token counts (never the tokens).
pub fn list(source: &ConfigSource, as_json: bool) -> i32 {
    let config = match source.load(true) {
        Ok(c) => c,
        Err(e) => {
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    let rows: Vec<serde_json::Value> = config
        .tenants
        .values()
        .map(|t| {
            let agents: Vec<&str> = config.agents.iter().filter(|a| a.tenant == t.id).map(|a| a.id.as_str()).collect();
            serde_json::json!({ "id": t.id.as_str(), "name": t.name, "agents": agents, "apiTokens": t.api_tokens.len() })
        })
        .collect();
    if as_json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for r in rows {
            println!(
                "{}\t{}\tagents: {}\ttokens: {}",
                r["id"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or(""),
                r["agents"],
                r["apiTokens"]
            );
        }
    }
    EXIT_OK
}

//! `bulkhead usage [--tenant ID] [--since YYYY-MM-DD] [--json]`: usage per tenant and agent,
//! for billing. Reads `<stateDir>/usage/` (safe while the gateway runs: files are replaced
//! atomically); what the gateway has not flushed yet (at most `usage::FLUSH_INTERVAL`) is not shown.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::ids::TenantId;
use crate::usage::{Counters, Day, TenantUsage, UsageMeter};

pub fn run(source: &ConfigSource, tenant: Option<&str>, since: Option<&str>, json: bool) -> i32 {
    let tenant = match tenant.map(TenantId::parse).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: invalid tenant id {:?}: {e}", tenant.unwrap_or_default());
            return EXIT_INVALID;
        }
    };
    let since = match since.map(Day::parse).transpose() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: --since: {e}");
            return EXIT_INVALID;
        }
    };
    let config = match source.load(false) {
        Ok(c) => c,
        Err(e) => {
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    let meter = match UsageMeter::open(&UsageMeter::dir_in(&config.state_dir)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    // A tenant removed from the config keeps its recorded usage: it is still billable.
    let tenants: BTreeSet<TenantId> = match tenant {
        Some(t) => [t].into(),
        None => config.tenants.keys().cloned().chain(meter.tenants()).collect(),
    };
    let reports: Vec<TenantUsage> = tenants.iter().map(|t| meter.tenant_usage(t, since)).collect();
    if json {
        let v = serde_json::json!({ "since": since.map(|d| d.to_string()), "tenants": reports });
        outln!("{}", serde_json::to_string_pretty(&v).expect("usage serialises"));
    } else {
        out!("{}", table(&reports));
    }
    EXIT_OK
}

fn row(out: &mut String, tenant: &str, agent: &str, c: &Counters) {
    let tools: Vec<String> = c.tool_calls.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        out,
        "{tenant:<16} {agent:<16} {:>6} {:>6} {:>10} {:>10} {:>9.1} {:>7} {:>8}  {}",
        c.runs,
        c.runs_failed,
        c.input_tokens,
        c.output_tokens,
        c.sandbox_ms as f64 / 1000.0,
        c.denials,
        c.quota_refusals + c.busy_refusals,
        if tools.is_empty() { "-".to_string() } else { tools.join(",") },
    );
}

/// The human-readable report: one line per agent and a total per tenant.
fn table(reports: &[TenantUsage]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:>6} {:>6} {:>10} {:>10} {:>9} {:>7} {:>8}  tool calls",
        "TENANT", "AGENT", "RUNS", "FAILED", "TOKENS IN", "TOKENS OUT", "SANDBOX S", "DENIED", "REFUSED"
    );
    for r in reports {
        for (agent, c) in &r.agents {
            row(&mut out, &r.tenant, agent, c);
        }
        row(&mut out, &r.tenant, "(total)", &r.total);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_agents_and_a_total() {
        let mut c = Counters { runs: 3, input_tokens: 33, sandbox_ms: 1500, ..Default::default() };
        c.tool_call("exec");
        let r = TenantUsage {
            tenant: "acme".into(),
            since: None,
            total: c.clone(),
            agents: [("bot".to_string(), c)].into(),
        };
        let t = table(&[r]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].starts_with("acme") && lines[1].contains("bot") && lines[1].contains("exec=1"), "{t}");
        assert!(lines[2].contains("(total)") && lines[2].contains("1.5"), "{t}");
    }
}

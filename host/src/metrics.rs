//! Per-tenant counters, rendered as Prometheus text for the operator. Labels are tenant ids
//! only (a known, bounded set): never sessions or users.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::ids::TenantId;

#[derive(Default, Clone, Copy)]
struct TenantCounters {
    runs: u64,
    runs_failed: u64,
    runs_refused: u64,
    tool_calls_ok: u64,
    tool_calls_failed: u64,
}

#[derive(Default)]
pub struct Metrics {
    tenants: Mutex<BTreeMap<TenantId, TenantCounters>>,
    auth_failures: std::sync::atomic::AtomicU64,
}

impl Metrics {
    fn with(&self, tenant: &TenantId, f: impl FnOnce(&mut TenantCounters)) {
        let mut map = self.tenants.lock().expect("metrics lock");
        match map.get_mut(tenant) {
            Some(c) => f(c),
            None => f(map.entry(tenant.clone()).or_default()),
        }
    }
    pub fn run_started(&self, tenant: &TenantId) {
        self.with(tenant, |c| c.runs += 1);
    }
    pub fn run_failed(&self, tenant: &TenantId) {
        self.with(tenant, |c| c.runs_failed += 1);
    }
    pub fn run_refused(&self, tenant: &TenantId) {
        self.with(tenant, |c| c.runs_refused += 1);
    }
    pub fn tool_call(&self, tenant: &TenantId, ok: bool) {
        self.with(tenant, |c| if ok { c.tool_calls_ok += 1 } else { c.tool_calls_failed += 1 });
    }
    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let map = self.tenants.lock().expect("metrics lock").clone();
        let mut out = String::new();
        let mut family = |name: &str, help: &str, get: fn(&TenantCounters) -> u64, extra: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (t, c) in &map {
                let _ = writeln!(out, "{name}{{tenant=\"{t}\"{extra}}} {}", get(c));
            }
        };
        family("gateway_runs_total", "Agent runs started.", |c| c.runs, "");
        family("gateway_runs_failed_total", "Agent runs that ended in an error.", |c| c.runs_failed, "");
        family(
            "gateway_runs_refused_total",
            "Turns refused because the tenant's queue was full.",
            |c| c.runs_refused,
            "",
        );
        family("gateway_tool_calls_total", "Tool calls that succeeded.", |c| c.tool_calls_ok, ",outcome=\"ok\"");
        family(
            "gateway_tool_calls_failed_total",
            "Tool calls denied or failed.",
            |c| c.tool_calls_failed,
            ",outcome=\"error\"",
        );
        let _ = writeln!(
            out,
            "# HELP gateway_auth_failures_total Rejected API tokens.\n# TYPE gateway_auth_failures_total counter\ngateway_auth_failures_total {}",
            self.auth_failures.load(std::sync::atomic::Ordering::Relaxed)
        );
        out
    }
}

//! Per-tenant counters and gauges plus process metrics, rendered as Prometheus text for the
//! operator. The only labels are tenant ids (a known, bounded set), the quota kind and the
//! histogram bucket (fixed sets): never sessions, users or tool names a model made up.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ids::TenantId;
use crate::quota::QuotaKind;
use crate::scheduler::Scheduler;

/// Audit records that could not be written (any log), since the process started. Process-wide:
/// the audit writer runs beside every runtime and has no handle on one.
static AUDIT_WRITE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Counts an audit record that could not be written (called by the audit writer).
pub fn audit_write_failed() {
    AUDIT_WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
}

/// Every metric family `/metrics` serves (the observability kit in `ops/` is checked against it).
pub const FAMILIES: &[&str] = &[
    "gateway_runs_total",
    "gateway_runs_failed_total",
    "gateway_runs_refused_total",
    "gateway_tool_calls_total",
    "gateway_tool_calls_failed_total",
    "gateway_tool_denials_total",
    "gateway_model_input_tokens_total",
    "gateway_model_output_tokens_total",
    "gateway_sandbox_starts_total",
    "gateway_sandbox_failures_total",
    "gateway_channel_notices_refused_total",
    "gateway_quota_refusals_total",
    "gateway_queue_wait_seconds",
    "gateway_auth_failures_total",
    "gateway_reloads_total",
    "gateway_audit_write_failures_total",
    "gateway_runs_running",
    "gateway_queue_depth",
    "gateway_docker_engine_up",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
    "process_uptime_seconds",
];

/// Upper bounds (seconds) of the queue-wait histogram buckets.
const WAIT_BUCKETS: [f64; 13] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Default, Clone, Copy)]
struct TenantCounters {
    runs: u64,
    runs_failed: u64,
    runs_refused: u64,
    tool_calls_ok: u64,
    tool_calls_failed: u64,
    tool_denials: u64,
    input_tokens: u64,
    output_tokens: u64,
    quota_refusals: [u64; 4],
    sandbox_starts: u64,
    sandbox_failures: u64,
    channel_notices_refused: u64,
    /// Cumulative counts per `WAIT_BUCKETS` bound (plus +Inf = `wait_count`).
    wait_buckets: [u64; WAIT_BUCKETS.len()],
    wait_count: u64,
    wait_sum: f64,
}

/// Each Docker engine's name and whether its last health check found it up.
pub type EnginesProbe = std::sync::Arc<dyn Fn() -> Vec<(String, bool)> + Send + Sync>;

pub struct Metrics {
    tenants: Mutex<BTreeMap<TenantId, TenantCounters>>,
    /// With `sandbox.docker.engines`: asked at every scrape.
    engines: Mutex<Option<EnginesProbe>>,
    auth_failures: AtomicU64,
    reloads_applied: AtomicU64,
    reloads_refused: AtomicU64,
    started: Instant,
    started_unix: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::for_tenants([])
    }
}

fn quota_index(kind: QuotaKind) -> usize {
    QuotaKind::ALL.iter().position(|k| *k == kind).expect("every kind is listed")
}

impl Metrics {
    /// Metrics with every configured tenant present from the start (at zero).
    pub fn for_tenants<'a>(tenants: impl IntoIterator<Item = &'a TenantId>) -> Self {
        Self {
            tenants: Mutex::new(tenants.into_iter().map(|t| (t.clone(), TenantCounters::default())).collect()),
            engines: Mutex::new(None),
            auth_failures: AtomicU64::new(0),
            reloads_applied: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            started: Instant::now(),
            started_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        }
    }

    /// Applies a reloaded config: series of tenants still configured keep their counts, new
    /// tenants appear at zero, removed tenants' series go (their runs in flight count no more).
    pub fn update<'a>(&self, tenants: impl IntoIterator<Item = &'a TenantId>) {
        let keep: std::collections::BTreeSet<&TenantId> = tenants.into_iter().collect();
        let mut map = self.tenants.lock().expect("metrics lock");
        map.retain(|t, _| keep.contains(t));
        for t in keep {
            map.entry(t.clone()).or_default();
        }
    }

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
    pub fn tool_denied(&self, tenant: &TenantId) {
        self.with(tenant, |c| c.tool_denials += 1);
    }
    pub fn tokens(&self, tenant: &TenantId, input: u64, output: u64) {
        self.with(tenant, |c| {
            c.input_tokens += input;
            c.output_tokens += output;
        });
    }
    pub fn quota_refused(&self, tenant: &TenantId, kind: QuotaKind) {
        self.with(tenant, |c| c.quota_refusals[quota_index(kind)] += 1);
    }
    pub fn sandbox_call(&self, tenant: &TenantId, failed: bool) {
        self.with(tenant, |c| {
            c.sandbox_starts += 1;
            c.sandbox_failures += u64::from(failed);
        });
    }
    /// How long a turn waited for its run slot.
    pub fn queue_wait(&self, tenant: &TenantId, waited: Duration) {
        let secs = waited.as_secs_f64();
        self.with(tenant, |c| {
            for (i, bound) in WAIT_BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    c.wait_buckets[i] += 1;
                }
            }
            c.wait_count += 1;
            c.wait_sum += secs;
        });
    }
    /// A chat notice (pairing code, greeting) refused because the bot's outbound queue was full.
    pub fn channel_notice_refused(&self, tenant: &TenantId) {
        self.with(tenant, |c| c.channel_notices_refused += 1);
    }
    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }
    /// A config reload applied or refused (every trigger: admin API, signal, file watcher).
    pub fn reload(&self, applied: bool) {
        let c = if applied { &self.reloads_applied } else { &self.reloads_refused };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Queue-wait observations of a tenant so far: (count, total seconds).
    pub fn queue_wait_total(&self, tenant: &TenantId) -> (u64, f64) {
        let map = self.tenants.lock().expect("metrics lock");
        map.get(tenant).map_or((0, 0.0), |c| (c.wait_count, c.wait_sum))
    }

    /// Counters only (no scheduler gauges, no process metrics).
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
        family("gateway_tool_denials_total", "Tool calls the policy denied.", |c| c.tool_denials, "");
        family("gateway_model_input_tokens_total", "Model input (prompt) tokens.", |c| c.input_tokens, "");
        family("gateway_model_output_tokens_total", "Model output (completion) tokens.", |c| c.output_tokens, "");
        family("gateway_sandbox_starts_total", "Sandbox tool calls started.", |c| c.sandbox_starts, "");
        family(
            "gateway_sandbox_failures_total",
            "Sandbox tool calls the backend could not run.",
            |c| c.sandbox_failures,
            "",
        );
        family(
            "gateway_channel_notices_refused_total",
            "Chat notices (pairing codes, greetings) refused because a bot's outbound queue was full.",
            |c| c.channel_notices_refused,
            "",
        );
        let _ = writeln!(
            out,
            "# HELP gateway_quota_refusals_total Turns or tool calls refused by a quota.\n# TYPE gateway_quota_refusals_total counter"
        );
        for (t, c) in &map {
            for kind in QuotaKind::ALL {
                let _ = writeln!(
                    out,
                    "gateway_quota_refusals_total{{tenant=\"{t}\",quota=\"{}\"}} {}",
                    kind.label(),
                    c.quota_refusals[quota_index(kind)]
                );
            }
        }
        let name = "gateway_queue_wait_seconds";
        let _ = writeln!(out, "# HELP {name} How long turns waited for a run slot.\n# TYPE {name} histogram");
        for (t, c) in &map {
            for (bound, n) in WAIT_BUCKETS.iter().zip(c.wait_buckets) {
                let _ = writeln!(out, "{name}_bucket{{tenant=\"{t}\",le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "{name}_bucket{{tenant=\"{t}\",le=\"+Inf\"}} {}", c.wait_count);
            let _ = writeln!(out, "{name}_sum{{tenant=\"{t}\"}} {}", c.wait_sum);
            let _ = writeln!(out, "{name}_count{{tenant=\"{t}\"}} {}", c.wait_count);
        }
        let _ = writeln!(
            out,
            "# HELP gateway_auth_failures_total Rejected API tokens.\n# TYPE gateway_auth_failures_total counter\ngateway_auth_failures_total {}",
            self.auth_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP gateway_reloads_total Config reloads, applied or refused.\n# TYPE gateway_reloads_total counter\ngateway_reloads_total{{outcome=\"applied\"}} {}\ngateway_reloads_total{{outcome=\"refused\"}} {}",
            self.reloads_applied.load(Ordering::Relaxed),
            self.reloads_refused.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP gateway_audit_write_failures_total Audit records that could not be written.\n# TYPE gateway_audit_write_failures_total counter\ngateway_audit_write_failures_total {}",
            AUDIT_WRITE_FAILURES.load(Ordering::Relaxed)
        );
        out
    }

    /// Reports the Docker engines' health from now on (`gateway_docker_engine_up{engine}`).
    pub fn watch_engines(&self, probe: EnginesProbe) {
        *self.engines.lock().expect("metrics lock") = Some(probe);
    }

    /// Everything `/metrics` serves: counters, the scheduler's queue gauges, process metrics.
    pub fn render_all(&self, scheduler: &Scheduler) -> String {
        let mut out = self.render();
        let tenants: Vec<TenantId> = self.tenants.lock().expect("metrics lock").keys().cloned().collect();
        let loads: Vec<_> = tenants.iter().map(|t| (t, scheduler.tenant_load(t))).collect();
        for (name, help, pick) in [
            ("gateway_runs_running", "Runs of the tenant running now.", 0),
            ("gateway_queue_depth", "Turns of the tenant accepted and not yet running.", 1),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (t, (running, waiting)) in &loads {
                let v = if pick == 0 { running } else { waiting };
                let _ = writeln!(out, "{name}{{tenant=\"{t}\"}} {v}");
            }
        }
        let probe = self.engines.lock().expect("metrics lock").clone();
        let _ = writeln!(
            out,
            "# HELP gateway_docker_engine_up Whether the Docker engine's last health check found it up (sandbox.docker.engines).\n# TYPE gateway_docker_engine_up gauge"
        );
        // Engine names are validated (a-z, 0-9, '-'): safe as label values.
        for (engine, up) in probe.map(|p| p()).unwrap_or_default() {
            let _ = writeln!(out, "gateway_docker_engine_up{{engine=\"{engine}\"}} {}", u8::from(up));
        }
        out.push_str(&self.render_process());
        out
    }

    fn render_process(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        if let Some(rss) = resident_bytes() {
            gauge("process_resident_memory_bytes", "Resident memory size in bytes.", rss as f64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge("process_open_fds", "Open file descriptors.", fds.count() as f64);
        }
        gauge("process_start_time_seconds", "Start time of the process since the Unix epoch.", self.started_unix);
        gauge("process_uptime_seconds", "Seconds since the gateway started.", self.started.elapsed().as_secs_f64());
        out
    }
}

/// `VmRSS` from `/proc/self/status` (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_per_tenant_and_nothing_else() {
        let a = TenantId::parse("alpha").unwrap();
        let b = TenantId::parse("bravo").unwrap();
        let m = Metrics::for_tenants([&a, &b]);
        m.tokens(&a, 11, 4);
        m.quota_refused(&a, QuotaKind::Messages);
        m.queue_wait(&a, Duration::from_millis(30));
        m.sandbox_call(&a, true);
        m.channel_notice_refused(&b);
        let s = Scheduler::new(2);
        m.watch_engines(std::sync::Arc::new(|| vec![("a".into(), true), ("b".into(), false)]));
        let text = m.render_all(&s);
        for line in [
            "gateway_model_input_tokens_total{tenant=\"alpha\"} 11",
            "gateway_model_output_tokens_total{tenant=\"alpha\"} 4",
            "gateway_quota_refusals_total{tenant=\"alpha\",quota=\"messages_per_minute\"} 1",
            "gateway_quota_refusals_total{tenant=\"bravo\",quota=\"messages_per_minute\"} 0",
            "gateway_queue_wait_seconds_bucket{tenant=\"alpha\",le=\"0.025\"} 0",
            "gateway_queue_wait_seconds_bucket{tenant=\"alpha\",le=\"0.05\"} 1",
            "gateway_queue_wait_seconds_count{tenant=\"alpha\"} 1",
            "gateway_sandbox_failures_total{tenant=\"alpha\"} 1",
            "gateway_queue_depth{tenant=\"bravo\"} 0",
            "gateway_channel_notices_refused_total{tenant=\"bravo\"} 1",
            "gateway_docker_engine_up{engine=\"a\"} 1",
            "gateway_docker_engine_up{engine=\"b\"} 0",
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("gateway_reloads_total{outcome=\"refused\"} 0"), "{text}");
        assert!(text.contains("gateway_audit_write_failures_total "), "{text}");
        let rendered: std::collections::BTreeSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        let listed: std::collections::BTreeSet<&str> = FAMILIES.iter().copied().collect();
        assert_eq!(rendered, listed, "FAMILIES lists exactly what is rendered");
        assert!(text.contains("process_open_fds "), "{text}");
        // Every sample's labels come from the bounded set.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some(labels) = line.split_once('{').map(|(_, r)| r.split_once('}').unwrap().0) {
                for kv in labels.split(',') {
                    let key = kv.split_once('=').unwrap().0;
                    assert!(["tenant", "quota", "le", "outcome", "engine"].contains(&key), "label {key} in {line}");
                }
            }
        }
    }

    /// The metric names an observability file names: `gateway_*` and `process_*` words.
    fn named_metrics(text: &str) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        let mut word = String::new();
        for ch in text.chars().chain(std::iter::once(' ')) {
            if ch.is_ascii_alphanumeric() || ch == '_' {
                word.push(ch);
            } else {
                if word.starts_with("gateway_") || word.starts_with("process_") {
                    names.insert(std::mem::take(&mut word));
                }
                word.clear();
            }
        }
        names
    }

    #[test]
    fn every_metric_the_dashboard_and_alerts_name_is_exported() {
        let a = TenantId::parse("alpha").unwrap();
        let text = Metrics::for_tenants([&a]).render_all(&Scheduler::new(2));
        // Sample names (histograms have `_bucket`, `_sum`, `_count`) and family names.
        let exported: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| match l.strip_prefix("# TYPE ") {
                Some(rest) => rest.split(' ').next(),
                None if !l.starts_with('#') => l.split(['{', ' ']).next(),
                None => None,
            })
            .collect();
        let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops");
        for file in ["grafana-dashboard.json", "prometheus-alerts.yml"] {
            let body = std::fs::read_to_string(ops.join(file)).expect("read the observability kit");
            if file.ends_with(".json") {
                serde_json::from_str::<serde_json::Value>(&body).expect("the dashboard is JSON");
            }
            let named = named_metrics(&body);
            assert!(named.len() >= 5, "{file} names metrics: {named:?}");
            for name in &named {
                assert!(exported.contains(name.as_str()), "{file} names {name}, which /metrics does not export");
            }
        }
        // The families the issue asks to watch are all covered by both.
        for file in ["grafana-dashboard.json", "prometheus-alerts.yml"] {
            let named = named_metrics(&std::fs::read_to_string(ops.join(file)).unwrap());
            for must in [
                "gateway_queue_wait_seconds_bucket",
                "gateway_runs_refused_total",
                "gateway_quota_refusals_total",
                "gateway_sandbox_failures_total",
                "gateway_audit_write_failures_total",
                "gateway_reloads_total",
            ] {
                assert!(named.contains(must), "{file} does not watch {must}");
            }
        }
    }
}

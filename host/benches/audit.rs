//! Audit log benchmark: the latency of one durable append (fsynced), throughput and acknowledgement
//! latency with 64 concurrent appenders (group commit), the cost the audit adds to a tool call
//! (the real `Dispatcher` with an instant sandbox, audit off vs on), and verifying a long log.
//! Run with `cargo bench -p bulkhead --bench audit`. Figures are recorded in BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead::audit::{Actor, Audit, Event, LogWriter, Scope, verify_log};
use bulkhead::config::SandboxBackend;
use bulkhead::dispatch::{Caller, Dispatcher, SessionSender};
use bulkhead::ids::{AgentId, PeerKind, SessionKey, TenantId};
use bulkhead::policy::PolicyEngine;
use bulkhead::sandbox::{Sandbox, SandboxCall, SandboxError, Sandboxes, ToolOutput};
use bulkhead::session::{MemoryStore, SessionStore, TenantSessions, ToolCall};
use bulkhead::store::MasterKey;

const SEQUENTIAL: usize = 2_000;
const CONCURRENT_TASKS: usize = 64;
const CONCURRENT_EACH: usize = 300;
const TOOL_CALLS: usize = 2_000;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn decision(i: usize) -> Event {
    Event::ToolDecision {
        agent: "acme-support".into(),
        channel: "api".into(),
        session: format!("{i:032x}"),
        tool: "read".into(),
        allowed: true,
        rule: "agent acme-support tools.allow".into(),
    }
}

/// A sandbox that answers at once, so the figures show the gate and the audit, not a backend.
struct Instant0;

#[async_trait::async_trait]
impl Sandbox for Instant0 {
    fn name(&self) -> &'static str {
        "instant"
    }
    async fn call(&self, _call: &SandboxCall) -> Result<ToolOutput, SandboxError> {
        Ok(ToolOutput { text: "ok".into(), exit_code: Some(0), ..Default::default() })
    }
}

struct NoSend;

#[async_trait::async_trait]
impl SessionSender for NoSend {
    async fn send(&self, _target: SessionKey, _message: String) -> Result<(), String> {
        Err("not in this benchmark".into())
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate("bench".into());
    let tenant = Scope::Tenant(TenantId::parse("acme").unwrap());

    // 1. One durable append at a time (write + fdatasync each).
    let audit_dir = dir.path().join("seq");
    let mut w = LogWriter::open(&audit_dir, &master).unwrap();
    let mut lat = Vec::with_capacity(SEQUENTIAL);
    let start = Instant::now();
    for i in 0..SEQUENTIAL {
        let t = Instant::now();
        w.append(&tenant, &Actor::Agent("acme-support".into()), &decision(i)).unwrap();
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    println!(
        "sequential durable append ({SEQUENTIAL}): p50 {} p99 {} -> {:.0} records/s",
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.99)),
        SEQUENTIAL as f64 / total.as_secs_f64()
    );
    let keys = w.keys().clone();
    drop(w);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // 2. Many appenders at once: one writer thread commits them in groups.
        let audit_dir = dir.path().join("conc");
        let audit = Audit::start(LogWriter::open(&audit_dir, &master).unwrap()).unwrap();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..CONCURRENT_TASKS {
            let (a, scope) = (audit.clone(), tenant.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(CONCURRENT_EACH);
                for i in 0..CONCURRENT_EACH {
                    let s = Instant::now();
                    a.append(scope.clone(), Actor::System, decision(t * CONCURRENT_EACH + i)).await.unwrap();
                    lat.push(s.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let total = start.elapsed();
        let n = CONCURRENT_TASKS * CONCURRENT_EACH;
        println!(
            "{CONCURRENT_TASKS} concurrent appenders ({n} records): {:.0} records/s, ack p50 {} p99 {}",
            n as f64 / total.as_secs_f64(),
            ms(pct(&mut lat, 0.5)),
            ms(pct(&mut lat, 0.99))
        );
        audit.close().await;
        let bytes = std::fs::read(tenant.log_path(&audit_dir)).unwrap();
        let keys2 = bulkhead::audit::AuditKeys::load(&audit_dir, &master, false).unwrap();
        let t = Instant::now();
        let v = verify_log(&bytes, &keys2, &tenant, None).unwrap();
        println!(
            "verify a {}-record log ({:.1} MiB): {}",
            v.records,
            bytes.len() as f64 / (1 << 20) as f64,
            ms(t.elapsed())
        );
        let _ = keys;

        // 3. The cost on a tool call: the real dispatcher, audit off vs on (decision + outcome).
        let cfg_dir = tempfile::tempdir().unwrap();
        let cfg = bulkhead::config::load_str(
            r#"{ tenants: [ { id: "acme" } ], agents: { list: [ { id: "acme-support", tenant: "acme", tools: { allow: ["read"] } } ] } }"#,
            cfg_dir.path(),
        )
        .unwrap();
        let agent = cfg.agent(&AgentId::parse("acme-support").unwrap()).unwrap().clone();
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        let sessions = TenantSessions::new(agent.tenant.clone(), store);
        let session = SessionKey::new(agent.id.clone(), "api", PeerKind::Direct, "bench").unwrap();
        let call = ToolCall { id: "c".into(), name: "read".into(), arguments: serde_json::json!({ "path": "notes.txt" }) };
        for (label, audit) in [
            ("off", Audit::off()),
            ("on", Audit::start(LogWriter::open(&dir.path().join("tool"), &master).unwrap()).unwrap()),
        ] {
            let d = Dispatcher {
                gate: Arc::new(PolicyEngine::load(&cfg).unwrap()),
                sandboxes: Sandboxes::default().with(SandboxBackend::Wasm, Arc::new(Instant0)),
                audit: audit.clone(),
            };
            let caller =
                Caller { agent: &agent, sessions: &sessions, session: &session, sent_by: None, sender: &NoSend };
            let mut lat = Vec::with_capacity(TOOL_CALLS);
            for _ in 0..TOOL_CALLS {
                let t = Instant::now();
                let out = d.dispatch(&caller, &call).await;
                lat.push(t.elapsed());
                assert_eq!(out.text, "ok");
            }
            println!(
                "tool call through the dispatcher, audit {label} ({TOOL_CALLS}): p50 {} p99 {}",
                ms(pct(&mut lat, 0.5)),
                ms(pct(&mut lat, 0.99))
            );
            audit.close().await;
        }
    });
}

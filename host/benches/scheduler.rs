//! Scheduler overhead: the cost of admitting and releasing one run (session lock, fair pick,
//! bookkeeping), with no work in the run. Uncontended (one run at a time) and contended (many
//! tenants and sessions competing for a few slots). Run with
//! `cargo bench -p bulkhead --bench scheduler`. Figures are recorded in BENCHMARKS.md.

use std::sync::Arc;
use std::time::Instant;

use bulkhead::ids::{AgentId, PeerKind, SessionKey, TenantId};
use bulkhead::scheduler::{Scheduler, TenantShare};

fn key(i: usize) -> SessionKey {
    SessionKey::new(AgentId::parse("a").unwrap(), "api", PeerKind::Direct, &format!("p{i}")).unwrap()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Uncontended: one run at a time, 100 tenants in rotation.
        let s = Scheduler::new(8);
        let tenants: Vec<TenantId> = (0..100).map(|i| TenantId::parse(&format!("t{i}")).unwrap()).collect();
        let keys: Vec<SessionKey> = (0..1000).map(key).collect();
        let n = 200_000;
        let t0 = Instant::now();
        for i in 0..n {
            let p = s.acquire(&tenants[i % tenants.len()], &keys[i % keys.len()]).await.unwrap();
            drop(p);
        }
        let per = t0.elapsed() / n as u32;
        println!("uncontended: {n} runs, {per:?} per run (acquire + release)");

        // Contended: 1,000 tenants, 256 concurrent turns for 8 slots, each run yields once.
        let share = TenantShare { max_concurrent: 2, max_queued: 1000, ..TenantShare::default() };
        let s = Arc::new(Scheduler::with_shares(8, share, []));
        let tenants: Arc<Vec<TenantId>> =
            Arc::new((0..1000).map(|i| TenantId::parse(&format!("t{i}")).unwrap()).collect());
        let per_task = 400;
        let tasks = 256;
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for w in 0..tasks {
            let (s, tenants) = (s.clone(), tenants.clone());
            handles.push(tokio::spawn(async move {
                for j in 0..per_task {
                    let t = &tenants[(w * 7 + j) % tenants.len()];
                    let p = s.acquire(t, &key(w * per_task + j)).await.unwrap();
                    tokio::task::yield_now().await;
                    drop(p);
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let total = tasks * per_task;
        let el = t0.elapsed();
        println!(
            "contended: {total} runs by 256 concurrent turns over 1,000 tenants, 8 slots: {:?} per run, {:.0} runs/s",
            el / total as u32,
            total as f64 / el.as_secs_f64()
        );
    });
}

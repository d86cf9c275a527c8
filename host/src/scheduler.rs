//! Admission of runs: one run at a time per session (later turns wait in order, none lost), and
//! a fair share of the global run slots across tenants.
//!
//! Each tenant has a weight, a priority class, a concurrency cap and a bounded queue. When a slot
//! frees, the next run goes to the eligible tenant with the highest priority and, within a class,
//! the smallest virtual time (start-time fair queuing: a tenant's virtual time advances by
//! `1/weight` per run, and a tenant that was idle re-enters at the current virtual time, so it
//! neither banks credit nor waits behind a flood). A waiter older than `STARVATION_LIMIT` is served
//! first whatever its class, so low priorities are never starved. Beyond its queue bound a tenant's
//! new turns are refused at once with `Busy`, never dropped silently.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, oneshot};
use tokio::time::Instant;

use crate::ids::{SessionKey, TenantId};

/// A waiter older than this is served before any other, whatever its priority.
pub const STARVATION_LIMIT: Duration = Duration::from_secs(30);

/// Scheduling settings of one tenant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantShare {
    /// Relative share of run slots among tenants of one priority class (≥ 1).
    pub weight: u32,
    /// Higher classes are served first.
    pub priority: u8,
    /// Most runs of this tenant at once.
    pub max_concurrent: usize,
    /// Most turns of this tenant waiting (beyond those running) before new ones are refused.
    pub max_queued: usize,
}

impl Default for TenantShare {
    fn default() -> Self {
        Self { weight: 1, priority: 0, max_concurrent: 4, max_queued: 64 }
    }
}

/// The tenant's queue is full: the turn was refused (and not stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tenant queue full")]
pub struct Busy;

type SessionLock = Arc<tokio::sync::Mutex<()>>;

struct Waiter {
    since: Instant,
    /// Arrival order, to break ties between waiters of the same instant.
    seq: u64,
    grant: oneshot::Sender<()>,
}

#[derive(Default)]
struct TenantState {
    share: TenantShare,
    running: usize,
    /// Turns accepted and not finished (waiting for the session, waiting for a slot, or running).
    pending: usize,
    queue: VecDeque<Waiter>,
    vtime: f64,
}

#[derive(Default)]
struct State {
    /// Most runs at once, all tenants together.
    global_cap: usize,
    /// The share of a tenant the config does not name.
    default_share: TenantShare,
    running: usize,
    tenants: HashMap<TenantId, TenantState>,
    /// Tenants whose queue is not empty: what `dispatch` looks at, so a grant costs the number of
    /// waiting tenants, not of configured ones.
    waiting: HashSet<TenantId>,
    /// Virtual time of the last grant: where an idle tenant re-enters.
    clock: f64,
    seq: u64,
}

pub struct Scheduler {
    state: Arc<Mutex<State>>,
    sessions: Arc<Mutex<HashMap<SessionKey, SessionLock>>>,
}

/// Held for the duration of one run.
pub struct RunPermit {
    tenant: TenantId,
    key: SessionKey,
    lock: SessionLock,
    guard: Option<OwnedMutexGuard<()>>,
    scheduler: SchedulerRef,
    /// How long the turn waited before it started.
    pub waited: Duration,
}

#[derive(Clone)]
struct SchedulerRef {
    state: Arc<Mutex<State>>,
    sessions: Arc<Mutex<HashMap<SessionKey, SessionLock>>>,
}

/// Undoes the `pending` count if a turn is abandoned before it gets its permit.
struct PendingGuard {
    tenant: TenantId,
    scheduler: SchedulerRef,
    armed: bool,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.scheduler.state.lock().expect("scheduler lock");
            if let Some(t) = st.tenants.get_mut(&self.tenant) {
                t.pending -= 1;
            }
        }
    }
}

impl Scheduler {
    pub fn new(global_cap: usize) -> Self {
        Self::with_shares(global_cap, TenantShare { max_concurrent: global_cap.max(1), ..TenantShare::default() }, [])
    }

    /// `shares` sets tenants' own settings; others get `default_share`.
    pub fn with_shares(
        global_cap: usize,
        default_share: TenantShare,
        shares: impl IntoIterator<Item = (TenantId, TenantShare)>,
    ) -> Self {
        let s = Self { state: Arc::default(), sessions: Arc::default() };
        s.update(global_cap, default_share, shares);
        s
    }

    /// Applies a reloaded config: the global cap, the default share and tenants' own shares.
    /// Runs and queues in flight are kept (a tenant whose cap shrank runs down to it as its runs
    /// end); a tenant no longer named with nothing pending is forgotten.
    pub fn update(
        &self,
        global_cap: usize,
        default_share: TenantShare,
        shares: impl IntoIterator<Item = (TenantId, TenantShare)>,
    ) {
        let shares: HashMap<TenantId, TenantShare> = shares.into_iter().collect();
        let mut st = self.state.lock().expect("scheduler lock");
        st.global_cap = global_cap.max(1);
        st.default_share = default_share;
        st.tenants.retain(|id, t| shares.contains_key(id) || t.pending > 0);
        for (id, t) in st.tenants.iter_mut() {
            t.share = shares.get(id).copied().unwrap_or(default_share);
        }
        for (id, share) in shares {
            st.tenants.entry(id).or_default().share = share;
        }
        dispatch(&mut st);
    }

    fn handle(&self) -> SchedulerRef {
        SchedulerRef { state: self.state.clone(), sessions: self.sessions.clone() }
    }

    /// Admits a turn: refuses it at once if the tenant's queue is full, else waits for the
    /// session (FIFO) and then for a fair share of the global slots.
    pub async fn acquire(&self, tenant: &TenantId, key: &SessionKey) -> Result<RunPermit, Busy> {
        let start = Instant::now();
        {
            let mut st = self.state.lock().expect("scheduler lock");
            let default = st.default_share;
            let t = st
                .tenants
                .entry(tenant.clone())
                .or_insert_with(|| TenantState { share: default, ..Default::default() });
            if t.pending >= t.share.max_concurrent + t.share.max_queued {
                return Err(Busy);
            }
            t.pending += 1;
        }
        let mut pending = PendingGuard { tenant: tenant.clone(), scheduler: self.handle(), armed: true };
        let lock = {
            let mut map = self.sessions.lock().expect("scheduler lock");
            map.entry(key.clone()).or_default().clone()
        };
        // tokio's Mutex is fair: turns of one session start in arrival order.
        let guard = lock.clone().lock_owned().await;
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.state.lock().expect("scheduler lock");
            let clock = st.clock;
            st.seq += 1;
            let seq = st.seq;
            let t = st.tenants.get_mut(tenant).expect("tenant registered above");
            if t.queue.is_empty() && t.running == 0 {
                t.vtime = t.vtime.max(clock);
            }
            t.queue.push_back(Waiter { since: Instant::now(), seq, grant: tx });
            st.waiting.insert(tenant.clone());
            dispatch(&mut st);
        }
        // If this future is dropped here, `dispatch` finds the closed channel and skips it.
        rx.await.expect("the scheduler never drops a waiter it has not granted");
        pending.armed = false;
        Ok(RunPermit {
            tenant: tenant.clone(),
            key: key.clone(),
            lock,
            guard: Some(guard),
            scheduler: self.handle(),
            waited: start.elapsed(),
        })
    }

    /// Sessions with a turn running or waiting.
    pub fn active_sessions(&self) -> usize {
        self.sessions.lock().expect("scheduler lock").len()
    }

    /// (running, waiting) turns of a tenant, for metrics.
    /// The most turns of `tenant` that may run at once (its share's cap).
    pub fn max_concurrent(&self, tenant: &TenantId) -> usize {
        let st = self.state.lock().expect("scheduler lock");
        st.tenants.get(tenant).map_or(st.default_share, |t| t.share).max_concurrent.max(1)
    }

    pub fn tenant_load(&self, tenant: &TenantId) -> (usize, usize) {
        let st = self.state.lock().expect("scheduler lock");
        st.tenants.get(tenant).map_or((0, 0), |t| (t.running, t.pending - t.running))
    }
}

/// Grants free slots to the next waiters, fairly. Called with the state locked.
fn dispatch(st: &mut State) {
    while st.running < st.global_cap {
        let now = Instant::now();
        let eligible = || {
            st.waiting
                .iter()
                .filter_map(|id| st.tenants.get_key_value(id))
                .filter(|(_, t)| !t.queue.is_empty() && t.running < t.share.max_concurrent)
        };
        let age = |t: &TenantState| t.queue.front().map(|w| (w.since, w.seq)).expect("eligible queues are non-empty");
        // A waiter past the starvation limit goes first, oldest first, whatever its class.
        let starving =
            eligible().filter(|(_, t)| now.duration_since(age(t).0) >= STARVATION_LIMIT).min_by_key(|(_, t)| age(t));
        let next = starving
            .or_else(|| {
                eligible().max_by(|(_, a), (_, b)| {
                    a.share
                        .priority
                        .cmp(&b.share.priority)
                        .then(b.vtime.total_cmp(&a.vtime))
                        .then_with(|| age(b).cmp(&age(a)))
                })
            })
            .map(|(id, _)| id.clone());
        let Some(id) = next else { return };
        let t = st.tenants.get_mut(&id).expect("picked from the map");
        let waiter = t.queue.pop_front().expect("non-empty queue");
        if t.queue.is_empty() {
            st.waiting.remove(&id);
        }
        if waiter.grant.send(()).is_err() {
            continue; // the turn was abandoned while waiting
        }
        t.running += 1;
        let start_tag = t.vtime;
        t.vtime += 1.0 / f64::from(t.share.weight.max(1));
        st.running += 1;
        st.clock = st.clock.max(start_tag);
    }
}

impl Drop for RunPermit {
    fn drop(&mut self) {
        drop(self.guard.take());
        {
            let mut map = self.scheduler.sessions.lock().expect("scheduler lock");
            // Only the map and this permit hold the lock: nobody waits, so forget the session.
            if Arc::strong_count(&self.lock) == 2 {
                map.remove(&self.key);
            }
        }
        let mut st = self.scheduler.state.lock().expect("scheduler lock");
        st.running -= 1;
        if let Some(t) = st.tenants.get_mut(&self.tenant) {
            t.running -= 1;
            t.pending -= 1;
        }
        dispatch(&mut st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AgentId, PeerKind};

    fn key(peer: &str) -> SessionKey {
        SessionKey::new(AgentId::parse("a").unwrap(), "api", PeerKind::Direct, peer).unwrap()
    }
    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    /// Queues `n` one-tick runs per tenant (distinct sessions) and returns the start order.
    async fn start_order(s: Arc<Scheduler>, load: &[(&str, usize)]) -> Vec<String> {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (t, n) in load {
            for i in 0..*n {
                let (s, order, t) = (s.clone(), order.clone(), t.to_string());
                tasks.push(tokio::spawn(async move {
                    let _p = s.acquire(&tenant(&t), &key(&format!("{t}-{i}"))).await.unwrap();
                    order.lock().unwrap().push(t);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }));
                tokio::task::yield_now().await;
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(order).unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_run_per_session_in_order_and_global_cap() {
        let s = Arc::new(Scheduler::new(2));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = s.acquire(&tenant("t"), &key("same")).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(s.active_sessions(), 0);

        let p1 = s.acquire(&tenant("t"), &key("a")).await.unwrap();
        let _p2 = s.acquire(&tenant("t"), &key("b")).await.unwrap();
        let s2 = s.clone();
        let third = tokio::spawn(async move { s2.acquire(&tenant("t"), &key("c")).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!third.is_finished(), "global cap of 2 must hold the third run");
        drop(p1);
        third.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_tenant_does_not_starve_another() {
        let share = TenantShare { max_concurrent: 1, max_queued: 100, ..Default::default() };
        let s = Arc::new(Scheduler::with_shares(1, share, []));
        // A queues 20 turns before B's 3 arrive; B must not wait behind all of A's.
        let order = start_order(s, &[("a", 20), ("b", 3)]).await;
        let last_b = order.iter().rposition(|t| t == "b").unwrap();
        assert!(last_b <= 7, "b finished at position {last_b} in {order:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn weights_are_respected() {
        let base = TenantShare { max_concurrent: 4, max_queued: 100, ..Default::default() };
        let heavy = TenantShare { weight: 3, ..base };
        let s = Arc::new(Scheduler::with_shares(1, base, [(tenant("h"), heavy)]));
        let order = start_order(s, &[("h", 30), ("l", 30)]).await;
        let first_20 = &order[..20];
        let h = first_20.iter().filter(|t| *t == "h").count();
        assert!((14..=16).contains(&h), "weight 3:1 should give ~15 of 20 to h, got {h}: {order:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn priorities_are_respected_and_nobody_starves() {
        let base = TenantShare { max_concurrent: 4, max_queued: 10_000, ..Default::default() };
        let high = TenantShare { priority: 1, ..base };
        let s = Arc::new(Scheduler::with_shares(1, base, [(tenant("hi"), high)]));
        let order = start_order(s.clone(), &[("lo", 2), ("hi", 5)]).await;
        // The first "lo" got the free slot at once; after that "hi" goes first.
        assert_eq!(order, ["lo", "hi", "hi", "hi", "hi", "hi", "lo"]);
        // A high-priority flood that outruns capacity (one 10 ms slot, a turn every 5 ms) for
        // 60 s: a low-priority turn arriving at 1 s still starts once it has waited 30 s.
        let t0 = Instant::now();
        let flood = {
            let s = s.clone();
            tokio::spawn(async move {
                let mut runs = Vec::new();
                for i in 0..12_000 {
                    let s = s.clone();
                    runs.push(tokio::spawn(async move {
                        let _p = s.acquire(&tenant("hi"), &key(&format!("f{i}"))).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                for r in runs {
                    r.await.unwrap();
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let permit = s.acquire(&tenant("lo"), &key("late")).await.unwrap();
        let started = t0.elapsed();
        drop(permit);
        assert!(started < Duration::from_secs(33), "low priority started after {started:?}");
        assert!(started >= STARVATION_LIMIT, "before the limit, priority wins: started after {started:?}");
        flood.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_queues_refuse_with_busy() {
        let share = TenantShare { max_concurrent: 1, max_queued: 2, ..Default::default() };
        let s = Arc::new(Scheduler::with_shares(4, share, []));
        let _running = s.acquire(&tenant("a"), &key("1")).await.unwrap();
        let mut waiting = Vec::new();
        for i in 2..4 {
            let s = s.clone();
            waiting.push(tokio::spawn(async move { s.acquire(&tenant("a"), &key(&i.to_string())).await.map(|_| ()) }));
            tokio::task::yield_now().await;
        }
        assert_eq!(s.acquire(&tenant("a"), &key("9")).await.err(), Some(Busy));
        // Another tenant is unaffected.
        assert!(s.acquire(&tenant("b"), &key("b1")).await.is_ok());
        assert_eq!(s.tenant_load(&tenant("a")), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_waiters_free_their_place() {
        let share = TenantShare { max_concurrent: 1, max_queued: 1, ..Default::default() };
        let s = Arc::new(Scheduler::with_shares(1, share, []));
        let running = s.acquire(&tenant("a"), &key("1")).await.unwrap();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.acquire(&tenant("a"), &key("2")).await.map(|_| ()) });
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        drop(running);
        assert!(s.acquire(&tenant("a"), &key("3")).await.is_ok(), "the abandoned place was given back");
    }
}

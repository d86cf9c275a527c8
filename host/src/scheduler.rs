//! Admission of runs: one run at a time per session (later messages wait, in order, none lost)
//! under a global cap on concurrent runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use crate::ids::SessionKey;

type SessionLock = Arc<tokio::sync::Mutex<()>>;

pub struct Scheduler {
    global: Arc<Semaphore>,
    sessions: Arc<Mutex<HashMap<SessionKey, SessionLock>>>,
}

/// Held for the duration of one run.
pub struct RunPermit {
    key: SessionKey,
    lock: SessionLock,
    guard: Option<OwnedMutexGuard<()>>,
    _global: OwnedSemaphorePermit,
    sessions: Arc<Mutex<HashMap<SessionKey, SessionLock>>>,
}

impl Scheduler {
    pub fn new(max_concurrent: usize) -> Self {
        Self { global: Arc::new(Semaphore::new(max_concurrent.max(1))), sessions: Arc::default() }
    }

    /// Waits for the session to be free (FIFO), then for a global slot.
    pub async fn acquire(&self, key: &SessionKey) -> RunPermit {
        let lock = {
            let mut map = self.sessions.lock().expect("scheduler lock");
            map.entry(key.clone()).or_default().clone()
        };
        // tokio's Mutex is fair: waiters are served in arrival order, so turns keep their order.
        let guard = lock.clone().lock_owned().await;
        let global = self.global.clone().acquire_owned().await.expect("semaphore never closed");
        RunPermit { key: key.clone(), lock, guard: Some(guard), _global: global, sessions: self.sessions.clone() }
    }

    /// Sessions with a run in progress or waiting (for metrics and tests).
    pub fn active_sessions(&self) -> usize {
        self.sessions.lock().expect("scheduler lock").len()
    }
}

impl Drop for RunPermit {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.sessions.lock().expect("scheduler lock");
        // Only the map and this permit hold the lock: nobody waits, so forget the session.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AgentId, PeerKind};
    use std::time::Duration;

    fn key(peer: &str) -> SessionKey {
        SessionKey::new(AgentId::parse("a").unwrap(), "api", PeerKind::Direct, peer).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_run_per_session_in_order_and_global_cap() {
        let s = Arc::new(Scheduler::new(2));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = s.acquire(&key("same")).await;
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

        let p1 = s.acquire(&key("a")).await;
        let _p2 = s.acquire(&key("b")).await;
        let s2 = s.clone();
        let third = tokio::spawn(async move { s2.acquire(&key("c")).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!third.is_finished(), "global cap of 2 must hold the third run");
        drop(p1);
        third.await.unwrap();
    }
}

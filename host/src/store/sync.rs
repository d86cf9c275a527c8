//! Group commit: one fsync shared by every caller whose change happened before it started. The
//! journal of each tenant (`journal.rs`) makes acknowledged appends durable this way, as the audit
//! log shares its fdatasyncs: a caller whose change happened before a running fsync began waits
//! for the next one, which starts as soon as the running one ends and covers all callers that
//! arrived meanwhile. Concurrent conversations of a tenant therefore share one `fdatasync`.

use std::io;
use std::sync::{Condvar, Mutex};

/// The fsync rounds of one file.
#[derive(Default)]
struct Rounds {
    /// Rounds asked for so far (a caller's ticket is the next number).
    asked: u64,
    /// Every ticket up to this one is durable.
    done: u64,
    /// Tickets up to this one failed (their change may not be durable): the error, as text.
    failed: Option<(u64, io::ErrorKind, String)>,
    running: bool,
}

/// Fsyncs of one file shared between concurrent callers.
#[derive(Default)]
pub(super) struct GroupCommit {
    rounds: Mutex<Rounds>,
    changed: Condvar,
}

impl GroupCommit {
    /// Returns once a `sync` that started after this call has succeeded (so every change the
    /// caller made before calling is durable), or with that sync's error.
    pub(super) fn commit(&self, sync: impl Fn() -> io::Result<()>) -> io::Result<()> {
        let mut r = self.rounds.lock().expect("group commit lock");
        r.asked += 1;
        let ticket = r.asked;
        loop {
            if let Some((upto, kind, msg)) = &r.failed
                && ticket <= *upto
                && ticket > r.done
            {
                return Err(io::Error::new(*kind, msg.clone()));
            }
            if r.done >= ticket {
                return Ok(());
            }
            if r.running {
                r = self.changed.wait(r).expect("group commit lock");
                continue;
            }
            // Lead a round covering every ticket asked for so far.
            r.running = true;
            let covers = r.asked;
            drop(r);
            let result = sync();
            r = self.rounds.lock().expect("group commit lock");
            r.running = false;
            match &result {
                Ok(()) => r.done = r.done.max(covers),
                Err(e) => r.failed = Some((covers, e.kind(), e.to_string())),
            }
            self.changed.notify_all();
        }
    }

    #[cfg(test)]
    fn asked(&self) -> u64 {
        self.rounds.lock().unwrap().asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn concurrent_callers_share_fsyncs_and_each_waits_for_one_that_started_after_it() {
        let g = Arc::new(GroupCommit::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (g, calls) = (g.clone(), calls.clone());
                let g2 = g.clone();
                std::thread::spawn(move || {
                    g.commit(|| {
                        // The first round lasts until all 16 callers have asked: the other 15
                        // arrived during it, so one more round covers them all.
                        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            while g2.asked() < 16 {
                                std::thread::yield_now();
                            }
                        }
                        Ok(())
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "16 callers, 2 fsyncs");
        // A later caller gets its own round.
        g.commit(|| Ok(calls.fetch_add(1, Ordering::SeqCst)).map(|_| ())).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_failed_fsync_fails_every_caller_it_covered_and_is_not_retried_for_them() {
        let g = GroupCommit::default();
        let err = g.commit(|| Err(io::Error::other("disk on fire")));
        assert_eq!(err.unwrap_err().to_string(), "disk on fire");
        // The next caller gets a fresh round.
        g.commit(|| Ok(())).unwrap();
    }
}

//! Group commit of directory fsyncs: a new session's directory entry is made durable by an fsync
//! of its tenant's `sessions/` directory, and one fsync covers every entry created before it
//! started. Concurrent new conversations of a tenant therefore share one fsync (the audit log
//! shares its fdatasyncs the same way): a caller whose change happened before a running fsync
//! began waits for the next one, which starts as soon as the running one ends and covers all
//! callers that arrived meanwhile.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// One directory's fsync rounds.
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

#[derive(Default)]
struct Dir {
    rounds: Mutex<Rounds>,
    changed: Condvar,
}

/// Directory fsyncs shared between concurrent callers, per directory.
#[derive(Default)]
pub(super) struct GroupSync {
    dirs: Mutex<HashMap<PathBuf, Arc<Dir>>>,
}

impl GroupSync {
    /// Returns once an fsync of `dir` that started after this call has succeeded (so every change
    /// the caller made in `dir` before calling is durable), or with that fsync's error.
    pub(super) fn sync_dir(&self, dir: &Path, sync: impl Fn(&Path) -> io::Result<()>) -> io::Result<()> {
        let d = self.dirs.lock().expect("group sync lock").entry(dir.to_path_buf()).or_default().clone();
        let mut r = d.rounds.lock().expect("group sync lock");
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
                r = d.changed.wait(r).expect("group sync lock");
                continue;
            }
            // Lead a round covering every ticket asked for so far.
            r.running = true;
            let covers = r.asked;
            drop(r);
            let result = sync(dir);
            r = d.rounds.lock().expect("group sync lock");
            r.running = false;
            match &result {
                Ok(()) => r.done = r.done.max(covers),
                Err(e) => r.failed = Some((covers, e.kind(), e.to_string())),
            }
            d.changed.notify_all();
        }
    }
}

#[cfg(test)]
impl GroupSync {
    fn asked(&self, dir: &Path) -> u64 {
        let d = self.dirs.lock().unwrap().get(dir).cloned();
        d.map_or(0, |d| d.rounds.lock().unwrap().asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn concurrent_callers_share_fsyncs_and_each_waits_for_one_that_started_after_it() {
        let g = Arc::new(GroupSync::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (g, calls) = (g.clone(), calls.clone());
                let g2 = g.clone();
                std::thread::spawn(move || {
                    g.sync_dir(Path::new("/d"), |_| {
                        // The first round lasts until all 16 callers have asked: the other 15
                        // arrived during it, so one more round covers them all.
                        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                            while g2.asked(Path::new("/d")) < 16 {
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
        g.sync_dir(Path::new("/d"), |_| Ok(calls.fetch_add(1, Ordering::SeqCst)).map(|_| ())).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_failed_fsync_fails_every_caller_it_covered_and_is_not_retried_for_them() {
        let g = GroupSync::default();
        let err = g.sync_dir(Path::new("/d"), |_| Err(io::Error::other("disk on fire")));
        assert_eq!(err.unwrap_err().to_string(), "disk on fire");
        // The next caller gets a fresh round.
        g.sync_dir(Path::new("/d"), |_| Ok(())).unwrap();
    }
}

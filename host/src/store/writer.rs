//! The store's writers: one thread per tenant with appends in flight, so a durable append costs
//! no blocked thread while its fsync runs.
//!
//! `SessionStore::append` hands its records to the tenant's writer and awaits the answer. The
//! writer takes everything that queued up while it was busy, stages it (sealed, written to the
//! session files and the journal under the sessions' and packs' locks), syncs the journal once,
//! and answers each append: `Ok` only once its journal entry is durable, as before. A batch of
//! 64 appends is one wake-up of the writer and one `fdatasync`, where a thread per append slept
//! on the group commit and was woken for each.
//!
//! A writer exits after `IDLE` without work (10,000 idle tenants run no thread) and when the
//! store closes (it holds the store weakly). Tenants never share a writer, so one tenant's
//! flood of appends does not queue another's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{EncryptedStore, Inner};
use crate::ids::{SessionKey, TenantId};
use crate::session::{Message, StoreError};

/// How long a writer waits for work before it exits.
const IDLE: Duration = Duration::from_secs(5);
/// Most appends one batch stages under its locks.
const MAX_BATCH: usize = 256;

/// One append waiting for its writer.
pub(super) struct Request {
    pub key: SessionKey,
    pub messages: Vec<Message>,
    pub reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The running writers, by tenant (each with the number that tells it from its successor).
#[derive(Default)]
pub(super) struct Writers {
    running: Mutex<HashMap<TenantId, (u64, mpsc::Sender<Request>)>>,
    next_id: AtomicU64,
}

impl EncryptedStore {
    /// Queues an append for tenant `t`'s writer, starting one when none runs.
    pub(super) fn submit(&self, t: &TenantId, request: Request) -> Result<(), StoreError> {
        let writers = &self.inner.writers;
        // Sent under the lock: a writer that finds its queue empty under it can exit.
        let mut running = writers.running.lock().expect("writers lock");
        let request = match running.get(t) {
            Some((_, tx)) => match tx.send(request) {
                Ok(()) => return Ok(()),
                // The writer stopped (a panic): a new one takes over.
                Err(mpsc::SendError(request)) => request,
            },
            None => request,
        };
        let (tx, rx) = mpsc::channel();
        let _ = tx.send(request);
        let id = writers.next_id.fetch_add(1, Ordering::Relaxed);
        let store = Arc::downgrade(&self.inner);
        let tenant = t.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(store, tenant, id, rx))
            .map_err(|e| StoreError::Io(format!("cannot start the store's writer thread: {e}")))?;
        running.insert(t.clone(), (id, tx));
        Ok(())
    }
}

fn run(store: Weak<Inner>, t: TenantId, id: u64, rx: mpsc::Receiver<Request>) {
    loop {
        let first = match rx.recv_timeout(IDLE) {
            Ok(r) => r,
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                let Some(inner) = store.upgrade() else { return };
                let mut running = inner.writers.running.lock().expect("writers lock");
                match rx.try_recv() {
                    Ok(r) => r,
                    Err(_) => {
                        if running.get(&t).is_some_and(|(i, _)| *i == id) {
                            running.remove(&t);
                        }
                        return;
                    }
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Some(inner) = store.upgrade() else {
            for r in batch {
                let _ = r.reply.send(Err(StoreError::Io("the store was closed".into())));
            }
            return;
        };
        let s = EncryptedStore { inner };
        let items: Vec<(&SessionKey, &[Message])> = batch.iter().map(|r| (&r.key, r.messages.as_slice())).collect();
        let results = s.append_batch(&t, &items);
        drop(items);
        // Let go of the store before anyone is answered: a caller that closes it next finds it
        // closed (its lock released), not held by this thread.
        drop(s);
        for (r, result) in batch.into_iter().zip(results) {
            let _ = r.reply.send(result);
        }
    }
}

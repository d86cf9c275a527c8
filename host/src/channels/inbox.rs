//! The durable inbox: accepted chat messages whose turn has not finished yet, kept as the
//! tenant's encrypted `inbox` document, so a crash or a shutdown with queued turns loses nothing.
//!
//! An adapter admits a message here (one atomic, fsynced document write) *before* it confirms
//! the platform's update offset, and the entry leaves once its reply is delivered. The document
//! also keeps, per bot account, the highest update id admitted (`marks`): an update the platform
//! sends again after a restart is recognised and not handled twice. Texts and chat ids live only
//! inside the document, which is encrypted to the tenant's key: nothing is written in clear.
//!
//! Exactly once in the transcript: before a turn stores its user message, the entry records the
//! session's length (`at`). After a crash the message at that position tells whether the user
//! message, and perhaps its reply, was already stored; the turn then resumes without storing it
//! again, or the stored reply is sent again (replies are delivered at least once).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::ids::TenantId;
use crate::session::{SessionStore, StoreError};

/// Most messages waiting per tenant. At the bound the adapter stops confirming updates (they
/// wait on the platform's side) until turns finish: backpressure, never a silent drop.
pub const MAX_PENDING: usize = 128;
const DOCUMENT: &str = "inbox";

/// One accepted message waiting for (or in) its turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    /// The bot, as `<channel>/<account>`.
    pub account: String,
    /// The platform's update id (unique and increasing per bot).
    pub update: i64,
    pub agent: String,
    pub session: String,
    pub chat: String,
    pub thread: Option<String>,
    pub group: bool,
    pub text: String,
    /// The session's length just before the turn stored this message (set when the turn starts).
    pub at: Option<u64>,
}

/// What admitting a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Stored durably; the turn may start.
    Stored,
    /// This update was admitted before (a platform re-delivery): nothing to do.
    Duplicate,
    /// The tenant's inbox is full: do not confirm the update yet.
    Full,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    v: u32,
    marks: BTreeMap<String, i64>,
    pending: Vec<Entry>,
}

/// The inboxes of every tenant, loaded on first use.
pub struct Inboxes {
    store: Arc<dyn SessionStore>,
    tenants: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<Option<Document>>>>>,
}

impl Inboxes {
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self { store, tenants: Mutex::default() }
    }

    /// Applies `f` to the tenant's document and saves it when `f` says it changed it; on a
    /// failed save nothing changes in memory either.
    async fn update<R>(&self, tenant: &TenantId, f: impl FnOnce(&mut Document) -> (R, bool)) -> Result<R, StoreError> {
        let slot = self.tenants.lock().expect("inbox lock").entry(tenant.clone()).or_default().clone();
        let mut doc = slot.lock().await;
        // Other gateways write a shared store's inbox too: read it afresh under its lock.
        let _shared = self.store.lock_document(tenant, DOCUMENT).await?;
        if doc.is_none() || self.store.shared() {
            *doc = Some(self.load(tenant).await?);
        }
        let mut next = doc.clone().unwrap_or_default();
        let (r, changed) = f(&mut next);
        if changed {
            let bytes =
                serde_json::to_vec(&next).map_err(|e| StoreError::Io(format!("cannot encode the inbox: {e}")))?;
            self.store.save_document(tenant, DOCUMENT, &bytes).await?;
            *doc = Some(next);
        }
        Ok(r)
    }

    async fn load(&self, tenant: &TenantId) -> Result<Document, StoreError> {
        let Some(bytes) = self.store.load_document(tenant, DOCUMENT).await? else {
            return Ok(Document { v: 1, ..Default::default() });
        };
        let bad = || StoreError::Integrity(format!("tenant {:?}: the chat inbox is unreadable", tenant.as_str()));
        let doc: Document = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if doc.v != 1 {
            return Err(bad());
        }
        Ok(doc)
    }

    /// What a restarted adapter resumes from: the highest update id admitted for `account`
    /// and its messages still waiting, oldest first.
    pub async fn restore(&self, tenant: &TenantId, account: &str) -> Result<(Option<i64>, Vec<Entry>), StoreError> {
        self.update(tenant, |d| {
            let mut waiting: Vec<Entry> = d.pending.iter().filter(|e| e.account == account).cloned().collect();
            waiting.sort_by_key(|e| e.update);
            ((d.marks.get(account).copied(), waiting), false)
        })
        .await
    }

    /// Stores an accepted message durably (and moves the account's mark past it).
    pub async fn admit(&self, tenant: &TenantId, entry: Entry) -> Result<Admit, StoreError> {
        self.update(tenant, |d| {
            if d.marks.get(&entry.account).is_some_and(|m| entry.update <= *m) {
                return (Admit::Duplicate, false);
            }
            if d.pending.len() >= MAX_PENDING {
                return (Admit::Full, false);
            }
            d.marks.insert(entry.account.clone(), entry.update);
            d.pending.push(entry);
            (Admit::Stored, true)
        })
        .await
    }

    /// Records where in its session a message is about to be stored.
    pub async fn position(&self, tenant: &TenantId, account: &str, update: i64, at: u64) -> Result<(), StoreError> {
        self.update(tenant, |d| match d.pending.iter_mut().find(|e| e.account == account && e.update == update) {
            Some(e) if e.at != Some(at) => {
                e.at = Some(at);
                ((), true)
            }
            _ => ((), false),
        })
        .await
    }

    /// The message's turn is over and its reply delivered (or given up): forget it.
    pub async fn done(&self, tenant: &TenantId, account: &str, update: i64) -> Result<(), StoreError> {
        self.update(tenant, |d| {
            let before = d.pending.len();
            d.pending.retain(|e| !(e.account == account && e.update == update));
            ((), d.pending.len() != before)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::MemoryStore;

    fn entry(update: i64) -> Entry {
        Entry {
            account: "telegram/acme".into(),
            update,
            agent: "a".into(),
            session: "agent:a:telegram:direct:7".into(),
            chat: "7".into(),
            thread: None,
            group: false,
            text: format!("m{update}"),
            at: None,
        }
    }

    #[tokio::test]
    async fn admitted_messages_survive_a_restart_and_are_never_admitted_twice() {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        let t = TenantId::parse("acme").unwrap();
        let inbox = Inboxes::new(store.clone());
        assert_eq!(inbox.admit(&t, entry(10)).await.unwrap(), Admit::Stored);
        assert_eq!(inbox.admit(&t, entry(11)).await.unwrap(), Admit::Stored);
        assert_eq!(inbox.admit(&t, entry(11)).await.unwrap(), Admit::Duplicate);
        inbox.position(&t, "telegram/acme", 10, 4).await.unwrap();
        inbox.done(&t, "telegram/acme", 11).await.unwrap();

        let again = Inboxes::new(store);
        let (mark, waiting) = again.restore(&t, "telegram/acme").await.unwrap();
        assert_eq!(mark, Some(11), "the mark stays past a finished message");
        assert_eq!(waiting, vec![Entry { at: Some(4), ..entry(10) }]);
        assert_eq!(again.admit(&t, entry(11)).await.unwrap(), Admit::Duplicate, "re-delivered after restart");
        assert_eq!(again.restore(&t, "telegram/other").await.unwrap(), (None, vec![]));
    }

    #[tokio::test]
    async fn a_full_inbox_refuses_without_moving_the_mark() {
        let t = TenantId::parse("acme").unwrap();
        let inbox = Inboxes::new(Arc::new(MemoryStore::default()));
        for i in 0..MAX_PENDING as i64 {
            assert_eq!(inbox.admit(&t, entry(i)).await.unwrap(), Admit::Stored);
        }
        assert_eq!(inbox.admit(&t, entry(1000)).await.unwrap(), Admit::Full);
        assert_eq!(inbox.restore(&t, "telegram/acme").await.unwrap().0, Some(MAX_PENDING as i64 - 1));
        inbox.done(&t, "telegram/acme", 0).await.unwrap();
        assert_eq!(inbox.admit(&t, entry(1000)).await.unwrap(), Admit::Stored);
    }
}

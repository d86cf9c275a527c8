//! DM pairing: an unknown direct sender gets a short code; the operator approves or denies it
//! (`bulkhead pairing ...`, through the running gateway's operator API); approvals persist.
//!
//! Pending requests live in memory only (they expire after an hour; a restart just means the
//! sender asks again).
//!
//! Slots: at most `MAX_PENDING_PER_ACCOUNT` requests wait per bot. A code lives `CODE_TTL` from
//! its issue (writing again does not renew it), and a sender whose request ended without an
//! approval (expired, denied or evicted) gets no new code for `COOLDOWN`: nobody keeps a slot
//! alive indefinitely. When the slots are full, a new stranger takes the slot of the oldest
//! request once that one has waited `MIN_HOLD`: throwaway accounts cannot lock real users out
//! for longer than that without a steady supply of fresh accounts, each usable once an hour. Approvals are per (tenant, channel, account, sender) and are saved as the
//! tenant's `pairing` document in the session store, so they are encrypted to the tenant's key
//! like transcripts, and a tenant deletion shreds them too. No peer id is ever written in clear.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::ids::TenantId;
use crate::session::SessionStore;

/// How long a code stays valid.
pub const CODE_TTL: Duration = Duration::from_secs(3600);
/// Most requests waiting per bot account.
pub const MAX_PENDING_PER_ACCOUNT: usize = 3;
/// How long a request keeps its slot before a new stranger may take it when all are full.
pub const MIN_HOLD: Duration = Duration::from_secs(600);
/// How long a sender whose request ended without an approval gets no new code.
pub const COOLDOWN: Duration = Duration::from_secs(3600);
/// Code alphabet: uppercase letters and digits without the look-alikes 0, O, 1 and I.
const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 8;
const DOCUMENT: &str = "pairing";

/// A sender waiting for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub code: String,
    pub tenant: TenantId,
    pub channel: String,
    pub account: String,
    pub sender: String,
    /// The sender's platform username, shown to the operator only.
    pub username: Option<String>,
    pub created: Instant,
    pub created_unix: u64,
    /// How often the code was repeated to the sender.
    pub reminders: u32,
}

/// What a stranger's message leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// A new code was issued.
    New(String),
    /// The sender already has a pending code.
    Existing(String),
    /// Too many requests are pending for this account, all younger than `MIN_HOLD`; nothing is
    /// sent.
    Full,
    /// Nothing is sent: the sender was reminded of their code often enough, or their last request
    /// ended unapproved within `COOLDOWN` (a stranger can neither make the bot send without bound
    /// nor retake a slot).
    Quiet,
}

/// How often a pending code is repeated to a sender who writes again.
pub const MAX_REMINDERS: u32 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairingError {
    #[error("no pending pairing request has code {0:?} (codes expire after an hour)")]
    UnknownCode(String),
    #[error("the approval could not be saved: {0}")]
    Store(String),
}

type Approval = (String, String, String); // channel, account, sender

#[derive(Default)]
struct State {
    pending: Vec<Request>,
    approved: HashMap<TenantId, BTreeSet<Approval>>,
    /// Senders whose request ended unapproved (denied, expired, evicted) within `COOLDOWN`, by
    /// (channel, account, sender): they get no new code meanwhile.
    resting: HashMap<(String, String, String), Instant>,
}

impl State {
    /// Ends expired requests (their senders rest) and forgets rests that are over.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut ended = Vec::new();
        self.pending.retain(|r| {
            let live = now.duration_since(r.created) < CODE_TTL;
            if !live {
                ended.push(r.key());
            }
            live
        });
        for k in ended {
            self.resting.insert(k, now);
        }
        self.resting.retain(|_, at| now.duration_since(*at) < COOLDOWN);
    }
}

impl Request {
    fn key(&self) -> (String, String, String) {
        (self.channel.clone(), self.account.clone(), self.sender.clone())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    v: u32,
    approved: Vec<ApprovalEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApprovalEntry {
    channel: String,
    account: String,
    sender: String,
}

/// Pairing state of the whole gateway.
pub struct Pairing {
    state: Mutex<State>,
    store: Arc<dyn SessionStore>,
    rng: ring::rand::SystemRandom,
    /// Held from building an approvals document to saving it, so two approvals at once cannot
    /// save out of order (an older document overwriting a newer one).
    saving: tokio::sync::Mutex<()>,
}

impl Pairing {
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Self {
            state: Mutex::default(),
            store,
            rng: ring::rand::SystemRandom::new(),
            saving: tokio::sync::Mutex::new(()),
        }
    }

    /// Loads the approvals saved for `tenants`; a document that fails verification is an error.
    pub async fn restore(&self, tenants: impl IntoIterator<Item = TenantId>) -> Result<usize, String> {
        let mut total = 0;
        for t in tenants {
            let Some(bytes) = self.store.load_document(&t, DOCUMENT).await.map_err(|e| e.to_string())? else {
                continue;
            };
            let doc: Document = serde_json::from_slice(&bytes)
                .map_err(|e| format!("tenant {:?}: pairing approvals are unreadable: {e}", t.as_str()))?;
            let set: BTreeSet<Approval> = doc.approved.into_iter().map(|a| (a.channel, a.account, a.sender)).collect();
            total += set.len();
            self.state.lock().expect("pairing lock").approved.insert(t, set);
        }
        Ok(total)
    }

    pub fn is_approved(&self, tenant: &TenantId, channel: &str, account: &str, sender: &str) -> bool {
        let st = self.state.lock().expect("pairing lock");
        st.approved
            .get(tenant)
            .is_some_and(|s| s.contains(&(channel.to_string(), account.to_string(), sender.to_string())))
    }

    /// A stranger wrote: reuse their pending code, issue a new one, or refuse when full.
    pub fn offer(
        &self,
        tenant: &TenantId,
        channel: &str,
        account: &str,
        sender: &str,
        username: Option<&str>,
    ) -> Offer {
        let mut st = self.state.lock().expect("pairing lock");
        st.expire();
        if st.resting.contains_key(&(channel.to_string(), account.to_string(), sender.to_string())) {
            return Offer::Quiet;
        }
        let same_account = |r: &&Request| r.channel == channel && r.account == account;
        if let Some(r) =
            st.pending.iter_mut().find(|r| r.channel == channel && r.account == account && r.sender == sender)
        {
            if r.reminders >= MAX_REMINDERS {
                return Offer::Quiet;
            }
            r.reminders += 1;
            return Offer::Existing(r.code.clone());
        }
        if st.pending.iter().filter(same_account).count() >= MAX_PENDING_PER_ACCOUNT {
            // Full: the oldest request gives way once it has held its slot long enough.
            let oldest = st.pending.iter().enumerate().filter(|(_, r)| same_account(r)).min_by_key(|(_, r)| r.created);
            match oldest {
                Some((i, r)) if r.created.elapsed() >= MIN_HOLD => {
                    let gone = st.pending.remove(i);
                    tracing::warn!(
                        channel,
                        account,
                        "Pairing slots full: the oldest pending request gave way to a new sender."
                    );
                    st.resting.insert(gone.key(), Instant::now());
                }
                _ => return Offer::Full,
            }
        }
        let code = loop {
            let c = self.new_code();
            if !st.pending.iter().any(|r| r.code == c) {
                break c;
            }
        };
        st.pending.push(Request {
            code: code.clone(),
            tenant: tenant.clone(),
            channel: channel.to_string(),
            account: account.to_string(),
            sender: sender.to_string(),
            username: username.map(str::to_string),
            created: Instant::now(),
            reminders: 0,
            created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        });
        Offer::New(code)
    }

    fn new_code(&self) -> String {
        let mut bytes = [0u8; CODE_LEN];
        // The system RNG does not fail on Linux; fall back to time only to stay panic-free.
        if self.rng.fill(&mut bytes).is_err() {
            let n = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            bytes = (n as u64).to_le_bytes();
        }
        bytes.iter().map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect()
    }

    /// Pending requests, oldest first.
    pub fn pending(&self) -> Vec<Request> {
        let mut st = self.state.lock().expect("pairing lock");
        st.expire();
        st.pending.clone()
    }

    fn take(&self, code: &str) -> Result<Request, PairingError> {
        let code = code.trim().to_ascii_uppercase();
        let mut st = self.state.lock().expect("pairing lock");
        st.expire();
        let i = st.pending.iter().position(|r| r.code == code).ok_or(PairingError::UnknownCode(code))?;
        Ok(st.pending.remove(i))
    }

    /// Approves a pending code and saves the tenant's approvals; on a store failure nothing
    /// changes (the request stays pending).
    pub async fn approve(&self, code: &str) -> Result<Request, PairingError> {
        let _saving = self.saving.lock().await;
        let req = self.take(code)?;
        let entry = (req.channel.clone(), req.account.clone(), req.sender.clone());
        let doc = {
            let mut st = self.state.lock().expect("pairing lock");
            let mut set = st.approved.get(&req.tenant).cloned().unwrap_or_default();
            set.insert(entry.clone());
            let doc = Document {
                v: 1,
                approved: set
                    .iter()
                    .map(|(c, a, s)| ApprovalEntry { channel: c.clone(), account: a.clone(), sender: s.clone() })
                    .collect(),
            };
            st.approved.entry(req.tenant.clone()).or_default().insert(entry.clone());
            doc
        };
        let bytes = serde_json::to_vec(&doc).map_err(|e| PairingError::Store(e.to_string()))?;
        if let Err(e) = self.store.save_document(&req.tenant, DOCUMENT, &bytes).await {
            let mut st = self.state.lock().expect("pairing lock");
            if let Some(set) = st.approved.get_mut(&req.tenant) {
                set.remove(&entry);
            }
            st.pending.push(req);
            return Err(PairingError::Store(e.to_string()));
        }
        Ok(req)
    }

    /// Denies (forgets) a pending code.
    pub fn deny(&self, code: &str) -> Result<Request, PairingError> {
        let req = self.take(code)?;
        self.state.lock().expect("pairing lock").resting.insert(req.key(), Instant::now());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::MemoryStore;

    fn t(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    #[tokio::test]
    async fn codes_are_reused_limited_and_approvals_persist() {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        let p = Pairing::new(store.clone());
        let Offer::New(code) = p.offer(&t("acme"), "telegram", "acme", "7", Some("alice")) else { panic!() };
        assert_eq!(code.len(), 8);
        assert!(code.bytes().all(|b| ALPHABET.contains(&b)), "{code}");
        assert_eq!(p.offer(&t("acme"), "telegram", "acme", "7", None), Offer::Existing(code.clone()));
        assert_eq!(p.offer(&t("acme"), "telegram", "acme", "7", None), Offer::Existing(code.clone()));
        assert_eq!(p.offer(&t("acme"), "telegram", "acme", "7", None), Offer::Quiet, "reminders are bounded");
        assert!(matches!(p.offer(&t("acme"), "telegram", "acme", "8", None), Offer::New(_)));
        assert!(matches!(p.offer(&t("acme"), "telegram", "acme", "9", None), Offer::New(_)));
        assert_eq!(p.offer(&t("acme"), "telegram", "acme", "10", None), Offer::Full);
        // Another account has its own quota.
        assert!(matches!(p.offer(&t("beta"), "telegram", "beta", "10", None), Offer::New(_)));

        assert!(!p.is_approved(&t("acme"), "telegram", "acme", "7"));
        let req = p.approve(&code.to_lowercase()).await.unwrap();
        assert_eq!(req.sender, "7");
        assert!(p.is_approved(&t("acme"), "telegram", "acme", "7"));
        assert!(!p.is_approved(&t("beta"), "telegram", "acme", "7"), "approvals are per tenant");
        assert_eq!(p.approve(&code).await, Err(PairingError::UnknownCode(code.clone())), "codes are single-use");

        // A new gateway restores the approvals from the store.
        let again = Pairing::new(store);
        assert_eq!(again.restore([t("acme"), t("beta")]).await.unwrap(), 1);
        assert!(again.is_approved(&t("acme"), "telegram", "acme", "7"));
        assert!(again.pending().is_empty(), "pending codes are not persisted");
    }

    #[tokio::test]
    async fn denied_codes_are_forgotten() {
        let p = Pairing::new(Arc::new(MemoryStore::default()));
        let Offer::New(code) = p.offer(&t("acme"), "telegram", "acme", "7", None) else { panic!() };
        assert_eq!(p.deny(&code).unwrap().sender, "7");
        assert!(p.pending().is_empty());
        assert!(!p.is_approved(&t("acme"), "telegram", "acme", "7"));
        assert!(matches!(p.deny(&code), Err(PairingError::UnknownCode(_))));
        // A denied sender gets no new code for a while (cannot retake a pending slot at once).
        assert_eq!(p.offer(&t("acme"), "telegram", "acme", "7", None), Offer::Quiet);
        assert!(p.pending().is_empty());
        assert!(matches!(p.offer(&t("acme"), "telegram", "acme", "8", None), Offer::New(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_holds_a_slot_for_ever_and_strangers_cannot_lock_others_out_for_long() {
        let p = Pairing::new(Arc::new(MemoryStore::default()));
        let a = t("acme");
        let offer = |sender: &str| p.offer(&a, "telegram", "acme", sender, None);
        for s in ["1", "2", "3"] {
            assert!(matches!(offer(s), Offer::New(_)), "{s}");
        }
        // Full: a newcomer is refused only while every request is younger than MIN_HOLD.
        assert_eq!(offer("42"), Offer::Full);
        tokio::time::advance(MIN_HOLD).await;
        assert!(matches!(offer("42"), Offer::New(_)), "the oldest request gives way after MIN_HOLD");
        let senders = |p: &Pairing| p.pending().into_iter().map(|r| r.sender).collect::<Vec<_>>();
        assert_eq!(senders(&p), ["2", "3", "42"]);
        assert_eq!(offer("1"), Offer::Quiet, "an evicted sender cannot take a slot straight back");
        // Writing again does not renew a code: it expires CODE_TTL after it was issued.
        tokio::time::advance(CODE_TTL - MIN_HOLD - Duration::from_secs(1)).await;
        assert!(matches!(offer("2"), Offer::Existing(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(senders(&p), ["42"], "codes expire an hour after issue, reminders or not");
        assert_eq!(offer("2"), Offer::Quiet, "an expired sender rests before a new code");
        assert!(matches!(offer("5"), Offer::New(_)), "a freed slot goes to someone else");
        tokio::time::advance(COOLDOWN).await;
        assert!(matches!(offer("2"), Offer::New(_)), "after the rest, a new code");
    }
}

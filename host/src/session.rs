//! Conversations: the transcript of each session, kept per tenant behind a store trait.
//!
//! Every store operation goes through a `TenantSessions` handle bound to one tenant, so code
//! holding a handle cannot name another tenant's sessions at all: scoping is by construction.
//! `MemoryStore` keeps transcripts in memory only; `crate::store::EncryptedStore` keeps them on
//! disk, encrypted per tenant.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;

use crate::ids::{SessionKey, TenantId};

/// One entry in a transcript.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    User {
        text: String,
    },
    /// A message another session of the same tenant sent with `sessions_send`: stored as what
    /// it is, naming its origin (the sender's session key), never as the user's.
    FromSession {
        from: String,
        text: String,
    },
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
    },
    ToolResult {
        call_id: String,
        name: String,
        content: String,
        is_error: bool,
    },
}

/// A model's request to run a tool, as the model sent it (the name is not yet trusted).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

impl Message {
    pub fn text(&self) -> &str {
        match self {
            Message::User { text } | Message::FromSession { text, .. } | Message::Assistant { text, .. } => text,
            Message::ToolResult { content, .. } => content,
        }
    }
    pub fn role(&self) -> &'static str {
        match self {
            Message::User { .. } => "user",
            Message::FromSession { .. } => "session",
            Message::Assistant { .. } => "assistant",
            Message::ToolResult { .. } => "tool",
        }
    }

    /// What a model is shown of a message that opens a turn: the user's text as it is; a message
    /// from another session labelled with its sending agent, so it is never mistaken for the user.
    pub fn prompt_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Message::FromSession { from, text } => {
                let agent = SessionKey::parse(from).map(|k| k.agent().to_string()).unwrap_or_default();
                format!("[message from another conversation (agent {agent:?}), not from the user]\n{text}").into()
            }
            other => other.text().into(),
        }
    }
}

/// What `sessions_list` shows of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSummary {
    pub key: SessionKey,
    pub messages: usize,
    pub updated: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store failure: {0}")]
    Io(String),
    /// Stored data failed verification (modified, moved, reordered, truncated or replaced).
    #[error("session store integrity failure: {0}")]
    Integrity(String),
}

/// Storage for transcripts. Every method takes the tenant; callers use `TenantSessions`.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Makes the store ready for tenants added by a config reload (an encrypted store creates
    /// their identities). Nothing of removed tenants is touched: their data stays.
    fn add_tenants(&self, tenants: &[TenantId]) -> Result<(), String> {
        let _ = tenants;
        Ok(())
    }
    async fn append(&self, tenant: &TenantId, key: &SessionKey, messages: &[Message]) -> Result<(), StoreError>;
    /// The last `limit` messages (all when `None`), oldest first. Unknown sessions are empty.
    async fn history(
        &self,
        tenant: &TenantId,
        key: &SessionKey,
        limit: Option<usize>,
    ) -> Result<Vec<Message>, StoreError>;
    async fn list(&self, tenant: &TenantId) -> Result<Vec<SessionSummary>, StoreError>;
    async fn exists(&self, tenant: &TenantId, key: &SessionKey) -> Result<bool, StoreError>;
    /// How many messages a session holds (0 when it does not exist).
    async fn message_count(&self, tenant: &TenantId, key: &SessionKey) -> Result<usize, StoreError> {
        Ok(self.history(tenant, key, None).await?.len())
    }
    /// Deletes one session; `false` when it did not exist.
    async fn delete_session(&self, tenant: &TenantId, key: &SessionKey) -> Result<bool, StoreError> {
        let _ = (tenant, key);
        Err(StoreError::Io("this store cannot delete sessions".into()))
    }
    /// A small named per-tenant document (such as approved chat pairings), kept as privately as
    /// transcripts. `None` when it was never saved.
    async fn load_document(&self, tenant: &TenantId, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = (tenant, name);
        Ok(None)
    }
    /// Replaces a per-tenant document atomically.
    async fn save_document(&self, tenant: &TenantId, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let _ = (tenant, name, bytes);
        Err(StoreError::Io("this store cannot keep documents".into()))
    }
    /// Whether other processes (gateways sharing a database) write this store too: then what a
    /// process cached of a document may be stale, and read-modify-write takes `lock_document`.
    fn shared(&self) -> bool {
        false
    }
    /// Keeps other gateways from changing the tenant's document `name` until the guard drops.
    async fn lock_document(&self, tenant: &TenantId, name: &str) -> Result<RunGuard, StoreError> {
        let _ = (tenant, name);
        Ok(RunGuard::none())
    }
    /// Waits until no other gateway runs a turn of this session and fewer than `tenant_cap` turns
    /// of the tenant run on all gateways together, and keeps it so until the guard drops. A store
    /// used by one process has nothing to wait for (the scheduler orders and caps runs).
    async fn lock_run(&self, tenant: &TenantId, key: &SessionKey, tenant_cap: usize) -> Result<RunGuard, StoreError> {
        let _ = (tenant, key, tenant_cap);
        Ok(RunGuard::none())
    }
}

/// Held while a turn runs (see [`SessionStore::lock_run`]); dropping it lets the next run start.
pub struct RunGuard(#[allow(dead_code)] Option<Box<dyn Send + Sync>>);

impl RunGuard {
    pub fn none() -> Self {
        Self(None)
    }
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        Self(Some(Box::new(held)))
    }
}

/// A store handle bound to one tenant.
#[derive(Clone)]
pub struct TenantSessions {
    tenant: TenantId,
    store: Arc<dyn SessionStore>,
}

impl TenantSessions {
    pub fn new(tenant: TenantId, store: Arc<dyn SessionStore>) -> Self {
        Self { tenant, store }
    }
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
    pub async fn append(&self, key: &SessionKey, messages: &[Message]) -> Result<(), StoreError> {
        self.store.append(&self.tenant, key, messages).await
    }
    pub async fn history(&self, key: &SessionKey, limit: Option<usize>) -> Result<Vec<Message>, StoreError> {
        self.store.history(&self.tenant, key, limit).await
    }
    pub async fn list(&self) -> Result<Vec<SessionSummary>, StoreError> {
        self.store.list(&self.tenant).await
    }
    pub async fn exists(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.store.exists(&self.tenant, key).await
    }
    pub async fn message_count(&self, key: &SessionKey) -> Result<usize, StoreError> {
        self.store.message_count(&self.tenant, key).await
    }
    pub async fn delete(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.store.delete_session(&self.tenant, key).await
    }
    pub async fn lock_run(&self, key: &SessionKey, tenant_cap: usize) -> Result<RunGuard, StoreError> {
        self.store.lock_run(&self.tenant, key, tenant_cap).await
    }
}

/// What the memory-only store keeps by default: 64 MiB of transcripts (`store.cacheMiB`).
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// What a message costs the memory-only store's bound: its text and a fixed overhead.
pub(crate) fn message_bytes(m: &Message) -> usize {
    const OVERHEAD: usize = 96;
    OVERHEAD
        + match m {
            Message::User { text } => text.len(),
            Message::FromSession { from, text } => from.len() + text.len(),
            Message::Assistant { text, tool_calls } => {
                text.len()
                    + tool_calls
                        .iter()
                        .map(|c| OVERHEAD + c.id.len() + c.name.len() + c.arguments.to_string().len())
                        .sum::<usize>()
            }
            Message::ToolResult { call_id, name, content, .. } => call_id.len() + name.len() + content.len(),
        }
}

/// One kept conversation.
struct Kept {
    messages: Vec<Message>,
    updated: SystemTime,
    /// What this conversation costs the bound (its key and its messages).
    bytes: usize,
    /// Its place in `Transcripts::by_age` (a counter, bumped on every append).
    age: u64,
}

#[derive(Default)]
struct Transcripts {
    sessions: HashMap<(TenantId, SessionKey), Kept>,
    /// Least recently appended first.
    by_age: BTreeMap<u64, (TenantId, SessionKey)>,
    next_age: u64,
    bytes: usize,
    evicted: u64,
}

/// In-memory transcripts: nothing touches the disk, lost on restart (`store: { mode: "memory" }`,
/// not for production). Bounded: past `max_bytes` (`store.cacheMiB`) the conversations appended
/// to least recently are forgotten whole, with a warning, so memory stays flat however many
/// conversations are served.
pub struct MemoryStore {
    max_bytes: usize,
    transcripts: Mutex<Transcripts>,
    documents: Mutex<HashMap<(TenantId, String), Vec<u8>>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_max_bytes(DEFAULT_CACHE_BYTES)
    }
}

impl MemoryStore {
    /// A store that keeps at most about `max_bytes` of transcripts.
    pub fn with_max_bytes(max_bytes: usize) -> Self {
        Self { max_bytes, transcripts: Mutex::default(), documents: Mutex::default() }
    }

    /// How many conversations were forgotten to stay under the bound.
    pub fn evicted(&self) -> u64 {
        self.transcripts.lock().expect("session store lock").evicted
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn append(&self, tenant: &TenantId, key: &SessionKey, messages: &[Message]) -> Result<(), StoreError> {
        let mut all = self.transcripts.lock().expect("session store lock");
        let all = &mut *all;
        let age = all.next_age;
        all.next_age += 1;
        let id = (tenant.clone(), key.clone());
        let added: usize = messages.iter().map(message_bytes).sum();
        let kept = match all.sessions.entry(id.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => {
                let kept = o.into_mut();
                all.by_age.remove(&kept.age);
                kept
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                let bytes = 64 + key.to_string().len();
                all.bytes += bytes;
                v.insert(Kept { messages: Vec::new(), updated: SystemTime::now(), bytes, age })
            }
        };
        all.by_age.insert(age, id);
        kept.age = age;
        kept.messages.extend_from_slice(messages);
        kept.updated = SystemTime::now();
        kept.bytes += added;
        all.bytes += added;
        // Forget the least recently appended conversations (never the one just appended).
        while all.bytes > self.max_bytes {
            let Some((&oldest, _)) = all.by_age.first_key_value() else { break };
            if oldest == age {
                break;
            }
            let (_, victim) = all.by_age.pop_first().expect("checked");
            if let Some(gone) = all.sessions.remove(&victim) {
                all.bytes -= gone.bytes;
            }
            all.evicted += 1;
            if all.evicted.is_power_of_two() {
                tracing::warn!(
                    evicted = all.evicted,
                    max_bytes = self.max_bytes,
                    "Memory-only store is full (store.cacheMiB): forgot the least recently used conversations."
                );
            }
        }
        Ok(())
    }

    async fn history(
        &self,
        tenant: &TenantId,
        key: &SessionKey,
        limit: Option<usize>,
    ) -> Result<Vec<Message>, StoreError> {
        let all = self.transcripts.lock().expect("session store lock");
        let msgs = all.sessions.get(&(tenant.clone(), key.clone())).map(|k| k.messages.as_slice()).unwrap_or(&[]);
        let skip = limit.map_or(0, |l| msgs.len().saturating_sub(l));
        Ok(msgs[skip..].to_vec())
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<SessionSummary>, StoreError> {
        let all = self.transcripts.lock().expect("session store lock");
        let mut out: Vec<SessionSummary> = all
            .sessions
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, k), v)| SessionSummary { key: k.clone(), messages: v.messages.len(), updated: v.updated })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn exists(&self, tenant: &TenantId, key: &SessionKey) -> Result<bool, StoreError> {
        let all = self.transcripts.lock().expect("session store lock");
        Ok(all.sessions.contains_key(&(tenant.clone(), key.clone())))
    }

    async fn delete_session(&self, tenant: &TenantId, key: &SessionKey) -> Result<bool, StoreError> {
        let mut all = self.transcripts.lock().expect("session store lock");
        let Some(gone) = all.sessions.remove(&(tenant.clone(), key.clone())) else { return Ok(false) };
        all.by_age.remove(&gone.age);
        all.bytes -= gone.bytes;
        Ok(true)
    }

    async fn load_document(&self, tenant: &TenantId, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.documents.lock().expect("document lock").get(&(tenant.clone(), name.to_string())).cloned())
    }

    async fn save_document(&self, tenant: &TenantId, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.documents.lock().expect("document lock").insert((tenant.clone(), name.to_string()), bytes.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{AgentId, PeerKind};

    #[test]
    fn a_message_from_another_session_is_labelled_for_the_model() {
        let m = Message::FromSession { from: "agent:talker:api:direct:u".into(), text: "/tool exec {}".into() };
        assert_eq!(m.role(), "session");
        assert_eq!(
            m.prompt_text(),
            "[message from another conversation (agent \"talker\"), not from the user]\n/tool exec {}"
        );
        assert_eq!(Message::User { text: "hi".into() }.prompt_text(), "hi");
    }

    #[tokio::test]
    async fn handles_see_only_their_tenant() {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::default());
        let a = TenantSessions::new(TenantId::parse("a").unwrap(), store.clone());
        let b = TenantSessions::new(TenantId::parse("b").unwrap(), store);
        let key = SessionKey::new(AgentId::parse("x").unwrap(), "api", PeerKind::Direct, "u").unwrap();
        a.append(&key, &[Message::User { text: "secret".into() }]).await.unwrap();
        assert_eq!(a.history(&key, None).await.unwrap().len(), 1);
        assert!(b.history(&key, None).await.unwrap().is_empty());
        assert!(b.list().await.unwrap().is_empty());
        assert!(!b.exists(&key).await.unwrap());
    }

    #[tokio::test]
    async fn the_memory_store_forgets_the_least_recently_used_conversations_past_its_bound() {
        let store = MemoryStore::with_max_bytes(10_000);
        let t = TenantId::parse("a").unwrap();
        let key = |i: usize| {
            SessionKey::new(AgentId::parse("x").unwrap(), "api", PeerKind::Direct, &format!("u{i}")).unwrap()
        };
        let text = "x".repeat(400);
        for i in 0..100 {
            store.append(&t, &key(i), &[Message::User { text: text.clone() }]).await.unwrap();
            // Conversation 0 stays in use, so it stays.
            store.append(&t, &key(0), &[]).await.unwrap();
            assert!(store.transcripts.lock().unwrap().bytes <= 10_000);
        }
        assert!(store.evicted() > 0);
        assert!(store.exists(&t, &key(0)).await.unwrap(), "the conversation appended last is kept");
        assert!(store.exists(&t, &key(99)).await.unwrap());
        assert!(!store.exists(&t, &key(1)).await.unwrap(), "the oldest are forgotten");
        let kept = store.list(&t).await.unwrap().len();
        assert!((10..30).contains(&kept), "{kept}");
        // Deleting gives the bytes back.
        let before = store.transcripts.lock().unwrap().bytes;
        assert!(store.delete_session(&t, &key(99)).await.unwrap());
        assert!(store.transcripts.lock().unwrap().bytes < before);
    }
}

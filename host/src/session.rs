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
}

/// One tenant's transcripts and when each was last updated.
type TenantTranscripts = BTreeMap<SessionKey, (Vec<Message>, SystemTime)>;

/// In-memory transcripts: nothing touches the disk. Lost on restart by design until the
/// encrypted store replaces it.
#[derive(Default)]
pub struct MemoryStore {
    tenants: Mutex<HashMap<TenantId, TenantTranscripts>>,
    documents: Mutex<HashMap<(TenantId, String), Vec<u8>>>,
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn append(&self, tenant: &TenantId, key: &SessionKey, messages: &[Message]) -> Result<(), StoreError> {
        let mut all = self.tenants.lock().expect("session store lock");
        let entry = all
            .entry(tenant.clone())
            .or_default()
            .entry(key.clone())
            .or_insert_with(|| (Vec::new(), SystemTime::now()));
        entry.0.extend_from_slice(messages);
        entry.1 = SystemTime::now();
        Ok(())
    }

    async fn history(
        &self,
        tenant: &TenantId,
        key: &SessionKey,
        limit: Option<usize>,
    ) -> Result<Vec<Message>, StoreError> {
        let all = self.tenants.lock().expect("session store lock");
        let msgs = all.get(tenant).and_then(|s| s.get(key)).map(|(m, _)| m.as_slice()).unwrap_or(&[]);
        let skip = limit.map_or(0, |l| msgs.len().saturating_sub(l));
        Ok(msgs[skip..].to_vec())
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<SessionSummary>, StoreError> {
        let all = self.tenants.lock().expect("session store lock");
        Ok(all
            .get(tenant)
            .map(|s| {
                s.iter().map(|(k, (m, t))| SessionSummary { key: k.clone(), messages: m.len(), updated: *t }).collect()
            })
            .unwrap_or_default())
    }

    async fn exists(&self, tenant: &TenantId, key: &SessionKey) -> Result<bool, StoreError> {
        let all = self.tenants.lock().expect("session store lock");
        Ok(all.get(tenant).is_some_and(|s| s.contains_key(key)))
    }

    async fn delete_session(&self, tenant: &TenantId, key: &SessionKey) -> Result<bool, StoreError> {
        let mut all = self.tenants.lock().expect("session store lock");
        Ok(all.get_mut(tenant).is_some_and(|s| s.remove(key).is_some()))
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
}

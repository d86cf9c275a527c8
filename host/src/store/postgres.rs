//! The encrypted store on PostgreSQL (`store.backend: "postgres"`), shared by several gateways.
//!
//! Everything is sealed here, on the gateway, exactly as the file store seals it: tenant
//! identities are wrapped to the master key (`bh_tenants`), a session's metadata — its key and its
//! data key — is age-encrypted to the tenant (`bh_sessions.meta`, the row named by a keyed
//! digest), each record is sealed with the session's data key and bound to (tenant, sid, seq)
//! (`bh_records`), documents are sealed and bound to tenant and name (`bh_documents`). The
//! database sees ciphertext, keyed digests, tenant ids and counters; deleting a rows's sealed
//! records, moving it to another session or position, or cutting records out is an integrity
//! error, as on disk.
//!
//! Appends take the session row `FOR UPDATE`, so two gateways appending to one session are
//! serialised and positions never collide; runs are kept from overlapping by the run lock
//! (`cluster::Db::lock_run`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use ring::rand::SystemRandom;

use super::format::{self, Record, RecordMessage};
use super::keys::{MasterKey, TenantKeys};
use super::{OpenMeta, Retention, SessionRead, make_meta, now_ms, open_document, open_meta, seal_document};
use crate::cluster::{Db, DbError};
use crate::crypto::{NONCE_LEN, random};
use crate::ids::{SessionKey, TenantId};
use crate::session::{Message, RunGuard, SessionStore, SessionSummary, StoreError};

fn db_err(e: DbError) -> StoreError {
    StoreError::Io(format!("database: {e}"))
}

fn sql(e: tokio_postgres::Error) -> StoreError {
    db_err(DbError::from(e))
}

/// The encrypted store in a PostgreSQL database. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    master: MasterKey,
    rng: SystemRandom,
    /// Unwrapped identities, loaded (or created) on first use.
    tenants: RwLock<HashMap<TenantId, Arc<TenantKeys>>>,
}

impl PgStore {
    /// Opens the store: removes data a crypto-shred left without its key, then loads or creates
    /// the identity of each configured tenant (a wrong master key refuses here).
    pub async fn open(db: Db, master: MasterKey, tenants: &[TenantId]) -> Result<Self, StoreError> {
        let store = Self {
            inner: Arc::new(Inner { db, master, rng: SystemRandom::new(), tenants: RwLock::new(HashMap::new()) }),
        };
        store.finish_shredding().await?;
        for t in tenants {
            store.keys(t).await?;
        }
        Ok(store)
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Tenants with an identity in the database.
    pub async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let client = self.inner.db.client().await.map_err(db_err)?;
        let rows = client.query("SELECT tenant FROM bh_tenants ORDER BY tenant", &[]).await.map_err(sql)?;
        Ok(rows.iter().filter_map(|r| TenantId::parse(r.get::<_, &str>(0)).ok()).collect())
    }

    /// The tenant's keys: cached, else its identity row unwrapped, else a new identity (two
    /// gateways creating one at once agree on the first committed).
    async fn keys(&self, t: &TenantId) -> Result<Arc<TenantKeys>, StoreError> {
        if let Some(k) = self.inner.tenants.read().expect("tenants lock").get(t) {
            return Ok(k.clone());
        }
        let client = self.inner.db.client().await.map_err(db_err)?;
        let fresh = TenantKeys::generate();
        let wrapped = fresh.wrap(t.as_str(), &self.inner.master).map_err(StoreError::Io)?;
        client
            .execute(
                "INSERT INTO bh_tenants (tenant, identity) VALUES ($1, $2) ON CONFLICT (tenant) DO NOTHING",
                &[&t.as_str(), &wrapped],
            )
            .await
            .map_err(sql)?;
        let row = client
            .query_one("SELECT identity FROM bh_tenants WHERE tenant = $1", &[&t.as_str()])
            .await
            .map_err(sql)?;
        let bytes: Vec<u8> = row.get(0);
        let keys = TenantKeys::unwrap(t.as_str(), &self.inner.master, &bytes)
            .map_err(|why| StoreError::Integrity(format!("the identity of tenant {:?}: {why}", t.as_str())))?;
        let keys = Arc::new(keys);
        self.inner.tenants.write().expect("tenants lock").insert(t.clone(), keys.clone());
        Ok(keys)
    }

    /// The tenant's keys and the session's keyed id.
    async fn sid(&self, t: &TenantId, key: &SessionKey) -> Result<(Arc<TenantKeys>, String), StoreError> {
        let keys = self.keys(t).await?;
        let sid = keys.session_id(&key.to_string());
        Ok((keys, sid))
    }

    /// Data whose tenant has no identity row: what an interrupted crypto-shred left (the key went
    /// first, so none of it can be read); deleted now.
    async fn finish_shredding(&self) -> Result<(), StoreError> {
        let client = self.inner.db.client().await.map_err(db_err)?;
        for table in ["bh_records", "bh_sessions", "bh_documents"] {
            let n = client
                .execute(
                    &format!(
                        "DELETE FROM {table} d WHERE NOT EXISTS (SELECT 1 FROM bh_tenants t WHERE t.tenant = d.tenant)"
                    ),
                    &[],
                )
                .await
                .map_err(sql)?;
            if n > 0 {
                tracing::info!(table, rows = n, "Removed data of a deleted tenant (an interrupted deletion).");
            }
        }
        Ok(())
    }

    /// The session's sealed metadata, opened; `None` when it does not exist.
    async fn meta(
        &self,
        client: &tokio_postgres::Client,
        t: &TenantId,
        keys: &TenantKeys,
        sid: &str,
    ) -> Result<Option<(OpenMeta, u64, u64)>, StoreError> {
        let row = client
            .query_opt("SELECT meta, next_seq, updated_ms FROM bh_sessions WHERE tenant = $1 AND sid = $2", &[
                &t.as_str(),
                &sid,
            ])
            .await
            .map_err(sql)?;
        let Some(row) = row else { return Ok(None) };
        let meta = open_meta(keys, t, sid, row.get::<_, &[u8]>(0))?;
        Ok(Some((meta, row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) as u64)))
    }

    /// Records `from..next` of a session, verified: each opens at its position, and none is
    /// missing (a deleted row is an integrity error, not a shorter transcript).
    async fn records(
        &self,
        client: &tokio_postgres::Client,
        t: &TenantId,
        sid: &str,
        meta: &OpenMeta,
        from: u64,
        next: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let rows = client
            .query(
                "SELECT seq, sealed FROM bh_records WHERE tenant = $1 AND sid = $2 AND seq >= $3 ORDER BY seq",
                &[&t.as_str(), &sid, &(from as i64)],
            )
            .await
            .map_err(sql)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut expected = from;
        for row in &rows {
            let seq = row.get::<_, i64>(0) as u64;
            if seq >= next {
                // Written by an append that has not committed its counter: not acknowledged.
                break;
            }
            if seq != expected {
                return Err(super::integrity(t, sid, &format!("record {expected} is missing (cut out)")));
            }
            let sealed: &[u8] = row.get(1);
            if sealed.len() < NONCE_LEN {
                return Err(super::integrity(t, sid, &format!("record {seq} is truncated")));
            }
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&sealed[..NONCE_LEN]);
            let frame = format::RawFrame { offset: 0, nonce, body: &sealed[NONCE_LEN..] };
            out.push(super::open_record(&meta.data, t, sid, seq, &frame)?);
            expected += 1;
        }
        if expected != next {
            return Err(super::integrity(t, sid, &format!("records {expected}..{next} are missing (cut off)")));
        }
        Ok(out)
    }

    /// Every session of a tenant, read leniently (for export).
    pub async fn read_tenant(&self, t: &TenantId) -> Result<Vec<SessionRead>, StoreError> {
        let keys = self.keys(t).await?;
        let client = self.inner.db.client().await.map_err(db_err)?;
        let rows = client
            .query("SELECT sid FROM bh_sessions WHERE tenant = $1 ORDER BY sid", &[&t.as_str()])
            .await
            .map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let sid: String = row.get(0);
            let read = match self.meta(&client, t, &keys, &sid).await {
                Ok(Some((meta, next, _))) => {
                    let (records, problems) = match self.records(&client, t, &sid, &meta, 0, next).await {
                        Ok(records) => (records, Vec::new()),
                        Err(StoreError::Integrity(e)) => (Vec::new(), vec![e]),
                        Err(e) => return Err(e),
                    };
                    SessionRead { key: meta.key, created_ms: meta.created_ms, records, problems, torn_tail: false }
                }
                Ok(None) => continue,
                Err(StoreError::Integrity(e)) => SessionRead::unreadable(e),
                Err(e) => return Err(e),
            };
            out.push(read);
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Crypto-shredding: the wrapped identity goes first (its own committed transaction), then
    /// the ciphertext. Returns `false` when the tenant had nothing in the store.
    pub async fn delete_tenant(&self, t: &TenantId) -> Result<bool, StoreError> {
        self.inner.tenants.write().expect("tenants lock").remove(t);
        let client = self.inner.db.client().await.map_err(db_err)?;
        let n = client.execute("DELETE FROM bh_tenants WHERE tenant = $1", &[&t.as_str()]).await.map_err(sql)?;
        let mut any = n > 0;
        for table in ["bh_records", "bh_sessions", "bh_documents"] {
            let n = client
                .execute(&format!("DELETE FROM {table} WHERE tenant = $1"), &[&t.as_str()])
                .await
                .map_err(sql)?;
            any |= n > 0;
        }
        Ok(any)
    }

    /// Deletes sessions whose last message is older than their tenant's retention.
    pub async fn apply_retention(
        &self,
        retention: &Retention,
        now: std::time::SystemTime,
    ) -> Result<Vec<(TenantId, usize)>, StoreError> {
        let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut report = Vec::new();
        for t in self.tenants().await? {
            let Some(days) = retention.days_for(&t) else { continue };
            let cutoff = now.saturating_sub(u64::from(days) * 86_400_000) as i64;
            let mut client = self.inner.db.client().await.map_err(db_err)?;
            let tx = client.transaction().await.map_err(sql)?;
            let rows = tx
                .query("DELETE FROM bh_sessions WHERE tenant = $1 AND updated_ms < $2 RETURNING sid", &[
                    &t.as_str(),
                    &cutoff,
                ])
                .await
                .map_err(sql)?;
            let sids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            tx.execute("DELETE FROM bh_records WHERE tenant = $1 AND sid = ANY($2)", &[&t.as_str(), &sids])
                .await
                .map_err(sql)?;
            tx.commit().await.map_err(sql)?;
            if !sids.is_empty() {
                tracing::info!(tenant = %t, deleted = sids.len(), days, "Retention deleted expired sessions.");
            }
            report.push((t, sids.len()));
        }
        Ok(report)
    }
}

/// How long a store operation may take before it fails (a database cut off mid-operation): the
/// caller gets a clear error instead of waiting, and the half-sent transaction is never committed.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

async fn timed<R>(op: impl std::future::Future<Output = Result<R, StoreError>>) -> Result<R, StoreError> {
    tokio::time::timeout(STORE_TIMEOUT, op)
        .await
        .unwrap_or_else(|_| Err(StoreError::Io("database: no answer in time (unreachable or overloaded)".into())))
}

/// The advisory-lock key of a session: 64 bits of its keyed digest (no session key in `pg_locks`).
fn run_lock_key(sid: &str) -> i64 {
    let bytes = crate::crypto::unhex(&sid[..16]).unwrap_or_default();
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8.min(bytes.len())]);
    i64::from_be_bytes(b)
}

#[async_trait]
impl SessionStore for PgStore {
    async fn append(&self, t: &TenantId, key: &SessionKey, messages: &[Message]) -> Result<(), StoreError> {
        timed(async {
            let keys = self.keys(t).await?;
            let key_text = key.to_string();
            let sid = keys.session_id(&key_text);
            let mut client = self.inner.db.client().await.map_err(db_err)?;
            let tx = client.transaction().await.map_err(sql)?;
            let ts = now_ms();
            let lock = "SELECT meta, next_seq FROM bh_sessions WHERE tenant = $1 AND sid = $2 FOR UPDATE";
            let row = match tx.query_opt(lock, &[&t.as_str(), &sid]).await.map_err(sql)? {
                Some(row) => row,
                None => {
                    // A new session's row, sealed; a concurrent creation by another gateway wins.
                    let dk: [u8; 32] = random(&self.inner.rng).map_err(StoreError::Io)?;
                    let meta = make_meta(&keys, t.as_str(), &sid, &key_text, ts, &dk)?;
                    tx.execute(
                        "INSERT INTO bh_sessions (tenant, sid, meta, next_seq, updated_ms) VALUES ($1, $2, $3, 0, $4)
                         ON CONFLICT (tenant, sid) DO NOTHING",
                        &[&t.as_str(), &sid, &meta, &(ts as i64)],
                    )
                    .await
                    .map_err(sql)?;
                    tx.query_one(lock, &[&t.as_str(), &sid]).await.map_err(sql)?
                }
            };
            let meta = open_meta(&keys, t, &sid, row.get::<_, &[u8]>(0))?;
            let mut seq = row.get::<_, i64>(1) as u64;
            let stmt = tx
                .prepare("INSERT INTO bh_records (tenant, sid, seq, sealed) VALUES ($1, $2, $3, $4)")
                .await
                .map_err(sql)?;
            for m in messages {
                let rec = Record { v: format::RECORD_VERSION, ts, msg: RecordMessage::from(m) };
                let pt = serde_json::to_vec(&rec).map_err(|e| StoreError::Io(format!("cannot encode a record: {e}")))?;
                let frame = meta.data.seal_frame(&self.inner.rng, t.as_str(), &sid, seq, &pt).map_err(StoreError::Io)?;
                // The frame without its length prefix: nonce ‖ ciphertext ‖ tag.
                tx.execute(&stmt, &[&t.as_str(), &sid, &(seq as i64), &&frame[4..]]).await.map_err(sql)?;
                seq += 1;
            }
            tx.execute("UPDATE bh_sessions SET next_seq = $3, updated_ms = $4 WHERE tenant = $1 AND sid = $2", &[
                &t.as_str(),
                &sid,
                &(seq as i64),
                &(ts as i64),
            ])
            .await
            .map_err(sql)?;
            tx.commit().await.map_err(sql)
        })
        .await
    }

    async fn history(&self, t: &TenantId, key: &SessionKey, limit: Option<usize>) -> Result<Vec<Message>, StoreError> {
        timed(async {
            let (keys, sid) = self.sid(t, key).await?;
            let client = self.inner.db.client().await.map_err(db_err)?;
            let Some((meta, next, _)) = self.meta(&client, t, &keys, &sid).await? else { return Ok(Vec::new()) };
            let from = limit.map_or(0, |l| next.saturating_sub(l as u64));
            let records = self.records(&client, t, &sid, &meta, from, next).await?;
            Ok(records.into_iter().map(|r| Message::from(r.msg)).collect())
        })
        .await
    }

    async fn list(&self, t: &TenantId) -> Result<Vec<SessionSummary>, StoreError> {
        timed(async {
            let keys = self.keys(t).await?;
            let client = self.inner.db.client().await.map_err(db_err)?;
            let rows = client
                .query("SELECT sid, meta, next_seq, updated_ms FROM bh_sessions WHERE tenant = $1", &[&t.as_str()])
                .await
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let sid: &str = row.get(0);
                match open_meta(&keys, t, sid, row.get::<_, &[u8]>(1)) {
                    Ok(meta) => match SessionKey::parse(&meta.key) {
                        Ok(key) => out.push(SessionSummary {
                            key,
                            messages: row.get::<_, i64>(2) as usize,
                            updated: UNIX_EPOCH + Duration::from_millis(row.get::<_, i64>(3) as u64),
                        }),
                        Err(_) => tracing::warn!(tenant = %t, session = %sid, "Skipped a session with an invalid key."),
                    },
                    Err(e) => tracing::warn!(tenant = %t, session = %sid, error = %e, "Skipped an unreadable session."),
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn exists(&self, t: &TenantId, key: &SessionKey) -> Result<bool, StoreError> {
        timed(async {
            let (keys, sid) = self.sid(t, key).await?;
            let client = self.inner.db.client().await.map_err(db_err)?;
            Ok(self.meta(&client, t, &keys, &sid).await?.is_some())
        })
        .await
    }

    async fn message_count(&self, t: &TenantId, key: &SessionKey) -> Result<usize, StoreError> {
        timed(async {
            let (keys, sid) = self.sid(t, key).await?;
            let client = self.inner.db.client().await.map_err(db_err)?;
            Ok(self.meta(&client, t, &keys, &sid).await?.map_or(0, |(_, n, _)| n as usize))
        })
        .await
    }

    async fn delete_session(&self, t: &TenantId, key: &SessionKey) -> Result<bool, StoreError> {
        timed(async {
            let (_, sid) = self.sid(t, key).await?;
            let mut client = self.inner.db.client().await.map_err(db_err)?;
            let tx = client.transaction().await.map_err(sql)?;
            // The row holding the data key goes with the records, in one transaction.
            let n = tx
                .execute("DELETE FROM bh_sessions WHERE tenant = $1 AND sid = $2", &[&t.as_str(), &sid])
                .await
                .map_err(sql)?;
            tx.execute("DELETE FROM bh_records WHERE tenant = $1 AND sid = $2", &[&t.as_str(), &sid])
                .await
                .map_err(sql)?;
            tx.commit().await.map_err(sql)?;
            Ok(n > 0)
        })
        .await
    }

    async fn load_document(&self, t: &TenantId, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        timed(async {
            super::document_path(std::path::Path::new(""), name)?;
            let keys = self.keys(t).await?;
            let client = self.inner.db.client().await.map_err(db_err)?;
            let row = client
                .query_opt("SELECT sealed FROM bh_documents WHERE tenant = $1 AND name = $2", &[&t.as_str(), &name])
                .await
                .map_err(sql)?;
            row.map(|r| open_document(&keys, t, name, r.get::<_, &[u8]>(0))).transpose()
        })
        .await
    }

    async fn save_document(&self, t: &TenantId, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        timed(async {
            super::document_path(std::path::Path::new(""), name)?;
            let keys = self.keys(t).await?;
            let sealed = seal_document(&keys, t.as_str(), name, bytes)?;
            let client = self.inner.db.client().await.map_err(db_err)?;
            client
                .execute(
                    "INSERT INTO bh_documents (tenant, name, sealed) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant, name) DO UPDATE SET sealed = EXCLUDED.sealed",
                    &[&t.as_str(), &name, &sealed],
                )
                .await
                .map_err(sql)?;
            Ok(())
        })
        .await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn lock_document(&self, t: &TenantId, name: &str) -> Result<RunGuard, StoreError> {
        let keys = self.keys(t).await?;
        let lock = self.inner.db.lock_run(run_lock_key(&keys.session_id(&format!("document\0{name}"))), None).await;
        Ok(RunGuard::new(lock.map_err(db_err)?))
    }

    async fn lock_run(&self, t: &TenantId, key: &SessionKey, tenant_cap: usize) -> Result<RunGuard, StoreError> {
        let (_, sid) = self.sid(t, key).await?;
        // The tenant's run slots: keyed by 32 bits of a digest of the tenant id (not secret).
        let digest = ring::digest::digest(&ring::digest::SHA256, t.as_str().as_bytes());
        let tenant_key = i32::from_be_bytes(digest.as_ref()[..4].try_into().unwrap_or([0; 4]));
        let slots = (tenant_key, i32::try_from(tenant_cap).unwrap_or(i32::MAX));
        let lock = self.inner.db.lock_run(run_lock_key(&sid), Some(slots)).await.map_err(db_err)?;
        Ok(RunGuard::new(lock))
    }
}

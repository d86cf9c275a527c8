//! Several gateways on one PostgreSQL database: the connection pool, the versioned schema, the
//! gateway's identity, leases on connections that must have one owner (`lease.rs`), and the
//! per-session run lock. The single-host default (file store) uses none of this.
//!
//! The database is trusted with availability only: what the store writes is sealed per tenant
//! before it leaves the gateway (`store::postgres`).

pub mod lease;
pub mod usage;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::SecretString;

/// The schema migrations, in order; `bh_schema` records which are applied.
const MIGRATIONS: [(i32, &str); 1] = [(1, include_str!("../../migrations/0001_init.sql"))];

/// Advisory-lock key serialising migrations between gateways starting at once ("bulkhead").
const MIGRATION_LOCK: i64 = 0x6275_6c6b_6865_6164;

/// How long a request waits for a pooled connection, and a new connection for the server.
const POOL_WAIT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most turns one gateway runs at once (`agents.defaults.maxConcurrent`'s bound).
const MAX_RUN_LOCKS: usize = 1024;

/// A pool of connections to the shared database and this gateway's id in it.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    /// Connections that hold a run lock for a turn's length (one per running turn, made on
    /// demand up to `agents.defaults.maxConcurrent`'s bound), apart so runs never starve queries.
    locks: Pool,
    gateway: String,
}

/// Why the database cannot be used. Never holds the URL (it may carry a password).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("store.url is not a valid PostgreSQL URL: {0}")]
    Url(String),
    #[error(
        "store.url names host {0:?}: bulkhead talks to PostgreSQL without TLS, so only loopback and Unix-socket hosts are accepted (reach a remote server through a local TLS tunnel; see docs/scale-out.md)"
    )]
    NotLocal(String),
    #[error("PostgreSQL: {0}")]
    Sql(String),
    #[error("the database schema is version {found}, newer than this gateway knows ({known}): upgrade the gateway")]
    Newer { found: i32, known: i32 },
}

/// A database error as text: the server's message and code, never the query's parameters.
pub fn sql_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None if e.is_closed() => "the connection to the database is closed".into(),
        None => {
            // Connection errors: the source names the cause (refused, timed out, auth).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> DbError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => DbError::Sql(sql_error(&e)),
        deadpool_postgres::PoolError::Timeout(_) => {
            DbError::Sql("no database connection became free in time (server down or pool exhausted)".into())
        }
        other => DbError::Sql(other.to_string()),
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Sql(sql_error(&e))
    }
}

/// Checks that a URL parses and names only loopback or Unix-socket hosts (no TLS is built).
pub fn check_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let config: tokio_postgres::Config =
        url.parse().map_err(|e: tokio_postgres::Error| DbError::Url(e.to_string()))?;
    if config.get_hosts().is_empty() {
        return Err(DbError::Url("no host".into()));
    }
    for host in config.get_hosts() {
        if let tokio_postgres::config::Host::Tcp(name) = host {
            let loopback = name == "localhost"
                || name.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(DbError::NotLocal(name.clone()));
            }
        }
    }
    Ok(config)
}

/// A new gateway's id: its host name and a random part (unique per process, so a restarted
/// gateway never mistakes an old lease of its own for a current one).
pub fn gateway_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').take(40).collect();
    let tag: [u8; 4] = crate::crypto::random(&ring::rand::SystemRandom::new()).unwrap_or_default();
    format!("{}-{}", if host.is_empty() { "gateway" } else { &host }, crate::crypto::hex(&tag))
}

impl Db {
    /// Connects (one connection at once, to fail fast) and brings the schema up to date.
    pub async fn connect(url: &SecretString, pool_size: u32, gateway: String) -> Result<Self, DbError> {
        let db = Self::open(url, pool_size, gateway)?;
        db.migrate().await?;
        db.register().await?;
        Ok(db)
    }

    /// The pools, without touching the database yet (`doctor` only looks).
    pub fn open(url: &SecretString, pool_size: u32, gateway: String) -> Result<Self, DbError> {
        let mut config = check_url(url.expose())?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("bulkhead");
        // A peer that vanishes (a partition) is noticed within about a minute, releasing its
        // session-level locks on the server.
        config.keepalives(true).keepalives_idle(Duration::from_secs(20));
        let make = |size: usize| {
            let manager =
                Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(POOL_WAIT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .build()
                .map_err(|e| DbError::Sql(e.to_string()))
        };
        Ok(Self { pool: make(pool_size as usize)?, locks: make(MAX_RUN_LOCKS)?, gateway })
    }

    /// The newest schema version this gateway knows.
    pub fn known_version() -> i32 {
        MIGRATIONS.last().map_or(0, |m| m.0)
    }

    /// This gateway's id in the database (leases name their holder by it).
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Applies the migrations this database lacks, one transaction, serialised between gateways.
    async fn migrate(&self) -> Result<(), DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS bh_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let row = tx.query_one("SELECT coalesce(max(version), 0) FROM bh_schema", &[]).await?;
        let found: i32 = row.get(0);
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if found > known {
            return Err(DbError::Newer { found, known });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
            tx.batch_execute(sql).await?;
            tx.execute("INSERT INTO bh_schema (version) VALUES ($1)", &[version]).await?;
            tracing::info!(version, "Applied a database migration.");
        }
        tx.commit().await?;
        Ok(())
    }

    async fn register(&self) -> Result<(), DbError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO bh_gateways (id, started_at, seen_at) VALUES ($1, now(), now())
                 ON CONFLICT (id) DO UPDATE SET started_at = now(), seen_at = now()",
                &[&self.gateway],
            )
            .await?;
        Ok(())
    }

    /// The schema version and the server's clock minus ours (for `doctor`).
    pub async fn status(&self) -> Result<(i32, Duration, bool), DbError> {
        let client = self.client().await?;
        let migrated: bool = client.query_one("SELECT to_regclass('bh_schema') IS NOT NULL", &[]).await?.get(0);
        let version: i32 = if migrated {
            client.query_one("SELECT coalesce(max(version), 0) FROM bh_schema", &[]).await?.get(0)
        } else {
            0
        };
        let before = std::time::SystemTime::now();
        let row = client.query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[]).await?;
        let server: f64 = row.get(0);
        let ours = before.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let skew = server - ours;
        Ok((version, Duration::from_secs_f64(skew.abs()), skew >= 0.0))
    }

    /// Runs of one session never overlap across gateways: a transaction-level advisory lock,
    /// held in an open transaction for the run and released when the guard drops. The server
    /// ends a transaction left idle for `RUN_LOCK_TIMEOUT` (the guard pings it meanwhile), so a
    /// gateway cut off from the database loses its locks within that time and no session waits
    /// on a dead gateway. `key` is a keyed digest, so `pg_locks` shows no session key.
    ///
    /// `slots`: `(tenant, cap)` also takes one of the tenant's `cap` run slots (a lock on the pair
    /// (tenant, slot)), waiting while every slot is held on some gateway: the tenant's cap holds
    /// across the fleet exactly.
    pub async fn lock_run(&self, key: i64, slots: Option<(i32, i32)>) -> Result<RunLock, DbError> {
        let client = self.locks.get().await.map_err(pool_error)?;
        let taken = async {
            client
                .batch_execute(&format!(
                    "SET idle_in_transaction_session_timeout = {}; BEGIN",
                    RUN_LOCK_TIMEOUT.as_millis()
                ))
                .await?;
            client.execute("SELECT pg_advisory_xact_lock($1)", &[&key]).await?;
            let Some((tenant, cap)) = slots else { return Ok::<(), tokio_postgres::Error>(()) };
            let mut wait = Duration::from_millis(10);
            loop {
                // One round trip tries every slot and keeps the first it gets.
                let row = client
                    .query_opt(
                        "SELECT s FROM generate_series(0, $2 - 1) AS s WHERE pg_try_advisory_xact_lock($1, s) LIMIT 1",
                        &[&tenant, &cap],
                    )
                    .await?;
                if row.is_some() {
                    return Ok(());
                }
                // Every slot is taken on some gateway: wait for one.
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(200));
            }
        };
        if let Err(e) = taken.await {
            drop(deadpool_postgres::Object::take(client));
            return Err(e.into());
        }
        // The transaction lives in a task that pings it until the guard drops, then ends it.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::pin!(released);
            loop {
                tokio::select! {
                    _ = &mut released => break,
                    () = tokio::time::sleep(RUN_LOCK_TIMEOUT / 3) => {
                        if client.execute("SELECT 1", &[]).await.is_err() {
                            // Gone: the server ends the transaction (and the lock) by itself.
                            drop(deadpool_postgres::Object::take(client));
                            return;
                        }
                    }
                }
            }
            if let Err(e) = client.batch_execute("ROLLBACK").await {
                // The connection must not go back to the pool inside the transaction.
                tracing::warn!(error = %sql_error(&e), "Cannot release a session lock; dropping its connection.");
                drop(deadpool_postgres::Object::take(client));
            }
        });
        Ok(RunLock { _release: release })
    }
}

/// How long the server keeps a run lock whose gateway stopped talking to it.
pub const RUN_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// A held run lock; dropping it ends its transaction, releasing the lock.
pub struct RunLock {
    _release: tokio::sync::oneshot::Sender<()>,
}

//! Leases: exactly one gateway owns a connection that must have one owner (a Telegram bot's long
//! poll). A lease has a holder, an expiry kept by the database's clock, and a fence that grows at
//! every change of holder; the holder's progress (`position`) is written only under its fence.
//!
//! The holder stops trusting its lease at `valid_until`: the time it *sent* its last successful
//! renewal plus the TTL minus a margin. The database set the expiry from its own clock when it
//! ran the renewal, which is later, so a gateway cut off from the database stops using the lease
//! at least `margin` before another gateway can take it over.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Db, DbError};

/// One held lease. Dropping it does not release it (it lapses); call [`Lease::release`].
pub struct Lease {
    db: Db,
    name: String,
    ttl: Duration,
    fence: i64,
    valid_until: Validity,
}

/// Until when a lease may be acted on, shared with whatever acts under it (a bot's sender).
#[derive(Clone)]
pub struct Validity(Arc<Mutex<Instant>>);

impl Validity {
    pub fn is_valid(&self) -> bool {
        Instant::now() < *self.0.lock().expect("validity lock")
    }
    fn set(&self, until: Instant) {
        *self.0.lock().expect("validity lock") = until;
    }
    fn until(&self) -> Instant {
        *self.0.lock().expect("validity lock")
    }
}

/// Who holds a lease, for `/admin/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaseInfo {
    pub name: String,
    pub holder: String,
    pub fence: i64,
    #[serde(rename = "expiresInMs")]
    pub expires_in_ms: i64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Lease {
    /// The part of the TTL a holder gives up before the database's expiry.
    pub fn margin(ttl: Duration) -> Duration {
        ttl / 3
    }

    /// Takes the lease if it is free or expired; `None` while another gateway holds it.
    pub async fn acquire(db: &Db, name: &str, ttl: Duration) -> Result<Option<Lease>, DbError> {
        let client = db.client().await?;
        let sent = Instant::now();
        let row = client
            .query_opt(
                "INSERT INTO bh_leases (name, holder, fence, expires_at)
                 VALUES ($1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE
                   SET holder = EXCLUDED.holder, fence = bh_leases.fence + 1, expires_at = EXCLUDED.expires_at
                   WHERE bh_leases.expires_at < clock_timestamp()
                 RETURNING fence",
                &[&name, &db.gateway(), &(ms(ttl) as f64)],
            )
            .await?;
        Ok(row.map(|r| Lease {
            db: db.clone(),
            name: name.to_string(),
            ttl,
            fence: r.get(0),
            valid_until: Validity(Arc::new(Mutex::new(sent + ttl - Self::margin(ttl)))),
        }))
    }

    pub fn fence(&self) -> i64 {
        self.fence
    }

    /// Whether this gateway may still act as the owner (checked before every action).
    pub fn is_valid(&self) -> bool {
        self.valid_until.is_valid()
    }

    /// A handle on this lease's validity for what acts under it.
    pub fn validity(&self) -> Validity {
        self.valid_until.clone()
    }

    /// How long the lease stays valid without a renewal.
    pub fn remaining(&self) -> Duration {
        self.valid_until.until().saturating_duration_since(Instant::now())
    }

    /// Extends the lease. `Ok(false)`: it was lost (expired and taken, or released).
    pub async fn renew(&mut self) -> Result<bool, DbError> {
        let client = self.db.client().await?;
        let sent = Instant::now();
        let n = client
            .execute(
                "UPDATE bh_leases SET expires_at = clock_timestamp() + $4 * interval '1 millisecond'
                 WHERE name = $1 AND holder = $2 AND fence = $3 AND expires_at > clock_timestamp()",
                &[&self.name, &self.db.gateway(), &self.fence, &(ms(self.ttl) as f64)],
            )
            .await?;
        if n == 1 {
            self.valid_until.set(sent + self.ttl - Self::margin(self.ttl));
            Ok(true)
        } else {
            self.valid_until.set(Instant::now());
            Ok(false)
        }
    }

    /// The owner's saved progress (`None` before the first save).
    pub async fn position(&self) -> Result<Option<i64>, DbError> {
        let client = self.db.client().await?;
        let row = client.query_one("SELECT position FROM bh_leases WHERE name = $1", &[&self.name]).await?;
        Ok(row.get(0))
    }

    /// Saves progress under this lease's fence. `Ok(false)`: the lease is no longer ours, and
    /// nothing was written (a stale owner can never move the position).
    pub async fn save_position(&mut self, position: i64) -> Result<bool, DbError> {
        if !self.is_valid() {
            return Ok(false);
        }
        let client = self.db.client().await?;
        let n = client
            .execute(
                "UPDATE bh_leases SET position = $4
                 WHERE name = $1 AND holder = $2 AND fence = $3 AND expires_at > clock_timestamp()",
                &[&self.name, &self.db.gateway(), &self.fence, &position],
            )
            .await?;
        Ok(n == 1)
    }

    /// Gives the lease up at once (a clean stop): another gateway may take it immediately.
    pub async fn release(self) {
        let Ok(client) = self.db.client().await else { return };
        let _ = client
            .execute(
                "UPDATE bh_leases SET expires_at = clock_timestamp() - interval '1 millisecond'
                 WHERE name = $1 AND holder = $2 AND fence = $3",
                &[&self.name, &self.db.gateway(), &self.fence],
            )
            .await;
    }
}

/// Every lease and its holder.
pub async fn list(db: &Db) -> Result<Vec<LeaseInfo>, DbError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT name, holder, fence, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint
             FROM bh_leases ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| LeaseInfo { name: r.get(0), holder: r.get(1), fence: r.get(2), expires_in_ms: r.get(3) })
        .collect())
}

//! Accounts with one owner among gateways sharing a database (a Telegram long poll, a Discord
//! shard, a Signal event stream): the account runs on this gateway only while it holds the
//! account's lease (`cluster::lease`), named `<channel>/<account>`.
//!
//! Take the lease (or wait for it to lapse) → start the account with its sender fenced by the
//! lease → renew every quarter TTL. A renewal that fails for long enough lets the lease lapse
//! locally first (`Lease::margin` before the database's expiry): the sender refuses, the account
//! is stopped, and its unanswered messages stay in the tenant's inbox for the next owner, which
//! resumes from the same inbox. A clean stop releases the lease at once.

use std::time::Duration;

use tokio::sync::watch;

use super::adapter::{Adapter, Context};
use crate::cluster::Db;
use crate::cluster::lease::Lease;

enum Held {
    /// The account ended by itself (a revoked token): it stays stopped, as without a lease.
    Ended,
    /// The gateway stops the account (shutdown, reload).
    Stopped,
    /// The lease lapsed or was taken: wait to take it again.
    Lost,
}

/// Runs `account` of `adapter` whenever this gateway holds its lease, until `stopped`.
pub fn start(
    ctx: &Context,
    db: Db,
    adapter: &'static dyn Adapter,
    account: String,
    mut stopped: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let name = format!("{}/{account}", adapter.channel());
        loop {
            let ttl = ctx.live.load().runtime.config.store.lease_ttl();
            let Some(mut lease) = acquire(&db, &name, ttl, &mut stopped).await else { return };
            tracing::info!(account = %name, fence = lease.fence(), gateway = db.gateway(), "This gateway owns the account now.");
            let config = ctx.live.load().runtime.config.clone();
            let (stop, inner) = watch::channel(false);
            let owned = Context { owner: Some(lease.validity()), ..ctx.clone() };
            let mut task = match adapter.start_account(&owned, &config, &account, inner) {
                Ok(task) => task,
                Err(e) => {
                    tracing::error!(account = %name, error = %e, "The account cannot start.");
                    lease.release().await;
                    return;
                }
            };
            let held = loop {
                tokio::select! {
                    _ = &mut task => break Held::Ended,
                    _ = stopped.wait_for(|s| *s) => break Held::Stopped,
                    () = tokio::time::sleep(ttl / 4) => {}
                }
                let wait = lease.remaining().min(ttl / 4).max(Duration::from_millis(100));
                match tokio::time::timeout(wait, lease.renew()).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => break Held::Lost,
                    Ok(Err(e)) => tracing::warn!(account = %name, error = %e, "Cannot renew the account's lease."),
                    Err(_) => tracing::warn!(account = %name, "Renewing the account's lease timed out."),
                }
                if !lease.is_valid() {
                    break Held::Lost;
                }
            };
            let _ = stop.send(true);
            match held {
                Held::Ended => {
                    lease.release().await;
                    return;
                }
                Held::Stopped => {
                    let _ = task.await;
                    lease.release().await;
                    return;
                }
                Held::Lost => {
                    tracing::warn!(account = %name, "This gateway lost the account's lease; it stopped serving it (another gateway takes over).");
                    if tokio::time::timeout(ttl, task).await.is_err() {
                        tracing::warn!(account = %name, "The account did not stop in time after losing its lease.");
                    }
                }
            }
        }
    })
}

/// Waits until this gateway takes the lease; `None` once `stopped`.
async fn acquire(db: &Db, name: &str, ttl: Duration, stopped: &mut watch::Receiver<bool>) -> Option<Lease> {
    let mut logged = false;
    loop {
        if *stopped.borrow() {
            return None;
        }
        match tokio::time::timeout(ttl, Lease::acquire(db, name, ttl)).await {
            Ok(Ok(Some(lease))) => return Some(lease),
            Ok(Ok(None)) if !logged => {
                tracing::info!(account = %name, "Another gateway owns the account; standing by.");
                logged = true;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(account = %name, error = %e, "Cannot take the account's lease; retrying."),
            Err(_) => tracing::warn!(account = %name, "Taking the account's lease timed out; retrying."),
        }
        tokio::select! {
            () = tokio::time::sleep(ttl / 4) => {}
            _ = stopped.wait_for(|s| *s) => return None,
        }
    }
}

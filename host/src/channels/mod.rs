//! Chat channels: platform adapters around one shared layer.
//!
//! The shared part is platform-independent: `access` (who may talk to a bot), `pairing` (codes
//! for unknown senders, approvals kept encrypted), `outbound` (splitting, pacing and bounded
//! per-bot queues), `inbound` (routing an accepted message to its agent and sending the reply)
//! and `inbox` (accepted messages kept durably until answered). An adapter (`adapter::Adapter`,
//! registered in `adapter::ADAPTERS`; `telegram` is the first) only translates the platform's
//! wire format to and from it. [`Channels`] runs one connection per account and, on reload,
//! restarts only the accounts whose settings changed.

pub mod access;
pub mod adapter;
pub mod dedupe;
pub mod discord;
pub mod imessage;
pub mod inbound;
pub mod inbox;
pub mod net;
pub mod outbound;
mod owned;
pub mod pairing;
pub mod signal;
pub mod slack;
pub mod telegram;
pub mod webhook;
pub mod whatsapp;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::gateway::Live;
use adapter::{ADAPTERS, Context};
use pairing::Pairing;

/// One running account.
struct Running {
    fingerprint: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What bringing the running accounts in line with a config takes.
struct Plan {
    wanted: BTreeMap<(&'static str, String), (&'static dyn adapter::Adapter, String)>,
    stale: Vec<(&'static str, String)>,
    touched: Vec<String>,
}

/// Running channel accounts, by `(channel, account)`; dropping it does not stop them, `stop`
/// does.
pub struct Channels {
    ctx: Context,
    running: BTreeMap<(&'static str, String), Running>,
}

/// Start-up checks of every built adapter (those needing resolved secrets). Empty: all pass.
pub fn check(config: &Config) -> Vec<String> {
    ADAPTERS.iter().flat_map(|a| a.check(config)).collect()
}

impl Channels {
    /// The channel context over `live` (no account started yet).
    /// `db`: the database several gateways share, when they do; then an account whose
    /// connection must have one owner runs only while this gateway holds its lease.
    pub fn new(live: &Live, pairing: &Arc<Pairing>, db: Option<crate::cluster::Db>) -> Self {
        let inbox = Arc::new(inbox::Inboxes::new(live.load().runtime.store.clone()));
        let ctx = Context { live: live.clone(), pairing: pairing.clone(), inbox, db, owner: None };
        Self { ctx, running: BTreeMap::new() }
    }

    /// The routes every adapter serves on the HTTP server (webhooks).
    pub fn routes(&self) -> axum::Router {
        ADAPTERS.iter().filter_map(|a| a.routes(&self.ctx)).fold(axum::Router::new(), axum::Router::merge)
    }

    /// What `apply` would do: the accounts wanted by `config` (with their adapter and
    /// fingerprint), the running ones to stop, and `channel/account` of every account it would
    /// stop or start, sorted.
    fn plan(&self, config: &Config) -> Plan {
        let mut wanted = BTreeMap::new();
        for a in ADAPTERS {
            for acc in config.channels.accounts_of(a.channel()) {
                wanted.insert((a.channel(), acc.id.clone()), (*a, acc.fingerprint()));
            }
        }
        let stale: Vec<_> = self
            .running
            .iter()
            .filter(|(key, r)| wanted.get(*key).is_none_or(|(_, fp)| *fp != r.fingerprint))
            .map(|(key, _)| key.clone())
            .collect();
        let mut touched: BTreeSet<String> = stale.iter().map(|(c, id)| format!("{c}/{id}")).collect();
        for key in wanted.keys() {
            if !self.running.contains_key(key) || stale.contains(key) {
                touched.insert(format!("{}/{}", key.0, key.1));
            }
        }
        Plan { wanted, stale, touched: touched.into_iter().collect() }
    }

    /// Every account started, as `(channel, account, running)`: `running` is false once its
    /// task has ended (a revoked token, a fatal platform error).
    pub fn accounts(&self) -> Vec<(String, String, bool)> {
        self.running.iter().map(|((c, id), r)| (c.to_string(), id.clone(), !r.task.is_finished())).collect()
    }

    /// `channel/account` of every account `apply(config)` would stop or start.
    pub fn changes(&self, config: &Config) -> Vec<String> {
        self.plan(config).touched
    }

    /// Brings the running accounts in line with `config`: stops removed and changed accounts
    /// (each confirms what it took, within `grace`), starts added and changed ones, and leaves
    /// unchanged ones alone (they keep their connection). Returns `channel/account` of every
    /// account stopped or started (as `changes` said), and the accounts that failed to start.
    pub async fn apply(&mut self, config: &Config, grace: Duration) -> (Vec<String>, Vec<String>) {
        let Plan { wanted, stale, touched } = self.plan(config);
        let mut stopping = Vec::new();
        for key in stale {
            if let Some(r) = self.running.remove(&key) {
                let _ = r.stop.send(true);
                stopping.push(r.task);
            }
        }
        if tokio::time::timeout(grace, futures_util::future::join_all(stopping)).await.is_err() {
            tracing::warn!("Channel accounts did not stop within the grace period.");
        }
        let mut failed = Vec::new();
        for ((channel, id), (adapter, fingerprint)) in wanted {
            if self.running.contains_key(&(channel, id.clone())) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let started = match (&self.ctx.db, adapter.single_owner()) {
                (Some(db), true) => Ok(owned::start(&self.ctx, db.clone(), adapter, id.clone(), stopped)),
                _ => adapter.start_account(&self.ctx, config, &id, stopped),
            };
            match started {
                Ok(task) => {
                    self.running.insert((channel, id), Running { fingerprint, stop, task });
                }
                Err(e) => failed.push(e),
            }
        }
        (touched, failed)
    }

    /// Asks every account to stop taking messages and waits (bounded) for them to confirm what
    /// they read.
    pub async fn stop(self, grace: Duration) {
        for r in self.running.values() {
            let _ = r.stop.send(true);
        }
        let all = futures_util::future::join_all(self.running.into_values().map(|r| r.task));
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("Channel adapters did not stop within the grace period.");
        }
    }
}

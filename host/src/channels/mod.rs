//! Chat channels: platform adapters around one shared layer.
//!
//! The shared part is platform-independent: `access` (who may talk to a bot), `pairing` (codes
//! for unknown senders, approvals kept encrypted), `outbound` (splitting, pacing and bounded
//! per-bot queues), `inbound` (routing an accepted message to its agent and sending the reply)
//! and `inbox` (accepted messages kept durably until answered). An adapter such as `telegram`
//! only translates the platform's wire format to and from it.

pub mod access;
pub mod inbound;
pub mod inbox;
pub mod outbound;
pub mod pairing;
pub mod telegram;

use std::sync::Arc;

use tokio::sync::watch;

use crate::agent::Runtime;
use pairing::Pairing;

/// Running channel adapters; dropping it does not stop them, `stop` does.
pub struct Channels {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Channels {
    /// Starts every configured adapter. Fails (naming each problem) when a credential cannot be
    /// resolved, so `serve` refuses to start rather than run half its bots.
    pub fn start(rt: &Arc<Runtime>, pairing: &Arc<Pairing>) -> Result<Self, Vec<String>> {
        let (stop, stopped) = watch::channel(false);
        let inbox = Arc::new(inbox::Inboxes::new(rt.store.clone()));
        let tasks = telegram::start(rt, pairing, &inbox, &stopped)?;
        Ok(Self { stop, tasks })
    }

    /// Asks every adapter to stop polling and waits (bounded) for them to confirm what they read.
    pub async fn stop(self, grace: std::time::Duration) {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("Channel adapters did not stop within the grace period.");
        }
    }
}

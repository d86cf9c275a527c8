//! The seam every chat platform plugs into. An adapter translates one platform's wire format to
//! and from the shared layer (`access`, `pairing`, `inbound`, `outbound`, `inbox`) and tells the
//! rest of the gateway what it needs: its accounts in a config, the start-up checks that need
//! resolved secrets, one connection per account, webhook routes, doctor checks and the shape of
//! its sender ids.
//!
//! Adding a channel: write `channels/<name>/` with a type implementing [`Adapter`], and add it
//! to [`ADAPTERS`] (the one registration line). See ARCHITECTURE.md, "Adding a channel".

use std::sync::Arc;

use tokio::sync::watch;

use super::inbox::Inboxes;
use super::pairing::Pairing;
use crate::config::Config;
use crate::gateway::Live;

/// Every adapter built into this binary, by channel name.
pub static ADAPTERS: &[&dyn Adapter] = &[&super::telegram::Telegram];

/// The adapter of a channel, if this build has one.
pub fn adapter(channel: &str) -> Option<&'static dyn Adapter> {
    ADAPTERS.iter().copied().find(|a| a.channel() == channel)
}

/// One configured account of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSpec {
    pub id: String,
    /// Everything the account's connection depends on, rendered comparably: on reload an account
    /// whose fingerprint changed is restarted, an unchanged one keeps its connection.
    pub fingerprint: String,
}

/// What a running account shares with the rest of the gateway.
#[derive(Clone)]
pub struct Context {
    /// The running snapshot: every message is routed on the one current when it arrives.
    pub live: Live,
    pub pairing: Arc<Pairing>,
    pub inbox: Arc<Inboxes>,
}

/// One line of `bulkhead doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Note,
    Warn,
    Fail,
}

impl Check {
    pub fn ok(text: String) -> Self {
        Self { level: Level::Ok, text }
    }
    pub fn note(text: String) -> Self {
        Self { level: Level::Note, text }
    }
    pub fn warn(text: String) -> Self {
        Self { level: Level::Warn, text }
    }
    pub fn fail(text: String) -> Self {
        Self { level: Level::Fail, text }
    }
}

/// A chat platform.
pub trait Adapter: Send + Sync {
    /// The key of its block under `channels` (`"telegram"`).
    fn channel(&self) -> &'static str;

    /// Its enabled accounts in a checked config.
    fn accounts(&self, config: &Config) -> Vec<AccountSpec>;

    /// Start-up checks that need resolved secrets (credentials resolve, no bot shared by two
    /// accounts, ...). `serve`, `config check`, `doctor` and every reload run them.
    fn check(&self, config: &Config) -> Vec<String>;

    /// Starts one account's connection; it ends (having confirmed what it took) once `stopped`
    /// turns true. Reloading one account is stopping it and starting it again.
    fn start_account(
        &self,
        ctx: &Context,
        config: &Config,
        account: &str,
        stopped: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, String>;

    /// Routes it serves on the gateway's HTTP server (webhooks), outside `/v1` and `/admin`.
    /// They are built once at start; a handler reads the current snapshot from `ctx.live`.
    fn routes(&self, ctx: &Context) -> Option<axum::Router> {
        let _ = ctx;
        None
    }

    /// `bulkhead doctor` checks against the platform (credentials accepted, ...).
    fn doctor(&self, config: &Config) -> Vec<Check> {
        let _ = config;
        Vec::new()
    }

    /// Whether `id` is a sender id of this platform, for `allowFrom` lists (`"*"` is handled by
    /// the caller).
    fn check_sender_id(&self, id: &str) -> Result<(), String>;
}

//! The seam every chat platform plugs into. An adapter translates one platform's wire format to
//! and from the shared layer (`access`, `pairing`, `inbound`, `outbound`, `inbox`) and tells the
//! rest of the gateway what it needs: the validation pass over its own config keys, the start-up
//! checks that need resolved secrets, one connection per account, webhook routes, doctor checks
//! and the shape of its sender and group ids. The shared config pass (`config/validate/channels.rs`)
//! does everything else: enabled accounts, access settings and their inheritance, tenants.
//!
//! Adding a channel: write `channels/<name>/` with a type implementing [`Adapter`], and add it
//! to [`ADAPTERS`] (the one registration line). See ARCHITECTURE.md, "Adding a channel".

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::inbox::Inboxes;
use super::pairing::Pairing;
use crate::config::{Config, Errors, RawChannel, SecretRef, SecretString};
use crate::gateway::Live;

/// Every adapter built into this binary, by channel name.
pub static ADAPTERS: &[&dyn Adapter] =
    &[&super::telegram::Telegram, &super::discord::Discord, &super::slack::Slack, &super::imessage::IMessageAdapter];

/// The adapter of a channel, if this build has one.
pub fn adapter(channel: &str) -> Option<&'static dyn Adapter> {
    ADAPTERS.iter().copied().find(|a| a.channel() == channel)
}

/// Resolves each account's credential (`accounts`: id and reference) and refuses one credential
/// on two accounts, compared by digest in constant time: one bot belongs to one account and so
/// to one tenant. `fix` tells the operator what to do instead. Returns the errors and the
/// resolved credentials of the accounts that passed.
pub fn resolve_unique<'a>(
    config: &Config,
    channel: &str,
    accounts: impl IntoIterator<Item = (&'a str, &'a SecretRef)>,
    fix: &str,
) -> (Vec<String>, Vec<(&'a str, SecretString)>) {
    let mut errors = Vec::new();
    let mut resolved = Vec::new();
    let mut seen: crate::gateway::TokenIndex<String> = crate::gateway::TokenIndex::new();
    for (id, secret) in accounts {
        let path =
            config.channels.account(channel, id).map_or_else(|| format!("channels.{channel}"), |a| a.path.clone());
        match secret.resolve(&config.base_dir) {
            Ok(token) => {
                if let Some(first) = seen.lookup(token.expose()) {
                    errors.push(format!(
                        "{path}.token: the same bot token as {first}.token; a bot belongs to one account and so to one tenant: {fix}"
                    ));
                    continue;
                }
                seen.insert(token.expose(), path);
                resolved.push((id, token));
            }
            Err(e) => errors.push(format!("channels.{channel} account {id:?} token: {e}")),
        }
    }
    (errors, resolved)
}

/// A runtime for the platform calls a command makes outside a running gateway (`doctor`,
/// `tenant add`).
pub fn command_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// `bulkhead doctor` for one channel: every enabled account, or only `only` (`tenant add`
/// checks just the new bot), on one runtime.
pub fn doctor(adapter: &dyn Adapter, config: &Config, only: Option<&str>) -> Vec<Check> {
    let accounts: Vec<&str> = config
        .channels
        .accounts_of(adapter.channel())
        .iter()
        .map(|a| a.id.as_str())
        .filter(|id| only.is_none_or(|o| o == *id))
        .collect();
    if accounts.is_empty() {
        return Vec::new();
    }
    match command_runtime() {
        Ok(rt) => accounts.into_iter().flat_map(|id| adapter.doctor_account(config, id, &rt)).collect(),
        Err(e) => vec![Check::fail(format!("{}: {e}", adapter.channel()))],
    }
}

/// One enabled account as its adapter's validation pass sees it.
pub struct AccountBlock<'a> {
    pub id: &'a str,
    /// `channels.<channel>.accounts.<id>`, or `channels.<channel>` for the implicit account.
    pub path: &'a str,
    /// The account's own block; for the implicit account, the channel block itself.
    pub own: &'a RawChannel,
    /// True for the implicit account of a block with no `accounts` (`own` is the channel block).
    pub implicit: bool,
}

/// What an adapter's validation pass returns.
pub struct Validated {
    /// Its typed settings, read back with `ChannelsConfig::platform`.
    pub settings: Arc<dyn Any + Send + Sync>,
    /// Per account id, the platform settings its connection depends on, rendered comparably.
    pub fingerprints: BTreeMap<String, String>,
}

/// The validation context an adapter's pass writes its errors and warnings to.
pub struct ChannelPass<'a> {
    pub(crate) errs: &'a mut Errors,
    pub(crate) warnings: &'a mut Vec<String>,
}

impl ChannelPass<'_> {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errs.push(path, message);
    }

    /// A credential: a literal in the config is allowed but warned about (never shown).
    pub fn secret(&mut self, path: &str, s: &SecretRef) {
        crate::config::secret(self.errs, self.warnings, path, s);
    }

    /// The platform keys of `block` (at `path`) as the adapter's closed type `T`: unknown keys
    /// and bad values are errors with their key paths; what could not be read stays `Default`.
    pub fn platform<T: DeserializeOwned + Default>(&mut self, path: &str, block: &RawChannel) -> T {
        let map = block.platform.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        match crate::config::decode::<T>(serde_json::Value::Object(map)) {
            Ok(t) => t,
            Err((repaired, errors)) => {
                for e in errors {
                    let at = if e.path.is_empty() { path.to_string() } else { format!("{path}.{}", e.path) };
                    self.errs.push(at, e.message);
                }
                repaired.map(|b| *b).unwrap_or_default()
            }
        }
    }
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

    /// Its validation pass over the platform's own keys (`RawChannel::platform`) of the channel
    /// block and of each enabled account (`ChannelPass::platform` decodes them into the
    /// adapter's closed types). The shared keys are checked by the shared pass.
    fn validate(&self, pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated;

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

    /// Sends `text` to `chat` from `account` once, outside the gateway (`tenant add
    /// --test-message`): proves the bot can post there. By default the channel cannot.
    fn send_test(&self, config: &Config, account: &str, chat: &str, text: &str) -> Result<(), String> {
        let _ = (config, account, chat, text);
        Err(format!("{} cannot send a test message from here", self.channel()))
    }

    /// `bulkhead doctor` checks of one enabled account against the platform (credentials
    /// accepted, ...), on `rt`; [`doctor`] runs them for a channel.
    fn doctor_account(&self, config: &Config, account: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
        let _ = (config, account, rt);
        Vec::new()
    }

    /// `id` as written in an `allowFrom` list, in the canonical form the adapter reports senders
    /// in (`"*"` is handled by the caller); an error says what a sender id looks like.
    fn check_sender_id(&self, id: &str) -> Result<String, String>;

    /// Whether `id` is a key of this platform's `groups`.
    fn check_group_id(&self, id: &str) -> Result<(), String> {
        let _ = id;
        Err(format!("groups does not apply to {}", self.channel()))
    }
}

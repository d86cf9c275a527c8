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
pub static ADAPTERS: &[&dyn Adapter] = &[
    &super::telegram::Telegram,
    &super::discord::Discord,
    &super::slack::Slack,
    &super::whatsapp::WhatsApp,
    &super::signal::Signal,
    &super::imessage::IMessageAdapter,
];

/// The adapter of a channel, if this build has one.
pub fn adapter(channel: &str) -> Option<&'static dyn Adapter> {
    ADAPTERS.iter().copied().find(|a| a.channel() == channel)
}

/// Credentials that may serve one account only: each is kept as a digest and compared in
/// constant time (`gateway::TokenIndex`), with the key path of the account that claimed it.
#[derive(Default)]
pub struct Claimed(crate::gateway::TokenIndex<String>);

impl Claimed {
    /// Claims `secret` for the account at `path`; when another account claimed it first, returns
    /// that account's path and claims nothing.
    pub fn claim(&mut self, secret: &str, path: &str) -> Option<String> {
        if let Some(first) = self.0.lookup(secret) {
            return Some(first);
        }
        self.0.insert(secret, path.to_string());
        None
    }
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
    let mut seen = Claimed::default();
    for (id, secret) in accounts {
        let path =
            config.channels.account(channel, id).map_or_else(|| format!("channels.{channel}"), |a| a.path.clone());
        match secret.resolve(&config.base_dir) {
            Ok(token) => {
                if let Some(first) = seen.claim(token.expose(), &path) {
                    errors.push(format!(
                        "{path}.token: the same bot token as {first}.token; a bot belongs to one account and so to one tenant: {fix}"
                    ));
                    continue;
                }
                resolved.push((id, token));
            }
            Err(e) => errors.push(format!("channels.{channel} account {id:?} token: {e}")),
        }
    }
    (errors, resolved)
}

/// The account `id` of `channel` in a checked config, for starting it: its own platform settings
/// (`own`, as the adapter found them) and its shared settings, or an error naming it.
pub fn configured<A: Clone>(
    config: &Config,
    channel: &str,
    id: &str,
    own: Option<&A>,
) -> Result<(A, crate::config::channels::ChannelAccount), String> {
    let missing = || format!("channels.{channel} account {id:?} is not configured");
    let own = own.cloned().ok_or_else(missing)?;
    let shared = config.channels.account(channel, id).cloned().ok_or_else(missing)?;
    Ok((own, shared))
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

/// Writes `data` (a device-link URI, ...) to `out` as a QR code a phone can scan from the
/// terminal (two modules per character cell, with its quiet zone), for `Adapter::login`.
pub fn show_qr(out: &mut dyn std::io::Write, data: &str) -> Result<(), String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(data.as_bytes()).map_err(|e| format!("cannot draw the QR code: {e}"))?;
    let art = code.render::<Dense1x2>().quiet_zone(true).build();
    writeln!(out, "{art}").map_err(|e| format!("cannot write the QR code: {e}"))
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

    /// Something that loads but deserves the operator's attention (`config check` shows it,
    /// `serve` logs it).
    pub fn warn(&mut self, path: &str, message: &str) {
        self.warnings.push(format!("{path}: {message}"));
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
    /// The shared database when several gateways run (accounts with one owner take a lease).
    pub db: Option<crate::cluster::Db>,
    /// Set while an account runs under a lease: its replies go out only while the lease holds.
    pub owner: Option<crate::cluster::lease::Validity>,
}

impl Context {
    /// The account's transport, fenced by its lease when it runs under one.
    pub fn transport(&self, t: Arc<dyn super::outbound::Transport>) -> Arc<dyn super::outbound::Transport> {
        match &self.owner {
            Some(validity) => Arc::new(super::outbound::Fenced { inner: t, validity: validity.clone() }),
            None => t,
        }
    }

    /// Whether this gateway may still act for the account (always, without a lease).
    pub fn owns(&self) -> bool {
        self.owner.as_ref().is_none_or(|v| v.is_valid())
    }
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

/// One key `tenant add` writes into a new account's block.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its key under `channels.<channel>.accounts.<id>`.
    pub key: &'static str,
    /// What it is, for prompts and errors ("the bot token").
    pub what: &'static str,
    /// A credential: written as a reference (`{ env }` or `{ file }`), never inline.
    pub secret: bool,
    /// `tenant add` refuses to go on without it.
    pub required: bool,
}

impl Field {
    pub const fn secret(key: &'static str, what: &'static str) -> Self {
        Self { key, what, secret: true, required: true }
    }
    pub const fn plain(key: &'static str, what: &'static str) -> Self {
        Self { key, what, secret: false, required: true }
    }
    pub const fn optional(key: &'static str, what: &'static str) -> Self {
        Self { key, what, secret: false, required: false }
    }
}

/// What `tenant add` needs to onboard an account of a channel.
#[derive(Debug, Clone, Copy)]
pub struct Onboarding {
    /// The account's own keys, in order (the first secret is also `--token-file`/`--token-env`,
    /// the second `--app-token-file`/`--app-token-env`).
    pub fields: &'static [Field],
    /// What is still to do once the account serves (the platform's side, approvals).
    pub todo: &'static [&'static str],
    /// Set when `tenant add` cannot onboard such an account: why, and what to do instead.
    pub manual: Option<&'static str>,
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

    /// Whether an account's connection must have exactly one owner among gateways sharing a
    /// database (a long poll, a gateway shard, an event stream); webhook channels need none.
    fn single_owner(&self) -> bool {
        false
    }

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

    /// `bulkhead channels login --channel <name> --account ID`: links the account to the platform
    /// interactively (a QR code to scan with the phone, ...), writing what the operator must see
    /// to `out`; it returns once linked, or with what went wrong. By default a channel has
    /// nothing to link: its accounts connect with the credentials in the config.
    fn login(&self, config: &Config, account: &str, out: &mut dyn std::io::Write) -> Result<(), String> {
        let _ = (config, account, out);
        Err(format!("{} has nothing to link: its accounts connect with the credentials in the config", self.channel()))
    }

    /// What `tenant add` asks for a new account and writes into its block; by default one bot
    /// token under `token`.
    fn onboarding(&self) -> Onboarding {
        Onboarding {
            fields: const { &[Field::secret("token", "the bot token")] },
            todo: &["finish the platform's own settings for the bot (see README)"],
            manual: None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_without_login_says_it_has_nothing_to_link_and_qr_codes_are_drawn() {
        let config = crate::config::load_str(
            r#"{ agents: { list: [ { id: "a" } ] }, bindings: [ { agentId: "a", match: { channel: "telegram" } } ],
                 channels: { telegram: { accounts: { t: { token: { env: "UNUSED_TOKEN" } } } } } }"#,
            std::path::Path::new("."),
        )
        .unwrap();
        let mut out = Vec::new();
        let err = adapter("telegram").unwrap().login(&config, "t", &mut out).unwrap_err();
        assert!(err.contains("telegram has nothing to link"), "{err}");
        assert!(out.is_empty(), "nothing shown");

        let mut out = Vec::new();
        show_qr(&mut out, "sgnl://linkdevice?uuid=abc&pub_key=def").unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows.len() >= 12, "{text}");
        let width = rows[0].chars().count();
        assert!(rows.iter().all(|r| r.chars().count() == width), "a square block of cells: {text}");
        assert!(text.contains('█') || text.contains('▀') || text.contains('▄'));
    }
}

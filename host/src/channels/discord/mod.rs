//! The Discord adapter: one bot per account, connected to the Gateway WebSocket through
//! `twilight-gateway` (HELLO, IDENTIFY with the MESSAGE_CONTENT intent, heartbeats, RESUME
//! after a drop, re-IDENTIFY when the session is invalid, a zombied connection replaced), and
//! Discord's REST API through our own small client (`rest.rs`), so 429s reach the shared
//! outbound queue, which waits and sends again.
//!
//! A guild message is answered only where `guilds.<id>` allows it (channels by id or by name,
//! names resolved from the guild's channel list and kept current from channel events), and by
//! default only when the bot is mentioned (`<@id>` or a reply to it); direct messages follow
//! `dmPolicy`. Everything after normalisation is the shared layer's (`channels::inbound`).
//!
//! Nothing accepted is lost: a message is stored in the tenant's inbox before the next event is
//! read; when it cannot be stored the account retries it (the gateway buffers, and RESUME
//! replays what arrives meanwhile). Message content is never logged; a malformed event is
//! logged by kind and skipped.

pub mod config;
mod doctor;
mod rest;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use twilight_gateway::error::ReceiveMessageErrorType;
use twilight_gateway::{CloseFrame, ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt as _};
use twilight_model::channel::Message;
use twilight_model::gateway::CloseCode;

use super::adapter::{AccountBlock, ChannelPass, Check, Context, Field, Onboarding, Validated};
use super::inbound::{Account, Body, ChatMessage, Deferred, accept};
use super::outbound::{ChatTarget, Limits, Outbound, SendError, Transport};
use super::pairing::Pairing;
use crate::config::{Config, RawChannel};
use crate::gateway::Live;
use config::{DISCORD_TEXT_LIMIT, DiscordAccount, DiscordSettings};
use rest::{ChannelInfo, Rest, RestError};

/// What an `allowFrom` entry must look like.
const SENDER_HINT: &str = "invalid sender: use a numeric Discord user id (Developer Mode → right-click the user → Copy User ID), optionally \"discord:\"-prefixed, or \"*\"; usernames can change hands";

/// The intents every account asks for. MESSAGE_CONTENT is privileged: the application must
/// have it switched on in the Developer Portal.
fn intents() -> Intents {
    Intents::GUILDS | Intents::GUILD_MESSAGES | Intents::DIRECT_MESSAGES | Intents::MESSAGE_CONTENT
}

/// The Discord settings of a checked config (`None`: the channel is off).
fn settings(config: &Config) -> Option<&DiscordSettings> {
    config.channels.platform::<DiscordSettings>("discord")
}

/// The Discord adapter.
pub struct Discord;

impl super::adapter::Adapter for Discord {
    fn channel(&self) -> &'static str {
        "discord"
    }

    fn single_owner(&self) -> bool {
        true
    }

    fn validate(&self, pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
        config::validate(pass, channel, accounts)
    }

    /// Every token resolves and builds a client; no bot token is shared by two accounts.
    fn check(&self, config: &Config) -> Vec<String> {
        let accounts = settings(config).map(|s| s.accounts.as_slice()).unwrap_or_default();
        let (mut errors, resolved) = super::adapter::resolve_unique(
            config,
            "discord",
            accounts.iter().map(|a| (a.id.as_str(), &a.token)),
            "give each account its own bot (Developer Portal → New Application → Bot)",
        );
        for (id, token) in resolved {
            let api = settings(config).and_then(|s| s.account(id)).map(|a| a.api_url.as_str()).unwrap_or_default();
            if let Err(e) = Rest::new(token.expose(), api) {
                errors.push(format!("channels.discord account {id:?}: {e}"));
            }
        }
        errors
    }

    fn start_account(
        &self,
        ctx: &Context,
        config: &Config,
        account: &str,
        stopped: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let (acc, shared) =
            super::adapter::configured(config, "discord", account, settings(config).and_then(|s| s.account(account)))?;
        let token = acc
            .token
            .resolve(&config.base_dir)
            .map_err(|e| format!("channels.discord account {account:?} token: {e}"))?;
        let rest = Arc::new(
            Rest::new(token.expose(), &acc.api_url)
                .map_err(|e| format!("channels.discord account {account:?}: {e}"))?,
        );
        let label = format!("discord/{}", acc.id);
        let outbound = Outbound::start(
            &label,
            ctx.transport(Arc::new(DiscordTransport { rest: rest.clone() })),
            Limits::discord(DISCORD_TEXT_LIMIT),
        );
        let account = Account::new(&ctx.live, &ctx.inbox, "discord", acc.id.clone(), shared.access, outbound);
        let bot = Bot {
            live: ctx.live.clone(),
            pairing: ctx.pairing.clone(),
            account,
            rest,
            token: token.expose().to_string(),
            tenant: shared.tenant,
            config: acc,
            me: 0,
            last: 0,
            rooms: HashMap::new(),
        };
        Ok(tokio::spawn(bot.run(stopped)))
    }

    fn send_test(&self, config: &Config, account: &str, chat: &str, text: &str) -> Result<(), String> {
        let acc = settings(config).and_then(|s| s.account(account)).ok_or("the account is not configured")?;
        let token = acc.token.resolve(&config.base_dir)?;
        let rest = Rest::new(token.expose(), &acc.api_url)?;
        let rt = super::adapter::command_runtime()?;
        rt.block_on(rest.create_message(chat, text)).map_err(|e| e.to_string())
    }

    fn onboarding(&self) -> Onboarding {
        Onboarding {
            fields: const { &[Field::secret("token", "the bot token (Developer Portal, Bot)")] },
            todo: &[
                "a server admin invites the bot with the link `bulkhead doctor` prints",
                "in servers it answers @mentions in the guilds given; direct messages get a pairing code: `bulkhead pairing approve CODE`",
            ],
            manual: None,
        }
    }

    fn check_sender_id(&self, id: &str) -> Result<String, String> {
        config::sender_id(id).ok_or_else(|| format!("{SENDER_HINT} (got {id:?})"))
    }

    fn doctor_account(&self, config: &Config, account: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
        doctor::account(config, account, rt)
    }
}

/// Sends through `POST /channels/{id}/messages`, plain text with no mentions parsed.
struct DiscordTransport {
    rest: Arc<Rest>,
}

#[async_trait::async_trait]
impl Transport for DiscordTransport {
    async fn send(&self, to: &ChatTarget, text: &str) -> Result<(), SendError> {
        match self.rest.create_message(&to.chat, text).await {
            Ok(()) => Ok(()),
            Err(RestError::RateLimited { after, .. }) => Err(SendError::RetryAfter(after)),
            Err(RestError::Unauthorized) => Err(SendError::Unauthorized),
            Err(e @ (RestError::Network(_) | RestError::Unreadable(_))) => Err(SendError::Transient(e.to_string())),
            Err(e @ RestError::Status { status, .. }) if status >= 500 => Err(SendError::Transient(e.to_string())),
            // 403 Missing Access/Permissions, 404 Unknown Channel, 400: retrying will not help.
            Err(e) => Err(SendError::Permanent(e.to_string())),
        }
    }

    async fn typing(&self, to: &ChatTarget) {
        let _ = self.rest.typing(&to.chat).await;
    }
}

/// What the adapter knows of a guild channel: its name, and a thread's parent.
#[derive(Debug, Clone)]
struct Room {
    name: Option<String>,
    parent: Option<String>,
}

impl From<&ChannelInfo> for Room {
    fn from(c: &ChannelInfo) -> Self {
        Self { name: c.name.clone(), parent: c.parent_id.clone() }
    }
}

/// Most channels remembered per bot (names and thread parents).
const MAX_ROOMS: usize = 10_000;

/// One connected bot.
struct Bot {
    live: Live,
    pairing: Arc<Pairing>,
    account: Account,
    rest: Arc<Rest>,
    token: String,
    tenant: Option<crate::ids::TenantId>,
    config: DiscordAccount,
    /// The bot's own user id.
    me: u64,
    /// The last inbox update id used: messages get increasing ids (their snowflake, or one more
    /// than the last when Discord's order across channels runs backwards).
    last: i64,
    rooms: HashMap<String, Room>,
}

/// What stopped a connection.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// Discord refused the bot for good (token, intents); the account stays off.
    Fatal,
}

impl Bot {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let id = self.config.id.clone();
        let Ok(mark) = self.account.resume_or_stop(self.tenant.as_ref()).await else { return };
        self.last = mark.unwrap_or(0);
        let Some(url) = self.prepare(&mut stopped).await else { return };
        let config = ConfigBuilder::new(self.token.clone(), intents()).proxy_url(url).build();
        let mut shard = Shard::with_config(ShardId::ONE, config);
        tracing::info!(account = %id, "Discord gateway connecting.");
        match self.events(&mut shard, &mut stopped).await {
            Ended::Stopped => {
                shard.close(CloseFrame::NORMAL);
                // Let the close frame go out, bounded.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(item) = shard.next_event(EventTypeFlags::empty()).await {
                        if matches!(item, Ok(Event::GatewayClose(_))) {
                            break;
                        }
                    }
                })
                .await;
                tracing::info!(account = %id, "Discord gateway stopped.");
            }
            Ended::Fatal => {}
        }
    }

    /// Who the bot is, where its gateway is, and the channel lists of guilds configured by
    /// channel name; retried with backoff until they answer or the account is stopped.
    async fn prepare(&mut self, stopped: &mut watch::Receiver<bool>) -> Option<String> {
        let id = self.config.id.clone();
        let mut backoff = Duration::from_secs(1);
        let (me, url) = loop {
            let attempt = async {
                let me = self.rest.me().await?;
                let url = match &self.config.gateway_url {
                    Some(u) => u.clone(),
                    None => self.rest.gateway_url().await?,
                };
                Ok::<_, RestError>((me, url))
            };
            let err = tokio::select! {
                _ = stopped.changed() => return None,
                r = attempt => match r {
                    Ok(v) => break v,
                    Err(e) => e,
                },
            };
            if err == RestError::Unauthorized {
                tracing::error!(account = %id, "Discord rejected this bot's token (401): reset it in the Developer Portal (your application → Bot → Reset Token) and update the config. This account is stopped; other accounts are unaffected.");
                return None;
            }
            tracing::warn!(account = %id, error = %err, "Discord is not reachable yet; retrying.");
            tokio::select! {
                _ = stopped.changed() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        };
        self.me = me.id.parse().unwrap_or(0);
        let guilds: Vec<String> =
            self.config.guilds.keys().filter(|g| self.config.names_channels(g)).cloned().collect();
        for g in guilds {
            match self.rest.guild_channels(&g).await {
                Ok(list) => {
                    for c in &list {
                        self.remember(c.id.clone(), Room::from(c));
                    }
                }
                Err(e) => {
                    tracing::warn!(account = %id, guild = %g, error = %e, "Cannot list this guild's channels; channel names are resolved when messages arrive.")
                }
            }
        }
        Some(url)
    }

    async fn events(&mut self, shard: &mut Shard, stopped: &mut watch::Receiver<bool>) -> Ended {
        let id = self.config.id.clone();
        let wanted = EventTypeFlags::READY
            | EventTypeFlags::RESUMED
            | EventTypeFlags::MESSAGE_CREATE
            | EventTypeFlags::CHANNEL_CREATE
            | EventTypeFlags::CHANNEL_UPDATE
            | EventTypeFlags::THREAD_CREATE
            | EventTypeFlags::THREAD_UPDATE;
        loop {
            let item = tokio::select! {
                _ = stopped.changed() => return Ended::Stopped,
                item = shard.next_event(wanted) => item,
            };
            match item {
                None => {
                    tracing::error!(account = %id, "The Discord gateway connection was closed for good; this account is stopped.");
                    return Ended::Fatal;
                }
                Some(Ok(Event::Ready(r))) => {
                    self.me = r.user.id.get();
                    tracing::info!(account = %id, guilds = r.guilds.len(), "Discord gateway ready.");
                }
                Some(Ok(Event::Resumed)) => tracing::info!(account = %id, "Discord gateway session resumed."),
                Some(Ok(Event::MessageCreate(m))) => {
                    if !self.message(m.0, stopped).await {
                        return Ended::Stopped;
                    }
                }
                Some(Ok(Event::ChannelCreate(c))) => self.learn(&c.0),
                Some(Ok(Event::ChannelUpdate(c))) => self.learn(&c.0),
                Some(Ok(Event::ThreadCreate(c))) => self.learn(&c.0),
                Some(Ok(Event::ThreadUpdate(c))) => self.learn(&c.0),
                Some(Ok(Event::GatewayClose(Some(frame)))) => match CloseCode::try_from(frame.code) {
                    Ok(CloseCode::DisallowedIntents) => {
                        tracing::error!(account = %id, "Discord refused the bot's intents (close code 4014): in the Developer Portal open your application → Bot → Privileged Gateway Intents and switch on MESSAGE CONTENT INTENT, then restart this account (reload the config). This account is stopped; other accounts are unaffected.");
                        return Ended::Fatal;
                    }
                    Ok(CloseCode::AuthenticationFailed) => {
                        tracing::error!(account = %id, "Discord rejected this bot's token (close code 4004): reset it in the Developer Portal (your application → Bot → Reset Token). This account is stopped; other accounts are unaffected.");
                        return Ended::Fatal;
                    }
                    Ok(code) if !code.can_reconnect() => {
                        tracing::error!(account = %id, code = frame.code, "Discord closed the gateway for good; this account is stopped.");
                        return Ended::Fatal;
                    }
                    _ => tracing::info!(account = %id, code = frame.code, "Discord gateway disconnected; resuming."),
                },
                Some(Ok(Event::GatewayClose(None))) => {
                    tracing::info!(account = %id, "Discord gateway disconnected; resuming.")
                }
                Some(Ok(_)) => {}
                // Never the error itself: a malformed event's text would be in it.
                Some(Err(e)) => {
                    let kind = match e.kind() {
                        ReceiveMessageErrorType::Deserializing { .. } => "malformed event",
                        ReceiveMessageErrorType::Reconnect => "reconnect failed",
                        _ => "other",
                    };
                    tracing::warn!(account = %id, kind, "Skipped a Discord gateway message this client cannot read.");
                }
            }
        }
    }

    fn learn(&mut self, c: &twilight_model::channel::Channel) {
        let room = Room { name: c.name.clone(), parent: c.parent_id.map(|p| p.to_string()) };
        self.remember(c.id.to_string(), room);
    }

    fn remember(&mut self, id: String, room: Room) {
        if self.rooms.len() >= MAX_ROOMS && !self.rooms.contains_key(&id) {
            self.rooms.clear();
        }
        self.rooms.insert(id, room);
    }

    /// A channel's name and parent, asked of Discord once when no event told us.
    async fn room(&mut self, channel: &str) -> Option<Room> {
        if let Some(r) = self.rooms.get(channel) {
            return Some(r.clone());
        }
        match self.rest.channel(channel).await {
            Ok(c) => {
                let room = Room::from(&c);
                self.remember(channel.to_string(), room.clone());
                Some(room)
            }
            Err(e) => {
                tracing::warn!(account = %self.config.id, error = %e, "Cannot look up a Discord channel; its message is judged by channel id only.");
                None
            }
        }
    }

    /// Handles one message; false when the account was stopped while it could not be stored.
    async fn message(&mut self, m: Message, stopped: &mut watch::Receiver<bool>) -> bool {
        if m.author.bot || m.author.id.get() == self.me {
            return true;
        }
        let channel = m.channel_id.to_string();
        let guild = m.guild_id.map(|g| g.to_string());
        let rule = match &guild {
            None => None,
            Some(g) => {
                // A thread is judged by its parent channel's rule; it is its own conversation.
                let room = self.room(&channel).await;
                let (at, name) = match &room {
                    Some(Room { parent: Some(parent), .. }) => {
                        let parent_room = self.room(parent).await;
                        (parent.clone(), parent_room.and_then(|r| r.name))
                    }
                    Some(r) => (channel.clone(), r.name.clone()),
                    None => (channel.clone(), None),
                };
                self.config.rule(g, &at, name.as_deref())
            }
        };
        let me = self.me;
        let mentioned = m.mentions.iter().any(|u| u.id.get() == me)
            || m.referenced_message.as_ref().is_some_and(|r| r.author.id.get() == me)
            || mentions(&m.content, me);
        let text = strip_mentions(&m.content, me);
        let body = if text.trim().is_empty() { Body::NonText } else { Body::Text(text) };
        let snowflake = i64::try_from(m.id.get()).unwrap_or(i64::MAX);
        self.last = snowflake.max(self.last.saturating_add(1));
        let msg = ChatMessage {
            update: self.last,
            sender: m.author.id.to_string(),
            username: Some(m.author.name.clone()),
            chat: channel,
            group: guild.is_some(),
            topic: None,
            mentioned,
            body,
            space: guild,
            rule,
        };
        let mut wait = Duration::from_millis(500);
        loop {
            let rt = self.live.load().runtime.clone();
            match accept(&rt, &self.pairing, &self.account, msg.clone()).await {
                Ok(()) => return true,
                Err(Deferred(why)) => {
                    tracing::warn!(account = %self.config.id, reason = %why, "A Discord message could not be stored yet; retrying before reading further.");
                    tokio::select! {
                        _ = stopped.changed() => {
                            tracing::error!(account = %self.config.id, "Stopped while a Discord message could not be stored; it was not answered.");
                            return false;
                        }
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Whether `text` mentions the user `id` (`<@id>` or `<@!id>`).
fn mentions(text: &str, id: u64) -> bool {
    id != 0 && (text.contains(&format!("<@{id}>")) || text.contains(&format!("<@!{id}>")))
}

/// `text` without mentions of the user `id`, trimmed.
fn strip_mentions(text: &str, id: u64) -> String {
    if id == 0 {
        return text.trim().to_string();
    }
    text.replace(&format!("<@{id}>"), "").replace(&format!("<@!{id}>"), "").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_found_and_stripped() {
        assert!(mentions("<@1000> hi", 1000));
        assert!(mentions("hi <@!1000>", 1000));
        assert!(!mentions("hi <@10000>", 1000));
        assert!(!mentions("hi", 0));
        assert_eq!(strip_mentions("<@1000> what is up? <@2000>", 1000), "what is up? <@2000>");
    }

    #[test]
    fn a_real_message_create_parses() {
        let raw = r#"{"id":"3001","channel_id":"4000","guild_id":"2000","author":{"id":"5000","username":"alice","discriminator":"0","avatar":null},"content":"<@1000> hello","timestamp":"2026-01-01T00:00:00.000000+00:00","edited_timestamp":null,"tts":false,"mention_everyone":false,"mention_roles":[],"attachments":[],"embeds":[],"pinned":false,"type":0,"mentions":[{"id":"1000","username":"bot","discriminator":"0","avatar":null,"bot":true,"public_flags":0}]}"#;
        let m: Message = serde_json::from_str(raw).unwrap();
        assert_eq!(m.mentions[0].id.get(), 1000);
        assert_eq!(m.guild_id.map(|g| g.get()), Some(2000));
    }
}

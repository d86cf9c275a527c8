//! The Slack adapter: one app installation (one workspace) per account, receiving events over
//! Socket Mode (`socket.rs`, the default) or the HTTP Events API (`events.rs`), replying with
//! `chat.postMessage` in the message's thread through the shared outbound queue (`api.rs`).
//!
//! Our own small client rather than a crate: acknowledging an event only after it is stored,
//! de-duplication, reconnection and 429s stay ours, and no URL holding a ticket or a token is
//! ever logged (see the research notes in the pull request of issue 15).
//!
//! Store first, then acknowledge: an event that starts a turn is in the tenant's durable inbox
//! before its Socket Mode envelope is acknowledged or its Events API request answered 200; if it
//! cannot be stored it is not acknowledged, and Slack delivers it again. Slack has no increasing
//! update id, so each accepted message gets one from the account (never below the inbox's mark),
//! and re-deliveries (`retry_attempt`, `X-Slack-Retry-Num`, a mention arriving as both
//! `app_mention` and `message`) are recognised by `event_id` and by channel and `ts`.
//!
//! Normalisation: `im` conversations are direct sessions (the reply goes to the DM, in its thread
//! if the message was in one); channels, private channels and group DMs are group sessions, one
//! per thread, and the reply goes into the thread of the message. Events of another workspace,
//! of the bot itself or of other bots (`bot_id`, `subtype: bot_message`), edits and other
//! subtypes are ignored. A mention is `<@BOTUSERID>` in the text or an `app_mention` event; in a
//! thread the bot was mentioned in (while the account runs), every later message counts as one.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

pub mod api;
pub mod config;
mod doctor;
pub mod events;
mod socket;

use super::adapter::{AccountBlock, ChannelPass, Check, Context, Field, Onboarding, Validated};
use super::dedupe::{SEEN, Seen};
use super::inbound::{Account, Body, ChatMessage, Deferred, accept};
use super::outbound::{Limits, Outbound};
use super::pairing::Pairing;
use crate::config::{Config, RawChannel, SecretString};
use crate::gateway::Live;
use api::{Api, ApiError, Identity, SlackTransport};
use config::{Mode, SlackAccount, SlackSettings};

/// The Slack settings of a checked config (`None`: the channel is off).
fn settings(config: &Config) -> Option<&SlackSettings> {
    config.channels.platform::<SlackSettings>("slack")
}

/// Longest wait between retries after transient failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Pages of `conversations.list` read to resolve channel names.
const NAME_PAGES: usize = 20;

/// Pacing: Slack allows about one message per second per channel, with short bursts.
fn limits(max_len: usize) -> Limits {
    Limits {
        per_chat: Duration::from_secs(1),
        per_group: Duration::from_secs(1),
        per_bot: Duration::from_millis(50),
        queue: 1024,
        chat_queue: 32,
        max_retries: 5,
        max_len,
    }
}

/// One message event, as far as this adapter takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackMessage {
    pub event_id: Option<String>,
    pub channel: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    pub user: String,
    pub text: String,
    pub direct: bool,
    pub mentioned: bool,
    /// Files only, no text.
    pub files_only: bool,
}

/// What an `event_callback` payload carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Message(SlackMessage),
    /// Not for the bot (its own message, another bot's, an edit, another event type...): why.
    Ignored(&'static str),
    /// Unreadable: what is wrong with it (never its content).
    Malformed(&'static str),
}

/// Reads one `event_callback` payload for the bot `bot_user` of workspace `team`. Never panics
/// on any input.
pub fn parse_callback(payload: &Value, bot_user: &str, team: &str) -> Parsed {
    if payload["type"] != "event_callback" {
        return Parsed::Ignored("not an event callback");
    }
    match payload["team_id"].as_str() {
        Some(t) if t == team => {}
        Some(_) => return Parsed::Ignored("an event of another workspace"),
        None => return Parsed::Malformed("event callback without team_id"),
    }
    let ev = &payload["event"];
    let kind = match ev["type"].as_str() {
        Some(k @ ("message" | "app_mention")) => k,
        Some(_) => return Parsed::Ignored("an event type this adapter does not handle"),
        None => return Parsed::Malformed("event without a type"),
    };
    if ev.get("bot_id").is_some_and(|b| !b.is_null()) || ev["subtype"] == "bot_message" {
        return Parsed::Ignored("a message from a bot");
    }
    match ev["subtype"].as_str() {
        None | Some("file_share" | "thread_broadcast") => {}
        Some(_) => return Parsed::Ignored("a message subtype (edit, join, ...) that is not a new message"),
    }
    let (Some(channel), Some(ts), Some(user)) = (ev["channel"].as_str(), ev["ts"].as_str(), ev["user"].as_str()) else {
        return Parsed::Malformed("message without channel, ts or user");
    };
    if user == bot_user {
        return Parsed::Ignored("the bot's own message");
    }
    let Some(user) = config::sender_id(user) else { return Parsed::Malformed("message with an unreadable user id") };
    let ok_id = |s: &str| !s.is_empty() && s.len() <= 40 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    let thread_ts = match ev.get("thread_ts") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if ok_id(t) => Some(t.clone()),
        Some(_) => return Parsed::Malformed("message with an unreadable thread_ts"),
    };
    if !ok_id(channel) || !ok_id(ts) {
        return Parsed::Malformed("message with an unreadable channel or ts");
    }
    let text = match ev.get("text") {
        None | Some(Value::Null) => "",
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Parsed::Malformed("message whose text is not a string"),
    };
    let files = ev["files"].as_array().is_some_and(|f| !f.is_empty());
    let mention = format!("<@{bot_user}");
    let mentioned = kind == "app_mention"
        || (!bot_user.is_empty()
            && text.match_indices(&mention).any(|(i, _)| text[i + mention.len()..].starts_with(['>', '|'])));
    let direct = ev["channel_type"] == "im" || (kind == "message" && channel.starts_with('D'));
    let text = api::unescape(&strip_mention(text, bot_user));
    if text.trim().is_empty() && !files {
        return Parsed::Ignored("a message without text or files");
    }
    Parsed::Message(SlackMessage {
        event_id: payload["event_id"].as_str().map(str::to_string),
        channel: channel.to_string(),
        ts: ts.to_string(),
        thread_ts,
        user,
        files_only: text.trim().is_empty(),
        text: text.trim().to_string(),
        direct,
        mentioned,
    })
}

/// `text` without the bot's own mentions (`<@U123>`, `<@U123|name>`).
fn strip_mention(text: &str, bot_user: &str) -> String {
    if bot_user.is_empty() {
        return text.to_string();
    }
    let open = format!("<@{bot_user}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let end = match after.chars().next() {
            Some('>') => Some(1),
            Some('|') => after.find('>').map(|e| e + 1),
            _ => None,
        };
        match end {
            Some(e) => {
                out.push_str(&rest[..i]);
                rest = &after[e..];
            }
            None => {
                out.push_str(&rest[..i + open.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One running account's receiving side, shared by Socket Mode and the Events API route.
pub struct Receiver {
    live: Live,
    pairing: Arc<Pairing>,
    account: Account,
    me: Identity,
    /// Serialises this account's events: a re-delivery racing its original waits for it.
    seen: tokio::sync::Mutex<Seen>,
}

impl Receiver {
    pub fn id(&self) -> &str {
        &self.account.id
    }

    /// Handles one `event_callback` payload. `Ok`: stored, or decided to be dropped, so it may
    /// be acknowledged; `Err`: not stored, do not acknowledge (Slack delivers it again).
    pub async fn handle(&self, payload: &Value) -> Result<(), Deferred> {
        let id = &self.account.id;
        let m = match parse_callback(payload, &self.me.user_id, &self.me.team_id) {
            Parsed::Message(m) => m,
            Parsed::Ignored(why) => {
                tracing::debug!(account = %id, reason = why, "Slack event ignored.");
                return Ok(());
            }
            Parsed::Malformed(kind) => {
                tracing::warn!(account = %id, kind, "Skipped a malformed Slack event.");
                return Ok(());
            }
        };
        let mut keys = vec![format!("msg:{}:{}", m.channel, m.ts)];
        keys.extend(m.event_id.as_ref().map(|e| format!("ev:{e}")));
        let mut seen = self.seen.lock().await;
        if seen.contains(&keys) {
            tracing::debug!(account = %id, "Slack event delivered again; not handled twice.");
            seen.insert(keys);
            return Ok(());
        }
        let update = seen.next_update();
        let thread = if m.direct { m.thread_ts.clone() } else { Some(m.thread_ts.clone().unwrap_or(m.ts.clone())) };
        // A thread the bot was mentioned in is a conversation with it: later messages in that
        // thread count as addressed to it (as a reply to the bot does on Telegram).
        let thread_key = thread.as_ref().filter(|_| !m.direct).map(|t| format!("thread:{}:{t}", m.channel));
        let in_thread = m.thread_ts.is_some() && thread_key.as_ref().is_some_and(|k| seen.has(k));
        let msg = ChatMessage {
            update,
            sender: m.user,
            username: None,
            chat: m.channel,
            group: !m.direct,
            topic: thread,
            mentioned: m.mentioned || in_thread,
            body: if m.files_only { Body::NonText } else { Body::Text(m.text) },
            // The workspace, for `teamId` bindings (events of another one were dropped).
            space: Some(self.me.team_id.clone()),
            // Slack's `channels` are in the account's `groups` (resolved at start).
            rule: None,
        };
        // Routed on the running snapshot: a reload's new bindings apply to the next event.
        let rt = self.live.load().runtime.clone();
        accept(&rt, &self.pairing, &self.account, msg).await?;
        if m.mentioned {
            keys.extend(thread_key);
        }
        seen.insert(keys);
        Ok(())
    }
}

/// The Slack adapter.
pub struct Slack;

/// An account's resolved credentials.
struct Credentials {
    bot: SecretString,
    /// The app token (Socket Mode) or the signing secret (Events API).
    mode: SecretString,
}

fn resolve(config: &Config, acc: &SlackAccount) -> Result<Credentials, String> {
    let label = format!("channels.slack account {:?}", acc.id);
    let bot = acc.bot_token.resolve(&config.base_dir).map_err(|e| format!("{label} botToken: {e}"))?;
    if !bot.expose().starts_with("xoxb-") {
        return Err(format!(
            "{label} botToken: a Slack bot token starts with \"xoxb-\" (OAuth & Permissions, Bot User OAuth Token)"
        ));
    }
    let mode = match &acc.mode {
        Mode::Socket { app_token } => {
            let t = app_token.resolve(&config.base_dir).map_err(|e| format!("{label} appToken: {e}"))?;
            if !t.expose().starts_with("xapp-") {
                return Err(format!(
                    "{label} appToken: a Slack app-level token starts with \"xapp-\" (Basic Information, App-Level Tokens, scope connections:write)"
                ));
            }
            t
        }
        Mode::Events { signing_secret } => {
            let s = signing_secret.resolve(&config.base_dir).map_err(|e| format!("{label} signingSecret: {e}"))?;
            if s.expose().trim().is_empty() {
                return Err(format!("{label} signingSecret: empty"));
            }
            s
        }
    };
    Ok(Credentials { bot, mode })
}

impl super::adapter::Adapter for Slack {
    fn channel(&self) -> &'static str {
        "slack"
    }

    fn validate(&self, pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
        config::validate(pass, channel, accounts)
    }

    /// Every credential resolves and has the right kind; no bot or app token is shared by two
    /// accounts (one installation, one account, one tenant).
    fn check(&self, config: &Config) -> Vec<String> {
        let mut errors = Vec::new();
        let (mut bots, mut apps) = (super::adapter::Claimed::default(), super::adapter::Claimed::default());
        for acc in settings(config).map(|s| s.accounts.as_slice()).unwrap_or_default() {
            let path = config.channels.account("slack", &acc.id).map_or_else(String::new, |a| a.path.clone());
            let creds = match resolve(config, acc) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if let Some(first) = bots.claim(creds.bot.expose(), &path) {
                errors.push(format!(
                    "{path}.botToken: the same bot token as {first}.botToken; a Slack installation belongs to one account and so to one tenant"
                ));
            }
            if matches!(acc.mode, Mode::Socket { .. })
                && let Some(first) = apps.claim(creds.mode.expose(), &path)
            {
                errors.push(format!(
                    "{path}.appToken: the same app token as {first}.appToken; Socket Mode would hand one app's events to either account"
                ));
            }
            if let Err(e) = Api::new(&acc.api_url) {
                errors.push(format!("channels.slack account {:?}: {e}", acc.id));
            }
        }
        errors
    }

    fn onboarding(&self) -> Onboarding {
        Onboarding {
            fields: const {
                &[
                    Field::secret("botToken", "the bot token (xoxb-)"),
                    Field::secret("appToken", "the Slack app-level token (xapp-, for Socket Mode)"),
                ]
            },
            todo: &[
                "in the Slack app: Socket Mode on, event subscriptions app_mention and message.im, then add the app to its channels",
                "direct messages from strangers get a pairing code: `bulkhead pairing approve CODE`",
            ],
            manual: None,
        }
    }

    fn send_test(&self, config: &Config, account: &str, chat: &str, text: &str) -> Result<(), String> {
        let acc = settings(config).and_then(|s| s.account(account)).ok_or("the account is not configured")?;
        let creds = resolve(config, acc)?;
        let api = Api::new(&acc.api_url)?;
        let rt = super::adapter::command_runtime()?;
        rt.block_on(api.post_message(creds.bot.expose(), chat, text, None)).map_err(|e| e.to_string())
    }

    fn start_account(
        &self,
        ctx: &Context,
        config: &Config,
        account: &str,
        stopped: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let (acc, shared) =
            super::adapter::configured(config, "slack", account, settings(config).and_then(|s| s.account(account)))?;
        let creds = resolve(config, &acc)?;
        let api = Api::new(&acc.api_url).map_err(|e| format!("channels.slack account {account:?}: {e}"))?;
        let label = format!("slack/{}", acc.id);
        // The account stops when told to, or when Slack refuses its bot token on a reply (it
        // would go on acknowledging events it cannot answer).
        let (halt, halted) = watch::channel(false);
        let transport =
            SlackTransport { api: api.clone(), token: creds.bot.clone(), halt: halt.clone(), account: acc.id.clone() };
        let outbound = Outbound::start(&label, Arc::new(transport), limits(acc.text_chunk_limit));
        let mut told = stopped;
        tokio::spawn(async move {
            if told.wait_for(|s| *s).await.is_ok() {
                let _ = halt.send(true);
            }
        });
        let start = Start { ctx: ctx.clone(), acc, shared, api, creds, outbound };
        Ok(tokio::spawn(start.run(halted)))
    }

    fn routes(&self, ctx: &Context) -> Option<axum::Router> {
        Some(events::routes(ctx))
    }

    fn doctor_account(&self, config: &Config, account: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
        doctor::account(config, account, rt)
    }

    fn check_sender_id(&self, id: &str) -> Result<String, String> {
        config::sender_id(id).ok_or_else(|| {
            format!("invalid sender {id:?}: use a Slack user id (\"U0123ABCD\", optionally \"slack:\"-prefixed) or \"*\"; display names can change")
        })
    }

    fn check_group_id(&self, id: &str) -> Result<(), String> {
        Err(format!(
            "invalid group {id:?}: Slack uses channels.<id or name> (with allow, requireMention, users) instead of groups"
        ))
    }
}

/// What an account's task starts from.
struct Start {
    ctx: Context,
    acc: SlackAccount,
    shared: crate::config::channels::ChannelAccount,
    api: Api,
    creds: Credentials,
    outbound: Outbound,
}

impl Start {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let Start { ctx, acc, shared, api, creds, outbound } = self;
        let id = acc.id.clone();
        let mut backoff = Duration::from_secs(1);
        let me = loop {
            let r = tokio::select! {
                r = api.auth_test(creds.bot.expose()) => r,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let pause = match r {
                Ok(me) => break me,
                Err(ApiError::Auth(code)) => {
                    tracing::error!(account = %id, error = %code, "Slack rejected the bot token of this account: it is wrong or was revoked. This account is stopped; other accounts are unaffected. Fix the token and restart.");
                    return;
                }
                Err(ApiError::RetryAfter(d)) => d,
                Err(e) => {
                    tracing::warn!(account = %id, error = %e, "Slack auth.test failed; retrying.");
                    backoff
                }
            };
            if !super::net::pause(pause, &mut stopped).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        tracing::info!(account = %id, team = %me.team_id, bot_user = %me.user_id, "Slack bot identified.");
        let mut access = shared.access.clone();
        let rules = tokio::select! {
            r = channel_rules(&api, &creds.bot, &acc, &id) => r,
            _ = stopped.wait_for(|s| *s) => return,
        };
        access.groups.extend(rules);
        let account = Account::new(&ctx.live, &ctx.inbox, "slack", id.clone(), access, outbound);
        let Ok(mark) = account.resume_or_stop(shared.tenant.as_ref()).await else { return };
        let last = mark.unwrap_or(0);
        let rx = Arc::new(Receiver {
            live: ctx.live.clone(),
            pairing: ctx.pairing.clone(),
            account,
            me,
            seen: tokio::sync::Mutex::new(Seen::new(last, SEEN)),
        });
        match acc.mode {
            Mode::Socket { .. } => {
                let conns = (0..acc.connections)
                    .map(|n| socket::run(rx.clone(), api.clone(), creds.mode.clone(), stopped.clone(), n));
                futures_util::future::join_all(conns).await;
            }
            Mode::Events { .. } => events::serve(rx, &creds.mode, stopped).await,
        }
        tracing::info!(account = %id, "Slack account stopped.");
    }
}

/// The account's `channels` as group rules keyed by conversation id: names are resolved with
/// `conversations.list`; a name that cannot be resolved allows nothing (fail closed).
async fn channel_rules(
    api: &Api,
    token: &SecretString,
    acc: &SlackAccount,
    id: &str,
) -> Vec<(String, crate::config::channels::GroupRule)> {
    let mut out: Vec<_> =
        acc.channels.iter().filter(|(k, _)| !k.starts_with('#')).map(|(k, r)| (k.clone(), r.clone())).collect();
    let names: Vec<_> = acc.channels.iter().filter(|(k, _)| k.starts_with('#')).collect();
    if names.is_empty() {
        return out;
    }
    let known = match api.channel_ids(token.expose(), NAME_PAGES).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(account = %id, error = %e, "Cannot list the workspace's channels, so channels configured by name allow nothing; use conversation ids or grant channels:read and groups:read.");
            return out;
        }
    };
    for (key, rule) in names {
        match known.iter().find(|(name, _)| *name == key[1..]) {
            // An entry by id wins over one by name.
            Some((_, cid)) if !acc.channels.contains_key(cid) => out.push((cid.clone(), rule.clone())),
            Some(_) => {}
            None => {
                tracing::warn!(account = %id, channel = %key, "A configured Slack channel name was not found; it allows nothing.")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cb(event: Value) -> Value {
        json!({ "type": "event_callback", "team_id": "T1", "event_id": "Ev1", "event": event })
    }

    #[test]
    fn messages_and_mentions_are_read_and_bots_ignored() {
        let m = |e: Value| parse_callback(&cb(e), "UBOT", "T1");
        let Parsed::Message(dm) =
            m(json!({ "type": "message", "channel": "D1", "channel_type": "im", "user": "u0abc1",
                                            "text": "hi &amp; &lt;b&gt;", "ts": "1.1" }))
        else {
            panic!("not a message")
        };
        assert!(dm.direct && !dm.mentioned);
        assert_eq!((dm.user.as_str(), dm.text.as_str()), ("U0ABC1", "hi & <b>"));
        let Parsed::Message(at) =
            m(json!({ "type": "message", "channel": "C1", "channel_type": "channel", "user": "U0USER2",
                      "text": "<@UBOT|bot> help", "ts": "2.2", "thread_ts": "1.0" }))
        else {
            panic!("not a message")
        };
        assert!(at.mentioned && !at.direct);
        assert_eq!((at.text.as_str(), at.thread_ts.as_deref()), ("help", Some("1.0")));
        assert!(
            matches!(
                m(json!({ "type": "app_mention", "channel": "C1", "user": "U0USER2", "text": "<@UBOT>", "ts": "3" })),
                Parsed::Ignored(_)
            ),
            "a bare mention has nothing to answer"
        );
        let Parsed::Message(not) =
            m(json!({ "type": "message", "channel": "C1", "user": "U0USER2", "text": "<@UBOTX> hi", "ts": "4" }))
        else {
            panic!("not a message")
        };
        assert!(!not.mentioned, "another user whose id starts like the bot's");
        for ignored in [
            json!({ "type": "message", "channel": "C1", "user": "UBOT", "text": "me", "ts": "5" }),
            json!({ "type": "message", "channel": "C1", "user": "U0USER2", "bot_id": "B9", "text": "bot", "ts": "5" }),
            json!({ "type": "message", "subtype": "bot_message", "channel": "C1", "text": "bot", "ts": "5" }),
            json!({ "type": "message", "subtype": "message_changed", "channel": "C1", "ts": "5" }),
            json!({ "type": "reaction_added", "user": "U0USER2" }),
        ] {
            assert!(matches!(m(ignored.clone()), Parsed::Ignored(_)), "{ignored}");
        }
        let other_team = json!({ "type": "event_callback", "team_id": "T2", "event": { "type": "message", "channel": "C1", "user": "U0USER2", "text": "x", "ts": "6" } });
        assert_eq!(parse_callback(&other_team, "UBOT", "T1"), Parsed::Ignored("an event of another workspace"));
        for bad in [
            json!({ "type": "message", "channel": "C1", "text": "no user", "ts": "7" }),
            json!({ "type": "message", "channel": "C1", "user": "U0USER2", "text": { "x": 1 }, "ts": "7" }),
            json!({ "type": "message", "channel": "C1/../x", "user": "U0USER2", "text": "x", "ts": "7" }),
            json!("not an object"),
        ] {
            assert!(matches!(m(bad.clone()), Parsed::Malformed(_)), "{bad}");
        }
        let Parsed::Message(f) = m(
            json!({ "type": "message", "subtype": "file_share", "channel": "D1", "user": "U0USER2", "ts": "8", "files": [{}] }),
        ) else {
            panic!("not a message")
        };
        assert!(f.files_only);
    }
}

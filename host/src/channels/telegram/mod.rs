//! The Telegram adapter: one long-polling task and one outbound queue per bot account.
//!
//! Telegram's types and its send/getMe/getWebhookInfo requests come from `teloxide-core`;
//! `getUpdates` and `getMe` are driven here (not by teloxide's dispatcher) because the offset
//! must be ours: each update is parsed on its own, so one malformed update is skipped and logged
//! while the offset still moves past it, an update id at or below the offset is never handled
//! twice, and a 401 stops only this account with a log line an operator can act on.
//!
//! Store first, then confirm: a message that starts a turn is in the tenant's durable inbox
//! before the offset moves past its update; if it cannot be stored, the batch stops there and
//! the update is taken again later. After a restart polling resumes past the last update
//! admitted, and the turns that had not finished run again.
//!
//! Normalisation: private chats are direct sessions; groups and supergroups are group sessions;
//! a forum topic is its own session (`<chatId>.topic.<threadId>`) and the reply goes back into
//! the topic. Edits, channel posts and other update kinds are ignored. Messages without text get
//! a short polite answer (when the sender is allowed). Messages from bots are ignored.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use teloxide_core::requests::Requester;
use teloxide_core::types::{ChatId, Me, Message, MessageId, ThreadId, Update, UpdateKind};
use teloxide_core::{ApiError, Bot, RequestError};
use tokio::sync::watch;

pub mod config;
mod doctor;

use super::adapter::{AccountBlock, ChannelPass, Check, Context, Field, Onboarding, Validated};
use super::inbound::{Account, Body, ChatMessage, Deferred, accept};
use super::outbound::{ChatTarget, Limits, Outbound, SendError, Transport};
use super::pairing::Pairing;
use crate::config::{Config, RawChannel};
use crate::gateway::Live;
use config::{TelegramAccount, TelegramSettings};

/// The Telegram settings of a checked config (`None`: the channel is off).
fn settings(config: &Config) -> Option<&TelegramSettings> {
    config.channels.platform::<TelegramSettings>("telegram")
}

/// Long-poll timeout asked of the Bot API, in seconds.
pub const POLL_TIMEOUT_SECS: u64 = 25;
/// Most updates asked for per poll.
const POLL_LIMIT: u32 = 100;
/// Longest wait between retries after transient polling failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// An account's connection: the teloxide `Bot` for requests, and what `getUpdates` needs.
#[derive(Clone)]
pub struct Connection {
    pub bot: Bot,
    http: reqwest::Client,
    /// `<apiUrl>/bot<token>`: holds the token, so never logged.
    method_base: String,
}

impl Connection {
    /// `api_url` is the Bot API base (`https://api.telegram.org` or a self-hosted server).
    pub fn new(token: &str, api_url: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(api_url).map_err(|e| format!("invalid apiUrl: {e}"))?;
        // Long polls hold the connection for POLL_TIMEOUT_SECS; allow for that plus slack.
        let http = super::net::http_client(Duration::from_secs(POLL_TIMEOUT_SECS + 15), Default::default())?;
        let bot = Bot::with_client(token, http.clone()).set_api_url(url);
        let method_base = format!("{}/bot{token}", api_url.trim_end_matches('/'));
        Ok(Self { bot, http, method_base })
    }

    /// `getMe`: the bot's identity. An answer that lacks a field names the field.
    pub async fn get_me(&self) -> Result<Me, MeError> {
        let result = self.call("getMe", &json!({}), Duration::from_secs(30)).await.map_err(|e| match e {
            PollError::Unauthorized => MeError::Unauthorized,
            other => MeError::Failed(other.to_string()),
        })?;
        parse_me(result).map_err(MeError::Failed)
    }

    /// The webhook URL currently set for the bot, if any.
    pub async fn webhook(&self) -> Result<Option<reqwest::Url>, String> {
        self.bot.get_webhook_info().await.map(|w| w.url).map_err(|e| describe(&e))
    }

    async fn get_updates(&self, offset: i64, timeout: u64) -> Result<Vec<Value>, PollError> {
        let body = json!({ "offset": offset, "timeout": timeout, "limit": POLL_LIMIT,
                           "allowed_updates": ["message", "edited_message"] });
        match self.call("getUpdates", &body, Duration::from_secs(timeout + 15)).await? {
            Value::Array(items) => Ok(items),
            _ => Err(PollError::Transient("getUpdates answered without a result list".into())),
        }
    }

    /// One Bot API method: its `result`, or the error in words (never the URL, which holds the
    /// token, nor the values of the answer).
    async fn call(&self, method: &str, body: &Value, timeout: Duration) -> Result<Value, PollError> {
        let resp = self
            .http
            .post(format!("{}/{method}", self.method_base))
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| PollError::Transient(super::net::network_error(&e, "the Bot API")))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| PollError::Transient(super::net::network_error(&e, "the Bot API")))?;
        let mut v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) if status.as_u16() == 401 => return Err(PollError::Unauthorized),
            Err(_) => {
                return Err(PollError::Transient(format!("HTTP {} with a body that is not JSON", status.as_u16())));
            }
        };
        if v["ok"] == true {
            return match v.get_mut("result") {
                Some(r) => Ok(r.take()),
                None => Err(PollError::Transient(format!("{method} answered ok without a result"))),
            };
        }
        let code = v["error_code"].as_u64().unwrap_or(u64::from(status.as_u16()));
        let description = v["description"].as_str().unwrap_or("no description").chars().take(200).collect();
        match code {
            401 | 404 => Err(PollError::Unauthorized),
            409 => Err(PollError::Conflict(description)),
            429 => Err(PollError::RetryAfter(Duration::from_secs(
                v["parameters"]["retry_after"].as_u64().unwrap_or(5).clamp(1, 3600),
            ))),
            _ => Err(PollError::Transient(format!("error {code}: {description}"))),
        }
    }
}

/// Reads a `getMe` result. A missing field is named; a value is never quoted.
fn parse_me(result: Value) -> Result<Me, String> {
    serde_json::from_value::<Me>(result).map_err(|e| {
        let why = e.to_string();
        match why.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()) {
            Some(field) => format!("the Bot API's getMe answer lacks the field `{field}`"),
            None => "the Bot API's getMe answer has a field of an unexpected type or is not a bot".into(),
        }
    })
}

/// Why `getMe` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeError {
    /// The token was rejected (401): wrong or revoked.
    Unauthorized,
    Failed(String),
}

impl std::fmt::Display for MeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeError::Unauthorized => f.write_str("the bot token was rejected (401 Unauthorized)"),
            MeError::Failed(why) => f.write_str(why),
        }
    }
}

#[derive(Debug)]
enum PollError {
    Unauthorized,
    Conflict(String),
    RetryAfter(Duration),
    Transient(String),
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::Unauthorized => f.write_str("the bot token was rejected (401 Unauthorized)"),
            PollError::Conflict(why) => write!(f, "409 Conflict: {why}"),
            PollError::RetryAfter(d) => write!(f, "flood control: retry after {} s", d.as_secs()),
            PollError::Transient(why) => f.write_str(why),
        }
    }
}

/// A teloxide error in words, never including the request URL (and so never the token).
pub fn describe(e: &RequestError) -> String {
    match e {
        RequestError::Api(ApiError::InvalidToken) => "the bot token was rejected (401 Unauthorized)".into(),
        RequestError::Api(api) => format!("the Bot API refused: {api}"),
        RequestError::RetryAfter(s) => format!("flood control: retry after {} s", s.duration().as_secs()),
        RequestError::MigrateToChatId(_) => "the group was upgraded to a supergroup".into(),
        RequestError::Network(n) => super::net::network_error(n, "the Bot API"),
        RequestError::InvalidJson { raw, .. } if serde_json::from_str::<Value>(raw).is_ok() => {
            "the Bot API sent an answer this client cannot read (a field is missing or has an unexpected type)".into()
        }
        RequestError::InvalidJson { .. } => "the Bot API sent an answer that is not valid JSON".into(),
        RequestError::Io(_) => "I/O error talking to the Bot API".into(),
    }
}

/// Sends through teloxide's `sendMessage` (plain text: no parse mode, so nothing the model
/// writes is interpreted as markup and nothing needs escaping).
struct TelegramTransport {
    bot: Bot,
}

#[async_trait::async_trait]
impl Transport for TelegramTransport {
    async fn send(&self, to: &ChatTarget, text: &str) -> Result<(), SendError> {
        use teloxide_core::payloads::SendMessageSetters as _;
        let chat: i64 = to.chat.parse().map_err(|_| SendError::Permanent("invalid chat id".into()))?;
        let mut req = self.bot.send_message(ChatId(chat), text);
        if let Some(t) = to.thread.as_deref().and_then(|t| t.parse::<i32>().ok()) {
            req = req.message_thread_id(ThreadId(MessageId(t)));
        }
        match req.await {
            Ok(_) => Ok(()),
            Err(RequestError::RetryAfter(s)) => Err(SendError::RetryAfter(s.duration())),
            Err(RequestError::Api(ApiError::InvalidToken)) => Err(SendError::Unauthorized),
            // Unknown API errors include 5xx answers: worth a bounded retry.
            Err(e @ RequestError::Api(ApiError::Unknown(_))) => Err(SendError::Transient(describe(&e))),
            Err(e @ (RequestError::Api(_) | RequestError::MigrateToChatId(_))) => {
                Err(SendError::Permanent(describe(&e)))
            }
            Err(e) => Err(SendError::Transient(describe(&e))),
        }
    }
}

/// The Telegram adapter (long polling; no webhook routes).
pub struct Telegram;

impl super::adapter::Adapter for Telegram {
    fn channel(&self) -> &'static str {
        "telegram"
    }

    fn single_owner(&self) -> bool {
        true
    }

    fn validate(&self, pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
        config::validate(pass, channel, accounts)
    }

    /// Every token resolves and builds a connection; no bot token is shared by two accounts
    /// (one bot, one account, one tenant).
    fn check(&self, config: &Config) -> Vec<String> {
        let accounts = settings(config).map(|s| s.accounts.as_slice()).unwrap_or_default();
        let (mut errors, resolved) = super::adapter::resolve_unique(
            config,
            "telegram",
            accounts.iter().map(|a| (a.id.as_str(), &a.token)),
            "give each account its own bot (from @BotFather)",
        );
        for (id, token) in resolved {
            let api = settings(config).and_then(|s| s.account(id)).map(|a| a.api_url.as_str()).unwrap_or_default();
            if let Err(e) = Connection::new(token.expose(), api) {
                errors.push(format!("channels.telegram account {id:?}: {e}"));
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
            super::adapter::configured(config, "telegram", account, settings(config).and_then(|s| s.account(account)))?;
        let token = acc
            .token
            .resolve(&config.base_dir)
            .map_err(|e| format!("channels.telegram account {account:?} token: {e}"))?;
        let conn = Connection::new(token.expose(), &acc.api_url)
            .map_err(|e| format!("channels.telegram account {account:?}: {e}"))?;
        let label = format!("telegram/{}", acc.id);
        let outbound = Outbound::start(
            &label,
            ctx.transport(Arc::new(TelegramTransport { bot: conn.bot.clone() })),
            Limits::telegram(acc.text_chunk_limit),
        );
        let account = Account::new(&ctx.live, &ctx.inbox, "telegram", acc.id.clone(), shared.access, outbound);
        let poller = Poller {
            live: ctx.live.clone(),
            pairing: ctx.pairing.clone(),
            account,
            conn,
            tenant: shared.tenant,
            config: acc,
            ctx: ctx.clone(),
        };
        Ok(tokio::spawn(poller.run(stopped)))
    }

    fn onboarding(&self) -> Onboarding {
        Onboarding {
            fields: const { &[Field::secret("token", "the bot token from @BotFather")] },
            todo: &[
                "the client adds the bot to its groups (groups answer only when listed under groups and the bot is @mentioned)",
                "people who message the bot get a pairing code: approve it with `bulkhead pairing approve CODE`",
            ],
            manual: None,
        }
    }

    fn check_sender_id(&self, id: &str) -> Result<String, String> {
        match config::sender_id(id) {
            Some(id) => Ok(id.to_string()),
            None => Err(format!(
                "invalid sender {id:?}: use a numeric Telegram user id (optionally \"tg:\"-prefixed) or \"*\"; usernames can change hands"
            )),
        }
    }

    fn send_test(&self, config: &Config, account: &str, chat: &str, text: &str) -> Result<(), String> {
        let acc = settings(config).and_then(|s| s.account(account)).ok_or("the account is not configured")?;
        let token = acc.token.resolve(&config.base_dir)?;
        let conn = Connection::new(token.expose(), &acc.api_url)?;
        let to = ChatTarget { chat: chat.to_string(), thread: None, group: chat.starts_with('-') };
        let rt = super::adapter::command_runtime()?;
        rt.block_on(TelegramTransport { bot: conn.bot.clone() }.send(&to, text)).map_err(|e| format!("{e:?}"))
    }

    fn check_group_id(&self, id: &str) -> Result<(), String> {
        match id.parse::<i64>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("invalid group {id:?}: use the numeric chat id (e.g. \"-1001234567890\") or \"*\"")),
        }
    }

    fn doctor_account(&self, config: &Config, account: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
        doctor::account(config, account, rt)
    }
}

struct Poller {
    /// The running snapshot: each update is routed on the one current when it arrives.
    live: Live,
    pairing: Arc<Pairing>,
    account: Account,
    conn: Connection,
    /// The tenant the bot serves (its inbox is this tenant's).
    tenant: Option<crate::ids::TenantId>,
    config: TelegramAccount,
    /// Says whether this gateway still owns the bot (always, without a shared database).
    ctx: super::adapter::Context,
}

/// What handling one update leads to.
enum Handled {
    /// Done with it: poll from this offset next.
    Next(i64),
    /// Not stored: stop the batch here and poll this update again later.
    Retry(i64),
}

impl Poller {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let id = self.config.id.clone();
        // Turns accepted before a restart run again first; updates already admitted are skipped.
        let Ok(mark) = self.account.resume_or_stop(self.tenant.as_ref()).await else { return };
        let mut offset: i64 = mark.map_or(0, |m| m.saturating_add(1));
        let mut backoff = Duration::from_secs(1);
        let me = loop {
            tokio::select! {
                r = self.conn.get_me() => match r {
                    Ok(me) => break me,
                    Err(MeError::Unauthorized) => {
                        tracing::error!(account = %id, "Telegram rejected the bot token of this account (401 Unauthorized): it is wrong or was revoked. This account is stopped; other accounts are unaffected. Fix the token and restart.");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(account = %id, error = %e, "Telegram getMe failed; retrying.");
                    }
                },
                _ = stopped.wait_for(|s| *s) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        let username = me.user.username.clone().unwrap_or_default();
        tracing::info!(account = %id, bot = %username, "Telegram bot connected; polling for updates.");
        let bot_id = me.user.id.0;
        backoff = Duration::from_secs(1);
        loop {
            if !self.ctx.owns() {
                break;
            }
            let batch = tokio::select! {
                r = self.conn.get_updates(offset, POLL_TIMEOUT_SECS.min(self.poll_limit())) => r,
                _ = stopped.wait_for(|s| *s) => break,
            };
            let wait = match batch {
                Ok(items) => {
                    let (before, any) = (offset, !items.is_empty());
                    let mut deferred = false;
                    for item in items {
                        match self.handle_raw(item, offset, &username, bot_id).await {
                            Handled::Next(next) => offset = next,
                            Handled::Retry(at) => {
                                offset = at;
                                deferred = true;
                                break;
                            }
                        }
                    }
                    if !deferred && (!any || offset > before) {
                        backoff = Duration::from_secs(1);
                        continue;
                    }
                    // A batch that moved nothing forward (updates without ids, only old ones, or
                    // a message that could not be stored) would come straight back: wait like
                    // after an error instead of spinning.
                    tracing::warn!(account = %id, retry_in_ms = backoff.as_millis() as u64, "Telegram updates could not all be taken; slowing down.");
                    let w = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    w
                }
                Err(PollError::Unauthorized) => {
                    tracing::error!(account = %id, "Telegram rejected the bot token of this account (401 Unauthorized): it is wrong or was revoked. This account is stopped; other accounts are unaffected. Fix the token and restart.");
                    return;
                }
                Err(PollError::Conflict(why)) => {
                    tracing::error!(account = %id, error = %why, "Telegram refused long polling for this bot (409 Conflict): a webhook is set or another process polls the same token. Delete the webhook or stop the other process; `bulkhead doctor` shows which.");
                    MAX_BACKOFF
                }
                Err(PollError::RetryAfter(d)) => {
                    tracing::warn!(account = %id, retry_after_secs = d.as_secs(), "Telegram flood control on getUpdates; waiting.");
                    d
                }
                Err(PollError::Transient(why)) => {
                    tracing::warn!(account = %id, error = %why, retry_in_ms = backoff.as_millis() as u64, "Telegram getUpdates failed; retrying.");
                    let w = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    w
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
        }
        // Confirm what was handled (every accepted message is already in the inbox), so a
        // restart does not receive it again.
        if offset > 0 && self.ctx.owns() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.get_updates(offset, 0)).await;
        }
        tracing::info!(account = %id, "Telegram polling stopped.");
    }

    /// The long poll's length in seconds: under a lease, shorter than the lease's margin, so a
    /// poll never outlives the lease it started under by more than that.
    fn poll_limit(&self) -> u64 {
        match &self.ctx.owner {
            Some(_) => {
                let ttl = self.live.load().runtime.config.store.lease_ttl();
                crate::cluster::lease::Lease::margin(ttl).as_secs().max(1)
            }
            None => u64::MAX,
        }
    }

    /// Handles one raw update. Never panics on any input.
    async fn handle_raw(&self, item: Value, offset: i64, username: &str, bot_id: u64) -> Handled {
        let id = &self.config.id;
        let Some((update_id, content)) = parse_update(&item) else {
            tracing::warn!(account = %id, "Skipped a Telegram update without an update_id.");
            return Handled::Next(offset);
        };
        if update_id < offset {
            tracing::debug!(account = %id, update_id, "Skipped an update already handled.");
            return Handled::Next(offset);
        }
        if !self.ctx.owns() {
            // The lease lapsed during the poll: the next owner takes this update.
            return Handled::Retry(update_id);
        }
        let next = update_id.saturating_add(1);
        match content {
            UpdateContent::Message(m) => {
                // Routed on the running snapshot: a reload's new bindings apply to the next update.
                let rt = self.live.load().runtime.clone();
                if let Some(msg) = chat_message(update_id, &m, username, bot_id)
                    && let Err(Deferred(why)) = accept(&rt, &self.pairing, &self.account, msg).await
                {
                    tracing::warn!(account = %id, update_id, reason = %why, "Update not confirmed; it will be taken again.");
                    return Handled::Retry(update_id);
                }
            }
            UpdateContent::Edited => {
                tracing::debug!(account = %id, update_id, "Ignored an edited message (the original was answered).");
            }
            UpdateContent::Malformed => {
                tracing::warn!(account = %id, update_id, "Skipped a malformed Telegram update.");
            }
            UpdateContent::Other => {
                tracing::debug!(account = %id, update_id, "Ignored an update kind this adapter does not handle.")
            }
        }
        Handled::Next(next)
    }
}

/// What a raw update carries, as far as this adapter is concerned.
#[derive(Debug)]
pub enum UpdateContent {
    Message(Box<Message>),
    Edited,
    Malformed,
    Other,
}

/// Reads one raw update from `getUpdates`: its id and what it carries; `None` without an id.
/// Never panics on any input (a fuzz target holds it to that).
pub fn parse_update(item: &Value) -> Option<(i64, UpdateContent)> {
    let update_id = item.get("update_id").and_then(Value::as_i64)?;
    // From text, not `from_value`: teloxide's `UpdateKind` visitor needs borrowed keys.
    let content = match serde_json::from_str::<Update>(&item.to_string()) {
        Ok(Update { kind: UpdateKind::Message(m), .. }) => UpdateContent::Message(Box::new(m)),
        Ok(Update { kind: UpdateKind::EditedMessage(_), .. }) => UpdateContent::Edited,
        Ok(Update { kind: UpdateKind::Error(_), .. }) | Err(_) => UpdateContent::Malformed,
        Ok(_) => UpdateContent::Other,
    };
    Some((update_id, content))
}

/// The inbound message a Telegram message makes, or `None` for one the bot does not take (no
/// sender, sent by a bot, or from a channel).
pub fn chat_message(update: i64, m: &Message, username: &str, bot_id: u64) -> Option<ChatMessage> {
    let from = m.from.as_ref()?;
    if from.is_bot || !(m.chat.is_private() || m.chat.is_group() || m.chat.is_supergroup()) {
        return None;
    }
    let text = m.text().or_else(|| m.caption());
    let mentioned = text.is_some_and(|t| mentions(t, username))
        || m.reply_to_message().and_then(|r| r.from.as_ref()).is_some_and(|u| u.id.0 == bot_id);
    let body = match m.text() {
        Some(t) => Body::Text(t.to_string()),
        None => Body::NonText,
    };
    let topic = if m.is_topic_message { m.thread_id.map(|t| t.0.0.to_string()) } else { None };
    Some(ChatMessage {
        update,
        sender: from.id.0.to_string(),
        username: from.username.clone(),
        chat: m.chat.id.0.to_string(),
        group: !m.chat.is_private(),
        topic,
        mentioned,
        body,
        space: None,
        rule: None,
    })
}

/// Whether `text` mentions `@username` as a whole name (`@acme_bot` is not `@acme_bot2`).
fn mentions(text: &str, username: &str) -> bool {
    if username.is_empty() {
        return false;
    }
    let (text, at) = (text.to_ascii_lowercase(), format!("@{}", username.to_ascii_lowercase()));
    text.match_indices(&at)
        .any(|(i, _)| !text[i + at.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_mention_is_the_whole_bot_name() {
        assert!(super::mentions("hi @Acme_Bot, help", "acme_bot"));
        assert!(super::mentions("/start@acme_bot", "acme_bot"));
        assert!(!super::mentions("hi @acme_bot2", "acme_bot"));
        assert!(!super::mentions("hi @acme_bo", "acme_bot"));
        assert!(!super::mentions("hi @someone", ""));
    }

    use super::*;

    #[test]
    fn real_update_json_parses() {
        let raw = serde_json::json!({ "update_id": 1000, "message": { "message_id": 2, "date": 1764000000,
            "chat": { "id": 111, "type": "private", "first_name": "User", "username": "user111" },
            "from": { "id": 111, "is_bot": false, "first_name": "User111", "username": "user111", "language_code": "en" },
            "text": "hello" } });
        let u = serde_json::from_str::<Update>(&raw.to_string());
        let u = u.map_err(|e| e.to_string()).unwrap();
        assert!(matches!(u.kind, UpdateKind::Message(_)), "{:?}", u.kind);
    }

    #[test]
    fn a_get_me_answer_without_a_field_names_the_field() {
        let mut me = json!({ "id": 1, "is_bot": true, "first_name": "Bot", "username": "acme_bot",
            "can_join_groups": true, "can_read_all_group_messages": false,
            "supports_inline_queries": false, "has_main_web_app": false });
        assert_eq!(parse_me(me.clone()).unwrap().user.username.as_deref(), Some("acme_bot"));
        me.as_object_mut().unwrap().remove("has_main_web_app");
        assert_eq!(parse_me(me.clone()).unwrap_err(), "the Bot API's getMe answer lacks the field `has_main_web_app`");
        me["has_main_web_app"] = json!(false);
        me.as_object_mut().unwrap().remove("first_name");
        assert!(parse_me(me.clone()).unwrap_err().contains("`first_name`"));
        me["first_name"] = json!(12345);
        let e = parse_me(me).unwrap_err();
        assert!(!e.contains("12345") && !e.contains("JSON"), "values are never quoted: {e}");
    }

    #[test]
    fn errors_never_show_the_request_url() {
        let e = RequestError::Api(ApiError::InvalidToken);
        assert!(describe(&e).contains("401"));
        let e = RequestError::RetryAfter(teloxide_core::types::Seconds::from_seconds(3));
        assert!(describe(&e).contains("3 s"));
    }
}

//! The iMessage adapter, through a BlueBubbles server the operator runs on a Mac signed in to
//! the Apple ID that answers: one server (one Apple ID) per account and so per tenant. Inbound
//! messages arrive as BlueBubbles webhooks on `POST /channels/imessage/<account>/webhook`
//! (`hook.rs`, a per-account secret checked on every delivery); replies go out through the
//! shared outbound queue with `POST /api/v1/message/text` (`api.rs`).
//!
//! Store first, then answer: a delivery is answered 200 only once its message is in the tenant's
//! inbox (or decided to be dropped), 503 otherwise. BlueBubbles itself does not deliver a webhook
//! again (README, "iMessage"), so what the gateway answers 503 is logged; the same message
//! delivered twice (a proxy's retry, BlueBubbles' own duplicate events) is recognised by its
//! `guid`. Update ids come from the account (`dedupe::Seen`), never below the inbox's mark.
//!
//! Normalisation: a chat guid `iMessage;-;+15551234567` is a direct chat, `iMessage;+;chat…` a
//! group (SMS chats the same way); chats are kept as [`config::chat_key`]s. Senders are the
//! handle's address, canonical (E.164 or a lowercased email). Messages from the bridge's own
//! Apple ID (`isFromMe`), reactions (tapbacks), group events and other event types are ignored.
//! iMessage has no bot mentions: the bridge is an ordinary Apple ID, so a group is answered only
//! where `requireMention: false` (doctor says so).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

pub mod api;
pub mod config;
mod doctor;
pub mod hook;

use super::adapter::{AccountBlock, ChannelPass, Check, Context, Field, Onboarding, Validated};
use super::dedupe::{SEEN, Seen};
use super::inbound::{Account, Body, ChatMessage, Deferred, accept};
use super::outbound::{Limits, Outbound};
use super::pairing::Pairing;
use crate::config::{Config, RawChannel, SecretString};
use crate::gateway::Live;
use api::{Bridge, IMessageTransport};
use config::{IMessageAccount, IMessageSettings};

/// The iMessage settings of a checked config (`None`: the channel is off).
fn settings(config: &Config) -> Option<&IMessageSettings> {
    config.channels.platform::<IMessageSettings>("imessage")
}

/// Pacing: one Mac sends one message at a time (AppleScript is slow), so the bot pace is the
/// bound; retries last about eight minutes, long enough for the Mac or its server to restart.
fn limits(max_len: usize) -> Limits {
    Limits {
        per_chat: Duration::from_secs(1),
        per_group: Duration::from_secs(2),
        per_bot: Duration::from_millis(100),
        queue: 1024,
        chat_queue: 32,
        max_retries: 20,
        max_len,
    }
}

/// One `new-message` as far as this adapter takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IMessage {
    pub guid: String,
    /// The sender, canonical (`+15551234567`, `bob@example.com`).
    pub sender: String,
    /// The chat key ([`config::chat_key`]).
    pub chat: String,
    pub group: bool,
    pub text: String,
    /// Attachments only, no text.
    pub attachments_only: bool,
}

/// What a webhook delivery carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Message(IMessage),
    /// Not for the agent (its own message, a reaction, another event type...): why.
    Ignored(&'static str),
    /// Unreadable: what is wrong with it (never its content).
    Malformed(&'static str),
}

/// Reads one BlueBubbles webhook payload (`{"type": "new-message", "data": {...}}`). Never
/// panics on any input.
pub fn parse(payload: &Value) -> Parsed {
    let Some(kind) = payload.get("type").and_then(Value::as_str) else {
        return Parsed::Malformed("payload without a type");
    };
    if kind != "new-message" {
        return Parsed::Ignored("an event type this adapter does not handle");
    }
    let d = &payload["data"];
    if !d.is_object() {
        return Parsed::Malformed("new-message without data");
    }
    let guid = match d.get("guid").and_then(Value::as_str) {
        Some(g) if !g.is_empty() && g.len() <= 128 && g.bytes().all(|b| b.is_ascii_graphic()) => g,
        _ => return Parsed::Malformed("message without a readable guid"),
    };
    match d.get("isFromMe") {
        Some(Value::Bool(true)) => return Parsed::Ignored("a message sent from the bridge's own Apple ID"),
        Some(Value::Bool(false)) => {}
        // Without it the message could be the bridge's own reply: never answered.
        _ => return Parsed::Malformed("message without isFromMe"),
    }
    let set = |k: &str| match d.get(k) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_i64() != Some(0),
        Some(_) => true,
    };
    if set("associatedMessageType") || set("associatedMessageGuid") {
        return Parsed::Ignored("a reaction (tapback) or other message about a message");
    }
    if set("itemType") || set("groupActionType") {
        return Parsed::Ignored("a group event (name, members, ...)");
    }
    let Some(chat) = d["chats"].get(0).and_then(|c| c.get("guid")).and_then(Value::as_str) else {
        return Parsed::Malformed("message without a chat guid");
    };
    let Some(chat) = config::chat_key(chat) else { return Parsed::Malformed("message with an unusable chat guid") };
    let Some(address) = d["handle"].get("address").and_then(Value::as_str) else {
        return Parsed::Malformed("message without a sender handle");
    };
    let Some(sender) = config::sender_id(address) else {
        return Parsed::Malformed("message with an unreadable sender address");
    };
    let text = match d.get("text") {
        None | Some(Value::Null) => "",
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Parsed::Malformed("message whose text is not a string"),
    };
    // U+FFFC stands in the text for each attachment.
    let text = text.replace('\u{fffc}', "");
    let text = text.trim();
    let attachments = d["attachments"].as_array().is_some_and(|a| !a.is_empty());
    if text.is_empty() && !attachments {
        return Parsed::Ignored("a message without text or attachments");
    }
    Parsed::Message(IMessage {
        guid: guid.to_string(),
        sender,
        group: config::is_group(&chat),
        chat,
        attachments_only: text.is_empty(),
        text: text.to_string(),
    })
}

/// One running account's receiving side.
pub struct Receiver {
    live: Live,
    pairing: Arc<Pairing>,
    account: Account,
    /// Serialises this account's deliveries: a re-delivery racing its original waits for it.
    seen: tokio::sync::Mutex<Seen>,
}

impl Receiver {
    pub fn id(&self) -> &str {
        &self.account.id
    }

    /// Handles one verified delivery. `Ok`: stored, or decided to be dropped (answer 200);
    /// `Err`: not stored (answer 503).
    pub async fn handle(&self, payload: &Value) -> Result<(), Deferred> {
        let id = &self.account.id;
        let m = match parse(payload) {
            Parsed::Message(m) => m,
            Parsed::Ignored(why) => {
                tracing::debug!(account = %id, reason = why, "iMessage event ignored.");
                return Ok(());
            }
            Parsed::Malformed(kind) => {
                tracing::warn!(account = %id, kind, "Skipped a malformed iMessage webhook delivery.");
                return Ok(());
            }
        };
        let keys = vec![format!("guid:{}", m.guid)];
        let mut seen = self.seen.lock().await;
        if seen.contains(&keys) {
            tracing::debug!(account = %id, "iMessage message delivered again; not handled twice.");
            return Ok(());
        }
        let msg = ChatMessage {
            update: seen.next_update(),
            sender: m.sender,
            username: None,
            chat: m.chat,
            group: m.group,
            topic: None,
            // No bot mentions on iMessage (module docs).
            mentioned: false,
            body: if m.attachments_only { Body::NonText } else { Body::Text(m.text) },
            space: None,
            rule: None,
        };
        // Routed on the running snapshot: a reload's new bindings apply to the next message.
        let rt = self.live.load().runtime.clone();
        accept(&rt, &self.pairing, &self.account, msg).await?;
        seen.insert(keys);
        Ok(())
    }
}

/// The iMessage adapter.
pub struct IMessageAdapter;

/// An account's resolved credentials.
struct Credentials {
    password: SecretString,
    webhook_secret: SecretString,
}

fn resolve(config: &Config, acc: &IMessageAccount) -> Result<Credentials, String> {
    let label = format!("channels.imessage account {:?}", acc.id);
    let password = acc.password.resolve(&config.base_dir).map_err(|e| format!("{label} password: {e}"))?;
    let webhook_secret =
        acc.webhook_secret.resolve(&config.base_dir).map_err(|e| format!("{label} webhookSecret: {e}"))?;
    if password.expose().trim().is_empty() {
        return Err(format!("{label} password: empty"));
    }
    if super::webhook::secret_matches(password.expose(), webhook_secret.expose()) {
        return Err(format!(
            "{label} webhookSecret: the same as the server password; the webhook URL must not open the bridge's API: generate a separate secret"
        ));
    }
    if webhook_secret.expose().trim().len() < 16 {
        return Err(format!(
            "{label} webhookSecret: shorter than 16 characters; use a long random one (openssl rand -hex 24)"
        ));
    }
    Ok(Credentials { password, webhook_secret })
}

impl super::adapter::Adapter for IMessageAdapter {
    fn channel(&self) -> &'static str {
        "imessage"
    }

    fn validate(&self, pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
        config::validate(pass, channel, accounts)
    }

    /// Every credential resolves; the webhook secret is not the password, and no webhook secret
    /// serves two accounts.
    fn check(&self, config: &Config) -> Vec<String> {
        let mut errors = Vec::new();
        let mut secrets = super::adapter::Claimed::default();
        for acc in settings(config).map(|s| s.accounts.as_slice()).unwrap_or_default() {
            let path = config.channels.account("imessage", &acc.id).map_or_else(String::new, |a| a.path.clone());
            match resolve(config, acc) {
                Ok(c) => {
                    if let Some(first) = secrets.claim(c.webhook_secret.expose(), &path) {
                        errors.push(format!(
                            "{path}.webhookSecret: the same webhook secret as {first}.webhookSecret; each account needs its own, or one bridge could post as another"
                        ));
                    }
                }
                Err(e) => errors.push(e),
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
            super::adapter::configured(config, "imessage", account, settings(config).and_then(|s| s.account(account)))?;
        let creds = resolve(config, &acc)?;
        let bridge = Bridge::new(&acc.url, creds.password.clone())
            .map_err(|e| format!("channels.imessage account {account:?}: {e}"))?;
        let label = format!("imessage/{}", acc.id);
        let transport = IMessageTransport { bridge: bridge.clone(), method: acc.send_method, account: acc.id.clone() };
        let outbound = Outbound::start(&label, Arc::new(transport), limits(acc.text_chunk_limit));
        let ctx = ctx.clone();
        Ok(tokio::spawn(async move {
            let id = acc.id.clone();
            let mut access = shared.access.clone();
            // `groups` are written by chat guid; the shared layer keeps chats as chat keys.
            access.groups = std::mem::take(&mut access.groups)
                .into_iter()
                .map(|(k, r)| (if k == "*" { k } else { config::chat_key(&k).unwrap_or(k) }, r))
                .collect();
            let account = Account::new(&ctx.live, &ctx.inbox, "imessage", id.clone(), access, outbound);
            let Ok(mark) = account.resume_or_stop(shared.tenant.as_ref()).await else { return };
            let last = mark.unwrap_or(0);
            let rx = Arc::new(Receiver {
                live: ctx.live.clone(),
                pairing: ctx.pairing.clone(),
                account,
                seen: tokio::sync::Mutex::new(Seen::new(last, SEEN)),
            });
            // Says once at start whether the bridge answers (deliveries are taken either way).
            let probe = bridge.clone();
            let pid = id.clone();
            let mut probe_stop = stopped.clone();
            tokio::spawn(async move {
                tokio::select! {
                    r = probe.ping() => match r {
                        Ok(()) => tracing::info!(account = %pid, "BlueBubbles server reachable; password accepted."),
                        Err(e) => tracing::warn!(account = %pid, error = %e, "BlueBubbles server check failed; replies are retried while it is down. `bulkhead doctor` names the fix."),
                    },
                    _ = probe_stop.wait_for(|s| *s) => {}
                }
            });
            hook::serve(rx, creds.webhook_secret, stopped).await;
            tracing::info!(account = %id, "iMessage account stopped.");
        }))
    }

    fn routes(&self, ctx: &Context) -> Option<axum::Router> {
        Some(hook::routes(ctx))
    }

    fn onboarding(&self) -> Onboarding {
        Onboarding {
            fields: const {
                &[
                    Field::plain("url", "the BlueBubbles server's URL (https://, or loopback)"),
                    Field::secret("password", "the BlueBubbles server password"),
                    Field::secret(
                        "webhookSecret",
                        "a webhook secret of its own (not the password), at least 16 characters",
                    ),
                ]
            },
            todo: &[
                "in BlueBubbles (API & Webhooks): add the webhook URL `bulkhead doctor` prints, with the secret, for new messages",
                "people who write get a pairing code: approve it with `bulkhead pairing approve CODE`",
            ],
            manual: None,
        }
    }

    fn send_test(&self, config: &Config, account: &str, chat: &str, text: &str) -> Result<(), String> {
        let acc = settings(config).and_then(|s| s.account(account)).ok_or("the account is not configured")?;
        let creds = resolve(config, acc)?;
        let guid = config::chat_key(chat)
            .map(|k| config::chat_guid(&k))
            .ok_or_else(|| format!("invalid chat {chat:?}: use a chat guid such as \"iMessage;-;+15551234567\""))?;
        let bridge = Bridge::new(&acc.url, creds.password)?;
        let rt = super::adapter::command_runtime()?;
        rt.block_on(bridge.send_text(&guid, text, acc.send_method)).map(drop).map_err(|e| e.to_string())
    }

    fn doctor_account(&self, config: &Config, account: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
        doctor::account(config, account, rt)
    }

    fn check_sender_id(&self, id: &str) -> Result<String, String> {
        config::sender_id(id).ok_or_else(|| {
            format!("invalid sender {id:?}: use a phone number in E.164 (\"+15551234567\") or an Apple ID email address, or \"*\"")
        })
    }

    fn check_group_id(&self, id: &str) -> Result<(), String> {
        match config::chat_key(id) {
            Some(k) if config::is_group(&k) => Ok(()),
            _ => Err(format!(
                "invalid group {id:?}: use the group's chat guid as BlueBubbles shows it (\"iMessage;+;chat123456789\") or \"*\""
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn msg(data: Value) -> Value {
        json!({ "type": "new-message", "data": data })
    }

    fn base(chat: &str, address: &str, text: Value) -> Value {
        json!({ "guid": "p:0/6A1B2C3D-0000-4000-8000-000000000001", "text": text, "isFromMe": false,
                "handle": { "address": address, "service": "iMessage" }, "attachments": [],
                "associatedMessageGuid": null, "associatedMessageType": null, "itemType": 0, "groupActionType": 0,
                "chats": [ { "guid": chat, "style": 45, "chatIdentifier": "x", "displayName": "" } ] })
    }

    #[test]
    fn direct_and_group_messages_are_read() {
        let Parsed::Message(dm) = parse(&msg(base("iMessage;-;+15551234567", "+15551234567", json!(" hello ")))) else {
            panic!("not a message")
        };
        assert_eq!(
            dm,
            IMessage {
                guid: "p:0/6A1B2C3D-0000-4000-8000-000000000001".into(),
                sender: "+15551234567".into(),
                chat: "iMessage.-.+15551234567".into(),
                group: false,
                text: "hello".into(),
                attachments_only: false,
            }
        );
        let Parsed::Message(g) = parse(&msg(base("iMessage;+;chat123456789", "Bob@Example.com", json!("hi all"))))
        else {
            panic!("not a message")
        };
        assert!(g.group && g.chat == "iMessage.+.chat123456789" && g.sender == "bob@example.com", "{g:?}");
        let mut photo = base("iMessage;-;+15551234567", "+15551234567", json!("\u{fffc}"));
        photo["attachments"] = json!([ { "guid": "at_1", "mimeType": "image/jpeg" } ]);
        let Parsed::Message(p) = parse(&msg(photo)) else { panic!("not a message") };
        assert!(p.attachments_only && p.text.is_empty());
    }

    #[test]
    fn own_messages_reactions_and_other_events_are_ignored() {
        let mut mine = base("iMessage;-;+15551234567", "+15551234567", json!("my own reply"));
        mine["isFromMe"] = json!(true);
        let mut tapback = base("iMessage;-;+15551234567", "+15551234567", json!("Loved \u{201c}hi\u{201d}"));
        tapback["associatedMessageGuid"] = json!("p:0/ABC");
        tapback["associatedMessageType"] = json!(2000);
        let mut renamed = base("iMessage;+;chat1", "+15551234567", Value::Null);
        renamed["itemType"] = json!(2);
        let empty = base("iMessage;-;+15551234567", "+15551234567", Value::Null);
        for (p, why) in [
            (msg(mine), "own"),
            (msg(tapback), "tapback"),
            (msg(renamed), "group event"),
            (msg(empty), "no text"),
            (json!({ "type": "updated-message", "data": {} }), "updated"),
            (json!({ "type": "typing-indicator", "data": { "display": true, "guid": "iMessage;-;+1" } }), "typing"),
            (json!({ "type": "new-server", "data": "https://x.ngrok.io" }), "new server"),
        ] {
            assert!(matches!(parse(&p), Parsed::Ignored(_)), "{why}: {:?}", parse(&p));
        }
    }

    #[test]
    fn malformed_payloads_are_named_by_kind_and_never_panic() {
        let good = base("iMessage;-;+15551234567", "+15551234567", json!("x"));
        let with = |k: &str, v: Value| {
            let mut d = good.clone();
            d[k] = v;
            msg(d)
        };
        let cases = [
            (json!("not an object"), "payload without a type"),
            (json!({ "data": {} }), "payload without a type"),
            (json!({ "type": 7 }), "payload without a type"),
            (json!({ "type": "new-message" }), "new-message without data"),
            (json!({ "type": "new-message", "data": [1] }), "new-message without data"),
            (with("guid", json!("")), "message without a readable guid"),
            (with("guid", json!(42)), "message without a readable guid"),
            (with("isFromMe", Value::Null), "message without isFromMe"),
            (with("isFromMe", json!("false")), "message without isFromMe"),
            (with("chats", json!([])), "message without a chat guid"),
            (with("chats", json!([ { "guid": "iMessage;-;+1 555" } ])), "message with an unusable chat guid"),
            (with("chats", json!([ { "guid": "../../etc" } ])), "message with an unusable chat guid"),
            (with("handle", Value::Null), "message without a sender handle"),
            (with("handle", json!({ "address": "not a number" })), "message with an unreadable sender address"),
            (with("text", json!({ "x": 1 })), "message whose text is not a string"),
        ];
        for (p, kind) in cases {
            assert_eq!(parse(&p), Parsed::Malformed(kind), "{p}");
        }
        // Nothing panics, whatever the shape.
        for v in
            [Value::Null, json!([]), json!(1), json!({ "type": "new-message", "data": { "chats": "x", "handle": 1 } })]
        {
            let _ = parse(&v);
        }
    }
}

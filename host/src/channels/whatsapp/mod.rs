//! The WhatsApp adapter, on Meta's official **Cloud API**: one business phone number per
//! account, deliveries received on a signed webhook route of the gateway's HTTP server
//! (`hooks.rs`), replies sent with `POST /{phone-number-id}/messages` through the shared outbound
//! queue (`graph.rs`).
//!
//! Store first, then acknowledge: a delivery is answered 200 only once each of its messages is in
//! the tenant's durable inbox (or decided to be dropped); if one cannot be stored the delivery
//! gets 503 and Meta delivers it again. Meta has no increasing update id, so each accepted message
//! gets one from the account (never below the inbox's mark); retries are recognised by the
//! message id (`wamid.…`).
//!
//! One Meta app may serve several numbers and has one webhook URL: a delivery verified with an
//! account's app secret may carry changes for another number of the same app, and each change
//! goes to the running account of its `phone_number_id` **whose app secret is the same** (so a
//! delivery signed by one app can never feed another app's account). Changes for a number no
//! account serves are logged and dropped.
//!
//! The QR-linked "WhatsApp Web" mode is not offered: see docs/channels.md ("WhatsApp: why no
//! linked device").
//!
//! Normalisation: every conversation is direct (the Cloud API serves one-to-one chats); text,
//! button and interactive replies are text; media, locations and contacts are non-text;
//! reactions and system messages are ignored.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

pub mod config;
pub mod graph;
mod hooks;

use super::adapter::{AccountBlock, ChannelPass, Check, Context, Field, Onboarding, Validated};
use super::dedupe::{SEEN, Seen};
use super::inbound::{Account, Body, ChatMessage, Deferred, accept};
use super::outbound::{Limits, Outbound};
use super::pairing::Pairing;
use crate::config::{Config, RawChannel, SecretString};
use crate::gateway::Live;
use config::{WhatsAppAccount, WhatsAppSettings};
use graph::{Graph, GraphError, WhatsAppTransport};

/// The WhatsApp settings of a checked config (`None`: the channel is off).
fn settings(config: &Config) -> Option<&WhatsAppSettings> {
    config.channels.platform::<WhatsAppSettings>("whatsapp")
}

/// Longest wait between retries after transient failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Pacing: the Cloud API takes 80 messages per second per number by default; a customer should
/// not get a burst (Meta's pair rate limit).
fn limits(max_len: usize) -> Limits {
    Limits {
        per_chat: Duration::from_secs(1),
        per_group: Duration::from_secs(1),
        per_bot: Duration::from_millis(13),
        queue: 1024,
        chat_queue: 32,
        max_retries: 5,
        max_len,
    }
}

/// One customer message, as far as this adapter takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaMessage {
    /// The business number it was sent to.
    pub phone_number_id: String,
    /// `wamid.…`: unique per message, the key of re-deliveries.
    pub id: String,
    /// The customer (canonical: digits).
    pub from: String,
    /// `None`: not text (media, location, contacts...).
    pub text: Option<String>,
}

/// One item of a webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Message(WaMessage),
    /// A reply WhatsApp reports it could not deliver: the number and Meta's error code.
    Failed {
        phone_number_id: String,
        code: i64,
    },
    /// Not for the agent (a status, a reaction, another field...): why.
    Ignored(&'static str),
    /// Unreadable: what is wrong with it (never its content).
    Malformed(&'static str),
}

/// Reads one webhook delivery. Never panics on any input.
pub fn parse_delivery(payload: &Value) -> Vec<Item> {
    if payload["object"] != "whatsapp_business_account" {
        return vec![Item::Ignored("not a WhatsApp Business Account delivery")];
    }
    let Some(entries) = payload["entry"].as_array() else { return vec![Item::Malformed("delivery without entries")] };
    let mut out = Vec::new();
    for entry in entries {
        let Some(changes) = entry["changes"].as_array() else {
            out.push(Item::Malformed("entry without changes"));
            continue;
        };
        for change in changes {
            if change["field"] != "messages" {
                out.push(Item::Ignored("a change of another field than messages"));
                continue;
            }
            let value = &change["value"];
            let Some(pnid) = value["metadata"]["phone_number_id"].as_str().filter(|p| config::phone_number_id(p))
            else {
                out.push(Item::Malformed("change without a readable phone_number_id"));
                continue;
            };
            match &value["messages"] {
                Value::Null => {}
                Value::Array(ms) => out.extend(ms.iter().map(|m| message(pnid, m))),
                _ => out.push(Item::Malformed("messages is not a list")),
            }
            match &value["statuses"] {
                Value::Null => {}
                Value::Array(ss) => {
                    for s in ss {
                        if s["status"] == "failed" {
                            let code = s["errors"][0]["code"].as_i64().unwrap_or(0);
                            out.push(Item::Failed { phone_number_id: pnid.to_string(), code });
                        }
                    }
                }
                _ => out.push(Item::Malformed("statuses is not a list")),
            }
        }
    }
    out
}

fn message(pnid: &str, m: &Value) -> Item {
    // Group messages (Meta's groups webhook) carry `group_id`: not served yet, and never to be
    // mistaken for a direct message from their sender.
    if m.get("group_id").is_some_and(|g| !g.is_null()) {
        return Item::Ignored("a group message (groups are not served on this channel)");
    }
    let Some(from) = m["from"].as_str().and_then(config::sender_id) else {
        return Item::Malformed("message with an unreadable sender");
    };
    let Some(id) =
        m["id"].as_str().filter(|i| !i.is_empty() && i.len() <= 256 && i.bytes().all(|b| b.is_ascii_graphic()))
    else {
        return Item::Malformed("message without a readable id");
    };
    let text = |v: &Value| v.as_str().map(str::to_string);
    let body = match m["type"].as_str() {
        Some("text") => match text(&m["text"]["body"]) {
            Some(t) => Some(t),
            None => return Item::Malformed("text message without a body"),
        },
        Some("button") => text(&m["button"]["text"]),
        Some("interactive") => {
            let i = &m["interactive"];
            text(&i["button_reply"]["title"]).or_else(|| text(&i["list_reply"]["title"]))
        }
        Some("reaction") => return Item::Ignored("a reaction"),
        Some("system" | "ephemeral" | "request_welcome") => return Item::Ignored("a system message"),
        Some(_) => None,
        None => return Item::Malformed("message without a type"),
    };
    let body = match body {
        Some(t) if t.trim().is_empty() => return Item::Ignored("a message without text"),
        Some(t) => Some(t.trim().to_string()),
        None => None,
    };
    Item::Message(WaMessage { phone_number_id: pnid.to_string(), id: id.to_string(), from, text: body })
}

/// One running account's receiving side.
pub struct Receiver {
    live: Live,
    pairing: Arc<Pairing>,
    account: Account,
    /// Serialises this account's messages: a re-delivery racing its original waits for it.
    seen: tokio::sync::Mutex<Seen>,
}

impl Receiver {
    pub fn id(&self) -> &str {
        &self.account.id
    }

    /// Handles one message. `Ok`: stored, or decided to be dropped, so the delivery may be
    /// acknowledged; `Err`: not stored (Meta delivers it again).
    pub async fn handle(&self, m: WaMessage) -> Result<(), Deferred> {
        let key = format!("msg:{}", m.id);
        let mut seen = self.seen.lock().await;
        if seen.has(&key) {
            tracing::debug!(account = %self.account.id, "WhatsApp message delivered again; not handled twice.");
            return Ok(());
        }
        let msg = ChatMessage {
            update: seen.next_update(),
            sender: m.from.clone(),
            username: None,
            chat: m.from,
            group: false,
            topic: None,
            mentioned: false,
            body: m.text.map_or(Body::NonText, Body::Text),
            space: None,
            rule: None,
        };
        // Routed on the running snapshot: a reload's new bindings apply to the next message.
        let rt = self.live.load().runtime.clone();
        accept(&rt, &self.pairing, &self.account, msg).await?;
        seen.insert(vec![key]);
        Ok(())
    }
}

/// The WhatsApp adapter.
pub struct WhatsApp;

/// An account's resolved credentials.
struct Credentials {
    token: SecretString,
    app_secret: SecretString,
    verify_token: SecretString,
}

fn resolve(config: &Config, acc: &WhatsAppAccount) -> Result<Credentials, String> {
    let label = format!("channels.whatsapp account {:?}", acc.id);
    let get = |key: &str, s: &crate::config::SecretRef| {
        let v = s.resolve(&config.base_dir).map_err(|e| format!("{label} {key}: {e}"))?;
        if v.expose().trim().is_empty() {
            return Err(format!("{label} {key}: empty"));
        }
        Ok(v)
    };
    Ok(Credentials {
        token: get("accessToken", &acc.access_token)?,
        app_secret: get("appSecret", &acc.app_secret)?,
        verify_token: get("verifyToken", &acc.verify_token)?,
    })
}

/// The account `id` of a checked config, its shared settings, credentials and Graph client.
fn open(
    config: &Config,
    id: &str,
) -> Result<(WhatsAppAccount, crate::config::channels::ChannelAccount, Credentials, Graph), String> {
    let (acc, shared) = super::adapter::configured(config, "whatsapp", id, settings(config).and_then(|s| s.account(id)))?;
    let creds = resolve(config, &acc)?;
    let graph = Graph::new(&acc.api_url).map_err(|e| format!("channels.whatsapp account {id:?}: {e}"))?;
    Ok((acc, shared, creds, graph))
}

impl super::adapter::Adapter for WhatsApp {
    fn channel(&self) -> &'static str {
        "whatsapp"
    }

    fn validate(&self, pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
        config::validate(pass, channel, accounts)
    }

    /// Every credential resolves; no phone number is served by two accounts (one number, one
    /// account, one tenant). One access token or app secret may serve several numbers (a
    /// System User token and one Meta app for several clients are common).
    fn check(&self, config: &Config) -> Vec<String> {
        let mut errors = Vec::new();
        let mut numbers: Vec<(&str, String)> = Vec::new();
        for acc in settings(config).map(|s| s.accounts.as_slice()).unwrap_or_default() {
            let path = config.channels.account("whatsapp", &acc.id).map_or_else(String::new, |a| a.path.clone());
            if let Err(e) = resolve(config, acc) {
                errors.push(e);
            }
            match numbers.iter().find(|(n, _)| *n == acc.phone_number_id) {
                Some((_, first)) => errors.push(format!(
                    "{path}.phoneNumberId: the same phone number id as {first}.phoneNumberId; a number belongs to one account and so to one tenant"
                )),
                None => numbers.push((&acc.phone_number_id, path.clone())),
            }
            if let Err(e) = Graph::new(&acc.api_url) {
                errors.push(format!("channels.whatsapp account {:?}: {e}", acc.id));
            }
        }
        errors
    }

    fn routes(&self, ctx: &Context) -> Option<axum::Router> {
        Some(hooks::routes(ctx))
    }

    fn onboarding(&self) -> Onboarding {
        Onboarding {
            fields: const {
                &[
                    Field::plain("phoneNumberId", "the Cloud API's phone number id (API Setup, \"Phone number ID\")"),
                    Field::secret("accessToken", "a System User access token with whatsapp_business_messaging"),
                    Field::secret("appSecret", "the Meta app's secret (App settings, Basic)"),
                    Field::secret(
                        "verifyToken",
                        "the webhook verify token to type into the app's WhatsApp Configuration",
                    ),
                ]
            },
            todo: &[
                "in the Meta app's WhatsApp Configuration: the Callback URL `bulkhead doctor` prints, the verify token, and a subscription to the messages field",
                "customers who write get a pairing code: approve it with `bulkhead pairing approve CODE`",
            ],
            manual: None,
        }
    }

    fn send_test(&self, config: &Config, account: &str, chat: &str, text: &str) -> Result<(), String> {
        let (acc, _, creds, graph) = open(config, account)?;
        let to = config::sender_id(chat).ok_or("a WhatsApp chat is the customer's number, e.g. +15550123456")?;
        let rt = super::adapter::command_runtime()?;
        rt.block_on(graph.send_text(creds.token.expose(), &acc.phone_number_id, &to, text)).map_err(|e| e.to_string())
    }

    fn doctor_account(&self, config: &Config, account: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
        let label = format!("whatsapp/{account}");
        let (acc, _, creds, graph) = match open(config, account) {
            Ok(x) => x,
            Err(e) => return vec![Check::fail(format!("{label}: {e}"))],
        };
        let mut out = Vec::new();
        match rt.block_on(graph.number(creds.token.expose(), &acc.phone_number_id)) {
            Ok(n) => out.push(Check::ok(format!(
                "{label}: access token accepted (number {}, verified name {}, quality {})",
                n.display, n.verified_name, n.quality
            ))),
            Err(e @ GraphError::Auth(_)) => out.push(Check::fail(format!(
                "{label}: {e}; create a System User access token with whatsapp_business_messaging (Business Settings, System Users) or renew the temporary one"
            ))),
            Err(e @ GraphError::Permanent(..)) => out.push(Check::fail(format!(
                "{label}: phone number id {} not readable with this token: {e}; copy the \"Phone number ID\" from the app's API Setup page",
                acc.phone_number_id
            ))),
            Err(e) => out.push(Check::fail(format!("{label}: the Graph API did not answer: {e}"))),
        }
        if let Ok(u) = reqwest::Url::parse(&acc.api_url)
            && u.scheme() == "http"
            && !u
                .host_str()
                .is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
        {
            out.push(Check::warn(format!(
                "{label}: apiUrl is plain HTTP to another host: the access token travels unencrypted"
            )));
        }
        out.push(Check::note(format!(
            "{label}: in the Meta app's WhatsApp Configuration, set the Callback URL to https://<this gateway>/channels/whatsapp/{account}/webhook with the verify token, and subscribe to the messages field"
        )));
        out
    }

    fn start_account(
        &self,
        ctx: &Context,
        config: &Config,
        account: &str,
        stopped: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let (acc, shared, creds, graph) = open(config, account)?;
        hooks::started(&acc, &creds);
        // The account stops when told to, or when the Graph API refuses its token on a reply.
        let (halt, halted) = watch::channel(false);
        let transport = WhatsAppTransport {
            graph: graph.clone(),
            token: creds.token.clone(),
            phone_number_id: acc.phone_number_id.clone(),
            halt: halt.clone(),
            account: acc.id.clone(),
        };
        let outbound =
            Outbound::start(&format!("whatsapp/{}", acc.id), Arc::new(transport), limits(acc.text_chunk_limit));
        let mut told = stopped;
        tokio::spawn(async move {
            if told.wait_for(|s| *s).await.is_ok() {
                let _ = halt.send(true);
            }
        });
        let start = Start { ctx: ctx.clone(), acc, shared, graph, creds, outbound };
        Ok(tokio::spawn(start.run(halted)))
    }

    /// Nothing to link: the Cloud API connects with the account's credentials (the QR-linked
    /// WhatsApp Web mode is not offered; docs/channels.md says why).
    fn login(&self, config: &Config, account: &str, out: &mut dyn std::io::Write) -> Result<(), String> {
        let _ = (config, account, out);
        Err("WhatsApp runs on Meta's Cloud API here: there is no device to link and no QR code; the account connects with its phoneNumberId, accessToken, appSecret and verifyToken (README \"WhatsApp\"). The QR-linked WhatsApp Web mode is not offered: docs/channels.md, \"WhatsApp: why no linked device\"".into())
    }

    fn check_sender_id(&self, id: &str) -> Result<String, String> {
        config::sender_id(id).ok_or_else(|| {
            format!("invalid WhatsApp sender {id:?}: use the customer's number in international format, e.g. \"+15550123456\"")
        })
    }
}

/// What an account's task starts from.
struct Start {
    ctx: Context,
    acc: WhatsAppAccount,
    shared: crate::config::channels::ChannelAccount,
    graph: Graph,
    creds: Credentials,
    outbound: Outbound,
}

impl Start {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let Start { ctx, acc, shared, graph, creds, outbound } = self;
        let id = acc.id.clone();
        // The token and number are checked once before deliveries are taken: a refused token
        // stops this account only.
        let mut backoff = Duration::from_secs(1);
        loop {
            let r = tokio::select! {
                r = graph.number(creds.token.expose(), &acc.phone_number_id) => r,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let pause = match r {
                Ok(n) => {
                    hooks::identified(&acc.phone_number_id, &n.display);
                    tracing::info!(account = %id, number = %n.display, "WhatsApp number identified.");
                    break;
                }
                Err(e @ (GraphError::Auth(_) | GraphError::Permanent(..))) => {
                    tracing::error!(account = %id, error = %e, "The Graph API refused this WhatsApp account's token or phone number id. This account is stopped; other accounts are unaffected. Fix it (bulkhead doctor) and reload.");
                    return;
                }
                Err(GraphError::RetryAfter(d)) => d,
                Err(e) => {
                    tracing::warn!(account = %id, error = %e, "The Graph API did not answer; retrying.");
                    backoff
                }
            };
            if !super::net::pause(pause, &mut stopped).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let account = Account::new(&ctx.live, &ctx.inbox, "whatsapp", id.clone(), shared.access.clone(), outbound);
        let Ok(mark) = account.resume_or_stop(shared.tenant.as_ref()).await else { return };
        let last = mark.unwrap_or(0);
        let rx = Arc::new(Receiver {
            live: ctx.live.clone(),
            pairing: ctx.pairing.clone(),
            account,
            seen: tokio::sync::Mutex::new(Seen::new(last, SEEN)),
        });
        hooks::serve(rx, &acc, &creds, stopped).await;
        tracing::info!(account = %id, "WhatsApp account stopped.");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn delivery(value: Value) -> Value {
        json!({ "object": "whatsapp_business_account",
                "entry": [{ "id": "WABA1", "changes": [{ "field": "messages", "value": value }] }] })
    }

    fn value(messages: Value) -> Value {
        json!({ "messaging_product": "whatsapp",
                "metadata": { "display_phone_number": "15550001111", "phone_number_id": "1001" },
                "contacts": [{ "profile": { "name": "Kerry" }, "wa_id": "16315551181" }],
                "messages": messages })
    }

    #[test]
    fn messages_statuses_and_other_items_are_read_by_kind() {
        let items = parse_delivery(&delivery(value(json!([
            { "from": "16315551181", "id": "wamid.A", "timestamp": "1", "type": "text", "text": { "body": " Hello " } },
            { "from": "16315551181", "id": "wamid.B", "type": "image", "image": { "id": "m1" } },
            { "from": "16315551181", "id": "wamid.C", "type": "interactive",
              "interactive": { "type": "button_reply", "button_reply": { "id": "b1", "title": "Yes" } } },
            { "from": "16315551181", "id": "wamid.D", "type": "reaction", "reaction": { "emoji": "👍" } },
            { "from": "not a number", "id": "wamid.E", "type": "text", "text": { "body": "x" } },
            { "from": "16315551181", "type": "text", "text": { "body": "no id" } },
            { "from": "16315551181", "id": "wamid.F", "type": "text", "text": { "body": 5 } },
            { "from": "16315551181", "id": "wamid.G", "type": "text", "text": { "body": "   " } },
            { "from": "16315551181", "id": "wamid.H", "group_id": "120363", "type": "text", "text": { "body": "in a group" } },
        ]))));
        let msg = |id: &str, text: Option<&str>| {
            Item::Message(WaMessage {
                phone_number_id: "1001".into(),
                id: id.into(),
                from: "16315551181".into(),
                text: text.map(str::to_string),
            })
        };
        assert_eq!(
            items,
            vec![
                msg("wamid.A", Some("Hello")),
                msg("wamid.B", None),
                msg("wamid.C", Some("Yes")),
                Item::Ignored("a reaction"),
                Item::Malformed("message with an unreadable sender"),
                Item::Malformed("message without a readable id"),
                Item::Malformed("text message without a body"),
                Item::Ignored("a message without text"),
                Item::Ignored("a group message (groups are not served on this channel)"),
            ]
        );
        let status = delivery(json!({ "metadata": { "phone_number_id": "1001" }, "statuses": [
            { "id": "wamid.X", "status": "delivered", "recipient_id": "16315551181" },
            { "id": "wamid.Y", "status": "failed", "recipient_id": "16315551181",
              "errors": [{ "code": 131047, "title": "Re-engagement message" }] } ] }));
        assert_eq!(parse_delivery(&status), vec![Item::Failed { phone_number_id: "1001".into(), code: 131047 }]);
        for (bad, want) in [
            (json!({ "object": "page", "entry": [] }), Item::Ignored("not a WhatsApp Business Account delivery")),
            (json!({ "object": "whatsapp_business_account" }), Item::Malformed("delivery without entries")),
            (json!({ "object": "whatsapp_business_account", "entry": [{}] }), Item::Malformed("entry without changes")),
            (
                delivery(json!({ "metadata": {}, "messages": [] })),
                Item::Malformed("change without a readable phone_number_id"),
            ),
            (
                delivery(json!({ "metadata": { "phone_number_id": "1001" }, "messages": {} })),
                Item::Malformed("messages is not a list"),
            ),
            (json!("text"), Item::Ignored("not a WhatsApp Business Account delivery")),
        ] {
            assert_eq!(parse_delivery(&bad), vec![want], "{bad}");
        }
        let other = json!({ "object": "whatsapp_business_account",
                            "entry": [{ "changes": [{ "field": "account_update", "value": {} }] }] });
        assert_eq!(parse_delivery(&other), vec![Item::Ignored("a change of another field than messages")]);
    }
}

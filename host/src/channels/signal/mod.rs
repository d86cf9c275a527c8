//! The Signal adapter: one phone number per account, through signal-cli's HTTP daemon, which the
//! operator runs as a separate process (`signal-cli daemon --http`, in multi-account mode: one
//! daemon serves several numbers, each request names its `account`). Its licence and its Java
//! runtime stay out of this binary; we speak its JSON-RPC and its event stream (`rpc.rs`).
//!
//! Each account reads its own event stream (`/api/v1/events?account=<number>`), so two accounts
//! on one daemon never see each other's events; an event that names another account is dropped
//! all the same (`events.rs`). The stream is read again with backoff when the daemon restarts.
//! Signal has no acknowledgement on this stream and no increasing update id: each message is
//! stored in the tenant's inbox before the next event is read (a store failure is retried, with
//! backoff, until it is stored or the account stops: never given up), gets an update id from the account (never
//! below the inbox's mark), and a re-delivery is recognised by sender and timestamp (`dedupe`).
//! Replies go through the shared outbound queue, which retries while the daemon is down.
//!
//! Normalisation: a message without `groupInfo` is a direct session with its sender; a group
//! message is a group session of the group, whose chat id is the group id in URL-safe base64
//! (`groups` keys may be written as signal-cli prints them, standard base64, or URL-safe).
//! A mention is an entry of `dataMessage.mentions` naming the account's number or ACI.
//! Sender ids: an E.164 number or an ACI (UUID), each in one canonical form
//! (`config::sender_id`). A message is reported by the sender's number when the envelope shows
//! it, else by the ACI; when the account's lists name the sender's ACI but not its number, by
//! the ACI, so either form may be written in `allowFrom`.
//!
//! Nothing here logs a phone number, a message's text or what the daemon answered in words.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

pub mod config;
mod doctor;
pub mod events;
pub mod rpc;

use super::adapter::{
    AccountBlock, ChannelPass, Check, Context, Field, Onboarding, Validated, command_runtime, show_qr,
};
use super::dedupe::{SEEN, Seen};
use super::inbound::{Account, Body, ChatMessage, Deferred, accept};
use super::net::pause as sleep_or_stop;
use super::outbound::{Limits, Outbound};
use super::pairing::Pairing;
use crate::config::{Config, RawChannel};
use crate::gateway::Live;
use config::{SignalAccount, SignalSettings, group_chat, group_id, masked, sender_id};
use events::{Me, Parsed, SignalMessage, parse_event};
use rpc::{Daemon, RpcError, SignalTransport, Sse, SseReader, Target};

/// The Signal settings of a checked config (`None`: the channel is off).
fn settings(config: &Config) -> Option<&SignalSettings> {
    config.channels.platform::<SignalSettings>("signal")
}

/// Longest wait between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The daemon sends a keep-alive every 15 s: a stream silent for longer is read again.
const IDLE: Duration = Duration::from_secs(60);
/// Largest event read from the stream.
const MAX_EVENT: usize = 256 * 1024;

/// Pacing: Signal publishes no limits; about one message per second per chat stays clear of its
/// rate limiting, which the daemon reports (and the outbound queue waits out).
fn limits(max_len: usize) -> Limits {
    Limits {
        per_chat: Duration::from_secs(1),
        per_group: Duration::from_secs(1),
        per_bot: Duration::from_millis(20),
        queue: 1024,
        chat_queue: 32,
        max_retries: 8,
        max_len,
    }
}

/// The sender id a message is reported by (see the module docs): the number, unless `list`
/// (the sender list that applies to the message) names the ACI but not the number.
fn sender(m: &SignalMessage, list: &[String]) -> String {
    let named = |id: &String| list.iter().any(|x| x == id);
    match (&m.number, &m.uuid) {
        (Some(n), Some(u)) if !named(n) && named(u) => u.clone(),
        (Some(n), _) => n.clone(),
        (None, Some(u)) => u.clone(),
        (None, None) => String::new(),
    }
}

/// What an account learns while it runs.
struct State {
    seen: Seen,
    /// The account's own ACI, from its sync messages (mentions by ACI only).
    uuid: Option<String>,
}

/// One running account's receiving side.
struct Receiver {
    live: Live,
    pairing: Arc<Pairing>,
    account: Account,
    number: String,
    state: tokio::sync::Mutex<State>,
}

impl Receiver {
    /// Handles one `receive` event. `Ok`: stored, or decided to be dropped; `Err`: not stored.
    async fn handle(&self, data: &str) -> Result<(), Deferred> {
        let id = &self.account.id;
        let mut state = self.state.lock().await;
        let m = match parse_event(data, Me { number: &self.number, uuid: state.uuid.as_deref() }) {
            Parsed::Message(m) => m,
            Parsed::Own(uuid) => {
                if state.uuid.is_none() {
                    state.uuid = uuid;
                }
                tracing::debug!(account = %id, "Signal event from the account itself ignored.");
                return Ok(());
            }
            Parsed::Ignored(why) => {
                tracing::debug!(account = %id, reason = why, "Signal event ignored.");
                return Ok(());
            }
            Parsed::Malformed(kind) => {
                tracing::warn!(account = %id, kind, "Skipped a malformed Signal event.");
                return Ok(());
            }
        };
        // Another number this gateway serves: two tenants' agents would answer each other for
        // ever (each reply a new message to the other).
        if let Some(n) = &m.number
            && settings(&self.live.load().runtime.config).is_some_and(|s| s.accounts.iter().any(|a| &a.number == n))
        {
            tracing::warn!(account = %id, "Signal message from another number of this gateway ignored (agents would answer each other).");
            return Ok(());
        }
        let who = m.uuid.as_deref().or(m.number.as_deref()).unwrap_or_default();
        let keys = vec![format!("msg:{who}:{}", m.timestamp)];
        if state.seen.contains(&keys) {
            tracing::debug!(account = %id, "Signal message delivered again; not handled twice.");
            return Ok(());
        }
        let update = state.seen.next_update();
        let access = &self.account.access;
        let (from, chat, rule) = match &m.group {
            Some(g) => {
                // A `groups` key as signal-cli prints it (standard base64) applies too.
                let wire = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, g);
                let chat = group_chat(g);
                let rule = access.groups.get(&wire).cloned();
                let applies = rule.as_ref().or_else(|| access.groups.get(&chat)).or_else(|| access.groups.get("*"));
                let list = applies.and_then(|r| r.allow_from.as_deref()).unwrap_or(&access.group_allow_from);
                (sender(&m, list), chat, rule)
            }
            None => {
                let from = sender(&m, &access.allow_from);
                (from.clone(), from, None)
            }
        };
        let msg = ChatMessage {
            update,
            sender: from,
            username: None,
            group: m.group.is_some(),
            chat,
            topic: None,
            mentioned: m.mentioned,
            body: if m.non_text { Body::NonText } else { Body::Text(m.text) },
            space: None,
            rule,
        };
        // Routed on the running snapshot: a reload's new bindings apply to the next event.
        let rt = self.live.load().runtime.clone();
        accept(&rt, &self.pairing, &self.account, msg).await?;
        state.seen.insert(keys);
        Ok(())
    }
}

/// The Signal adapter.
pub struct Signal;

impl super::adapter::Adapter for Signal {
    fn channel(&self) -> &'static str {
        "signal"
    }

    fn single_owner(&self) -> bool {
        true
    }

    fn validate(&self, pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
        config::validate(pass, channel, accounts)
    }

    /// Every daemon URL makes a client. (One number on one account is the validation pass's.)
    fn check(&self, config: &Config) -> Vec<String> {
        settings(config)
            .map(|s| s.accounts.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| Daemon::new(&a.url).err().map(|e| format!("channels.signal account {:?}: {e}", a.id)))
            .collect()
    }

    fn start_account(
        &self,
        ctx: &Context,
        config: &Config,
        account: &str,
        stopped: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let (acc, shared) =
            super::adapter::configured(config, "signal", account, settings(config).and_then(|s| s.account(account)))?;
        let daemon = Daemon::new(&acc.url).map_err(|e| format!("channels.signal account {account:?}: {e}"))?;
        let transport = SignalTransport { daemon: daemon.clone(), number: acc.number.clone() };
        let outbound =
            Outbound::start(&format!("signal/{}", acc.id), ctx.transport(Arc::new(transport)), limits(acc.text_chunk_limit));
        let account = Account::new(&ctx.live, &ctx.inbox, "signal", acc.id.clone(), shared.access.clone(), outbound);
        let (live, pairing) = (ctx.live.clone(), ctx.pairing.clone());
        Ok(tokio::spawn(async move {
            let id = acc.id.clone();
            // A daemon started with `-a` serves one number and ignores the `account` of a send:
            // this account's replies could go out from another number. Refused before any reply.
            if let Err(RpcError::NoMethod) = daemon.accounts().await {
                tracing::error!(account = %id, "The signal-cli daemon of this account serves a single number (started with -a), so replies could go out from another number. This account is stopped; start the daemon without -a (bulkhead doctor).");
                return;
            }
            let Ok(mark) = account.resume_or_stop(shared.tenant.as_ref()).await else { return };
            let mark = mark.unwrap_or(0);
            let rx = Receiver {
                live,
                pairing,
                account,
                number: acc.number.clone(),
                state: tokio::sync::Mutex::new(State { seen: Seen::new(mark, SEEN), uuid: None }),
            };
            stream(&rx, &daemon, &acc, stopped).await;
            tracing::info!(account = %id, "Signal account stopped.");
        }))
    }

    fn onboarding(&self) -> Onboarding {
        Onboarding {
            fields: const {
                &[
                    Field::plain("number", "the Signal number (E.164)"),
                    Field::optional("url", "the signal-cli daemon's URL"),
                ]
            },
            todo: &[
                "link the number if the daemon does not have it yet: `bulkhead channels login --channel signal --account ID`",
            ],
            manual: Some(
                "a Signal account is a number on the operator's signal-cli daemon, not a token: add channels.signal.accounts.<id>.number to the tenant file, then `bulkhead channels login --channel signal --account <id>`",
            ),
        }
    }

    fn send_test(&self, config: &Config, account: &str, chat: &str, text: &str) -> Result<(), String> {
        let acc = settings(config).and_then(|s| s.account(account)).ok_or("the account is not configured")?;
        let daemon = Daemon::new(&acc.url)?;
        let (wire, direct);
        let to = if let Some(g) = group_id(chat) {
            wire = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, g);
            Target::Group(&wire)
        } else if let Some(d) = sender_id(chat) {
            direct = d;
            Target::Direct(&direct)
        } else {
            return Err(format!(
                "invalid chat {chat:?}: use an E.164 number, an ACI, or a group id as signal-cli prints it"
            ));
        };
        command_runtime()?.block_on(daemon.send(&acc.number, &to, text)).map_err(|e| e.to_string())
    }

    fn doctor_account(&self, config: &Config, account: &str, rt: &tokio::runtime::Runtime) -> Vec<Check> {
        doctor::account(config, account, rt)
    }

    /// Links the daemon to the phone of the account's number as a new device: `startLink`, the
    /// URI shown as a QR code and as text, then `finishLink`, which waits for the scan.
    fn login(&self, config: &Config, account: &str, out: &mut dyn std::io::Write) -> Result<(), String> {
        let acc = settings(config).and_then(|s| s.account(account)).ok_or_else(|| {
            format!("channels.signal has no enabled account {account:?}: add channels.signal.accounts.{account}.number")
        })?;
        let daemon = Daemon::new(&acc.url)?;
        let rt = command_runtime()?;
        let w = |e: std::io::Error| format!("cannot write to the terminal: {e}");
        let uri = rt
            .block_on(daemon.start_link())
            .map_err(|e| format!("startLink on the daemon at {}: {e}", doctor::shown(&acc.url)))?;
        writeln!(
            out,
            "Link {} ({}): on that phone open Signal, Settings > Linked devices > Link new device, and scan this code:",
            account,
            masked(&acc.number)
        )
        .map_err(w)?;
        show_qr(out, &uri)?;
        writeln!(out, "Device link (the same, as text; valid for a few minutes): {uri}").map_err(w)?;
        writeln!(out, "Waiting for the phone (up to {} s)...", rpc::LINK_TIMEOUT.as_secs()).map_err(w)?;
        out.flush().map_err(w)?;
        let device = format!("gateway {account}");
        let linked = rt.block_on(daemon.finish_link(&uri, &device)).map_err(|e| format!("finishLink: {e}"))?;
        match config::number(&linked) {
            Some(n) if n == acc.number => {
                writeln!(
                    out,
                    "Linked {n} as device {device:?}. It is the number of channels.signal.accounts.{account}.number; check it is the phone you meant, then start (or reload) the gateway."
                )
                .map_err(w)?;
                Ok(())
            }
            _ => Err(format!(
                "the phone that scanned the code is {linked}, but channels.signal.accounts.{account}.number is {}: set number to the linked one, or remove this linked device on that phone and link the right one",
                acc.number
            )),
        }
    }

    fn check_sender_id(&self, id: &str) -> Result<String, String> {
        sender_id(id).ok_or_else(|| {
            format!("invalid sender {id:?}: use an E.164 number (\"+15551230001\") or a Signal ACI (a UUID), optionally \"signal:\"-prefixed, or \"*\"")
        })
    }

    fn check_group_id(&self, id: &str) -> Result<(), String> {
        group_id(id).map(|_| ()).ok_or_else(|| {
            format!("invalid group {id:?}: use the group id signal-cli prints (base64 of 32 bytes, `signal-cli -a NUMBER listGroups`) or \"*\"")
        })
    }
}

/// Reads the account's event stream until told to stop, connecting again with backoff whenever
/// the daemon drops or refuses it.
async fn stream(rx: &Receiver, daemon: &Daemon, acc: &SignalAccount, mut stopped: watch::Receiver<bool>) {
    let id = &acc.id;
    let mut backoff = Duration::from_secs(1);
    // Warn once per outage, not at every attempt.
    let mut warned = false;
    loop {
        let opened = tokio::select! {
            r = daemon.events(&acc.number) => r,
            _ = stopped.wait_for(|s| *s) => return,
        };
        match opened {
            Ok(resp) => {
                tracing::info!(account = %id, "Signal event stream connected.");
                backoff = Duration::from_secs(1);
                if !read(rx, resp, &mut stopped).await {
                    return;
                }
                tracing::warn!(account = %id, "Signal event stream ended (daemon restarting?); connecting again.");
                // A new outage: its first failed attempt says why (an unlinked number, a refused
                // connection); the ones after it stay quiet.
                warned = false;
                if !sleep_or_stop(backoff, &mut stopped).await {
                    return;
                }
                continue;
            }
            Err(RpcError::UnknownAccount) => {
                if !warned {
                    tracing::error!(account = %id, "The signal-cli daemon does not serve this account's number: link it with `bulkhead channels login --channel signal --account <id>` (or register it with signal-cli). Retrying.");
                }
                warned = true;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(account = %id, error = %e, "Signal event stream unavailable; retrying with backoff.");
                }
                warned = true;
            }
        }
        if !sleep_or_stop(backoff, &mut stopped).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads one connection of the stream; false once the account is told to stop.
async fn read(rx: &Receiver, resp: reqwest::Response, stopped: &mut watch::Receiver<bool>) -> bool {
    let id = &rx.account.id;
    let mut body = resp.bytes_stream();
    let mut sse = SseReader::new(MAX_EVENT);
    loop {
        let chunk = tokio::select! {
            c = tokio::time::timeout(IDLE, body.next()) => c,
            _ = stopped.wait_for(|s| *s) => return false,
        };
        let bytes = match chunk {
            Ok(Some(Ok(b))) => b,
            Ok(Some(Err(_)) | None) => return true,
            Err(_) => {
                tracing::warn!(account = %id, "Signal event stream silent past its keep-alive; connecting again.");
                return true;
            }
        };
        for ev in sse.feed(&bytes) {
            match ev {
                Sse::Oversized => {
                    tracing::warn!(account = %id, kind = "an oversized event", "Skipped a malformed Signal event.")
                }
                Sse::Event { event, data } if event.is_empty() || event == "receive" => {
                    if !store(rx, &data, stopped).await {
                        return false;
                    }
                }
                Sse::Event { .. } => tracing::debug!(account = %id, "Signal event of another type ignored."),
            }
        }
    }
}

/// Stores one event's message, retrying until it is stored or the account is told to stop
/// (`false`): Signal never delivers an event again, so a message that cannot be stored yet (a
/// full inbox, a full disk) holds the stream instead of being given up; the daemon keeps the
/// events that follow (with `--receive-mode=on-connection`, on Signal's servers).
async fn store(rx: &Receiver, data: &str, stopped: &mut watch::Receiver<bool>) -> bool {
    let mut pause = Duration::from_millis(250);
    let mut attempt: u32 = 0;
    loop {
        match rx.handle(data).await {
            Ok(()) => return true,
            Err(Deferred(why)) => {
                attempt += 1;
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::warn!(account = %rx.account.id, error = %why, attempt, "A Signal message could not be stored yet; the stream waits and tries again.");
                }
                if !sleep_or_stop(pause, stopped).await {
                    return false;
                }
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
    }
}

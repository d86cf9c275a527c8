//! One inbound chat message, platform-independent: route it to its agent, check access, run
//! pairing for strangers, store it in the tenant's inbox, run the turn and queue the reply.
//!
//! Store first, then confirm: a message that starts a turn is admitted to the durable inbox
//! (`channels::inbox`) before `accept` returns, and the adapter confirms the update only then.
//!
//! Everything a user sees is worded in the agent's own name (`identity.name`); nothing here
//! names the gateway product.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::agent::Runtime;
use crate::config::channels::ChannelAccess;
use crate::gateway::Live;
use crate::ids::{AgentId, PeerKind, SessionKey, TenantId};
use crate::routing::{Origin, route};
use crate::session::{Message, StoreError};

use super::access::{Inbound, Verdict, decide};
use super::inbox::{Admit, Entry, Inboxes};
use super::outbound::{ChatTarget, Delivery, Outbound};
use super::pairing::{Offer, Pairing};

/// What a user sees when their turn could not be answered at all.
const FAILED_MESSAGE: &str = "Something went wrong while answering. Please try again.";

/// A bot account as the shared layer sees it.
pub struct Account {
    pub channel: &'static str,
    pub id: String,
    pub access: ChannelAccess,
    pub outbound: Outbound,
    turns: Turns,
}

impl Account {
    /// `live`: the running snapshot; each turn runs on the one current when it starts.
    pub fn new(
        live: &Live,
        inbox: &Arc<Inboxes>,
        channel: &'static str,
        id: String,
        access: ChannelAccess,
        outbound: Outbound,
    ) -> Self {
        let turns = Turns(Arc::new(TurnsInner {
            live: live.clone(),
            inbox: inbox.clone(),
            outbound: outbound.clone(),
            queues: Mutex::default(),
        }));
        Self { channel, id, access, outbound, turns }
    }

    /// `<channel>/<account>`, as in logs and in the inbox.
    pub fn label(&self) -> String {
        format!("{}/{}", self.channel, self.id)
    }

    /// After a (re)start: queues again the turns accepted before it that did not finish, and
    /// returns the highest update id already admitted (a re-delivery at or below it is skipped).
    pub async fn resume(&self, tenant: &TenantId) -> Result<Option<i64>, StoreError> {
        let (mark, waiting) = self.turns.0.inbox.restore(tenant, &self.label()).await?;
        if !waiting.is_empty() {
            tracing::info!(channel = self.channel, account = %self.id, waiting = waiting.len(), "Resuming chat messages accepted before the restart.");
        }
        for e in waiting {
            self.turns.push(tenant.clone(), e);
        }
        Ok(mark)
    }

    /// `resume` at the start of an account's task, for its tenant (none: nothing to resume):
    /// the inbox's mark, or `Err` once it has logged that the account stops because its inbox
    /// cannot be read (accepted messages could be lost or answered twice otherwise).
    pub async fn resume_or_stop(&self, tenant: Option<&TenantId>) -> Result<Option<i64>, InboxUnreadable> {
        let Some(tenant) = tenant else { return Ok(None) };
        self.resume(tenant).await.map_err(|e| {
            tracing::error!(channel = self.channel, account = %self.id, tenant = %tenant, error = %e, "Cannot read this account's chat inbox, so accepted messages could be lost or answered twice. This account is stopped; other accounts are unaffected.");
            InboxUnreadable
        })
    }

    /// Queues a notice without waiting; a refusal is counted and logged (without its text).
    fn notice(&self, rt: &Runtime, tenant: &TenantId, to: ChatTarget, text: String) {
        if let Err(why) = self.outbound.try_send(to, text) {
            rt.metrics.channel_notice_refused(tenant);
            tracing::warn!(channel = self.channel, account = %self.id, tenant = %tenant, reason = why.reason(), "Chat notice not sent.");
        }
    }
}

/// An account's inbox could not be read at start (logged by `Account::resume_or_stop`).
#[derive(Debug)]
pub struct InboxUnreadable;

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Text(String),
    /// A photo, sticker, voice note, file...: the agent reads text only.
    NonText,
}

/// A normalised inbound message.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    /// The platform's update id: unique and increasing per bot.
    pub update: i64,
    pub sender: String,
    pub username: Option<String>,
    pub chat: String,
    pub group: bool,
    /// A forum topic: its own session and where the reply goes.
    pub topic: Option<String>,
    pub mentioned: bool,
    pub body: Body,
    /// The server the chat belongs to (a Discord guild), for `guildId` bindings.
    pub space: Option<String>,
    /// The platform's own access rule for this group (`access::Inbound::rule`).
    pub rule: Option<crate::config::channels::GroupRule>,
}

/// An accepted message that could not be stored: the adapter must not confirm its update, so
/// the platform delivers it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred(pub String);

/// Handles one message. A message that starts a turn is stored in the tenant's inbox first
/// (`Err` when that fails); replies are queued on the account's outbound queue.
pub async fn accept(rt: &Arc<Runtime>, pairing: &Pairing, account: &Account, msg: ChatMessage) -> Result<(), Deferred> {
    let kind = if msg.group { PeerKind::Group } else { PeerKind::Direct };
    // A direct chat is bound by its sender; a group by the chat.
    let peer = if msg.group { &msg.chat } else { &msg.sender };
    let origin = Origin { channel: account.channel, account: &account.id, space: msg.space.as_deref(), kind, peer };
    let Some(agent) = route(&rt.config, &origin) else {
        tracing::info!(channel = account.channel, account = %account.id, "No binding matches this chat; message dropped.");
        return Ok(());
    };
    let approved = pairing.is_approved(&agent.tenant, account.channel, &account.id, &msg.sender);
    let verdict = decide(
        &account.access,
        &Inbound {
            sender: &msg.sender,
            group: msg.group.then_some(&msg.chat),
            mentioned: msg.mentioned,
            rule: msg.rule.as_ref(),
        },
        approved,
    );
    let to = ChatTarget { chat: msg.chat.clone(), thread: msg.topic.clone(), group: msg.group };
    let name = &agent.display_name;
    let tenant = &agent.tenant;
    match verdict {
        Verdict::Drop(reason) => {
            tracing::debug!(channel = account.channel, account = %account.id, reason, "Message not accepted.");
        }
        Verdict::Pair => {
            match pairing.offer(tenant, account.channel, &account.id, &msg.sender, msg.username.as_deref()) {
                Offer::New(code) | Offer::Existing(code) => {
                    tracing::info!(channel = account.channel, account = %account.id, tenant = %tenant, "Pairing code offered to an unknown sender.");
                    account.notice(
                        rt,
                        tenant,
                        to,
                        format!(
                            "Hi, this is {name}. I don't know you yet. Your pairing code is {code} - ask the person who runs this assistant to approve it. It expires in one hour."
                        ),
                    );
                }
                Offer::Quiet => {
                    tracing::debug!(channel = account.channel, account = %account.id, "Pairing: sender recently reminded or denied; nothing sent.");
                }
                Offer::Full => {
                    tracing::warn!(channel = account.channel, account = %account.id, "Too many pairing requests pending; an unknown sender was ignored.");
                }
            }
        }
        Verdict::Allow => {
            let text = match msg.body {
                Body::NonText => {
                    account.notice(rt, tenant, to, format!("Sorry, {name} can only read text messages for now."));
                    return Ok(());
                }
                Body::Text(t) => t,
            };
            if is_command(&text, "start") || is_command(&text, "help") {
                account.notice(rt, tenant, to, format!("Hi, this is {name}. Send me a message and I will answer."));
                return Ok(());
            }
            let peer = match &msg.topic {
                Some(topic) => format!("{}.topic.{topic}", msg.chat),
                None => msg.chat.clone(),
            };
            let session = match SessionKey::new(agent.id.clone(), account.channel, kind, &peer) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(channel = account.channel, account = %account.id, error = %e, "Chat id unusable as a session key; message dropped.");
                    return Ok(());
                }
            };
            let entry = Entry {
                account: account.label(),
                update: msg.update,
                agent: agent.id.to_string(),
                session: session.to_string(),
                chat: msg.chat,
                thread: msg.topic,
                group: msg.group,
                text,
                at: None,
            };
            // Stored before the adapter confirms the update: a crash from here on loses nothing.
            match account.turns.0.inbox.admit(tenant, entry.clone()).await {
                Ok(Admit::Stored) => account.turns.push(tenant.clone(), entry),
                Ok(Admit::Duplicate) => {
                    tracing::debug!(channel = account.channel, account = %account.id, update = msg.update, "Update already accepted before; not handled twice.");
                }
                Ok(Admit::Full) => {
                    tracing::warn!(channel = account.channel, account = %account.id, tenant = %tenant, "The tenant's chat inbox is full; new messages wait on the platform until turns finish.");
                    return Err(Deferred("the tenant's chat inbox is full".into()));
                }
                Err(e) => {
                    tracing::error!(channel = account.channel, account = %account.id, tenant = %tenant, error = %e, "Cannot store an accepted chat message; it is not confirmed and will be received again.");
                    return Err(Deferred("the message could not be stored".into()));
                }
            }
        }
    }
    Ok(())
}

/// The turns of one bot: one queue per session, run in order (a session's messages are
/// answered one after the other), sessions in parallel.
#[derive(Clone)]
struct Turns(Arc<TurnsInner>);

struct TurnsInner {
    live: Live,
    inbox: Arc<Inboxes>,
    outbound: Outbound,
    queues: Mutex<HashMap<String, VecDeque<(TenantId, Entry)>>>,
}

/// Where a waiting message's turn stands, read from its session.
enum Resume {
    /// Not stored yet; the session holds this many messages.
    Fresh(usize),
    /// The user message is stored; its turn did not finish.
    Stored,
    /// The turn finished before the restart with this reply.
    Answered(String),
}

impl Turns {
    fn push(&self, tenant: TenantId, entry: Entry) {
        let session = entry.session.clone();
        let first = {
            let mut all = self.0.queues.lock().expect("turn queue lock");
            let q = all.entry(session.clone()).or_default();
            q.push_back((tenant, entry));
            q.len() == 1
        };
        if first {
            self.0.live.load().runtime.tasks.spawn(self.clone().drain(session));
        }
    }

    /// Runs a session's waiting turns one by one; the entry being run stays at the front.
    async fn drain(self, session: String) {
        loop {
            let next = self.0.queues.lock().expect("turn queue lock").get(&session).and_then(|q| q.front().cloned());
            let Some((tenant, entry)) = next else { return };
            self.run(&tenant, entry).await;
            let mut all = self.0.queues.lock().expect("turn queue lock");
            let Some(q) = all.get_mut(&session) else { return };
            q.pop_front();
            if q.is_empty() {
                all.remove(&session);
                return;
            }
        }
    }

    async fn run(&self, tenant: &TenantId, e: Entry) {
        let rt = &self.0.live.load().runtime.clone();
        let agent = AgentId::parse(&e.agent).ok().and_then(|id| rt.config.agent(&id)).filter(|a| &a.tenant == tenant);
        let (Some(agent), Ok(session)) = (agent.cloned(), SessionKey::parse(&e.session)) else {
            tracing::warn!(tenant = %tenant, account = %e.account, "A waiting chat message's agent is no longer configured; it was dropped.");
            self.forget(tenant, &e).await;
            return;
        };
        let reply = match self.resume(rt, &agent, &session, &e).await {
            Ok(Resume::Answered(text)) => text,
            Ok(Resume::Stored) => self.turn(rt, &agent, &session, &e, true).await,
            Ok(Resume::Fresh(at)) => {
                if let Err(err) = self.0.inbox.position(tenant, &e.account, e.update, at as u64).await {
                    tracing::error!(tenant = %tenant, account = %e.account, error = %err, "Cannot record where a chat turn starts; running it anyway.");
                }
                self.turn(rt, &agent, &session, &e, false).await
            }
            Err(err) => {
                tracing::error!(tenant = %tenant, account = %e.account, error = %err, "Cannot read the session of a waiting chat message.");
                FAILED_MESSAGE.to_string()
            }
        };
        if reply.trim().is_empty() {
            self.forget(tenant, &e).await;
            return;
        }
        let to = ChatTarget { chat: e.chat.clone(), thread: e.thread.clone(), group: e.group };
        // Waits while the chat or the bot is at its outbound bound (backpressure, nothing dropped).
        let Ok(receipt) = self.0.outbound.send(to, reply).await else {
            // The bot stopped: the entry stays, and a restart sends the stored reply.
            return;
        };
        // The entry leaves the inbox once the reply is out; meanwhile the next turn may run.
        let me = self.clone();
        let tenant = tenant.clone();
        rt.tasks.spawn(async move {
            match receipt.await {
                Ok(Delivery::Sent | Delivery::Dropped) => me.forget(&tenant, &e).await,
                // Not sent before the bot stopped: kept, so a restart sends it.
                Ok(Delivery::Stopped) | Err(_) => {}
            }
        });
    }

    async fn forget(&self, tenant: &TenantId, e: &Entry) {
        if let Err(err) = self.0.inbox.done(tenant, &e.account, e.update).await {
            tracing::error!(tenant = %tenant, account = %e.account, error = %err, "Cannot remove an answered chat message from the inbox; a restart may answer it again.");
        }
    }

    async fn turn(
        &self,
        rt: &Arc<Runtime>,
        agent: &crate::config::AgentConfig,
        session: &SessionKey,
        e: &Entry,
        stored: bool,
    ) -> String {
        let _typing =
            self.0.outbound.typing(ChatTarget { chat: e.chat.clone(), thread: e.thread.clone(), group: e.group }).await;
        // Nobody watches a chat turn live; its events are drained.
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        rt.run_turn(agent, session, e.text.clone(), &tx, None, stored).await.text
    }

    async fn resume(
        &self,
        rt: &Runtime,
        agent: &crate::config::AgentConfig,
        session: &SessionKey,
        e: &Entry,
    ) -> Result<Resume, StoreError> {
        let sessions = rt.sessions_for(agent);
        let len = sessions.message_count(session).await?;
        let Some(at) = e.at.map(|a| a as usize).filter(|a| *a < len) else { return Ok(Resume::Fresh(len)) };
        let tail = sessions.history(session, Some(len - at)).await?;
        if !matches!(tail.first(), Some(Message::User { text }) if *text == e.text) {
            return Ok(Resume::Fresh(len));
        }
        for m in &tail[1..] {
            match m {
                Message::User { .. } => break,
                Message::Assistant { text, tool_calls } if tool_calls.is_empty() => {
                    return Ok(Resume::Answered(text.clone()));
                }
                _ => {}
            }
        }
        Ok(Resume::Stored)
    }
}

/// `/name`, `/name args` or `/name@bot ...`.
fn is_command(text: &str, name: &str) -> bool {
    let Some(first) = text.split_whitespace().next() else { return false };
    let cmd = first.split('@').next().unwrap_or(first);
    cmd.strip_prefix('/').is_some_and(|c| c.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_commands() {
        assert!(is_command("/start", "start"));
        assert!(is_command("/start@acme_bot hello", "start"));
        assert!(is_command("/HELP", "help"));
        assert!(!is_command("start", "start"));
        assert!(!is_command("/starting", "start"));
        assert!(!is_command("", "start"));
    }
}

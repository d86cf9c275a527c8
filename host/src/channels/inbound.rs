//! One inbound chat message, platform-independent: route it to its agent, check access, run
//! pairing for strangers, run the turn and queue the reply.
//!
//! Everything a user sees is worded in the agent's own name (`identity.name`); nothing here
//! names the gateway product.

use std::sync::Arc;

use crate::agent::Runtime;
use crate::config::channels::ChannelAccess;
use crate::ids::{PeerKind, SessionKey};
use crate::routing::{Origin, route};

use super::access::{Inbound, Verdict, decide};
use super::outbound::{ChatTarget, Outbound};
use super::pairing::{Offer, Pairing};

/// A bot account as the shared layer sees it.
pub struct Account {
    pub channel: &'static str,
    pub id: String,
    pub access: ChannelAccess,
    pub outbound: Outbound,
}

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
    pub sender: String,
    pub username: Option<String>,
    pub chat: String,
    pub group: bool,
    /// A forum topic: its own session and where the reply goes.
    pub topic: Option<String>,
    pub mentioned: bool,
    pub body: Body,
}

/// Handles one message; replies are queued on the account's outbound queue.
pub fn accept(rt: &Arc<Runtime>, pairing: &Pairing, account: &Account, msg: ChatMessage) {
    let kind = if msg.group { PeerKind::Group } else { PeerKind::Direct };
    let origin = Origin { channel: account.channel, account: &account.id, kind, peer: &msg.chat };
    let Some(agent) = route(&rt.config, &origin) else {
        tracing::info!(channel = account.channel, account = %account.id, "No binding matches this chat; message dropped.");
        return;
    };
    let approved = pairing.is_approved(&agent.tenant, account.channel, &account.id, &msg.sender);
    let verdict = decide(
        &account.access,
        &Inbound { sender: &msg.sender, group: msg.group.then_some(&msg.chat), mentioned: msg.mentioned },
        approved,
    );
    let to = ChatTarget { chat: msg.chat.clone(), thread: msg.topic.clone(), group: msg.group };
    let name = &agent.display_name;
    match verdict {
        Verdict::Drop(reason) => {
            tracing::debug!(channel = account.channel, account = %account.id, reason, "Message not accepted.");
        }
        Verdict::Pair => {
            match pairing.offer(&agent.tenant, account.channel, &account.id, &msg.sender, msg.username.as_deref()) {
                Offer::New(code) | Offer::Existing(code) => {
                    tracing::info!(channel = account.channel, account = %account.id, tenant = %agent.tenant, "Pairing code offered to an unknown sender.");
                    account.outbound.send(
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
                    account.outbound.send(to, format!("Sorry, {name} can only read text messages for now."));
                    return;
                }
                Body::Text(t) => t,
            };
            if is_command(&text, "start") || is_command(&text, "help") {
                account.outbound.send(to, format!("Hi, this is {name}. Send me a message and I will answer."));
                return;
            }
            let peer = match &msg.topic {
                Some(topic) => format!("{}.topic.{topic}", msg.chat),
                None => msg.chat.clone(),
            };
            let session = match SessionKey::new(agent.id.clone(), account.channel, kind, &peer) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(channel = account.channel, account = %account.id, error = %e, "Chat id unusable as a session key; message dropped.");
                    return;
                }
            };
            let (mut events, done) = rt.spawn_turn(agent.clone(), session, text);
            let outbound = account.outbound.clone();
            rt.tasks.spawn(async move {
                while events.recv().await.is_some() {}
                match done.await {
                    Ok(outcome) if !outcome.text.trim().is_empty() => {
                        outbound.send(to, outcome.text);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        outbound.send(to, "Something went wrong while answering. Please try again.".into());
                    }
                }
            });
        }
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

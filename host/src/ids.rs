//! Validated identifiers: tenants, agents and session keys.
//!
//! Every id that reaches the rest of the host went through one of these constructors, so code that
//! holds a `TenantId` never has to wonder whether it is well formed.

use std::fmt;

/// The rule for tenant and agent ids: `^[a-z0-9][a-z0-9_-]{0,63}$` after lowercasing (OpenClaw's).
pub fn validate_id(raw: &str) -> Result<String, String> {
    let id = raw.to_ascii_lowercase();
    let mut chars = id.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok_first && ok_rest && id.len() <= 64 {
        Ok(id)
    } else {
        Err(format!(
            "invalid id {raw:?}: use 1-64 characters from a-z, 0-9, '_' and '-', starting with a letter or digit"
        ))
    }
}

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("A validated ", $what, " id (lowercase).")]
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, String> {
                validate_id(raw).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(TenantId, "tenant");
id_type!(AgentId, "agent");

/// Where a conversation happens, as it appears in a session key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerKind {
    Direct,
    Group,
    Channel,
}

impl PeerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::Direct => "direct",
            PeerKind::Group => "group",
            PeerKind::Channel => "channel",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "direct" => Some(PeerKind::Direct),
            "group" => Some(PeerKind::Group),
            "channel" => Some(PeerKind::Channel),
            _ => None,
        }
    }
}

/// Longest peer id accepted in a session key.
pub const MAX_PEER_ID_LEN: usize = 128;

/// One conversation: `agent:<agentId>:<channel>:<direct|group|channel>:<peerId>`.
///
/// The peer id may come from outside (an API `user` field, a chat id), so it is restricted to a
/// printable ASCII subset without `:` and bounded in length.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    agent: AgentId,
    channel: String,
    kind: PeerKind,
    peer: String,
}

impl SessionKey {
    pub fn new(agent: AgentId, channel: &str, kind: PeerKind, peer: &str) -> Result<Self, String> {
        if channel.is_empty() || !channel.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Err(format!("invalid channel name {channel:?} in session key"));
        }
        validate_peer(peer)?;
        Ok(Self { agent, channel: channel.to_string(), kind, peer: peer.to_string() })
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid session key {raw:?}: expected agent:<agentId>:<channel>:<direct|group|channel>:<peerId>")
        };
        let mut parts = raw.splitn(5, ':');
        let (Some("agent"), Some(agent), Some(channel), Some(kind), Some(peer)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let agent = AgentId::parse(agent).map_err(|_| bad())?;
        let kind = PeerKind::parse(kind).ok_or_else(bad)?;
        Self::new(agent, channel, kind, peer).map_err(|_| bad())
    }

    pub fn agent(&self) -> &AgentId {
        &self.agent
    }
    pub fn channel(&self) -> &str {
        &self.channel
    }
    pub fn kind(&self) -> PeerKind {
        self.kind
    }
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

/// A peer id: 1-128 characters of `[A-Za-z0-9._@+=-]`.
pub fn validate_peer(peer: &str) -> Result<(), String> {
    let ok = !peer.is_empty()
        && peer.len() <= MAX_PEER_ID_LEN
        && peer.chars().all(|c| c.is_ascii_alphanumeric() || "._@+=-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid conversation id: use 1-{MAX_PEER_ID_LEN} characters from A-Z, a-z, 0-9 and . _ @ + = -"))
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent:{}:{}:{}:{}", self.agent, self.channel, self.kind.as_str(), self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_lowercased_and_checked() {
        assert_eq!(AgentId::parse("Acme-Support").unwrap().as_str(), "acme-support");
        for bad in ["", "-x", "a b", "acme!", "ａcme", &"a".repeat(65)] {
            assert!(AgentId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn session_keys_round_trip() {
        let key = SessionKey::parse("agent:acme:api:direct:user-1").unwrap();
        assert_eq!(key.to_string(), "agent:acme:api:direct:user-1");
        assert_eq!(key.agent().as_str(), "acme");
        for bad in
            ["agent:acme:api:direct:", "agent:acme:api:dm:u", "user:acme:api:direct:u", "agent:acme:api:direct:a:b"]
        {
            assert!(SessionKey::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}

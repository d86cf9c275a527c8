//! WhatsApp's own keys of `channels.whatsapp` and `channels.whatsapp.accounts.<id>` (the Cloud
//! API's phone-number id, access token, app secret and webhook verify token, and the Graph API
//! URL) and their validation pass, which `Adapter::validate` runs. The keys every platform
//! shares, and their inheritance, are the shared pass's (`config/validate/channels.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::channels::adapter::{AccountBlock, ChannelPass, Validated};
use crate::config::{RawChannel, SecretRef};

/// WhatsApp's longest text body.
pub const WHATSAPP_TEXT_LIMIT: usize = 4096;

/// The Graph API, with the version this adapter speaks.
pub const GRAPH_API_URL: &str = "https://graph.facebook.com/v23.0";

/// The platform keys of a WhatsApp block, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawWhatsApp {
    phone_number_id: Option<String>,
    access_token: Option<SecretRef>,
    app_secret: Option<SecretRef>,
    verify_token: Option<SecretRef>,
    api_url: Option<String>,
}

/// The WhatsApp settings of a checked config (`ChannelsConfig::platform`).
#[derive(Debug, Default)]
pub struct WhatsAppSettings {
    pub accounts: Vec<WhatsAppAccount>,
}

impl WhatsAppSettings {
    pub fn account(&self, id: &str) -> Option<&WhatsAppAccount> {
        self.accounts.iter().find(|a| a.id == id)
    }
}

/// One WhatsApp Business phone number's own settings (its access settings and tenant are the
/// shared `ChannelAccount`'s).
#[derive(Debug, Clone)]
pub struct WhatsAppAccount {
    pub id: String,
    /// The Cloud API's id of the business phone number (digits; not the number itself).
    pub phone_number_id: String,
    /// A System User (or temporary) access token with `whatsapp_business_messaging`.
    pub access_token: SecretRef,
    /// The Meta app's secret: every webhook delivery is signed with it.
    pub app_secret: SecretRef,
    /// The token Meta echoes in the webhook verification handshake.
    pub verify_token: SecretRef,
    /// Graph API base URL with its version (default `https://graph.facebook.com/v23.0`).
    pub api_url: String,
    /// Longest text per message (default and maximum 4096).
    pub text_chunk_limit: usize,
}

/// A phone-number id as the Cloud API writes it: 1-32 digits.
pub fn phone_number_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A customer's WhatsApp id in its canonical form (the digits of the number in international
/// format, as the Cloud API's `wa_id` and `from`): `+`, spaces, dots, dashes and parentheses are
/// dropped; 6-15 digits remain.
pub fn sender_id(s: &str) -> Option<String> {
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit() || b" .-()".contains(&b)) {
        return None;
    }
    let digits: String = t.chars().filter(char::is_ascii_digit).collect();
    (6..=15).contains(&digits.len()).then_some(digits)
}

/// The pass: each account's own value, else the channel's.
pub(super) fn validate(pass: &mut ChannelPass<'_>, channel: &RawChannel, accounts: &[AccountBlock<'_>]) -> Validated {
    let base: RawWhatsApp = pass.platform("channels.whatsapp", channel);
    let mut settings = WhatsAppSettings::default();
    let mut fingerprints = BTreeMap::new();
    for a in accounts {
        let own: RawWhatsApp = if a.implicit { base.clone() } else { pass.platform(a.path, a.own) };
        for (key, s) in
            [("accessToken", &own.access_token), ("appSecret", &own.app_secret), ("verifyToken", &own.verify_token)]
        {
            if let Some(s) = s {
                pass.secret(&format!("{}.{key}", a.path), s);
            }
        }
        let pick = |f: fn(&RawWhatsApp) -> Option<&SecretRef>| f(&own).or_else(|| f(&base)).cloned();
        let mut missing = |key: &str, what: &str| {
            pass.error(format!("{}.{key}", a.path), format!("missing key: {what}"));
        };
        // The phone number is the account: never inherited from the channel block.
        let number = if a.implicit { base.phone_number_id.clone() } else { own.phone_number_id.clone() };
        if number.is_none() {
            missing(
                "phoneNumberId",
                "the Cloud API's phone number id (WhatsApp Manager, API Setup: \"Phone number ID\"), e.g. \"106540352242922\"",
            );
        }
        let access_token = pick(|c| c.access_token.as_ref());
        if access_token.is_none() {
            missing(
                "accessToken",
                "a System User access token with whatsapp_business_messaging, e.g. { env: \"ACME_WHATSAPP_TOKEN\" }",
            );
        }
        let app_secret = pick(|c| c.app_secret.as_ref());
        if app_secret.is_none() {
            missing("appSecret", "the Meta app's secret (App settings, Basic), which signs every webhook delivery");
        }
        let verify_token = pick(|c| c.verify_token.as_ref());
        if verify_token.is_none() {
            missing("verifyToken", "the webhook verify token you type into the app's WhatsApp Configuration page");
        }
        if let Some(n) = &number
            && !phone_number_id(n)
        {
            pass.error(
                format!("{}.phoneNumberId", a.path),
                "a phone number id is the digits Meta shows as \"Phone number ID\" (not the phone number itself)",
            );
        }
        let api_url = own.api_url.clone().or_else(|| base.api_url.clone()).unwrap_or_else(|| GRAPH_API_URL.into());
        match reqwest::Url::parse(&api_url) {
            Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => {}
            _ => pass.error(
                format!("{}.apiUrl", a.path),
                format!("invalid URL {api_url:?}: expected http(s)://host[:port]/version"),
            ),
        }
        let limit = a.own.text_chunk_limit.or(channel.text_chunk_limit).unwrap_or(WHATSAPP_TEXT_LIMIT as u32) as usize;
        if limit == 0 || limit > WHATSAPP_TEXT_LIMIT {
            pass.error(format!("{}.textChunkLimit", a.path), format!("must be 1-{WHATSAPP_TEXT_LIMIT}, got {limit}"));
        }
        let (Some(phone_number_id), Some(access_token), Some(app_secret), Some(verify_token)) =
            (number, access_token, app_secret, verify_token)
        else {
            continue;
        };
        let acc = WhatsAppAccount {
            id: a.id.to_string(),
            phone_number_id,
            access_token,
            app_secret,
            verify_token,
            api_url: api_url.trim_end_matches('/').to_string(),
            text_chunk_limit: limit.clamp(1, WHATSAPP_TEXT_LIMIT),
        };
        fingerprints.insert(acc.id.clone(), format!("{acc:?}"));
        settings.accounts.push(acc);
    }
    // Credentials written once for every account are warned about where they are written.
    if accounts.iter().all(|a| !a.implicit) {
        for (key, s) in
            [("accessToken", &base.access_token), ("appSecret", &base.app_secret), ("verifyToken", &base.verify_token)]
        {
            if let Some(s) = s {
                pass.secret(&format!("channels.whatsapp.{key}"), s);
            }
        }
        if base.phone_number_id.is_some() {
            pass.error(
                "channels.whatsapp.phoneNumberId",
                "a phone number belongs to one account: write it in each channels.whatsapp.accounts.<id>",
            );
        }
    }
    Validated { settings: Arc::new(settings), fingerprints }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_ids_are_the_digits_of_the_number() {
        assert_eq!(sender_id("+1 (555) 012-3456").as_deref(), Some("15550123456"));
        assert_eq!(sender_id("4915123456789").as_deref(), Some("4915123456789"));
        for bad in ["", "+", "12345", "1234567890123456", "alice", "+1555x0123", "++15550123"] {
            assert_eq!(sender_id(bad), None, "{bad:?}");
        }
        assert!(phone_number_id("106540352242922") && !phone_number_id("+1555") && !phone_number_id(""));
    }
}

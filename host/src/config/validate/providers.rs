//! Pass `providers`: `models.providers`, or the offline scripted provider when none is set.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::raw::RawModels;
use super::super::secret::SecretRef;
use super::{Errors, one_of, secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderApi {
    OpenAi,
    Anthropic,
    Scripted,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub api: ProviderApi,
    pub base_url: String,
    pub api_key: Option<SecretRef>,
    pub timeout: Duration,
    pub max_tokens: u32,
    /// Tenants without their own key may use `api_key`.
    pub allow_shared_key: bool,
    /// Most requests in flight per key.
    pub max_concurrent: usize,
    /// Retries of an upstream 429/529.
    pub max_retries: u32,
}

/// `models.providers`, by name.
pub(super) fn providers(
    errs: &mut Errors,
    warnings: &mut Vec<String>,
    raw: Option<RawModels>,
) -> BTreeMap<String, ProviderConfig> {
    let mut providers = BTreeMap::new();
    for (name, p) in raw.and_then(|m| m.providers).unwrap_or_default() {
        let path = format!("models.providers.{name}");
        if name.is_empty() || name.contains('/') {
            errs.push(&path, "provider names may not be empty or contain '/'");
        }
        let api = match p.api.as_deref() {
            None => {
                errs.push(format!("{path}.api"), "missing key (\"openai\", \"anthropic\" or \"scripted\")");
                ProviderApi::Scripted
            }
            Some(a) => one_of(
                errs,
                &format!("{path}.api"),
                Some(a),
                ProviderApi::Scripted,
                &[
                    ("openai", ProviderApi::OpenAi),
                    ("anthropic", ProviderApi::Anthropic),
                    ("scripted", ProviderApi::Scripted),
                ],
            ),
        };
        let default_url = match api {
            ProviderApi::OpenAi => "https://api.openai.com/v1",
            ProviderApi::Anthropic => "https://api.anthropic.com/v1",
            ProviderApi::Scripted => "",
        };
        let base_url = p.base_url.clone().unwrap_or_else(|| default_url.to_string());
        if api != ProviderApi::Scripted && !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            errs.push(format!("{path}.baseUrl"), format!("invalid URL {base_url:?}: expected http:// or https://"));
        }
        if let Some(k) = &p.api_key {
            secret(errs, warnings, &format!("{path}.apiKey"), k);
        }
        providers.insert(
            name.clone(),
            ProviderConfig {
                name,
                api,
                base_url: base_url.trim_end_matches('/').to_string(),
                api_key: p.api_key,
                timeout: Duration::from_secs(p.timeout_sec.unwrap_or(120).max(1)),
                max_tokens: p.max_tokens.unwrap_or(4096),
                allow_shared_key: p.allow_shared_key.unwrap_or(true),
                max_concurrent: provider_limit(errs, &format!("{path}.maxConcurrent"), p.max_concurrent, 16, 1..=1024),
                max_retries: provider_limit(errs, &format!("{path}.maxRetries"), p.max_retries, 3, 0..=10) as u32,
            },
        );
    }
    if providers.is_empty() {
        // With no providers configured, the offline scripted provider is the one model there is.
        providers.insert(
            "scripted".into(),
            ProviderConfig {
                name: "scripted".into(),
                api: ProviderApi::Scripted,
                base_url: String::new(),
                api_key: None,
                timeout: Duration::from_secs(30),
                max_tokens: 4096,
                allow_shared_key: true,
                max_concurrent: 1024,
                max_retries: 0,
            },
        );
    }
    providers
}

fn provider_limit(
    errs: &mut Errors,
    path: &str,
    raw: Option<u32>,
    default: usize,
    range: std::ops::RangeInclusive<u32>,
) -> usize {
    match raw {
        None => default,
        Some(v) if range.contains(&v) => v as usize,
        Some(_) => {
            errs.push(path, format!("must be between {} and {}", range.start(), range.end()));
            default
        }
    }
}

//! The start-up checks: one function that `serve`, `config check`, `doctor` and every reload
//! run, so what one refuses the others refuse too, with the same words.
//!
//! Every check here needs only the config and what it references (secret files and variables,
//! policy files, TLS files); each resolves its secrets, because a secret that cannot be resolved
//! refuses a start. What needs the state directory (opening the store, the audit log, the usage
//! meter) happens when the application is built.

use std::sync::Arc;

use crate::config::{Config, StoreMode};
use crate::gateway::admin::Operator;
use crate::gateway::{TokenIndex, UniqueTokens, check_token_strength};
use crate::ids::TenantId;
use crate::model::pool::Providers;
use crate::policy::PolicyEngine;

/// What the checks resolved, ready to serve.
pub struct Checked {
    pub tenant_tokens: TokenIndex<TenantId>,
    pub operator_tokens: TokenIndex<Operator>,
    pub providers: Providers,
    pub gate: Arc<PolicyEngine>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The config's own warnings and the policies'.
    pub warnings: Vec<String>,
}

/// Runs every start-up check of `config`; each problem is reported, none stops the others.
pub fn check(config: &Config) -> Result<Checked, Vec<String>> {
    let mut errors = Vec::new();
    for ch in &config.channels.enabled {
        if *ch != "webchat" && crate::channels::adapter::adapter(ch).is_none() {
            errors.push(format!(
                "channels.{ch}: the {ch} adapter is not built into this version; remove the block or set enabled: false"
            ));
        }
    }
    match config.store.require_mode() {
        Err(e) => errors.push(format!("store: {e}")),
        Ok(StoreMode::Encrypted) => {
            if let Some(key) = &config.store.master_key
                && let Err(e) = crate::store::MasterKey::load(key, &config.base_dir, &config.state_dir)
            {
                errors.push(format!("store.masterKey: {e}"));
            }
        }
        Ok(StoreMode::Memory) => {}
    }
    let (tenant_tokens, operator_tokens) = tokens(config, &mut errors);
    errors.extend(crate::channels::check(config));
    let providers = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| vec![format!("cannot build the HTTP client: {e}")])
        .and_then(|http| Providers::build(config, &http))
        .unwrap_or_else(|e| {
            errors.extend(e);
            Providers::default()
        });
    let gate = PolicyEngine::load(config).map_err(|e| errors.extend(e)).ok();
    let tls = match config.gateway.tls.as_ref().map(crate::gateway::tls::acceptor).transpose() {
        Ok(t) => t,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    match gate {
        Some(gate) if errors.is_empty() => {
            let mut warnings = config.warnings.clone();
            warnings.extend(gate.warnings());
            Ok(Checked { tenant_tokens, operator_tokens, providers, gate: Arc::new(gate), tls, warnings })
        }
        _ => Err(errors),
    }
}

/// Tenant and operator tokens: each resolves, is strong, and is used once across both.
fn tokens(config: &Config, errors: &mut Vec<String>) -> (TokenIndex<TenantId>, TokenIndex<Operator>) {
    let mut tenant_tokens = TokenIndex::new();
    let mut unique = UniqueTokens::default();
    for t in config.tenants.values() {
        for (i, tok) in t.api_tokens.iter().enumerate() {
            let path = format!("tenant {:?} apiTokens[{i}]", t.id.as_str());
            match tok.resolve(&config.base_dir) {
                Ok(s) => {
                    if let Err(e) = unique.check(s.expose(), format!("tenant {:?}", t.id.as_str())) {
                        errors.push(format!("{path}: {e}"));
                    }
                    if let Err(e) = check_token_strength(s.expose()) {
                        errors.push(format!("{path}: {e}"));
                    }
                    tenant_tokens.insert(s.expose(), t.id.clone())
                }
                Err(e) => errors.push(format!("{path}: {e}")),
            }
        }
    }
    let mut operator_tokens = TokenIndex::new();
    for (i, op) in config.gateway.operators.iter().enumerate() {
        match op.token.resolve(&config.base_dir) {
            Ok(s) => {
                if let Err(e) = unique.check(s.expose(), format!("operator {:?}", op.id)) {
                    errors.push(format!("gateway.operators[{i}].token: {e}"));
                }
                if let Err(e) = check_token_strength(s.expose()) {
                    errors.push(format!("gateway.operators[{i}].token: {e}"));
                }
                operator_tokens.insert(s.expose(), Operator { id: op.id.clone(), role: op.role })
            }
            Err(e) => errors.push(format!("gateway.operators[{i}].token: {e}")),
        }
    }
    (tenant_tokens, operator_tokens)
}

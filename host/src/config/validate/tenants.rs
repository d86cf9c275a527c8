//! Pass `tenants`: declared tenants with their tokens, tool layers, scheduling shares, retention
//! and policy files; and, once agents are known, quotas and tenants' own provider keys.

use std::collections::BTreeMap;
use std::path::Path;

use super::super::raw::{RawQuotas, RawScheduling, RawTenant};
use super::super::secret::SecretRef;
use super::policy::{PolicySettings, ToolLayer, policy_ref, tool_layer};
use super::store::retention_days;
use super::{AgentConfig, Errors, ProviderApi, ProviderConfig, StoreConfig, required_id, secret};
use crate::ids::TenantId;
use crate::quota::QuotaLimits;
use crate::scheduler::TenantShare;

/// Quota limits: the global default and the effective limits of every tenant that sets its own.
#[derive(Debug, Clone, Default)]
pub struct QuotaSettings {
    pub default: QuotaLimits,
    pub tenants: BTreeMap<TenantId, QuotaLimits>,
}

impl QuotaSettings {
    pub fn for_tenant(&self, tenant: &TenantId) -> QuotaLimits {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub id: TenantId,
    pub name: String,
    pub api_tokens: Vec<SecretRef>,
    pub tools: ToolLayer,
    pub share: TenantShare,
    /// Declared in `tenants` (rather than implied by an agent without a `tenant` key).
    pub explicit: bool,
}

/// `tenants`: each declared tenant, by id. Retention and policy files are recorded in `store`
/// and `policies`.
pub(super) fn tenants(
    errs: &mut Errors,
    warnings: &mut Vec<String>,
    raw: Option<&Vec<RawTenant>>,
    base: &Path,
    default_share: TenantShare,
    (store, policies): (&mut StoreConfig, &mut PolicySettings),
) -> BTreeMap<TenantId, TenantConfig> {
    let mut tenants = BTreeMap::new();
    for (i, t) in raw.into_iter().flatten().enumerate() {
        let path = format!("tenants[{i}]");
        let Some(id) = required_id(errs, format!("{path}.id"), t.id.as_deref(), TenantId::parse) else { continue };
        for (j, tok) in t.api_tokens.iter().flatten().enumerate() {
            secret(errs, warnings, &format!("{path}.apiTokens[{j}]"), tok);
        }
        let layer = tool_layer(errs, &format!("{path}.tools"), t.tools.as_ref());
        let tenant_share = share(errs, &format!("{path}.scheduling"), t.scheduling.as_ref(), default_share);
        if let Some(days) = retention_days(errs, &format!("{path}.retention.days"), t.retention.as_ref()) {
            store.tenant_retention_days.insert(id.clone(), days);
        }
        if tenants.contains_key(&id) {
            errs.push(format!("{path}.id"), format!("duplicate tenant id {:?}", id.as_str()));
            continue;
        }
        if let Some(r) = policy_ref(errs, base, format!("{path}.policy"), t.policy.as_ref()) {
            policies.tenant_files.insert(id.clone(), r);
        }
        tenants.insert(
            id.clone(),
            TenantConfig {
                name: t.name.clone().unwrap_or_else(|| id.to_string()),
                id,
                api_tokens: t.api_tokens.clone().unwrap_or_default(),
                tools: layer,
                share: tenant_share,
                explicit: true,
            },
        );
    }
    tenants
}

pub(super) fn quota_limits(
    errs: &mut Errors,
    path: &str,
    raw: Option<&RawQuotas>,
    default: QuotaLimits,
) -> QuotaLimits {
    let Some(raw) = raw else { return default };
    let mut out = default;
    let mut check = |key: &str, v: Option<u64>, max: u64, slot: &mut Option<u64>| {
        if let Some(v) = v {
            if (1..=max).contains(&v) {
                *slot = Some(v);
            } else {
                errs.push(format!("{path}.{key}"), format!("must be between 1 and {max}"));
            }
        }
    };
    check("messagesPerMinute", raw.messages_per_minute.map(u64::from), 1_000_000, &mut out.messages_per_minute);
    check("modelTokensPerDay", raw.model_tokens_per_day, 1 << 50, &mut out.model_tokens_per_day);
    check("toolCallsPerMinute", raw.tool_calls_per_minute.map(u64::from), 1_000_000, &mut out.tool_calls_per_minute);
    check("sandboxSecondsPerDay", raw.sandbox_seconds_per_day, 86_400 * 1024, &mut out.sandbox_seconds_per_day);
    out
}

/// Quotas (global default, per tenant) and tenants' own provider keys. A tenant whose agent uses
/// a provider that does not share the operator's key must bring its own (fail closed).
pub(super) fn quotas_and_keys(
    errs: &mut Errors,
    warnings: &mut Vec<String>,
    (global, raw_tenants): (Option<&RawQuotas>, Option<&[RawTenant]>),
    providers: &BTreeMap<String, ProviderConfig>,
    agents: &[AgentConfig],
) -> (QuotaSettings, BTreeMap<TenantId, BTreeMap<String, SecretRef>>) {
    let mut quotas =
        QuotaSettings { default: quota_limits(errs, "quotas", global, QuotaLimits::default()), ..Default::default() };
    let mut keys: BTreeMap<TenantId, BTreeMap<String, SecretRef>> = BTreeMap::new();
    let mut tenant_index = BTreeMap::new();
    for (i, t) in raw_tenants.into_iter().flatten().enumerate() {
        let path = format!("tenants[{i}]");
        let Some(id) = t.id.as_deref().and_then(|id| TenantId::parse(id).ok()) else { continue };
        tenant_index.entry(id.clone()).or_insert(i);
        if t.quotas.is_some() {
            let limits = quota_limits(errs, &format!("{path}.quotas"), t.quotas.as_ref(), quotas.default);
            quotas.tenants.insert(id.clone(), limits);
        }
        for (name, key) in t.model_keys.iter().flatten() {
            let kpath = format!("{path}.modelKeys.{name}");
            match providers.get(name) {
                None => errs.push(&kpath, format!("unknown provider {name:?}")),
                Some(p) if p.api == ProviderApi::Scripted => {
                    errs.push(&kpath, format!("provider {name:?} is scripted and takes no key"))
                }
                Some(_) => {
                    secret(errs, warnings, &kpath, key);
                    keys.entry(id.clone()).or_default().insert(name.clone(), key.clone());
                }
            }
        }
    }
    for (i, a) in agents.iter().enumerate() {
        let Some(p) = providers.get(&a.model.provider) else { continue };
        let own = keys.get(&a.tenant).is_some_and(|k| k.contains_key(&p.name));
        if p.api != ProviderApi::Scripted && !p.allow_shared_key && !own {
            let fix = match tenant_index.get(&a.tenant) {
                Some(j) => format!("add tenants[{j}].modelKeys.{}", p.name),
                None => format!("declare tenant {:?} with modelKeys.{}", a.tenant.as_str(), p.name),
            };
            errs.push(
                format!("agents.list[{i}].model"),
                format!(
                    "provider {:?} does not share the operator's key (allowSharedKey: false) and tenant {:?} has no key of its own: {fix}",
                    p.name,
                    a.tenant.as_str()
                ),
            );
        }
    }
    (quotas, keys)
}

pub(super) fn share(errs: &mut Errors, path: &str, raw: Option<&RawScheduling>, default: TenantShare) -> TenantShare {
    let Some(raw) = raw else { return default };
    let mut out = default;
    if let Some(w) = raw.weight {
        if (1..=1000).contains(&w) {
            out.weight = w;
        } else {
            errs.push(format!("{path}.weight"), "must be between 1 and 1000");
        }
    }
    if let Some(p) = raw.priority {
        if p <= 9 {
            out.priority = p;
        } else {
            errs.push(format!("{path}.priority"), "must be between 0 and 9");
        }
    }
    if let Some(c) = raw.max_concurrent {
        if (1..=1024).contains(&c) {
            out.max_concurrent = c as usize;
        } else {
            errs.push(format!("{path}.maxConcurrent"), "must be between 1 and 1024");
        }
    }
    if let Some(q) = raw.max_queued {
        if q <= 100_000 {
            out.max_queued = q as usize;
        } else {
            errs.push(format!("{path}.maxQueued"), "must be at most 100000");
        }
    }
    out
}

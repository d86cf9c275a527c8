//! Usage quotas per tenant: turns per minute and tool calls per minute (token buckets), model
//! tokens and sandbox time per UTC day (checked against the usage meter's totals for today, so
//! they survive a restart).
//!
//! A refused turn or tool call is a value (`QuotaKind`), never an error: the agent loop turns it
//! into a white-label reply, a metric and a usage count. Nothing else of the tenant's state is
//! touched.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::config::QuotaSettings;
use crate::ids::TenantId;

/// A tenant's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    pub messages_per_minute: Option<u64>,
    pub model_tokens_per_day: Option<u64>,
    pub tool_calls_per_minute: Option<u64>,
    pub sandbox_seconds_per_day: Option<u64>,
}

/// Which quota refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaKind {
    Messages,
    ModelTokens,
    ToolCalls,
    SandboxTime,
}

impl QuotaKind {
    pub const ALL: [QuotaKind; 4] =
        [QuotaKind::Messages, QuotaKind::ModelTokens, QuotaKind::ToolCalls, QuotaKind::SandboxTime];

    /// The metric label and config-facing name.
    pub fn label(self) -> &'static str {
        match self {
            QuotaKind::Messages => "messages_per_minute",
            QuotaKind::ModelTokens => "model_tokens_per_day",
            QuotaKind::ToolCalls => "tool_calls_per_minute",
            QuotaKind::SandboxTime => "sandbox_seconds_per_day",
        }
    }
}

/// What a tenant has used today (UTC), from the usage meter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Today {
    pub model_tokens: u64,
    pub sandbox_ms: u64,
}

/// A token bucket holding up to `per_minute` tokens, refilled at `per_minute` per minute.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, per_minute: u64, now: Instant) -> bool {
        let cap = per_minute as f64;
        let refill = now.duration_since(self.last).as_secs_f64() * cap / 60.0;
        self.tokens = (self.tokens + refill).min(cap);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Rate {
    Messages,
    ToolCalls,
}

/// Quota state of every tenant. Cheap to check: one short lock per admission.
pub struct Quotas {
    settings: std::sync::RwLock<QuotaSettings>,
    buckets: Mutex<HashMap<(TenantId, Rate), Bucket>>,
}

impl Quotas {
    pub fn new(settings: QuotaSettings) -> Self {
        Self { settings: std::sync::RwLock::new(settings), buckets: Mutex::default() }
    }

    /// Applies a reloaded config: new limits from the next admission on; the buckets of tenants
    /// still configured keep their level (a lower limit caps them as they refill), removed
    /// tenants' buckets go.
    pub fn update(&self, settings: QuotaSettings, tenants: &std::collections::BTreeSet<&TenantId>) {
        *self.settings.write().expect("quota lock") = settings;
        self.buckets.lock().expect("quota lock").retain(|(t, _), _| tenants.contains(t));
    }

    pub fn limits(&self, tenant: &TenantId) -> QuotaLimits {
        self.settings.read().expect("quota lock").for_tenant(tenant)
    }

    fn take(&self, tenant: &TenantId, rate: Rate, per_minute: Option<u64>) -> bool {
        let Some(per_minute) = per_minute else { return true };
        let now = Instant::now();
        let mut map = self.buckets.lock().expect("quota lock");
        let bucket = map.entry((tenant.clone(), rate)).or_insert(Bucket { tokens: per_minute as f64, last: now });
        bucket.take(per_minute, now)
    }

    /// Admits a new turn: the daily token budget must not be spent and the per-minute bucket
    /// must hold a token (taken only if the turn is admitted).
    pub fn admit_turn(&self, tenant: &TenantId, today: Today) -> Result<(), QuotaKind> {
        let l = self.limits(tenant);
        self.admit_model_round(tenant, today)?;
        if !self.take(tenant, Rate::Messages, l.messages_per_minute) {
            return Err(QuotaKind::Messages);
        }
        Ok(())
    }

    /// Before each model call of a turn: the daily token budget must not be spent.
    pub fn admit_model_round(&self, tenant: &TenantId, today: Today) -> Result<(), QuotaKind> {
        match self.limits(tenant).model_tokens_per_day {
            Some(max) if today.model_tokens >= max => Err(QuotaKind::ModelTokens),
            _ => Ok(()),
        }
    }

    /// Admits one tool call; `sandboxed` calls also need sandbox time left today.
    pub fn admit_tool_call(&self, tenant: &TenantId, sandboxed: bool, today: Today) -> Result<(), QuotaKind> {
        let l = self.limits(tenant);
        if sandboxed
            && let Some(max) = l.sandbox_seconds_per_day
            && today.sandbox_ms >= max.saturating_mul(1000)
        {
            return Err(QuotaKind::SandboxTime);
        }
        if !self.take(tenant, Rate::ToolCalls, l.tool_calls_per_minute) {
            return Err(QuotaKind::ToolCalls);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::parse(id).unwrap()
    }

    fn quotas(default: QuotaLimits, own: &[(&str, QuotaLimits)]) -> Quotas {
        Quotas::new(QuotaSettings { default, tenants: own.iter().map(|(t, l)| (tenant(t), *l)).collect() })
    }

    #[tokio::test(start_paused = true)]
    async fn message_bucket_allows_a_burst_then_refills_per_minute() {
        let q = quotas(QuotaLimits { messages_per_minute: Some(6), ..Default::default() }, &[]);
        let a = tenant("a");
        for _ in 0..6 {
            assert_eq!(q.admit_turn(&a, Today::default()), Ok(()));
        }
        assert_eq!(q.admit_turn(&a, Today::default()), Err(QuotaKind::Messages));
        // 6 per minute: one token back every 10 s, never more than the burst.
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(q.admit_turn(&a, Today::default()), Err(QuotaKind::Messages));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(q.admit_turn(&a, Today::default()), Ok(()));
        tokio::time::advance(Duration::from_secs(3600)).await;
        let admitted = (0..10).filter(|_| q.admit_turn(&a, Today::default()).is_ok()).count();
        assert_eq!(admitted, 6, "the bucket never holds more than one minute's worth");
    }

    #[tokio::test(start_paused = true)]
    async fn one_tenant_over_quota_leaves_another_untouched() {
        let tight = QuotaLimits { messages_per_minute: Some(1), tool_calls_per_minute: Some(1), ..Default::default() };
        let q = quotas(QuotaLimits::default(), &[("a", tight)]);
        let (a, b) = (tenant("a"), tenant("b"));
        assert_eq!(q.admit_turn(&a, Today::default()), Ok(()));
        assert_eq!(q.admit_turn(&a, Today::default()), Err(QuotaKind::Messages));
        assert_eq!(q.admit_tool_call(&a, false, Today::default()), Ok(()));
        assert_eq!(q.admit_tool_call(&a, false, Today::default()), Err(QuotaKind::ToolCalls));
        for _ in 0..1000 {
            assert_eq!(q.admit_turn(&b, Today::default()), Ok(()), "b has no limits");
            assert_eq!(q.admit_tool_call(&b, true, Today::default()), Ok(()));
        }
    }

    #[test]
    fn daily_budgets_use_todays_totals() {
        let l = QuotaLimits { model_tokens_per_day: Some(100), sandbox_seconds_per_day: Some(2), ..Default::default() };
        let q = quotas(l, &[]);
        let a = tenant("a");
        assert_eq!(q.admit_turn(&a, Today { model_tokens: 99, sandbox_ms: 0 }), Ok(()));
        assert_eq!(q.admit_turn(&a, Today { model_tokens: 100, sandbox_ms: 0 }), Err(QuotaKind::ModelTokens));
        assert_eq!(q.admit_model_round(&a, Today { model_tokens: 150, sandbox_ms: 0 }), Err(QuotaKind::ModelTokens));
        assert_eq!(q.admit_tool_call(&a, true, Today { model_tokens: 0, sandbox_ms: 1999 }), Ok(()));
        assert_eq!(
            q.admit_tool_call(&a, true, Today { model_tokens: 0, sandbox_ms: 2000 }),
            Err(QuotaKind::SandboxTime)
        );
        // Host-side (session) tools do not use sandbox time.
        assert_eq!(q.admit_tool_call(&a, false, Today { model_tokens: 0, sandbox_ms: 2000 }), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_refused_for_tokens_does_not_spend_the_message_bucket() {
        let l = QuotaLimits { messages_per_minute: Some(1), model_tokens_per_day: Some(10), ..Default::default() };
        let q = quotas(l, &[]);
        let a = tenant("a");
        assert_eq!(q.admit_turn(&a, Today { model_tokens: 10, sandbox_ms: 0 }), Err(QuotaKind::ModelTokens));
        assert_eq!(q.admit_turn(&a, Today::default()), Ok(()));
    }
}

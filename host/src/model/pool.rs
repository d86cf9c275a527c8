//! Which provider instance (and so which key) serves an agent, and how each key is protected.
//!
//! Every key — the operator's key of a provider and each tenant's own key (`tenants[].modelKeys`)
//! — gets its own provider instance behind a `Guarded` wrapper: its own concurrency limit
//! (`maxConcurrent`) and its own handling of upstream 429/529 (wait for `Retry-After`, else
//! exponential backoff with jitter, at most `maxRetries` times). So one tenant's upstream limit
//! only ever delays calls on that same key. A tenant without its own key gets the operator's
//! only when the provider allows it (`allowSharedKey`); otherwise there is no instance for it and
//! the call fails closed (config check already refuses such a config).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc};

use super::{HttpSettings, ModelError, ModelProvider, ModelReply, ModelRequest, anthropic, openai, scripted};
use crate::config::{AgentConfig, Config, ProviderApi, ProviderConfig, SecretString};
use crate::ids::TenantId;

/// Longest `Retry-After` honoured; a provider asking for more fails the call at once.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// First backoff step when the provider gives no `Retry-After`; doubles per attempt.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Largest backoff step.
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// A uniformly random fraction in [0, 1), for jitter.
fn unit_random() -> f64 {
    let b: [u8; 4] = crate::crypto::random(&ring::rand::SystemRandom::new()).unwrap_or_default();
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// How long to wait before retry number `attempt` (0-based) after a rate-limit error.
pub fn retry_delay(attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    match retry_after {
        // The provider said when; add a little jitter so waiters do not return in lockstep.
        Some(after) => after + Duration::from_millis((jitter * 250.0) as u64),
        // "Equal jitter": half the step fixed, half random.
        None => {
            let step = BACKOFF_BASE.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
            step / 2 + step.mul_f64(jitter / 2.0)
        }
    }
}

/// One key's provider instance with its concurrency limit and rate-limit retries.
pub struct Guarded {
    inner: Arc<dyn ModelProvider>,
    permits: Arc<Semaphore>,
    max_retries: u32,
}

impl Guarded {
    pub fn new(inner: Arc<dyn ModelProvider>, max_concurrent: usize, max_retries: u32) -> Self {
        Self { inner, permits: Arc::new(Semaphore::new(max_concurrent.max(1))), max_retries }
    }

    /// One call to the provider, forwarding its text deltas; also says whether any were sent.
    async fn attempt(
        &self,
        req: &ModelRequest,
        deltas: &mpsc::Sender<String>,
    ) -> (Result<ModelReply, ModelError>, bool) {
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let mut streamed = false;
        let call = async {
            let tx = tx;
            self.inner.complete(req, &tx).await
        };
        let forward = async {
            while let Some(d) = rx.recv().await {
                streamed = true;
                let _ = deltas.send(d).await;
            }
        };
        let (result, ()) = tokio::join!(call, forward);
        (result, streamed)
    }
}

#[async_trait]
impl ModelProvider for Guarded {
    async fn complete(&self, req: &ModelRequest, deltas: &mpsc::Sender<String>) -> Result<ModelReply, ModelError> {
        let mut attempt = 0;
        loop {
            let (result, streamed) = {
                let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
                self.attempt(req, deltas).await
            };
            // The permit is released while waiting, so other calls on this key may go ahead. A
            // call that already streamed text is never retried (the client would see it twice).
            match result {
                Err(ModelError::Upstream { status, retry_after, .. })
                    if (status == 429 || status == 529)
                        && !streamed
                        && attempt < self.max_retries
                        && retry_after.is_none_or(|d| d <= MAX_RETRY_AFTER) =>
                {
                    let wait = retry_delay(attempt, retry_after, unit_random());
                    tracing::info!(
                        status,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "Model provider rate-limited; retrying."
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// The provider instances of a config: the operator's (shared) ones and tenants' own.
#[derive(Default)]
pub struct Providers {
    shared: BTreeMap<String, Arc<dyn ModelProvider>>,
    own: BTreeMap<(TenantId, String), Arc<dyn ModelProvider>>,
}

impl Providers {
    /// Wraps ready-made providers as shared ones (tests and benches).
    pub fn shared(list: impl IntoIterator<Item = (String, Arc<dyn ModelProvider>)>) -> Self {
        Self { shared: list.into_iter().collect(), own: BTreeMap::new() }
    }

    /// The instance that serves an agent: its tenant's own key for the agent's provider, else the
    /// operator's where shared; `None` fails closed.
    pub fn for_agent(&self, agent: &AgentConfig) -> Option<Arc<dyn ModelProvider>> {
        let name = &agent.model.provider;
        self.own.get(&(agent.tenant.clone(), name.clone())).or_else(|| self.shared.get(name)).cloned()
    }

    /// Builds every instance. Secrets are resolved here, once, at start-up.
    pub fn build(config: &Config, http: &reqwest::Client) -> Result<Self, Vec<String>> {
        let mut out = Providers::default();
        let mut errors = Vec::new();
        for (name, p) in &config.providers {
            if !(p.allow_shared_key || p.api == ProviderApi::Scripted) {
                continue;
            }
            let key = match &p.api_key {
                Some(k) => match k.resolve(&config.base_dir) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        errors.push(format!("models.providers.{name}.apiKey: {e}"));
                        continue;
                    }
                },
                None => None,
            };
            match instance(p, key, http) {
                Ok(i) => {
                    out.shared.insert(name.clone(), i);
                }
                Err(e) => errors.push(format!("models.providers.{name}.apiKey: {e}")),
            }
        }
        for (tenant, keys) in &config.model_keys {
            for (name, key) in keys {
                let Some(p) = config.providers.get(name) else { continue };
                let path = format!("tenant {:?} modelKeys.{name}", tenant.as_str());
                match key.resolve(&config.base_dir).map_err(|e| format!("{path}: {e}")) {
                    Ok(k) => match instance(p, Some(k), http) {
                        Ok(i) => {
                            out.own.insert((tenant.clone(), name.clone()), i);
                        }
                        Err(e) => errors.push(format!("{path}: {e}")),
                    },
                    Err(e) => errors.push(e),
                }
            }
        }
        if errors.is_empty() { Ok(out) } else { Err(errors) }
    }
}

fn instance(
    p: &ProviderConfig,
    key: Option<SecretString>,
    http: &reqwest::Client,
) -> Result<Arc<dyn ModelProvider>, String> {
    let settings = HttpSettings { base_url: p.base_url.clone(), timeout: p.timeout, max_tokens: p.max_tokens };
    let inner: Arc<dyn ModelProvider> = match p.api {
        ProviderApi::Scripted => return Ok(Arc::new(scripted::Scripted)),
        ProviderApi::OpenAi => Arc::new(openai::OpenAi::new(settings, key, http.clone())),
        ProviderApi::Anthropic => {
            let key = key.ok_or("required for the anthropic API")?;
            Arc::new(anthropic::Anthropic::new(settings, key, http.clone()))
        }
    };
    Ok(Arc::new(Guarded::new(inner, p.max_concurrent, p.max_retries)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::Instant;

    use super::*;

    /// Answers 429 (with `retry_after`) `fail` times, then succeeds; or blocks forever.
    struct Flaky {
        fail: u32,
        retry_after: Option<Duration>,
        calls: AtomicU32,
        block: bool,
    }

    #[async_trait]
    impl ModelProvider for Flaky {
        async fn complete(&self, _: &ModelRequest, _: &mpsc::Sender<String>) -> Result<ModelReply, ModelError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if self.block {
                std::future::pending::<()>().await;
            }
            if n < self.fail {
                return Err(ModelError::Upstream {
                    status: 429,
                    detail: "slow down".into(),
                    retry_after: self.retry_after,
                });
            }
            Ok(ModelReply { text: "ok".into(), ..Default::default() })
        }
    }

    fn flaky(fail: u32, retry_after: Option<Duration>, block: bool) -> Arc<Flaky> {
        Arc::new(Flaky { fail, retry_after, calls: AtomicU32::new(0), block })
    }

    fn req() -> ModelRequest {
        ModelRequest { model: "m".into(), system: None, messages: Vec::new(), tools: Vec::new() }
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_then_succeeds() {
        let inner = flaky(2, Some(Duration::from_secs(3)), false);
        let g = Guarded::new(inner.clone(), 1, 3);
        let (tx, _rx) = mpsc::channel(8);
        let t0 = Instant::now();
        let r = g.complete(&req(), &tx).await.unwrap();
        assert_eq!(r.text, "ok");
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        let took = t0.elapsed();
        assert!(took >= Duration::from_secs(6) && took < Duration::from_millis(6600), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries_or_a_too_long_retry_after() {
        let inner = flaky(100, None, false);
        let g = Guarded::new(inner.clone(), 1, 2);
        let (tx, _rx) = mpsc::channel(8);
        let e = g.complete(&req(), &tx).await.unwrap_err();
        assert!(e.is_rate_limit());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3, "one call and two retries");
        let inner = flaky(100, Some(MAX_RETRY_AFTER + Duration::from_secs(1)), false);
        let g = Guarded::new(inner.clone(), 1, 5);
        assert!(g.complete(&req(), &tx).await.is_err());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1, "a Retry-After beyond the cap is not waited for");
    }

    /// Streams a delta, then fails with an overloaded error (Anthropic's mid-stream 529).
    struct StreamsThenOverloaded(AtomicU32);

    #[async_trait]
    impl ModelProvider for StreamsThenOverloaded {
        async fn complete(&self, _: &ModelRequest, d: &mpsc::Sender<String>) -> Result<ModelReply, ModelError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let _ = d.send("partial ".into()).await;
            Err(ModelError::Upstream { status: 529, detail: "overloaded".into(), retry_after: None })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_already_streamed_is_not_retried() {
        let inner = Arc::new(StreamsThenOverloaded(AtomicU32::new(0)));
        let g = Guarded::new(inner.clone(), 1, 3);
        let (tx, mut rx) = mpsc::channel(8);
        assert!(g.complete(&req(), &tx).await.unwrap_err().is_rate_limit());
        assert_eq!(inner.0.load(Ordering::SeqCst), 1);
        assert_eq!(rx.recv().await.as_deref(), Some("partial "));
        assert!(rx.try_recv().is_err(), "the text reached the client once");
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        assert_eq!(retry_delay(0, None, 0.0), Duration::from_millis(250));
        let top = retry_delay(0, None, 0.999_999);
        assert!(top > Duration::from_millis(499) && top < Duration::from_millis(500), "{top:?}");
        assert_eq!(retry_delay(2, None, 0.0), Duration::from_secs(1));
        assert_eq!(retry_delay(30, None, 0.0), BACKOFF_MAX / 2);
        assert!(retry_delay(30, None, 0.99) <= BACKOFF_MAX);
        assert_eq!(retry_delay(5, Some(Duration::from_secs(2)), 0.0), Duration::from_secs(2));
        let (a, b) = (unit_random(), unit_random());
        assert!((0.0..1.0).contains(&a) && (0.0..1.0).contains(&b));
    }

    #[tokio::test(start_paused = true)]
    async fn a_saturated_key_does_not_hold_up_another_key() {
        let stuck = Guarded::new(flaky(0, None, true), 1, 0);
        let other = Guarded::new(flaky(0, None, false), 1, 0);
        let (tx, _rx) = mpsc::channel(8);
        let stuck = Arc::new(stuck);
        let s = stuck.clone();
        let tx2 = tx.clone();
        let _hog = tokio::spawn(async move { s.complete(&req(), &tx2).await });
        tokio::task::yield_now().await;
        // The stuck key's only permit is taken: a second call on it waits...
        let waiting = tokio::time::timeout(Duration::from_secs(5), stuck.complete(&req(), &tx)).await;
        assert!(waiting.is_err(), "the per-key limit of 1 holds the second call");
        // ...while another key answers at once.
        let r = tokio::time::timeout(Duration::from_millis(1), other.complete(&req(), &tx)).await;
        assert_eq!(r.unwrap().unwrap().text, "ok");
    }
}

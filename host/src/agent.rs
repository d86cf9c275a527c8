//! The agent loop: one turn of a conversation, from a user message through model rounds and
//! tool calls to the final reply, streamed as `RunEvent`s.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::config::{AgentConfig, Config};
use crate::dispatch::{Caller, Dispatcher, SentBy, SessionSender};
use crate::ids::SessionKey;
use crate::metrics::Metrics;
use crate::model::pool::Providers;
use crate::model::{ModelRequest, Usage};
use crate::quota::{QuotaKind, Quotas};
use crate::scheduler::Scheduler;
use crate::session::{Message, SessionStore, TenantSessions};
use crate::tools::Tool;
use crate::usage::UsageMeter;

/// Most transcript messages sent to the model as context.
const MAX_CONTEXT_MESSAGES: usize = 200;

/// The reply to a turn refused because its tenant's queue is full (white-label wording).
pub const BUSY_MESSAGE: &str = "This assistant is busy right now. Please try again in a moment.";

/// The reply to a turn stopped by one of its tenant's quotas (white-label wording).
pub const QUOTA_MESSAGE: &str = "This assistant has reached its usage limit for now. Please try again later.";

/// What a tool call refused by a quota returns to the model.
const QUOTA_TOOL_REFUSAL: &str = "refused: the usage limit for tools has been reached; no further tools can run now";

/// What a client sees while a turn runs.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Delta(String),
    ToolCall { id: String, name: String, arguments: serde_json::Value },
    ToolResult { id: String, name: String, content: String, is_error: bool },
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// The reply text, or a user-facing error message when `failed`.
    pub text: String,
    pub failed: bool,
    /// The tenant's queue was full or a quota was reached: the turn was refused (not stored,
    /// when refused before it started) and `text` says so.
    pub busy: bool,
    pub usage: Usage,
}

impl RunOutcome {
    /// The turn was refused or stopped by one of its tenant's quotas (rather than a full queue).
    pub fn over_quota(&self) -> bool {
        self.busy && self.text == QUOTA_MESSAGE
    }
}

/// Everything a run needs, shared by all front doors: one snapshot of the running config.
///
/// `config`, `providers` and the dispatcher's policy gate belong to this snapshot; a reload
/// builds a new `Runtime` and a run in flight keeps the one it started with. The stateful
/// services (store, audit, scheduler, metrics, quotas, usage, tasks) are shared by every
/// snapshot and take the new config through their `update`.
pub struct Runtime {
    pub config: Arc<Config>,
    /// Model provider instances, one per key (operator's or tenant's own).
    pub providers: Providers,
    pub dispatcher: Dispatcher,
    pub store: Arc<dyn SessionStore>,
    /// The audit log: `audit.append(Scope::Tenant(id), Actor::..., Event::...)`.
    pub audit: crate::audit::Audit,
    pub scheduler: Arc<Scheduler>,
    pub metrics: Arc<Metrics>,
    pub quotas: Arc<Quotas>,
    /// Usage for billing, flushed by the application root.
    pub usage: Arc<UsageMeter>,
    /// Runs in flight (spawned so a client that disconnects never loses its turn).
    pub tasks: TaskTracker,
}

impl Runtime {
    /// The snapshot of a reloaded config: its own config, providers and gate, this snapshot's
    /// shared services brought up to date (`update`), and the same sandboxes and store.
    pub fn next(&self, config: Arc<Config>, providers: Providers, gate: Arc<dyn crate::policy::PolicyGate>) -> Self {
        let tenants: std::collections::BTreeSet<&crate::ids::TenantId> = config.tenants.keys().collect();
        self.scheduler.update(
            config.max_concurrent,
            config.scheduling_default,
            config.tenants.values().map(|t| (t.id.clone(), t.share)),
        );
        self.metrics.update(tenants.iter().copied());
        self.quotas.update(config.quotas.clone(), &tenants);
        Runtime {
            providers,
            dispatcher: Dispatcher {
                gate,
                sandboxes: self.dispatcher.sandboxes.clone(),
                audit: self.dispatcher.audit.clone(),
            },
            store: self.store.clone(),
            audit: self.audit.clone(),
            scheduler: self.scheduler.clone(),
            metrics: self.metrics.clone(),
            quotas: self.quotas.clone(),
            usage: self.usage.clone(),
            tasks: self.tasks.clone(),
            config,
        }
    }

    /// The tenant-bound session handle for an agent.
    pub fn sessions_for(&self, agent: &AgentConfig) -> TenantSessions {
        TenantSessions::new(agent.tenant.clone(), self.store.clone())
    }

    /// Starts a turn in the background and returns its event stream and outcome. The turn runs
    /// to completion (and is stored) even if the caller stops listening.
    pub fn spawn_turn(
        self: &Arc<Self>,
        agent: AgentConfig,
        session: SessionKey,
        text: String,
    ) -> (mpsc::Receiver<RunEvent>, tokio::sync::oneshot::Receiver<RunOutcome>) {
        let (tx, rx) = mpsc::channel(256);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let rt = self.clone();
        self.tasks.spawn(async move {
            let outcome = rt.run_turn(&agent, &session, text, &tx, None, false).await;
            let _ = done_tx.send(outcome);
        });
        (rx, done_rx)
    }

    /// Runs one turn: waits for the session, stores the user message, then alternates model
    /// rounds and tool calls until the model answers without tools or the round limit is hit.
    /// A turn `sent_by` another session (`sessions_send`) stores its message as that session's,
    /// and has only the tools both agents have. `user_stored`: the user message is already the
    /// session's latest (a chat turn resumed after a restart), so it is not stored again.
    pub async fn run_turn(
        self: &Arc<Self>,
        agent: &AgentConfig,
        session: &SessionKey,
        text: String,
        events: &mpsc::Sender<RunEvent>,
        sent_by: Option<SentBy>,
        user_stored: bool,
    ) -> RunOutcome {
        let tenant = &agent.tenant;
        if let Err(kind) = self.quotas.admit_turn(tenant, self.usage.today(tenant)) {
            return self.over_quota(agent, kind);
        }
        let Ok(permit) = self.scheduler.acquire(tenant, session).await else {
            tracing::warn!(tenant = %agent.tenant, "Turn refused: the tenant's queue is full.");
            self.metrics.run_refused(tenant);
            self.usage.record(tenant, &agent.id, |c| c.busy_refusals += 1);
            return RunOutcome { text: BUSY_MESSAGE.into(), failed: true, busy: true, usage: Usage::default() };
        };
        self.metrics.queue_wait(tenant, permit.waited);
        let _permit = permit;
        let sessions = self.sessions_for(agent);
        // Across gateways sharing a database, one run per session at a time and the tenant's cap
        // over all of them (as the scheduler keeps both within this one).
        let _run = match sessions.lock_run(session, self.scheduler.max_concurrent(tenant)).await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::error!(tenant = %agent.tenant, error = %e, "Cannot lock the session for a run.");
                return self.failed(agent, "The conversation could not be saved. Please try again.");
            }
        };
        self.metrics.run_started(tenant);
        self.usage.record(tenant, &agent.id, |c| c.runs += 1);
        let user = match &sent_by {
            None => Message::User { text },
            Some(by) => Message::FromSession { from: by.session.to_string(), text },
        };
        // The accepted message is stored before anything can fail, so it is never lost.
        if !user_stored && let Err(e) = sessions.append(session, std::slice::from_ref(&user)).await {
            tracing::error!(tenant = %agent.tenant, error = %e, "Cannot store user message.");
            return self.failed(agent, "The conversation could not be saved. Please try again.");
        }
        let Some(provider) = self.providers.for_agent(agent) else {
            return self.failed(agent, "The model service is not available for this assistant.");
        };
        let mut context = match sessions.history(session, Some(MAX_CONTEXT_MESSAGES)).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(tenant = %agent.tenant, error = %e, "Cannot read session history.");
                return self.failed(agent, "The conversation could not be loaded. Please try again.");
            }
        };
        let tools = self.dispatcher.offered(agent, sent_by.as_ref());
        let sender = RunSender { rt: self.clone(), agent: agent.clone(), session: session.clone() };
        let caller = Caller { agent, sessions: &sessions, session, sent_by: sent_by.as_ref(), sender: &sender };
        let mut usage = Usage::default();
        for round in 0..agent.max_tool_rounds {
            if round > 0
                && let Err(kind) = self.quotas.admit_model_round(tenant, self.usage.today(tenant))
            {
                // The tool round is stored; the turn ends with the quota reply.
                self.refused_by_quota(agent, kind);
                return RunOutcome { text: QUOTA_MESSAGE.into(), failed: true, busy: true, usage };
            }
            let req = ModelRequest {
                model: agent.model.model.clone(),
                system: agent.system_prompt.clone(),
                messages: context.clone(),
                tools: tools.clone(),
            };
            let (dtx, mut drx) = mpsc::channel::<String>(64);
            let forward = {
                let events = events.clone();
                async move {
                    while let Some(d) = drx.recv().await {
                        let _ = events.send(RunEvent::Delta(d)).await;
                    }
                }
            };
            let call = async {
                let reply = provider.complete(&req, &dtx).await;
                drop(dtx);
                reply
            };
            let (reply, ()) = tokio::join!(call, forward);
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(tenant = %agent.tenant, agent = %agent.id, provider = %agent.model.provider, error = %e, "Model call failed.");
                    return self.failed(agent, e.user_message());
                }
            };
            usage.input_tokens += reply.usage.input_tokens;
            usage.output_tokens += reply.usage.output_tokens;
            self.metrics.tokens(tenant, reply.usage.input_tokens, reply.usage.output_tokens);
            self.usage.record(tenant, &agent.id, |c| {
                c.input_tokens += reply.usage.input_tokens;
                c.output_tokens += reply.usage.output_tokens;
            });
            if reply.tool_calls.is_empty() {
                let msg = Message::Assistant { text: reply.text.clone(), tool_calls: Vec::new() };
                if let Err(e) = sessions.append(session, &[msg]).await {
                    tracing::error!(tenant = %agent.tenant, error = %e, "Cannot store reply.");
                }
                return RunOutcome { text: reply.text, failed: false, busy: false, usage };
            }
            let assistant = Message::Assistant { text: reply.text.clone(), tool_calls: reply.tool_calls.clone() };
            let mut new = vec![assistant];
            let mut quota_hit = false;
            for call in &reply.tool_calls {
                let _ = events
                    .send(RunEvent::ToolCall {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                    })
                    .await;
                let out = self.tool_call(&caller, call, &mut quota_hit).await;
                let _ = events
                    .send(RunEvent::ToolResult {
                        id: call.id.clone(),
                        name: call.name.clone(),
                        content: out.text.clone(),
                        is_error: out.is_error,
                    })
                    .await;
                new.push(Message::ToolResult {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    content: out.text,
                    is_error: out.is_error,
                });
            }
            if let Err(e) = sessions.append(session, &new).await {
                tracing::error!(tenant = %agent.tenant, error = %e, "Cannot store tool round.");
                return self.failed(agent, "The conversation could not be saved. Please try again.");
            }
            if quota_hit {
                return RunOutcome { text: QUOTA_MESSAGE.into(), failed: true, busy: true, usage };
            }
            context.extend(new);
        }
        let text = format!("Stopped after {} tool rounds without a final answer.", agent.max_tool_rounds);
        let _ = sessions.append(session, &[Message::Assistant { text: text.clone(), tool_calls: Vec::new() }]).await;
        RunOutcome { text, failed: false, busy: false, usage }
    }

    /// Runs one tool call under the tenant's tool quotas, metering it. Once a quota refuses,
    /// the rest of the round is refused too and the turn ends after the round is stored.
    async fn tool_call(
        &self,
        caller: &Caller<'_>,
        call: &crate::session::ToolCall,
        quota_hit: &mut bool,
    ) -> crate::sandbox::ToolOutput {
        let agent = caller.agent;
        let tenant = &agent.tenant;
        let sandboxed = Tool::from_exact_name(&call.name).is_some_and(Tool::needs_sandbox);
        if !*quota_hit && let Err(kind) = self.quotas.admit_tool_call(tenant, sandboxed, self.usage.today(tenant)) {
            self.refused_by_quota(agent, kind);
            *quota_hit = true;
        }
        if *quota_hit {
            return crate::sandbox::ToolOutput {
                text: QUOTA_TOOL_REFUSAL.into(),
                is_error: true,
                ..Default::default()
            };
        }
        let (out, report) = self.dispatcher.dispatch_reported(caller, call).await;
        self.metrics.tool_call(tenant, !out.is_error);
        if report.denied {
            self.metrics.tool_denied(tenant);
        }
        if let Some((_, failed)) = report.sandbox {
            self.metrics.sandbox_call(tenant, failed);
        }
        self.usage.record(tenant, &agent.id, |c| {
            c.tool_call(&call.name);
            c.denials += u64::from(report.denied);
            if let Some((took, failed)) = report.sandbox {
                c.sandbox_ms += took.as_millis() as u64;
                c.sandbox_failures += u64::from(failed);
            }
        });
        out
    }

    /// Counts a quota refusal for the operator (metric) and for billing (usage).
    fn refused_by_quota(&self, agent: &AgentConfig, kind: QuotaKind) {
        tracing::info!(tenant = %agent.tenant, agent = %agent.id, quota = kind.label(), "Refused by quota.");
        self.metrics.quota_refused(&agent.tenant, kind);
        self.usage.record(&agent.tenant, &agent.id, |c| c.quota_refusals += 1);
    }

    /// A turn refused before it started: not stored, nothing else touched.
    fn over_quota(&self, agent: &AgentConfig, kind: QuotaKind) -> RunOutcome {
        self.refused_by_quota(agent, kind);
        RunOutcome { text: QUOTA_MESSAGE.into(), failed: true, busy: true, usage: Usage::default() }
    }

    fn failed(&self, agent: &AgentConfig, message: &str) -> RunOutcome {
        self.metrics.run_failed(&agent.tenant);
        self.usage.record(&agent.tenant, &agent.id, |c| c.runs_failed += 1);
        RunOutcome { text: message.to_string(), failed: true, busy: false, usage: Usage::default() }
    }
}

/// `sessions_send` starts a turn of the target session's agent, in the same tenant, on behalf of
/// the sending session (whose tools bound the turn's).
struct RunSender {
    rt: Arc<Runtime>,
    agent: AgentConfig,
    session: SessionKey,
}

#[async_trait::async_trait]
impl SessionSender for RunSender {
    async fn send(&self, target: SessionKey, message: String) -> Result<(), String> {
        let agent = self
            .rt
            .config
            .agent(target.agent())
            .filter(|a| a.tenant == self.agent.tenant)
            .cloned()
            .ok_or_else(|| "session not found".to_string())?;
        let rt = self.rt.clone();
        let by = SentBy { agent: self.agent.id.clone(), session: self.session.clone() };
        self.rt.tasks.spawn(async move {
            // Nobody watches this turn live; its events are drained and its reply is stored.
            let (tx, mut rx) = mpsc::channel(16);
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            rt.run_turn(&agent, &target, message, &tx, Some(by), false).await;
        });
        Ok(())
    }
}

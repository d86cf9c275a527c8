//! Reload: a new config is checked whole, then applied as a diff, or refused whole.
//!
//! Refused (every reason listed; the running config keeps serving): a config that does not
//! load, fails a start-up check, or changes a setting that cannot change live
//! ([`restart_only`]). Applied, in this order: identities of added tenants are created in the
//! store; the reload is recorded in the host audit log and the record waited for (a reload the
//! log cannot hold is refused: fail closed); the shared services take the new config
//! (`update`); the new snapshot is swapped in (from then on a removed tenant's tokens get 401 and
//! a new tenant's work); pairing approvals of added tenants are loaded; policy loads of changed
//! agents go to their tenants' logs; chat accounts that changed are restarted.
//!
//! A run in flight keeps the snapshot it started with and finishes (so a removed tenant's last
//! turns are stored); a removed tenant's data stays (deleting it is `bulkhead tenant delete`).
//! Its Docker containers are left to the reaper, which removes them once idle.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Inner, check, start_docker, uses_docker};
use crate::audit::{Actor, Event, PolicyChange, Scope};
use crate::config::{Config, SandboxBackend};
use crate::gateway::Snapshot;
use crate::gateway::admin::ReloadReport;

impl Inner {
    /// Reads the source again; `only_if_changed` (the file watcher) skips a reload whose digest
    /// is the running one.
    pub(super) async fn reload_from_source(&self, trigger: &str, by: Actor, only_if_changed: bool) -> ReloadReport {
        let Some(path) = self.source.file.clone() else {
            return self.noted(
                trigger,
                refused(
                    String::new(),
                    vec!["this gateway runs the embedded default config; there is no file to reload".into()],
                ),
            );
        };
        let loaded = match tokio::task::spawn_blocking(move || crate::config::load(&path)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                let report = refused(String::new(), e.errors.iter().map(ToString::to_string).collect());
                log_refused(&report);
                return self.noted(trigger, report);
            }
            Err(e) => {
                return self.noted(trigger, refused(String::new(), vec![format!("the config could not be read: {e}")]));
            }
        };
        if only_if_changed && self.state.lock().await.digest == loaded.digest {
            return ReloadReport { applied: true, config_digest: loaded.digest, ..Default::default() };
        }
        self.reload(loaded.config, loaded.digest, trigger, by).await
    }

    /// Applies `config` or refuses it whole; the outcome is counted and kept for the console.
    pub(super) async fn reload(&self, config: Config, digest: String, trigger: &str, by: Actor) -> ReloadReport {
        let report = self.apply(config, digest, trigger, by).await;
        self.noted(trigger, report)
    }

    /// A reload's outcome, counted in the metrics and kept as the last one (for the console).
    fn noted(&self, trigger: &str, report: ReloadReport) -> ReloadReport {
        self.gateway.note_reload(trigger, &report);
        report
    }

    async fn apply(&self, config: Config, digest: String, trigger: &str, by: Actor) -> ReloadReport {
        let mut state = self.state.lock().await;
        let old = self.live.load_full();
        let mut errors = restart_only(old.config(), &config);
        let checked = match check(&config) {
            Ok(c) => Some(c),
            Err(e) => {
                errors.extend(e);
                None
            }
        };
        let (Some(checked), true) = (checked, errors.is_empty()) else {
            let report = refused(digest, errors);
            log_refused(&report);
            return report;
        };
        for w in crate::config::summarize_warnings(&checked.warnings) {
            tracing::warn!("{w}");
        }
        let before: BTreeSet<_> = old.config().tenants.keys().cloned().collect();
        let after: BTreeSet<_> = config.tenants.keys().cloned().collect();
        let added: Vec<_> = after.difference(&before).cloned().collect();
        let removed: Vec<_> = before.difference(&after).cloned().collect();
        if let Err(e) = old.runtime.store.add_tenants(&added) {
            let report = refused(digest, vec![format!("the store cannot take the new tenants: {e}")]);
            log_refused(&report);
            return report;
        }
        let mut gate_changes = Vec::new();
        for a in &config.agents {
            let new = checked.gate.agent(&a.id).map(|p| p.digest.clone());
            if state.gate.agent(&a.id).map(|p| &p.digest) != new.as_ref() {
                gate_changes.push((a.clone(), new));
            }
        }
        let mut policies: Vec<PolicyChange> = gate_changes
            .iter()
            .map(|(a, digest)| PolicyChange { agent: a.id.to_string(), digest: digest.clone() })
            .collect();
        for a in old.config().agents.iter().filter(|a| config.agent(&a.id).is_none()) {
            policies.push(PolicyChange { agent: a.id.to_string(), digest: None });
        }
        let changed: Vec<String> = after
            .intersection(&before)
            .filter(|t| tenant_fingerprint(old.config(), t) != tenant_fingerprint(&config, t))
            .map(ToString::to_string)
            .collect();
        let accounts = state.channels.as_ref().map(|ch| ch.changes(&config)).unwrap_or_default();
        let report = ReloadReport {
            applied: true,
            config_digest: digest.clone(),
            tenants_added: added.iter().map(ToString::to_string).collect(),
            tenants_removed: removed.iter().map(ToString::to_string).collect(),
            tenants_changed: changed,
            policies_changed: policies.iter().map(|p| p.agent.clone()).collect(),
            accounts_restarted: accounts,
            errors: Vec::new(),
        };
        // Recorded before anything changes: a reload the audit log cannot hold is not applied.
        let event = Event::ConfigReload {
            config_digest: digest.clone(),
            trigger: trigger.to_string(),
            tenants_added: report.tenants_added.clone(),
            tenants_removed: report.tenants_removed.clone(),
            tenants_changed: report.tenants_changed.clone(),
            policies,
            accounts: report.accounts_restarted.clone(),
        };
        if let Err(e) = self.audit.append(Scope::Host, by, event).await {
            let report = refused(
                digest,
                vec![format!("the reload could not be recorded in the audit log, so it was not applied: {e}")],
            );
            log_refused(&report);
            return report;
        }
        let mut sandboxes = old.runtime.dispatcher.sandboxes.clone();
        {
            let mut docker = self.docker.lock().expect("docker lock");
            match docker.as_ref() {
                None if uses_docker(&config) => {
                    let d = start_docker(&config, &self.audit);
                    sandboxes = sandboxes.with(SandboxBackend::Docker, d.clone());
                    *docker = Some(d);
                }
                // Agents new to Docker (or whose sandbox changed) get their warm container too.
                Some(d) => {
                    let fresh: Vec<_> = config
                        .agents
                        .iter()
                        .filter(|a| {
                            old.config()
                                .agent(&a.id)
                                .is_none_or(|o| format!("{:?}", o.sandbox) != format!("{:?}", a.sandbox))
                        })
                        .cloned()
                        .collect();
                    d.prewarm_agents(&fresh);
                }
                None => {}
            }
        }
        let config = Arc::new(config);
        let mut runtime = old.runtime.next(config.clone(), checked.providers, checked.gate.clone());
        runtime.dispatcher.sandboxes = sandboxes;
        self.live.store(Arc::new(Snapshot {
            runtime: Arc::new(runtime),
            tenant_tokens: checked.tenant_tokens,
            operator_tokens: checked.operator_tokens,
        }));
        state.gate = checked.gate;
        state.digest = digest;
        if let Err(e) = self.gateway.pairing.restore(added.iter().cloned()).await {
            tracing::error!(error = %e, "Pairing approvals of a new tenant could not be loaded.");
        }
        for (a, digest) in &gate_changes {
            if let Some(digest) = digest {
                let event = Event::PolicyLoad { agent: a.id.to_string(), digest: digest.clone() };
                self.audit.record(Scope::Tenant(a.tenant.clone()), Actor::System, event).await;
            }
        }
        if let Some(ch) = state.channels.as_mut() {
            let (_, failed) = ch.apply(&config, config.gateway.shutdown_grace).await;
            for e in failed {
                tracing::error!(error = %e, "A chat account did not start after the reload.");
            }
        }
        tracing::info!(
            trigger,
            added = ?report.tenants_added,
            removed = ?report.tenants_removed,
            changed = ?report.tenants_changed,
            policies = ?report.policies_changed,
            accounts = ?report.accounts_restarted,
            "Config reloaded."
        );
        report
    }
}

fn refused(digest: String, errors: Vec<String>) -> ReloadReport {
    ReloadReport { applied: false, config_digest: digest, errors, ..Default::default() }
}

fn log_refused(report: &ReloadReport) {
    for e in &report.errors {
        tracing::warn!(error = %e, "Config reload refused; the running config keeps serving.");
    }
}

/// Settings the running process cannot change: each one changed is an error naming it.
pub fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    let (o, n) = (&old.gateway, &new.gateway);
    let settings: [(&str, String, String); 10] = [
        ("gateway.bind", o.bind.to_string(), n.bind.to_string()),
        ("gateway.tls", format!("{:?}", o.tls), format!("{:?}", n.tls)),
        ("gateway.maxBodyBytes", o.max_body_bytes.to_string(), n.max_body_bytes.to_string()),
        (
            "gateway.auth",
            format!("{:?}", (o.auth_max_failures, o.auth_window, o.auth_lockout)),
            format!("{:?}", (n.auth_max_failures, n.auth_window, n.auth_lockout)),
        ),
        ("gateway.minFreeDiskMb", o.min_free_disk_bytes.to_string(), n.min_free_disk_bytes.to_string()),
        ("stateDir", old.state_dir.display().to_string(), new.state_dir.display().to_string()),
        ("store.masterKey", format!("{:?}", old.store.master_key), format!("{:?}", new.store.master_key)),
        ("store.mode", format!("{:?}", old.store.require_mode()), format!("{:?}", new.store.require_mode())),
        ("logging", format!("{:?}", old.logging), format!("{:?}", new.logging)),
        ("sandbox.docker", format!("{:?}", old.engines), format!("{:?}", new.engines)),
    ];
    settings
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(key, _, _)| {
            format!("{key}: changed, but it cannot change while running; a restart is needed to apply it")
        })
        .collect()
}

/// Everything of one tenant in a config, comparably (its settings, agents and bindings).
fn tenant_fingerprint(config: &Config, tenant: &crate::ids::TenantId) -> String {
    let agents: Vec<_> = config.agents.iter().filter(|a| &a.tenant == tenant).map(|a| format!("{a:?}")).collect();
    let ids: BTreeSet<_> = config.agents.iter().filter(|a| &a.tenant == tenant).map(|a| a.id.clone()).collect();
    let bindings: Vec<_> =
        config.bindings.iter().filter(|b| ids.contains(&b.agent)).map(|b| format!("{b:?}")).collect();
    format!("{:?}|{agents:?}|{bindings:?}|{:?}", config.tenants.get(tenant), config.model_keys.get(tenant))
}

#[cfg(test)]
mod engine_tests {
    use std::path::Path;

    #[test]
    fn the_engine_list_needs_a_restart_and_a_pin_does_not() {
        let load = |engines: &str, pin: &str| {
            crate::config::load_str(
                &format!(
                    "{{ sandbox: {{ docker: {{ engines: {engines} }} }}, tenants: [ {{ id: 'acme'{pin} }} ] }}"
                ),
                Path::new("."),
            )
            .unwrap()
        };
        let one = "[ { name: 'a', endpoint: 'unix:///a' }, { name: 'b', endpoint: 'unix:///b' } ]";
        let other = "[ { name: 'a', endpoint: 'unix:///a' }, { name: 'b', endpoint: 'unix:///b', weight: 5 } ]";
        let base = load(one, "");
        let changed = super::restart_only(&base, &load(other, ""));
        assert!(changed.len() == 1 && changed[0].starts_with("sandbox.docker:"), "{changed:?}");
        assert!(super::restart_only(&base, &load(one, ", sandbox: { engine: 'b' }")).is_empty());
        let none = crate::config::load_str("{ tenants: [ { id: 'acme' } ] }", Path::new(".")).unwrap();
        assert!(!super::restart_only(&none, &base).is_empty(), "adding engines needs a restart");
    }
}

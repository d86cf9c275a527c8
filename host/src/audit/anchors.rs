//! High-water marks. At every checkpoint of a tenant log its head and sequence number are
//! anchored in the host chain (a `log.anchor` record), and the tenant's signed checkpoint is
//! written only after that. The host chain's last anchor of a log is the mark the log may never
//! go behind: a log cut at a record boundary, rolled back to an older copy, or deleted (with its
//! checkpoint and key) no longer reaches it. Conversely a tenant checkpoint that the host chain
//! does not cover shows the host log lost records. `tenant.delete` and `log.reset` (an operator
//! moving a refused log aside as evidence) clear a tenant's mark.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Checkpoint, Mark, Scope};
use crate::ids::TenantId;

/// A tenant log's last anchor in the host log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub head: String,
    /// The host record that holds it.
    pub host_seq: u64,
}

impl Anchor {
    pub fn mark(&self) -> Mark {
        Mark {
            seq: self.seq,
            head: self.head.clone(),
            what: format!("its anchor in the host log (host record {})", self.host_seq),
        }
    }
}

/// Every tenant log's last anchor, as the host chain says (records in order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anchors(BTreeMap<TenantId, Anchor>);

/// The fields of a host record that move a mark.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct View<'a> {
    #[serde(borrow)]
    kind: &'a str,
    #[serde(default)]
    log: Option<String>,
    #[serde(default)]
    log_seq: Option<u64>,
    #[serde(default)]
    head: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
}

impl Anchors {
    /// Applies host record `host_seq` (its JSON) to the marks.
    pub fn visit(&mut self, host_seq: u64, json: &[u8]) {
        let Ok(v) = serde_json::from_slice::<View<'_>>(json) else { return };
        match v.kind {
            "log.anchor" => {
                let tenant =
                    v.log.as_deref().and_then(|l| l.strip_prefix("tenant:")).and_then(|t| TenantId::parse(t).ok());
                if let (Some(t), Some(seq), Some(head)) = (tenant, v.log_seq, v.head) {
                    self.0.insert(t, Anchor { seq, head, host_seq });
                }
            }
            "log.reset" => {
                let tenant =
                    v.log.as_deref().and_then(|l| l.strip_prefix("tenant:")).and_then(|t| TenantId::parse(t).ok());
                if let Some(t) = tenant {
                    self.0.remove(&t);
                }
            }
            "tenant.delete" => {
                if let Some(t) = v.tenant.as_deref().and_then(|t| TenantId::parse(t).ok()) {
                    self.0.remove(&t);
                }
            }
            _ => {}
        }
    }

    pub fn get(&self, tenant: &TenantId) -> Option<&Anchor> {
        self.0.get(tenant)
    }

    /// The tenants with a mark.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantId> {
        self.0.keys()
    }

    /// The marks a log must still reach: its checkpoint (stored, or given) and, for a tenant log,
    /// its anchor. Refuses a tenant checkpoint the host chain does not cover.
    pub fn marks(&self, scope: &Scope, checkpoint: Option<&Checkpoint>) -> Result<Vec<Mark>, String> {
        let mut marks: Vec<Mark> = checkpoint.map(Mark::of_checkpoint).into_iter().collect();
        if let Scope::Tenant(t) = scope {
            if let Some(problem) = self.unanchored(t, checkpoint) {
                return Err(problem);
            }
            marks.extend(self.get(t).map(Anchor::mark));
        }
        Ok(marks)
    }

    /// Why a tenant checkpoint shows that the host log lost records, if it does: every
    /// checkpoint of a tenant log is anchored in the host log before it is written.
    pub fn unanchored(&self, tenant: &TenantId, checkpoint: Option<&Checkpoint>) -> Option<String> {
        let cp = checkpoint.filter(|cp| cp.seq > 0)?;
        let anchored = self.get(tenant).map_or(0, |a| a.seq);
        (anchored < cp.seq).then(|| {
            format!(
                "the checkpoint of tenant:{tenant} at record {} ({}) is not anchored in the host log, whose last anchor of it is at record {anchored}: the host log lost records (truncated, or an older copy restored)",
                cp.seq, cp.ts
            )
        })
    }
}

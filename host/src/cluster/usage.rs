//! Daily budgets across gateways: each gateway publishes what its tenants used today (counters
//! only) and reads what the others used, every `SYNC_INTERVAL`. A budget therefore holds across
//! the fleet to within what the other gateways used in the last interval.

use std::collections::HashMap;
use std::time::Duration;

use super::{Db, DbError};
use crate::ids::TenantId;
use crate::quota::Today;
use crate::usage::{Day, UsageMeter};

/// How often usage is exchanged through the database.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(2);

/// Publishes this gateway's usage today and takes in the others'.
pub async fn sync(db: &Db, usage: &UsageMeter) -> Result<(), DbError> {
    let day = Day::today();
    let tenants = usage.tenants();
    let (mut names, mut tokens, mut sandbox) = (Vec::new(), Vec::new(), Vec::new());
    for t in &tenants {
        let here = usage.today_here(t);
        names.push(t.as_str().to_string());
        tokens.push(i64::try_from(here.model_tokens).unwrap_or(i64::MAX));
        sandbox.push(i64::try_from(here.sandbox_ms).unwrap_or(i64::MAX));
    }
    let client = db.client().await?;
    if !names.is_empty() {
        client
            .execute(
                "INSERT INTO bh_usage (gateway, tenant, day, model_tokens, sandbox_ms)
                 SELECT $1, t, $2, m, s FROM unnest($3::text[], $4::bigint[], $5::bigint[]) AS u(t, m, s)
                 ON CONFLICT (gateway, tenant, day) DO UPDATE
                   SET model_tokens = EXCLUDED.model_tokens, sandbox_ms = EXCLUDED.sandbox_ms",
                &[&db.gateway(), &day.number(), &names, &tokens, &sandbox],
            )
            .await?;
    }
    let rows = client
        .query(
            "SELECT tenant, sum(model_tokens)::bigint, sum(sandbox_ms)::bigint FROM bh_usage
             WHERE day = $1 AND gateway <> $2 GROUP BY tenant",
            &[&day.number(), &db.gateway()],
        )
        .await?;
    let mut others = HashMap::new();
    for r in rows {
        let Ok(t) = TenantId::parse(r.get::<_, &str>(0)) else { continue };
        let (m, s): (i64, i64) = (r.get(1), r.get(2));
        others.insert(t, Today { model_tokens: m.max(0) as u64, sandbox_ms: s.max(0) as u64 });
    }
    usage.set_fleet(day, others);
    Ok(())
}

/// Runs [`sync`] every `SYNC_INTERVAL` until aborted.
pub async fn run(db: Db, usage: std::sync::Arc<UsageMeter>) {
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = tokio::time::timeout(SYNC_INTERVAL * 5, sync(&db, &usage)).await.unwrap_or_else(|_| {
            Err(DbError::Sql("no answer in time".into()))
        }) {
            tracing::warn!(error = %e, "Cannot exchange usage with the other gateways; daily budgets count this gateway's own.");
        }
    }
}

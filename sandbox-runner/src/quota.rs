//! The disk-quota rule both sides apply: how much a workspace tree counts against a quota.
//!
//! The host measures a tenant's workspaces before a mutating call (the budget it sends), and the
//! Docker runner measures the call's workspace while a command runs (its watchdog); both count
//! the same way, here.

use std::path::Path;

use crate::protocol::ENTRY_COST_BYTES;

/// Entries visited at most when measuring; more counts as over any quota.
pub const MAX_USAGE_ENTRIES: usize = 1_000_000;

/// Bytes a workspace tree uses: file sizes plus `ENTRY_COST_BYTES` per entry, symlinks not
/// followed. Too many entries to count is reported as `u64::MAX` (over any quota).
pub fn disk_usage(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            seen += 1;
            if seen > MAX_USAGE_ENTRIES {
                return u64::MAX;
            }
            let Ok(m) = e.path().symlink_metadata() else { continue };
            total = total.saturating_add(ENTRY_COST_BYTES);
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total = total.saturating_add(m.len());
            }
        }
    }
    total
}

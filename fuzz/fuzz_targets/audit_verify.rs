//! The audit log verifier on a real log of 8 records (checkpointed at 5), damaged: torn, cut,
//! zero-extended, bytes flipped or replaced, lines inserted or removed.
//!
//! A log verifies only if every complete line is byte for byte the one written (so no record
//! changes unseen, and none is lost past the checkpoint); a torn final line is reported, not an
//! error; verification never panics.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bulkhead::audit::{Actor, AuditKeys, Checkpoint, Event, LogWriter, Scope, read_records, verify_log};
use bulkhead::ids::TenantId;
use bulkhead::store::MasterKey;
use bulkhead_fuzz::{Damage, damage};
use libfuzzer_sys::fuzz_target;

const CHECKPOINT_AT: u64 = 5;

struct Site {
    _dir: tempfile::TempDir,
    keys: AuditKeys,
    scope: Scope,
    log: Vec<u8>,
    checkpoint: Checkpoint,
}

fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = dir.path().join("audit");
        let master = MasterKey::generate("fuzz".into());
        let scope = Scope::Tenant(TenantId::parse("acme").expect("tenant"));
        let mut w = LogWriter::open(&audit, &master).expect("audit opens");
        let mut checkpoint = None;
        for i in 0..8 {
            w.append(&scope, &Actor::Cli, &Event::KeyRotate { sessions: i }).expect("append");
            if i + 1 == CHECKPOINT_AT as usize {
                checkpoint = Some(w.checkpoint(&scope).expect("checkpoint"));
            }
        }
        drop(w);
        let log = std::fs::read(scope.log_path(&audit)).expect("log");
        let keys = AuditKeys::load(&audit, &master, false).expect("keys");
        Site { _dir: dir, keys, scope, log, checkpoint: checkpoint.expect("checkpointed") }
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    checkpoint: bool,
    damage: Vec<Damage>,
}

fuzz_target!(|input: Input| {
    let site = site();
    let bytes = damage(&site.log, &input.damage);
    let cp = input.checkpoint.then_some(&site.checkpoint);
    let Ok(v) = verify_log(&bytes, &site.keys, &site.scope, cp) else { return };
    let good = &bytes[..v.good_len];
    assert!(
        site.log.starts_with(good) && (good.is_empty() || site.log[..v.good_len].ends_with(b"\n")),
        "a log that is not the one written verified ({} records)",
        v.records
    );
    assert_eq!(v.records as usize, good.iter().filter(|b| **b == b'\n').count());
    assert_eq!(v.torn_bytes, bytes.len() - v.good_len);
    if cp.is_some() {
        assert!(v.records >= CHECKPOINT_AT, "a log cut below its checkpoint verified");
    }
    let records = read_records(&bytes, &site.keys, &site.scope, cp).expect("a verified log reads");
    assert_eq!(records.len() as u64, v.records);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1);
    }
});

//! The audit chain on real logs: the tamper matrix, high-water marks, torn tails, key binding,
//! per-log keys, group commit.

use std::path::Path;

use super::*;
use crate::store::MasterKey;

fn tenant() -> Scope {
    Scope::Tenant(TenantId::parse("acme").unwrap())
}

fn decision(i: usize) -> Event {
    Event::ToolDecision {
        agent: "acme-support".into(),
        channel: "api".into(),
        session: format!("digest-{i}"),
        tool: "exec".into(),
        allowed: i.is_multiple_of(2),
        rule: "agent acme-support tools.allow".into(),
    }
}

/// A log of `n` records in a fresh audit dir, checkpointed at its end.
fn site(n: usize) -> (tempfile::TempDir, MasterKey, Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate("test".into());
    let mut w = LogWriter::open(&dir.path().join("audit"), &master).unwrap();
    for i in 0..n {
        w.append(&tenant(), &Actor::Agent("acme-support".into()), &decision(i)).unwrap();
    }
    let cp = w.checkpoint(&tenant()).unwrap();
    (dir, master, cp)
}

fn keys(dir: &Path, master: &MasterKey) -> AuditKeys {
    AuditKeys::load(&dir.join("audit"), master, false).unwrap()
}

fn log_path(dir: &Path) -> std::path::PathBuf {
    tenant().log_path(&dir.join("audit"))
}

fn lines(dir: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(log_path(dir)).unwrap();
    bytes.split_inclusive(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
}

fn verify_with(dir: &Path, master: &MasterKey, lines: &[Vec<u8>], cp: Option<&Checkpoint>) -> Result<Verified, Broken> {
    verify_log(&lines.concat(), &keys(dir, master), &tenant(), cp)
}

#[test]
fn a_clean_log_verifies_reopens_and_holds_no_plaintext() {
    let (dir, master, cp) = site(10);
    let all = lines(dir.path());
    assert_eq!(all.len(), 10);
    let v = verify_with(dir.path(), &master, &all, Some(&cp)).unwrap();
    assert_eq!((v.records, v.torn_bytes), (10, 0));
    // Reopened by another writer, the chain continues.
    let mut w = LogWriter::open(&dir.path().join("audit"), &master).unwrap();
    let r = w.append(&tenant(), &Actor::Cli, &Event::KeyRotate { sessions: 3 }).unwrap();
    assert_eq!(r.seq, 11);
    drop(w);
    let bytes = std::fs::read(log_path(dir.path())).unwrap();
    let recs = read_records(&bytes, &keys(dir.path(), &master), &tenant(), None).unwrap();
    assert_eq!(recs.len(), 11);
    assert_eq!(recs[0]["seq"], 1);
    assert_eq!(recs[0]["kind"], "tool.decision");
    assert_eq!(recs[0]["actor"], "agent:acme-support");
    assert_eq!(recs[0]["scope"], "tenant:acme");
    assert_eq!(recs[10]["kind"], "key.rotate");
    assert_eq!(recs[10]["actor"], "cli");
    // Sealed at rest: no agent id, tool, rule or digest in the file.
    for needle in ["acme-support", "exec", "tools.allow", "digest-", "tool.decision"] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle:?} in plaintext");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(log_path(dir.path())).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn tamper_a_flipped_byte_is_located() {
    let (dir, master, cp) = site(10);
    let all = lines(dir.path());
    // In the sealed record, in the MAC, and in the sequence number of record 4.
    for pos in [all[3].len() - 10, 5, 0] {
        let mut t = all.clone();
        t[3][pos] ^= if pos == 0 { 0x01 } else { 0x02 };
        let e = verify_with(dir.path(), &master, &t, Some(&cp)).unwrap_err();
        assert_eq!(e.seq, 4, "flip at byte {pos}: {e}");
    }
}

#[test]
fn tamper_a_deleted_record_is_located() {
    let (dir, master, cp) = site(10);
    let mut t = lines(dir.path());
    t.remove(4);
    let e = verify_with(dir.path(), &master, &t, Some(&cp)).unwrap_err();
    assert_eq!(e.seq, 5, "{e}");
    assert!(e.reason.contains("missing"), "{e}");
    // The first record deleted, too.
    let mut t = lines(dir.path());
    t.remove(0);
    assert_eq!(verify_with(dir.path(), &master, &t, None).unwrap_err().seq, 1);
}

#[test]
fn tamper_reordered_records_are_located() {
    let (dir, master, cp) = site(10);
    let mut t = lines(dir.path());
    t.swap(2, 3);
    let e = verify_with(dir.path(), &master, &t, Some(&cp)).unwrap_err();
    assert_eq!(e.seq, 3, "{e}");
}

#[test]
fn tamper_inserted_records_are_located() {
    let (dir, master, cp) = site(10);
    let all = lines(dir.path());
    // A replayed copy of an earlier record.
    let mut t = all.clone();
    t.insert(6, all[1].clone());
    let e = verify_with(dir.path(), &master, &t, Some(&cp)).unwrap_err();
    assert_eq!(e.seq, 7, "{e}");
    // A forged record numbered to fit, with the later ones renumbered: the MAC gives it away.
    let mut t: Vec<Vec<u8>> = all[..6].to_vec();
    let forged = String::from_utf8(all[6].clone()).unwrap();
    let parts: Vec<&str> = forged.trim_end().split(' ').collect();
    t.push(format!("7 {} {}\n", "ab".repeat(32), parts[2]).into_bytes());
    for (i, l) in all[6..].iter().enumerate() {
        let s = String::from_utf8(l.clone()).unwrap();
        let rest = s.split_once(' ').unwrap().1;
        t.push(format!("{} {rest}", 8 + i).into_bytes());
    }
    let e = verify_with(dir.path(), &master, &t, Some(&cp)).unwrap_err();
    assert_eq!(e.seq, 7, "{e}");
    // An empty line is not a record either.
    let mut t = all.clone();
    t.insert(2, b"\n".to_vec());
    assert_eq!(verify_with(dir.path(), &master, &t, None).unwrap_err().seq, 3);
}

#[test]
fn tamper_a_truncated_tail_is_detected_against_a_checkpoint() {
    let (dir, master, cp) = site(10);
    let t: Vec<Vec<u8>> = lines(dir.path())[..7].to_vec();
    // On its own, a shorter chain is a valid chain: this is what checkpoints are for.
    assert_eq!(verify_with(dir.path(), &master, &t, None).unwrap().records, 7);
    let e = verify_with(dir.path(), &master, &t, Some(&cp)).unwrap_err();
    assert_eq!(e.seq, 8, "{e}");
    assert!(e.reason.contains("truncated"), "{e}");
    // Emptied entirely.
    assert_eq!(verify_with(dir.path(), &master, &[], Some(&cp)).unwrap_err().seq, 1);
}

#[test]
fn tamper_a_log_replaced_wholesale_under_another_key_is_detected() {
    let (dir, master, cp) = site(10);
    // A fresh, internally valid chain of the same length under keys made with another master key.
    let (other, other_master, other_cp) = site(10);
    let forged = lines(other.path());
    assert!(verify_with(other.path(), &other_master, &forged, Some(&other_cp)).is_ok());
    let e = verify_with(dir.path(), &master, &forged, Some(&cp)).unwrap_err();
    assert_eq!(e.seq, 1, "{e}");
    // The forger's checkpoint is not signed by this host's key.
    let k = keys(dir.path(), &master);
    assert!(other_cp.check(&k.public_key(), &tenant()).unwrap_err().contains("not by this host's audit key"));
    assert!(cp.check(&k.public_key(), &tenant()).is_ok());
    // A checkpoint edited after signing (to match a truncated log) fails its signature.
    let mut edited = cp.clone();
    edited.seq = 7;
    assert!(edited.check(&k.public_key(), &tenant()).unwrap_err().contains("signature"));
    // Another log's checkpoint is refused for this one.
    assert!(cp.check(&k.public_key(), &Scope::Host).is_err());
    // And another tenant's log copied over this one fails at record 1 (keys are per log).
    let mut w = LogWriter::open(&dir.path().join("audit"), &master).unwrap();
    let beta = Scope::Tenant(TenantId::parse("beta").unwrap());
    w.append(&beta, &Actor::System, &decision(0)).unwrap();
    drop(w);
    let beta_lines = std::fs::read(beta.log_path(&dir.path().join("audit"))).unwrap();
    assert_eq!(verify_log(&beta_lines, &k, &tenant(), None).unwrap_err().seq, 1);
}

#[test]
fn the_audit_keys_are_bound_to_the_master_key() {
    let (dir, _master, _) = site(1);
    let other = MasterKey::generate("other".into());
    let e = AuditKeys::load(&dir.path().join("audit"), &other, false).err().unwrap();
    assert!(e.contains("does not open the audit keys"), "{e}");
    assert!(LogWriter::open(&dir.path().join("audit"), &other).is_err());
}

#[test]
fn a_torn_tail_is_cut_recorded_and_appends_continue() {
    let (dir, master, _) = site(5);
    let path = log_path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let partial = lines(dir.path())[4][..40].to_vec();
    bytes.extend_from_slice(b"6 ");
    bytes.extend_from_slice(&partial);
    std::fs::write(&path, &bytes).unwrap();
    let v = verify_log(&bytes, &keys(dir.path(), &master), &tenant(), None).unwrap();
    assert_eq!(v.records, 5);
    assert_eq!(v.torn_bytes, partial.len() + 2);
    let mut w = LogWriter::open(&dir.path().join("audit"), &master).unwrap();
    let r = w.append(&tenant(), &Actor::System, &Event::GatewayStop {}).unwrap();
    assert_eq!(r.seq, 7, "the torn-tail record is 6");
    drop(w);
    let recs = read_records(&std::fs::read(&path).unwrap(), &keys(dir.path(), &master), &tenant(), None).unwrap();
    assert_eq!(recs[5]["kind"], "log.tornTail");
    assert_eq!(recs[5]["afterSeq"], 5);
    assert_eq!(recs[6]["kind"], "gateway.stop");
}

#[test]
fn a_log_that_fails_verification_is_not_appended_to_and_a_second_writer_is_refused() {
    let (dir, master, _) = site(5);
    let mut w = LogWriter::open(&dir.path().join("audit"), &master).unwrap();
    assert!(matches!(LogWriter::open(&dir.path().join("audit"), &master), Err(AuditOpenError::Locked { .. })));
    drop(w);
    let mut t = lines(dir.path());
    t.swap(1, 2);
    std::fs::write(log_path(dir.path()), t.concat()).unwrap();
    w = LogWriter::open(&dir.path().join("audit"), &master).unwrap();
    let e = w.append(&tenant(), &Actor::System, &Event::GatewayStop {}).unwrap_err();
    assert!(e.reason.contains("fails verification at record 2"), "{e}");
    // Other logs are unaffected (the host log holds the tenant's anchor from `site`).
    assert_eq!(w.append(&Scope::Host, &Actor::System, &Event::GatewayStop {}).unwrap().seq, 2);
}

#[test]
fn tenant_removal_leaves_its_final_state_in_the_host_log() {
    let (dir, master, _) = site(4);
    let mut w = LogWriter::open(&dir.path().join("audit"), &master).unwrap();
    let (_, head) = w.head(&tenant()).unwrap();
    w.remove_tenant(&TenantId::parse("acme").unwrap(), &Actor::Cli).unwrap();
    drop(w);
    assert!(!log_path(dir.path()).exists());
    assert!(!tenant().key_path(&dir.path().join("audit")).exists(), "the log's key is destroyed");
    let host = std::fs::read(Scope::Host.log_path(&dir.path().join("audit"))).unwrap();
    let recs = read_records(&host, &keys(dir.path(), &master), &Scope::Host, None).unwrap();
    assert_eq!(recs[0]["kind"], "log.anchor");
    assert_eq!(recs[1]["kind"], "tenant.delete");
    assert_eq!(recs[1]["finalSeq"], 4);
    assert_eq!(recs[1]["finalHead"], crate::crypto::hex(&head));
    // The deletion clears the tenant's mark: nothing is reported missing.
    let reader = AuditReader::open(&dir.path().join("audit"), &master).unwrap();
    assert_eq!(reader.scopes(), vec![Scope::Host]);
    assert!(reader.verify(&Scope::Host, None).result.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_group_committed_and_each_acknowledged_once_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate("test".into());
    let audit = Audit::start(LogWriter::open(&dir.path().join("audit"), &master).unwrap()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let a = audit.clone();
        tasks.push(tokio::spawn(async move { a.append(tenant(), Actor::System, decision(i)).await.unwrap().seq }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let seq = t.await.unwrap();
        // Acknowledged means on disk: the record is in the file now.
        let bytes = std::fs::read(log_path(dir.path())).unwrap();
        assert!(verify_log(&bytes, &keys(dir.path(), &master), &tenant(), None).unwrap().records >= seq);
        seqs.push(seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    let cp = audit.checkpoint(tenant()).await.unwrap();
    assert_eq!(cp.seq, 200);
    audit.close().await;
    let bytes = std::fs::read(log_path(dir.path())).unwrap();
    assert_eq!(verify_log(&bytes, &keys(dir.path(), &master), &tenant(), Some(&cp)).unwrap().records, 200);
}

#[test]
fn timestamps_and_since() {
    assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(format_utc(951_782_400_007), "2000-02-29T00:00:00.007Z");
    assert_eq!(format_utc(1_795_625_999_999), "2026-11-25T16:59:59.999Z");
    assert!(parse_since("2026-11-25").is_ok());
    assert!(parse_since("2026-11-25T16:40").is_ok());
    assert!(parse_since("yesterday").unwrap_err().contains("--since"));
    assert!(parse_since("2026-11-25T16:40:00.000Z0").is_err());
}

#[test]
fn a_master_key_rotation_rewraps_the_audit_keys_and_recovers_when_interrupted() {
    let (dir, old, _) = site(3);
    let audit = dir.path().join("audit");
    let new = MasterKey::generate("new".into());
    let before = keys(dir.path(), &old).public_key();
    // Interrupted before the store committed: the old key still opens, the prepared file goes.
    keys(dir.path(), &old).prepare_rewrap(&audit, &new).unwrap();
    assert_eq!(AuditKeys::load(&audit, &old, false).unwrap().public_key(), before);
    assert!(!audit.join("keys.next.age").exists());
    // Interrupted after it: the new key finishes the rotation; the chain still verifies.
    keys(dir.path(), &old).prepare_rewrap(&audit, &new).unwrap();
    let k = AuditKeys::load(&audit, &new, false).unwrap();
    assert_eq!(k.public_key(), before);
    assert!(AuditKeys::load(&audit, &old, false).is_err(), "the old key no longer opens the audit keys");
    let bytes = std::fs::read(log_path(dir.path())).unwrap();
    assert_eq!(verify_log(&bytes, &k, &tenant(), None).unwrap().records, 3);
}

fn audit_of(dir: &Path) -> std::path::PathBuf {
    dir.join("audit")
}

/// `audit verify`'s answer for the tenant log.
fn verify_tenant(dir: &Path, master: &MasterKey) -> Result<String, String> {
    AuditReader::open(&audit_of(dir), master).unwrap().verify(&tenant(), None).result
}

/// Asserts that the writer refuses the tenant log, names it and its mark, and leaves it untouched.
fn assert_refused(dir: &Path, master: &MasterKey, why: &str) {
    let files = |d: &Path| {
        ["log", "checkpoint", "key"].map(|ext| std::fs::read(tenant().log_path(&audit_of(d)).with_extension(ext)).ok())
    };
    let before = files(dir);
    let mut w = LogWriter::open(&audit_of(dir), master).unwrap();
    let e = w.append(&tenant(), &Actor::System, &Event::GatewayStop {}).unwrap_err();
    assert_eq!(e.scope, "tenant:acme", "{why}: {e}");
    assert!(e.reason.contains("anchor in the host log"), "{why}: {e}");
    drop(w);
    assert_eq!(files(dir), before, "{why}: the refused log is kept as evidence, untouched");
}

#[test]
fn a_tenant_log_cut_at_a_record_boundary_with_its_checkpoint_deleted_falls_behind_its_anchor() {
    let (dir, master, _) = site(10);
    let good = lines(dir.path());
    std::fs::write(log_path(dir.path()), good[..7].concat()).unwrap();
    std::fs::remove_file(tenant().checkpoint_path(&audit_of(dir.path()))).unwrap();
    let e = verify_tenant(dir.path(), &master).unwrap_err();
    assert!(e.contains("FAILED at record 8") && e.contains("anchor in the host log") && e.contains("up to 10"), "{e}");
    assert_refused(dir.path(), &master, "cut + checkpoint deleted");
    // Restored, it verifies and reaches its anchor again.
    std::fs::write(log_path(dir.path()), good.concat()).unwrap();
    let ok = verify_tenant(dir.path(), &master).unwrap();
    assert!(ok.contains("10 records") && ok.contains("reaches its anchor"), "{ok}");
}

#[test]
fn a_tenant_log_rolled_back_to_an_older_copy_with_its_checkpoint_falls_behind_its_anchor() {
    let (dir, master, _) = site(5);
    let cp_path = tenant().checkpoint_path(&audit_of(dir.path()));
    let (old_log, old_cp) = (std::fs::read(log_path(dir.path())).unwrap(), std::fs::read(&cp_path).unwrap());
    let mut w = LogWriter::open(&audit_of(dir.path()), &master).unwrap();
    for i in 0..5 {
        w.append(&tenant(), &Actor::System, &decision(i)).unwrap();
    }
    w.checkpoint(&tenant()).unwrap();
    drop(w);
    // The older copy is a consistent pair: it verifies against its own checkpoint...
    std::fs::write(log_path(dir.path()), &old_log).unwrap();
    std::fs::write(&cp_path, &old_cp).unwrap();
    let cp: Checkpoint = Checkpoint::parse(&String::from_utf8(old_cp).unwrap()).unwrap();
    assert!(verify_log(&old_log, &keys(dir.path(), &master), &tenant(), Some(&cp)).is_ok());
    // ...but not against the host chain's mark.
    let e = verify_tenant(dir.path(), &master).unwrap_err();
    assert!(e.contains("FAILED at record 6") && e.contains("older copy restored"), "{e}");
    assert_refused(dir.path(), &master, "rolled back");
}

#[test]
fn a_tenant_log_deleted_with_its_checkpoint_and_key_is_still_listed_and_refused() {
    let (dir, master, _) = site(3);
    let audit = audit_of(dir.path());
    std::fs::remove_file(log_path(dir.path())).unwrap();
    std::fs::remove_file(tenant().checkpoint_path(&audit)).unwrap();
    let reader = AuditReader::open(&audit, &master).unwrap();
    assert!(reader.scopes().contains(&tenant()), "the host chain still knows the log");
    let e = verify_tenant(dir.path(), &master).unwrap_err();
    assert!(e.contains("FAILED at record 1: the log file does not exist") && e.contains("up to 3"), "{e}");
    assert_refused(dir.path(), &master, "log and checkpoint deleted");
    // The key too: no fresh key, no fresh log.
    std::fs::remove_file(tenant().key_path(&audit)).unwrap();
    assert!(verify_tenant(dir.path(), &master).unwrap_err().contains("FAILED at record 1"));
    assert_refused(dir.path(), &master, "log, checkpoint and key deleted");
    assert!(!log_path(dir.path()).exists());
}

#[test]
fn a_host_log_cut_with_its_checkpoint_rolled_back_is_caught_by_tenant_checkpoints_or_an_off_host_one() {
    let (dir, master, _) = site(3);
    let audit = audit_of(dir.path());
    let mut w = LogWriter::open(&audit, &master).unwrap();
    let host_cp_early = w.checkpoint(&Scope::Host).unwrap();
    let (host_log, host_cp) = (Scope::Host.log_path(&audit), Scope::Host.checkpoint_path(&audit));
    let (early_log, early_cp) = (std::fs::read(&host_log).unwrap(), std::fs::read(&host_cp).unwrap());
    for i in 0..3 {
        w.append(&tenant(), &Actor::System, &decision(i)).unwrap();
    }
    w.checkpoint(&tenant()).unwrap();
    let off_host = w.checkpoint(&Scope::Host).unwrap();
    drop(w);
    assert_eq!((host_cp_early.seq, off_host.seq), (1, 2));
    // The host log's tail (the anchor at tenant record 6) cut, its checkpoint rolled back.
    std::fs::write(&host_log, &early_log).unwrap();
    std::fs::write(&host_cp, &early_cp).unwrap();
    let reader = AuditReader::open(&audit, &master).unwrap();
    let e = reader.verify(&Scope::Host, None).result.unwrap_err();
    assert!(e.contains("the host log lost records") && e.contains("record 6"), "{e}");
    assert!(reader.verify(&tenant(), None).result.unwrap_err().contains("the host log lost records"));
    let mut w = LogWriter::open(&audit, &master).unwrap();
    let e = w.append(&tenant(), &Actor::System, &Event::GatewayStop {}).unwrap_err();
    assert!(e.reason.contains("the host log lost records"), "{e}");
    drop(w);
    // With the tenant's checkpoint gone too, nothing on the host shows it: only a checkpoint
    // of the host log kept elsewhere does.
    std::fs::remove_file(tenant().checkpoint_path(&audit)).unwrap();
    let reader = AuditReader::open(&audit, &master).unwrap();
    assert!(reader.verify(&Scope::Host, None).result.is_ok());
    let e = reader.verify(&Scope::Host, Some(&off_host)).result.unwrap_err();
    assert!(e.contains("FAILED at record 2") && e.contains("truncated"), "{e}");
}

#[test]
fn a_recreated_tenant_gets_a_new_key_that_opens_nothing_of_the_old_log() {
    let (dir, master, _) = site(4);
    let audit = audit_of(dir.path());
    let (old_log, old_key) =
        (std::fs::read(log_path(dir.path())).unwrap(), std::fs::read(tenant().key_path(&audit)).unwrap());
    let mut w = LogWriter::open(&audit, &master).unwrap();
    let old_digest = w.keys().digest(&tenant(), "session", b"s1");
    w.remove_tenant(&TenantId::parse("acme").unwrap(), &Actor::Cli).unwrap();
    // Re-created with the same id: a new log under a new random key.
    assert_eq!(w.append(&tenant(), &Actor::System, &decision(0)).unwrap().seq, 1);
    assert_ne!(w.keys().digest(&tenant(), "session", b"s1"), old_digest, "digests do not link the two tenants");
    drop(w);
    assert_ne!(std::fs::read(tenant().key_path(&audit)).unwrap(), old_key);
    let k = keys(dir.path(), &master);
    let e = verify_log(&old_log, &k, &tenant(), None).unwrap_err();
    assert_eq!(e.seq, 1, "{e}");
    assert!(e.reason.contains("fails authentication"), "{e}");
    assert!(read_records(&old_log, &k, &tenant(), None).is_err(), "the new key reads nothing of the old log");
    // The old log put back in place is refused, not read.
    std::fs::write(log_path(dir.path()), &old_log).unwrap();
    assert!(verify_tenant(dir.path(), &master).unwrap_err().contains("FAILED at record 1"));
}

#[test]
fn audit_keys_of_the_old_derived_format_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate("test".into());
    let audit = audit_of(dir.path());
    std::fs::create_dir_all(&audit).unwrap();
    let v1 = serde_json::json!({ "v": 1, "root": "00".repeat(32), "signing": "00", "mac": "00" });
    std::fs::write(audit.join("keys.age"), master.wrap(v1.to_string().as_bytes()).unwrap()).unwrap();
    let Err(e) = LogWriter::open(&audit, &master) else { panic!("old keys accepted") };
    let e = e.to_string();
    assert!(e.contains("old format") && e.contains("move") && e.contains(&audit.display().to_string()), "{e}");
}

#[test]
fn a_refused_log_reset_by_the_operator_is_kept_as_evidence_recorded_and_a_new_log_begins() {
    let (dir, master, _) = site(6);
    let audit = audit_of(dir.path());
    let good = lines(dir.path());
    std::fs::write(log_path(dir.path()), good[..2].concat()).unwrap();
    std::fs::remove_file(tenant().checkpoint_path(&audit)).unwrap();
    assert_refused(dir.path(), &master, "cut");
    let mut w = LogWriter::open(&audit, &master).unwrap();
    let (receipt, evidence) = w.reset_tenant(&TenantId::parse("acme").unwrap(), &Actor::Cli).unwrap();
    assert_eq!(std::fs::read(evidence.join("acme.log")).unwrap(), good[..2].concat(), "the evidence is kept as it was");
    assert!(evidence.join("acme.key").exists());
    assert_eq!(w.append(&tenant(), &Actor::System, &decision(0)).unwrap().seq, 1, "a new log begins");
    w.checkpoint(&tenant()).unwrap();
    drop(w);
    assert!(verify_tenant(dir.path(), &master).unwrap().contains("1 records"));
    let host = std::fs::read(Scope::Host.log_path(&audit)).unwrap();
    let recs = read_records(&host, &keys(dir.path(), &master), &Scope::Host, None).unwrap();
    let reset = &recs[receipt.seq as usize - 1];
    assert_eq!((reset["kind"].as_str(), reset["anchoredSeq"].as_u64()), (Some("log.reset"), Some(6)), "{reset}");
    assert_eq!(reset["actor"], "cli");
}

#[test]
fn a_line_in_another_spelling_of_the_same_bytes_is_refused() {
    // Found while writing the `audit_verify` fuzz target's rule: only the bytes written verify.
    // Upper-case hex, a `+` sign or a zero-padded number decode to the same record, so the MAC
    // alone cannot tell; such a line is not one this log wrote.
    let (dir, master, cp) = site(3);
    let all = lines(dir.path());
    let line = String::from_utf8(all[1].clone()).unwrap();
    let (seq, rest) = line.split_once(' ').unwrap();
    let hex_at = rest.find(|c: char| c.is_ascii_lowercase()).unwrap();
    let mut upper = rest.to_string();
    upper.replace_range(hex_at..hex_at + 1, &rest[hex_at..hex_at + 1].to_ascii_uppercase());
    let respellings = [format!("{seq} {upper}"), format!("0{seq} {rest}"), format!("+{seq} {rest}")];
    for bad in respellings {
        let mut log = all.clone();
        log[1] = bad.clone().into_bytes();
        let err = verify_with(dir.path(), &master, &log, Some(&cp)).unwrap_err();
        assert_eq!(err.seq, 2, "{bad:?} verified");
    }
    assert!(verify_with(dir.path(), &master, &all, Some(&cp)).is_ok());
}

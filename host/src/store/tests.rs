//! Unit tests of the encrypted store: persistence, no plaintext at rest, permissions, keys,
//! tampering, torn tails, retention, export, crypto-shredding and rotation.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::*;
use crate::ids::{AgentId, PeerKind};
use crate::session::ToolCall;

const SENTENCE: &str = "The quick brown fox deposits 4711 gold coins in Zurich";

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn skey(peer: &str) -> SessionKey {
    SessionKey::new(AgentId::parse("agent-x").unwrap(), "api", PeerKind::Direct, peer).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    master_text: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state").join("store");
        let master_text = MasterKey::generate("test".into()).to_text();
        Self { _dir: dir, root, master_text }
    }
    fn master(&self) -> MasterKey {
        MasterKey::from_secret(&crate::config::SecretString::new(self.master_text.clone()), "test key".into()).unwrap()
    }
    fn open_with(&self, per: u64) -> Result<EncryptedStore, StoreOpenError> {
        EncryptedStore::open_at(
            &self.root,
            self.master(),
            &[tid("alpha"), tid("bravo")],
            StoreOptions { records_per_segment: per, ..StoreOptions::default() },
        )
    }
    fn open(&self, per: u64) -> EncryptedStore {
        self.open_with(per).unwrap()
    }
    fn session_dir(&self, store: &EncryptedStore, tenant: &str, peer: &str) -> PathBuf {
        let t = tid(tenant);
        store.session_dir(&t, &self.sid(store, tenant, peer))
    }
    fn sid(&self, store: &EncryptedStore, tenant: &str, peer: &str) -> String {
        store.keys(&tid(tenant)).unwrap().session_id(&skey(peer).to_string())
    }
    /// The pack that holds a session (format 3).
    fn pack_path(&self, store: &EncryptedStore, tenant: &str, peer: &str) -> PathBuf {
        store.pack_path(&tid(tenant), &self.sid(store, tenant, peer))
    }
}

fn user(text: &str) -> Message {
    Message::User { text: text.to_string() }
}

fn texts(msgs: &[Message]) -> Vec<String> {
    msgs.iter().map(|m| m.text().to_string()).collect()
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

fn tree_bytes(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    all_files(dir).into_iter().filter(|p| p.is_file()).map(|p| (p.clone(), fs::read(&p).unwrap())).collect()
}

#[tokio::test]
async fn transcripts_persist_across_reopen_with_every_message_kind() {
    let fx = Fixture::new();
    let msgs = vec![
        user("hello"),
        Message::Assistant {
            text: "calling".into(),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "read".into(),
                arguments: serde_json::json!({"path": "a"}),
            }],
        },
        Message::ToolResult { call_id: "c1".into(), name: "read".into(), content: "file body".into(), is_error: false },
        Message::Assistant { text: "done".into(), tool_calls: vec![] },
    ];
    {
        let s = fx.open(1024);
        s.append(&tid("alpha"), &skey("u1"), &msgs[..1]).await.unwrap();
        s.append(&tid("alpha"), &skey("u1"), &msgs[1..]).await.unwrap();
        assert!(s.exists(&tid("alpha"), &skey("u1")).await.unwrap());
        assert!(!s.exists(&tid("bravo"), &skey("u1")).await.unwrap(), "other tenant sees nothing");
    }
    let s = fx.open(1024);
    assert_eq!(s.history(&tid("alpha"), &skey("u1"), None).await.unwrap(), msgs);
    assert_eq!(s.history(&tid("alpha"), &skey("u1"), Some(2)).await.unwrap(), msgs[2..].to_vec());
    assert!(s.history(&tid("bravo"), &skey("u1"), None).await.unwrap().is_empty());
    let list = s.list(&tid("alpha")).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].key, skey("u1"));
    assert_eq!(list[0].messages, 4);
    assert!(s.list(&tid("bravo")).await.unwrap().is_empty());
}

#[tokio::test]
async fn segments_roll_and_limits_read_only_the_tail() {
    let fx = Fixture::new();
    let s = fx.open(3);
    for i in 0..10 {
        s.append(&tid("alpha"), &skey("u1"), &[user(&format!("m{i}"))]).await.unwrap();
    }
    s.append(&tid("alpha"), &skey("u1"), &[user("m10"), user("m11"), user("m12")]).await.unwrap();
    let dir = fx.session_dir(&s, "alpha", "u1");
    // Segment 0 is in the session's pack, the others in its directory.
    assert!(fx.pack_path(&s, "alpha", "u1").is_file());
    assert!(!dir.with_extension("ses").exists());
    assert_eq!(list_segments(&dir).unwrap(), vec![1, 2, 3, 4]);
    drop(s);
    let s = fx.open(3);
    let all = s.history(&tid("alpha"), &skey("u1"), None).await.unwrap();
    assert_eq!(texts(&all), (0..13).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let tail = s.history(&tid("alpha"), &skey("u1"), Some(4)).await.unwrap();
    assert_eq!(texts(&tail), ["m9", "m10", "m11", "m12"]);
}

#[tokio::test]
async fn no_plaintext_names_or_loose_permissions_at_rest() {
    let fx = Fixture::new();
    let s = fx.open(4);
    let peer = "peer-7781@example.org";
    for _ in 0..6 {
        s.append(&tid("alpha"), &skey(peer), &[user(SENTENCE)]).await.unwrap();
    }
    for p in all_files(&fx.root) {
        let name = p.to_string_lossy().to_string();
        assert!(!name.contains("peer-7781") && !name.contains("agent-x"), "name leaks a session key: {name}");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        if p.is_dir() {
            assert_eq!(mode, 0o700, "{name}");
        } else {
            assert_eq!(mode, 0o600, "{name}");
            let bytes = fs::read(&p).unwrap();
            for needle in [SENTENCE.as_bytes(), b"quick brown", b"peer-7781", b"agent-x", b"AGE-SECRET-KEY"] {
                assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{name} holds plaintext");
            }
        }
    }
    assert_eq!(fs::metadata(fx.root.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
}

#[tokio::test]
async fn wrong_master_key_is_refused_and_changes_nothing() {
    let fx = Fixture::new();
    let s = fx.open(4);
    s.append(&tid("alpha"), &skey("u1"), &[user("kept")]).await.unwrap();
    drop(s);
    let before = tree_bytes(&fx.root);
    let other = MasterKey::generate("other key".into());
    let err = EncryptedStore::open_at(&fx.root, other, &[tid("alpha"), tid("carol")], StoreOptions::default())
        .err()
        .expect("wrong key refused");
    assert!(matches!(err, StoreOpenError::WrongMasterKey { .. }), "{err}");
    assert!(err.to_string().contains("wrong master key"), "{err}");
    assert!(err.to_string().contains("other key"), "names the key's origin: {err}");
    assert_eq!(tree_bytes(&fx.root), before, "nothing on disk changed");
    let s = fx.open(4);
    assert_eq!(texts(&s.history(&tid("alpha"), &skey("u1"), None).await.unwrap()), ["kept"]);
}

#[test]
fn master_key_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let key = MasterKey::generate("k".into()).to_text();
    let outside = dir.path().join("master.key");
    fs::write(&outside, &key).unwrap();
    let r = crate::config::SecretRef::File(PathBuf::from("master.key"));

    fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
    let e = MasterKey::load(&r, dir.path(), &state).err().unwrap();
    assert!(matches!(e, MasterKeyError::Permissions { mode: 0o644, .. }), "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");

    fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(MasterKey::load(&r, dir.path(), &state).is_ok());

    let inside = state.join("master.key");
    fs::write(&inside, &key).unwrap();
    fs::set_permissions(&inside, fs::Permissions::from_mode(0o600)).unwrap();
    let e = MasterKey::load(&crate::config::SecretRef::File(inside), dir.path(), &state).err().unwrap();
    assert!(matches!(e, MasterKeyError::InsideStateDir { .. }), "{e}");

    let missing = crate::config::SecretRef::File(PathBuf::from("nope.key"));
    assert!(matches!(MasterKey::load(&missing, dir.path(), &state), Err(MasterKeyError::Unreadable { .. })));
    fs::write(&outside, "not a key").unwrap();
    let e = MasterKey::load(&r, dir.path(), &state).err().unwrap();
    assert!(matches!(e, MasterKeyError::Invalid { .. }), "{e}");
    assert!(!e.to_string().contains("not a key"), "never echoes the secret: {e}");
}

#[test]
fn loose_store_permissions_and_a_second_process_are_refused() {
    let fx = Fixture::new();
    let s = fx.open(4);
    let e = fx.open_with(4).err().unwrap();
    assert!(matches!(e, StoreOpenError::Locked { .. }), "{e}");
    drop(s);
    fs::set_permissions(&fx.root, fs::Permissions::from_mode(0o755)).unwrap();
    let e = fx.open_with(4).err().unwrap();
    assert!(matches!(e, StoreOpenError::Permissions { mode: 0o755, .. }), "{e}");
    fs::set_permissions(&fx.root, fs::Permissions::from_mode(0o700)).unwrap();
    fx.open(4);
}

/// Two sessions of alpha (u1, u2) and one of bravo (u1), each 9 records in segments of 3:
/// segment 0 in the tenant's packs (format 3), segments 1 and 2 in the session's directory.
async fn tamper_fixture() -> (Fixture, [PathBuf; 3]) {
    tamper_fixture_in(false).await
}

/// The same in format 2 (segment 0 in `<sid>.ses`), as a key rotation writes it.
async fn tamper_fixture_v2() -> (Fixture, [PathBuf; 3]) {
    tamper_fixture_in(true).await
}

async fn tamper_fixture_in(format_2: bool) -> (Fixture, [PathBuf; 3]) {
    let fx = Fixture::new();
    let s = fx.open(3);
    for (t, p) in [("alpha", "u1"), ("alpha", "u2"), ("bravo", "u1")] {
        for i in 0..9 {
            s.append(&tid(t), &skey(p), &[user(&format!("{t}-{p}-{i}"))]).await.unwrap();
        }
    }
    if format_2 {
        for t in ["alpha", "bravo"] {
            s.rotate_tenant(&tid(t)).unwrap();
        }
        assert!(fx.session_dir(&s, "alpha", "u1").with_extension("ses").is_file());
    }
    let dirs =
        [fx.session_dir(&s, "alpha", "u1"), fx.session_dir(&s, "alpha", "u2"), fx.session_dir(&s, "bravo", "u1")];
    (fx, dirs)
}

async fn expect_integrity_error(fx: &Fixture, tenant: &str, peer: &str, readable_prefix: usize) {
    expect_integrity_error_with(fx, tenant, peer, readable_prefix, ("alpha", "u2")).await
}

async fn expect_integrity_error_with(
    fx: &Fixture,
    tenant: &str,
    peer: &str,
    readable_prefix: usize,
    intact: (&str, &str),
) {
    let s = fx.open(3);
    let err = s.history(&tid(tenant), &skey(peer), None).await.unwrap_err();
    assert!(matches!(err, StoreError::Integrity(_)), "{err}");
    let sessions = s.read_tenant(&tid(tenant)).unwrap();
    let read = sessions.iter().find(|r| !r.problems.is_empty()).expect("the damaged session is reported");
    assert_eq!(read.records.len(), readable_prefix, "the safe prefix stays readable: {:?}", read.problems);
    // Another session is unaffected.
    assert_eq!(s.history(&tid(intact.0), &skey(intact.1), None).await.unwrap().len(), 9);
}

#[tokio::test]
async fn tamper_byte_flip_is_detected() {
    let (fx, [a1, ..]) = tamper_fixture().await;
    let p = a1.join("00000001.seg");
    let mut b = fs::read(&p).unwrap();
    let n = b.len();
    b[n - 40] ^= 0x01;
    fs::write(&p, b).unwrap();
    expect_integrity_error(&fx, "alpha", "u1", 5).await;
}

#[tokio::test]
async fn tamper_truncated_middle_segment_is_detected() {
    let (fx, [a1, ..]) = tamper_fixture().await;
    let p = a1.join("00000001.seg");
    let b = fs::read(&p).unwrap();
    fs::write(&p, &b[..b.len() - 10]).unwrap();
    expect_integrity_error(&fx, "alpha", "u1", 5).await;
}

#[tokio::test]
async fn tamper_segment_swapped_between_sessions_is_detected() {
    let (fx, [a1, a2, _]) = tamper_fixture().await;
    let (x, y) = (a1.join("00000001.seg"), a2.join("00000001.seg"));
    let (bx, by) = (fs::read(&x).unwrap(), fs::read(&y).unwrap());
    fs::write(&x, by).unwrap();
    fs::write(&y, bx).unwrap();
    expect_integrity_error_with(&fx, "alpha", "u1", 3, ("bravo", "u1")).await;
    let s = fx.open(3);
    assert!(matches!(s.history(&tid("alpha"), &skey("u2"), None).await, Err(StoreError::Integrity(_))));
}

#[tokio::test]
async fn tamper_segment_swapped_between_tenants_is_detected() {
    let (fx, [a1, _, b1]) = tamper_fixture_v2().await;
    fs::copy(b1.join("00000002.seg"), a1.join("00000002.seg")).unwrap();
    expect_integrity_error(&fx, "alpha", "u1", 6).await;
    // A whole session (its file and its directory) moved to another tenant does not open either.
    let dest = a1.parent().unwrap().join(b1.file_name().unwrap());
    fs::rename(&b1, &dest).unwrap();
    fs::rename(b1.with_extension("ses"), dest.with_extension("ses")).unwrap();
    let s = fx.open(3);
    let listed = s.list(&tid("alpha")).await.unwrap();
    assert!(listed.iter().all(|x| x.key != skey("u1") || x.messages == 9), "the moved session is skipped");
    assert!(s.read_tenant(&tid("alpha")).unwrap().iter().any(|r| !r.problems.is_empty()));
}

#[tokio::test]
async fn tamper_meta_replaced_by_a_fresh_valid_age_file_is_detected() {
    let (fx, [a1, ..]) = tamper_fixture_v2().await;
    let s = fx.open(3);
    let keys = s.keys(&tid("alpha")).unwrap();
    // Anyone with the tenant's public key can make a valid age file with a data key they know.
    let forged = serde_json::json!({"v": 1, "tenant": "alpha", "sid": a1.file_name().unwrap().to_string_lossy(),
        "key": skey("u1").to_string(), "createdMs": 1, "dataKey": hex(&[7u8; 32]), "mac": hex(&[0u8; 32])});
    let ct = age::encrypt(&keys.recipient, forged.to_string().as_bytes()).unwrap();
    drop(s);
    // In the header of the session's file it is refused: only the tenant's meta key seals there.
    let file = a1.with_extension("ses");
    let original = fs::read(&file).unwrap();
    fs::write(&file, format::session_header_for(&ct)).unwrap();
    let s = fx.open(3);
    let err = s.history(&tid("alpha"), &skey("u1"), None).await.unwrap_err();
    assert!(err.to_string().contains("not sealed with the tenant's meta key"), "{err}");
    assert!(s.append(&tid("alpha"), &skey("u1"), &[user("x")]).await.is_err());
    drop(s);
    // As a format-1 `meta.age` (the session file gone), its MAC gives it away.
    fs::remove_file(&file).unwrap();
    fs::write(a1.join("meta.age"), ct).unwrap();
    let s = fx.open(3);
    let err = s.history(&tid("alpha"), &skey("u1"), None).await.unwrap_err();
    assert!(err.to_string().contains("fails authentication"), "{err}");
    // Appending to it is refused as well: nothing is written under a forged key.
    assert!(s.append(&tid("alpha"), &skey("u1"), &[user("x")]).await.is_err());
    drop(s);
    // And a session file's header with one byte changed does not open.
    let mut flipped = original;
    flipped[30] ^= 1;
    fs::remove_file(a1.join("meta.age")).unwrap();
    fs::write(&file, flipped).unwrap();
    let s = fx.open(3);
    let err = s.history(&tid("alpha"), &skey("u1"), None).await.unwrap_err();
    assert!(err.to_string().contains("fails authentication"), "{err}");
}

#[tokio::test]
async fn tamper_deleted_or_reordered_segments_are_detected() {
    let (fx, [a1, a2, _]) = tamper_fixture().await;
    fs::remove_file(a1.join("00000001.seg")).unwrap();
    expect_integrity_error(&fx, "alpha", "u1", 3).await;
    fs::rename(a2.join("00000001.seg"), a2.join("tmp")).unwrap();
    fs::rename(a2.join("00000002.seg"), a2.join("00000001.seg")).unwrap();
    fs::rename(a2.join("tmp"), a2.join("00000002.seg")).unwrap();
    let s = fx.open(3);
    let err = s.history(&tid("alpha"), &skey("u2"), None).await.unwrap_err();
    assert!(err.to_string().contains("record 6 (byte 8 of its segment) fails authentication"), "{err}");
}

#[tokio::test]
async fn tamper_record_cut_from_the_middle_is_detected() {
    let (fx, [a1, ..]) = tamper_fixture().await;
    let p = a1.join("00000001.seg");
    let b = fs::read(&p).unwrap();
    let frames = split_frames(&b).unwrap();
    let (start, end) = (frames.frames[1].offset, frames.frames[2].offset);
    let spliced = [&b[..start], &b[end..]].concat();
    fs::write(&p, spliced).unwrap();
    expect_integrity_error(&fx, "alpha", "u1", 4).await;
}

#[tokio::test]
async fn tamper_identity_swapped_between_tenants_refuses_to_open() {
    let (fx, [a1, _, b1]) = tamper_fixture().await;
    let ta = a1.parent().unwrap().parent().unwrap().join("identity.age");
    let tb = b1.parent().unwrap().parent().unwrap().join("identity.age");
    fs::copy(&tb, &ta).unwrap();
    let e = fx.open_with(3).err().unwrap();
    assert!(e.to_string().contains("another tenant"), "{e}");
}

#[tokio::test]
async fn torn_tail_is_skipped_with_earlier_turns_kept() {
    for garbage in
        [vec![0x55u8, 0, 0, 0, 1, 2, 3], vec![0u8; 300], vec![0x40, 0x01, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]]
    {
        let fx = Fixture::new();
        let s = fx.open(3);
        for i in 0..4 {
            s.append(&tid("alpha"), &skey("u1"), &[user(&format!("m{i}"))]).await.unwrap();
        }
        let dir = fx.session_dir(&s, "alpha", "u1");
        drop(s);
        let mut f = OpenOptions::new().append(true).open(dir.join("00000001.seg")).unwrap();
        f.write_all(&garbage).unwrap();
        drop(f);
        let s = fx.open(3);
        assert_eq!(texts(&s.history(&tid("alpha"), &skey("u1"), None).await.unwrap()), ["m0", "m1", "m2", "m3"]);
        s.append(&tid("alpha"), &skey("u1"), &[user("m4")]).await.unwrap();
        drop(s);
        let s = fx.open(3);
        assert_eq!(texts(&s.history(&tid("alpha"), &skey("u1"), None).await.unwrap()), ["m0", "m1", "m2", "m3", "m4"]);
    }
}

#[tokio::test]
async fn retention_deletes_exactly_the_expired_sessions() {
    let fx = Fixture::new();
    let s = fx.open(3);
    s.append(&tid("alpha"), &skey("old"), &[user("x")]).await.unwrap();
    s.append(&tid("bravo"), &skey("old"), &[user("x")]).await.unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let mid = SystemTime::now();
    std::thread::sleep(Duration::from_millis(30));
    s.append(&tid("alpha"), &skey("new"), &[user("y")]).await.unwrap();
    // One day after `mid`, a one-day retention cuts exactly at `mid`. bravo keeps 30 days.
    let retention = Retention { default_days: Some(1), per_tenant: BTreeMap::from([(tid("bravo"), 30)]) };
    let report = s.apply_retention(&retention, mid + Duration::from_secs(86_400)).unwrap();
    assert_eq!(report, vec![(tid("alpha"), 1), (tid("bravo"), 0)]);
    assert!(!s.exists(&tid("alpha"), &skey("old")).await.unwrap());
    assert!(s.exists(&tid("alpha"), &skey("new")).await.unwrap());
    assert!(s.exists(&tid("bravo"), &skey("old")).await.unwrap());
    assert!(!fx.session_dir(&s, "alpha", "old").exists(), "the files are gone");
    let old = fx.sid(&s, "alpha", "old");
    let pack = fx.pack_path(&s, "alpha", "old");
    assert!(pack_entries(&pack).iter().all(|e| e.2 != old), "its pack no longer holds it");
    assert!(s.delete_session(&tid("alpha"), &skey("new")).await.unwrap());
    assert!(!s.delete_session(&tid("alpha"), &skey("new")).await.unwrap());
    assert!(s.list(&tid("alpha")).await.unwrap().is_empty());
}

#[tokio::test]
async fn export_round_trips_as_json_lines() {
    let fx = Fixture::new();
    let s = fx.open(3);
    let call = ToolCall { id: "c1".into(), name: "exec".into(), arguments: serde_json::json!({"command": "ls"}) };
    let msgs = vec![
        user(SENTENCE),
        Message::Assistant { text: String::new(), tool_calls: vec![call] },
        Message::ToolResult { call_id: "c1".into(), name: "exec".into(), content: "out\n".into(), is_error: true },
        Message::Assistant { text: "ünïcode ✓".into(), tool_calls: vec![] },
        Message::FromSession { from: skey("u2").to_string(), text: "sent by sessions_send".into() },
    ];
    s.append(&tid("alpha"), &skey("u1"), &msgs).await.unwrap();
    s.append(&tid("alpha"), &skey("u2"), &msgs[..1]).await.unwrap();
    s.append(&tid("bravo"), &skey("u9"), &[user("bravo only")]).await.unwrap();
    // The tenant's workspace: text, binary in a subdirectory, a link planted to a host file (not
    // followed), and a FIFO (skipped; opening it would block the export).
    let ws = fx._dir.path().join("workspaces").join("alpha");
    fs::create_dir_all(ws.join("sub")).unwrap();
    fs::write(ws.join("notes.txt"), "workspace note ✓\n").unwrap();
    fs::write(ws.join("sub").join("blob.bin"), [0u8, 159, 146, 150, 255]).unwrap();
    let host_secret = fx._dir.path().join("host-secret");
    fs::write(&host_secret, "HOST-ONLY-SECRET").unwrap();
    std::os::unix::fs::symlink(&host_secret, ws.join("link")).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(ws.join("pipe")).status().unwrap().success());
    let mut out = Vec::new();
    let summary = s.export_tenant(&tid("alpha"), Some(&ws), &mut out).unwrap();
    assert_eq!(
        summary,
        ExportSummary { sessions: 2, messages: 6, problems: 0, files: 3, skipped: vec!["pipe".to_string()] }
    );
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("bravo only"), "only the tenant's own data");
    assert!(!text.contains("HOST-ONLY-SECRET"), "links are recorded, never followed");
    let file = |path: &str| -> serde_json::Value {
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|v| v["path"] == path).unwrap()
    };
    assert_eq!(file("notes.txt")["data"], "workspace note ✓\n");
    assert_eq!(file("notes.txt")["encoding"], "utf8");
    assert_eq!(file("sub/blob.bin")["encoding"], "base64");
    assert_eq!(file("sub/blob.bin")["data"], "AJ+Slv8=");
    assert_eq!(file("link")["type"], "symlink");
    assert_eq!(file("link")["target"], host_secret.to_string_lossy().as_ref());
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["type"], "bulkhead-export");
    assert_eq!(lines[0]["tenant"], "alpha");
    assert_eq!(lines.last().unwrap()["type"], "end");
    // Parse the messages back into transcripts and compare with what was written.
    let mut back: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    for l in &lines {
        if l["type"] == "message" {
            let mut v = l.clone();
            let obj = v.as_object_mut().unwrap();
            let session = obj.remove("session").unwrap().as_str().unwrap().to_string();
            for k in ["type", "seq", "ts"] {
                obj.remove(k);
            }
            let m: RecordMessage = serde_json::from_value(v).unwrap();
            back.entry(session).or_default().push(Message::from(m));
        }
    }
    assert_eq!(back[&skey("u1").to_string()], msgs);
    assert_eq!(back[&skey("u2").to_string()], msgs[..1].to_vec());
}

#[tokio::test]
async fn delete_tenant_leaves_nothing_decryptable() {
    let fx = Fixture::new();
    let s = fx.open(3);
    s.append(&tid("alpha"), &skey("u1"), &[user(SENTENCE)]).await.unwrap();
    s.append(&tid("bravo"), &skey("u1"), &[user("bravo stays")]).await.unwrap();
    let alpha_dir = s.tenant_dir(&tid("alpha"));
    // An attacker's copy of the tenant's files taken before the deletion.
    let copied: Vec<(PathBuf, Vec<u8>)> =
        all_files(&alpha_dir).into_iter().filter(|p| p.is_file()).map(|p| (p.clone(), fs::read(&p).unwrap())).collect();
    let alpha_keys = s.keys(&tid("alpha")).unwrap();
    assert!(s.delete_tenant(&tid("alpha")).unwrap());
    assert!(!alpha_dir.exists());
    assert!(s.append(&tid("alpha"), &skey("u1"), &[user("x")]).await.is_err(), "no key, no writes");
    drop(s);
    // No file left in the store reveals alpha's identity: the master key opens only the marker
    // and bravo's identity, and neither holds alpha's secret.
    let secret = alpha_keys.identity.to_string();
    let master = fx.master();
    for p in all_files(&fx.root).into_iter().filter(|p| p.is_file()) {
        let bytes = fs::read(&p).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"quick brown"));
        if let Some(pt) = master.unwrap(&bytes) {
            let pt = String::from_utf8_lossy(&pt).to_string();
            assert!(!pt.contains(secret.expose_secret()), "{} reveals the deleted identity", p.display());
            assert!(!pt.contains("\"tenant\":\"alpha\""), "{}", p.display());
        }
    }
    // Reopening creates a fresh, unrelated identity for the still-configured tenant; the old
    // ciphertext does not open with it.
    let s = fx.open(3);
    assert!(s.list(&tid("alpha")).await.unwrap().is_empty());
    let fresh = s.keys(&tid("alpha")).unwrap();
    for (p, bytes) in &copied {
        if p.extension().is_some_and(|e| e == "age") {
            assert!(fresh.decrypt(bytes).is_none(), "{} opens with the new identity", p.display());
            if !p.ends_with("identity.age") {
                assert!(master.unwrap(bytes).is_none(), "{}", p.display());
            }
        }
    }
    assert_eq!(texts(&s.history(&tid("bravo"), &skey("u1"), None).await.unwrap()), ["bravo stays"]);
}

use age::secrecy::ExposeSecret;

#[tokio::test]
async fn tenant_key_rotation_re_encrypts_and_survives_interruption() {
    let fx = Fixture::new();
    let s = fx.open(3);
    for i in 0..7 {
        s.append(&tid("alpha"), &skey("u1"), &[user(&format!("m{i}"))]).await.unwrap();
    }
    let old_sid = fx.session_dir(&s, "alpha", "u1");
    let old_identity = fs::read(s.tenant_dir(&tid("alpha")).join("identity.age")).unwrap();
    assert_eq!(s.rotate_tenant(&tid("alpha")).unwrap(), 1);
    assert!(!old_sid.exists(), "session ids change with the key");
    assert_ne!(fs::read(s.tenant_dir(&tid("alpha")).join("identity.age")).unwrap(), old_identity);
    s.append(&tid("alpha"), &skey("u1"), &[user("m7")]).await.unwrap();
    let want: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&s.history(&tid("alpha"), &skey("u1"), None).await.unwrap()), want);
    let tenants = fx.root.join("tenants");
    drop(s);

    // Interrupted before the commit: the half-built tree is discarded, the data is intact.
    copy_dir(&tenants.join("alpha"), &tenants.join("alpha.rotate.tmp"));
    fs::remove_file(tenants.join("alpha.rotate.tmp").join("identity.age")).unwrap();
    let s = fx.open(3);
    assert_eq!(texts(&s.history(&tid("alpha"), &skey("u1"), None).await.unwrap()), want);
    assert!(!tenants.join("alpha.rotate.tmp").exists());

    // Interrupted after the commit, at each step of the swap: the new tree wins.
    let before = tenants.join("before");
    copy_dir(&tenants.join("alpha"), &before);
    s.rotate_tenant(&tid("alpha")).unwrap();
    drop(s);
    fs::rename(tenants.join("alpha"), tenants.join("alpha.rotate.new")).unwrap();
    fs::rename(&before, tenants.join("alpha")).unwrap();
    let s = fx.open(3);
    assert_eq!(texts(&s.history(&tid("alpha"), &skey("u1"), None).await.unwrap()), want);
    let names: Vec<String> =
        fs::read_dir(&tenants).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let before = tenants.join("before");
    copy_dir(&tenants.join("alpha"), &before);
    s.rotate_tenant(&tid("alpha")).unwrap();
    drop(s);
    fs::rename(tenants.join("alpha"), tenants.join("alpha.rotate.new")).unwrap();
    fs::rename(&before, tenants.join("alpha.rotate.old")).unwrap();
    let s = fx.open(3);
    assert_eq!(texts(&s.history(&tid("alpha"), &skey("u1"), None).await.unwrap()), want);
    assert!(!tenants.join("alpha.rotate.old").exists() && !tenants.join("alpha.rotate.new").exists());
}

fn dup(key: &MasterKey) -> MasterKey {
    MasterKey::from_secret(&crate::config::SecretString::new(key.to_text()), "key".into()).unwrap()
}

fn open_key(fx: &Fixture, key: &MasterKey) -> Result<EncryptedStore, StoreOpenError> {
    EncryptedStore::open_at(
        &fx.root,
        dup(key),
        &[tid("alpha"), tid("bravo")],
        StoreOptions { records_per_segment: 3, ..StoreOptions::default() },
    )
}

#[tokio::test]
async fn master_key_rotation_re_wraps_and_survives_interruption() {
    let fx = Fixture::new();
    let s = fx.open(3);
    for t in ["alpha", "bravo"] {
        for i in 0..4 {
            s.append(&tid(t), &skey("u1"), &[user(&format!("{t}{i}"))]).await.unwrap();
        }
    }
    let want = |t: &str| -> Vec<String> { (0..4).map(|i| format!("{t}{i}")).collect() };
    let sessions_before = tree_bytes(&fx.root.join("tenants").join("alpha").join("sessions"));
    let new = MasterKey::generate("new".into());
    assert!(!s.master_is(&new) && s.master_is(&fx.master()));
    assert_eq!(s.rotate_master(dup(&new)).unwrap(), 2);

    // The old key no longer opens the store; the new one reads everything; data files unchanged.
    assert!(matches!(fx.open_with(3), Err(StoreOpenError::WrongMasterKey { .. })));
    let s = open_key(&fx, &new).unwrap();
    for t in ["alpha", "bravo"] {
        assert_eq!(texts(&s.history(&tid(t), &skey("u1"), None).await.unwrap()), want(t));
    }
    assert_eq!(tree_bytes(&fx.root.join("tenants").join("alpha").join("sessions")), sessions_before);
    let tenants = fx.root.join("tenants");
    let leftovers = all_files(&fx.root).into_iter().filter(|p| p.ends_with(NEXT_IDENTITY)).count();
    assert_eq!(leftovers, 0);

    // Interrupted before the commit (next files written for a third key, marker unchanged):
    // discarded at open, the current key still works.
    let third = MasterKey::generate("third".into());
    for t in ["alpha", "bravo"] {
        let wrapped = s.keys(&tid(t)).unwrap().wrap(t, &third).unwrap();
        fs::write(tenants.join(t).join(NEXT_IDENTITY), wrapped).unwrap();
    }
    drop(s);
    assert!(matches!(open_key(&fx, &third), Err(StoreOpenError::WrongMasterKey { .. })));
    let s = open_key(&fx, &new).unwrap();
    assert_eq!(texts(&s.history(&tid("bravo"), &skey("u1"), None).await.unwrap()), want("bravo"));
    assert!(!tenants.join("alpha").join(NEXT_IDENTITY).exists());

    // Interrupted after the commit (marker replaced, alpha's identity not yet renamed): the
    // third key finishes the rotation at open.
    let wrapped = s.keys(&tid("alpha")).unwrap().wrap("alpha", &third).unwrap();
    fs::write(tenants.join("alpha").join(NEXT_IDENTITY), wrapped).unwrap();
    let bravo = s.keys(&tid("bravo")).unwrap().wrap("bravo", &third).unwrap();
    drop(s);
    fsutil::write_atomic(&tenants.join("bravo").join("identity.age"), &bravo).unwrap();
    write_marker(&fx.root, &third).unwrap();
    let s = open_key(&fx, &third).unwrap();
    for t in ["alpha", "bravo"] {
        assert_eq!(texts(&s.history(&tid(t), &skey("u1"), None).await.unwrap()), want(t));
    }
    assert!(!tenants.join("alpha").join(NEXT_IDENTITY).exists());
    drop(s);
    assert!(matches!(open_key(&fx, &new), Err(StoreOpenError::WrongMasterKey { .. })));
}

fn copy_dir(from: &Path, to: &Path) {
    fsutil::create_private_dir(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            fs::copy(&p, &dest).unwrap();
        }
    }
}

#[test]
fn config_takes_a_master_key_reference_and_retention() {
    let text = r#"{ store: { masterKey: { env: "BULKHEAD_MASTER_KEY" } }, retention: { days: 90 },
        tenants: [ { id: "acme", retention: { days: 30 } }, { id: "beta" } ],
        agents: { list: [ { id: "a", tenant: "acme" }, { id: "b", tenant: "beta" } ] } }"#;
    let config = crate::config::load_str(text, Path::new(".")).unwrap();
    assert_eq!(config.store.master_key, Some(crate::config::SecretRef::Env("BULKHEAD_MASTER_KEY".into())));
    let r = Retention::from_config(&config);
    assert_eq!(r.days_for(&tid("acme")), Some(30));
    assert_eq!(r.days_for(&tid("beta")), Some(90));
    let bad = r#"{ retention: { days: 0 }, store: { masterKey: { vault: "x" } }, tenants: [ { id: "acme", retention: { days: 99999 } } ] }"#;
    let errors = crate::config::load_str(bad, Path::new(".")).unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    for p in ["retention.days", "store.masterKey", "tenants[0].retention.days"] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
}

#[tokio::test]
async fn tenant_documents_are_sealed_bound_rotated_and_shredded() {
    let fx = Fixture::new();
    let s = fx.open(3);
    let doc = br#"{"v":1,"approved":[{"channel":"telegram","account":"acme","sender":"987654321"}]}"#;
    assert_eq!(s.load_document(&tid("alpha"), "pairing").await.unwrap(), None);
    s.save_document(&tid("alpha"), "pairing", doc).await.unwrap();
    assert_eq!(s.load_document(&tid("alpha"), "pairing").await.unwrap().as_deref(), Some(&doc[..]));
    assert_eq!(s.load_document(&tid("bravo"), "pairing").await.unwrap(), None, "per tenant");
    assert!(s.save_document(&tid("alpha"), "../escape", doc).await.is_err(), "names are plain words");
    // Nothing in clear on disk, and the file is private.
    let path = s.tenant_dir(&tid("alpha")).join("pairing.age");
    let bytes = fs::read(&path).unwrap();
    assert!(!bytes.windows(9).any(|w| w == b"987654321"));
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // Moved to another tenant: refused as an integrity failure, not read as theirs.
    fs::copy(&path, s.tenant_dir(&tid("bravo")).join("pairing.age")).unwrap();
    assert!(matches!(s.load_document(&tid("bravo"), "pairing").await, Err(StoreError::Integrity(_))));
    fs::remove_file(s.tenant_dir(&tid("bravo")).join("pairing.age")).unwrap();
    // Rotation re-encrypts it to the new key; deletion shreds it with the tenant.
    s.rotate_tenant(&tid("alpha")).unwrap();
    assert_ne!(fs::read(&path).unwrap(), bytes);
    assert_eq!(s.load_document(&tid("alpha"), "pairing").await.unwrap().as_deref(), Some(&doc[..]));
    drop(s);
    let s = fx.open(3);
    assert_eq!(s.load_document(&tid("alpha"), "pairing").await.unwrap().as_deref(), Some(&doc[..]));
    s.delete_tenant(&tid("alpha")).unwrap();
    assert!(!path.exists());
}

/// A small tmpfs of its own for the full-disk test; unmounted on drop. Needs root (as `.ci/run`
/// has): without it the test fails, it does not skip.
struct SmallDisk {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallDisk {
    fn mount(kib: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("disk");
        fs::create_dir(&mount).unwrap();
        let disk = Self { _dir: dir, mount };
        disk.run(&["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700"), "bulkhead-test"]);
        disk
    }

    fn resize(&self, kib: u32) {
        self.run(&["-o", &format!("remount,size={kib}k")]);
    }

    fn run(&self, args: &[&str]) {
        let out = std::process::Command::new("mount")
            .args(args)
            .arg(&self.mount)
            .output()
            .expect("the full-disk test runs `mount` (util-linux)");
        assert!(
            out.status.success(),
            "the full-disk test mounts a small tmpfs and needs root: mount {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_appends_clearly_and_loses_no_acknowledged_turn() {
    let disk = SmallDisk::mount(160);
    let root = disk.mount.join("state").join("store");
    let master = MasterKey::generate("test".into());
    let open = || EncryptedStore::open_at(&root, dup(&master), &[tid("alpha")], StoreOptions::default());
    let s = open().unwrap();
    let filler = "x".repeat(2048);
    let mut acked = Vec::new();
    let error = loop {
        let text = format!("{}{filler}", acked.len());
        match s.append(&tid("alpha"), &skey("u1"), &[user(&text)]).await {
            Ok(()) => acked.push(text),
            Err(e) => break e.to_string(),
        }
        assert!(acked.len() < 1000, "a 160 KiB disk never filled up");
    };
    assert!(acked.len() > 10, "only {} turns fit", acked.len());
    assert!(error.contains("No space left on device"), "unclear error: {error}");
    assert!(!error.contains(&filler[..64]), "the error must not carry message content");
    assert_eq!(texts(&s.history(&tid("alpha"), &skey("u1"), None).await.unwrap()), acked);
    drop(s);

    // The store still opens on the full disk, with every acknowledged turn.
    let s = open().unwrap();
    assert_eq!(texts(&s.history(&tid("alpha"), &skey("u1"), None).await.unwrap()), acked);
    drop(s);

    // Space back: the half-written tail is cut off and appends go on after the last acknowledged turn.
    disk.resize(4096);
    let s = open().unwrap();
    s.append(&tid("alpha"), &skey("u1"), &[user("after")]).await.unwrap();
    acked.push("after".into());
    assert_eq!(texts(&s.history(&tid("alpha"), &skey("u1"), None).await.unwrap()), acked);
}

#[test]
fn the_open_session_cache_is_bounded_and_dropped_sessions_reopen_from_disk() {
    let fx = Fixture::new();
    let opts = StoreOptions { records_per_segment: 3, max_cached_sessions: 4, ..StoreOptions::default() };
    let store = EncryptedStore::open_at(&fx.root, fx.master(), &[tid("alpha")], opts).unwrap();
    let t = tid("alpha");
    for i in 0..20 {
        let key = skey(&format!("p{i}"));
        store.append_blocking(&t, &key, &[user(&format!("a{i}")), user(&format!("b{i}"))]).unwrap();
        assert!(store.inner.sessions.lock().unwrap().len() <= 4);
    }
    // Session 0 was dropped from the cache long ago: it reopens from disk and goes on in order.
    store.append_blocking(&t, &skey("p0"), &[user("c0"), user("d0")]).unwrap();
    assert_eq!(texts(&store.history_blocking(&t, &skey("p0"), None).unwrap()), ["a0", "b0", "c0", "d0"]);
    for i in 1..20 {
        let got = texts(&store.history_blocking(&t, &skey(&format!("p{i}")), None).unwrap());
        assert_eq!(got, [format!("a{i}"), format!("b{i}")]);
    }
    assert!(store.inner.sessions.lock().unwrap().len() <= 4);
}

#[test]
fn a_session_directory_a_crash_left_without_meta_is_created_afresh() {
    let fx = Fixture::new();
    let store = fx.open(3);
    let t = tid("alpha");
    // A creation that crashed before it was acknowledged: the directory and a segment (from
    // another data key) are there, meta.age is not.
    let dir = fx.session_dir(&store, "alpha", "p");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("00000000.seg"), b"BHSEG01\n\x10\x00\x00\x00junk-from-a-crash").unwrap();
    store.append_blocking(&t, &skey("p"), &[user("first")]).unwrap();
    drop(store);
    let store = fx.open(3);
    assert_eq!(texts(&store.history_blocking(&t, &skey("p"), None).unwrap()), ["first"]);
}

// ---- The journal: group commit, checkpoints, replay after a power loss ----

/// A store that never checkpoints on its own (so a test decides what the session files lost).
fn open_unflushed(fx: &Fixture, per: u64) -> EncryptedStore {
    let opts =
        StoreOptions { records_per_segment: per, checkpoint_every: Duration::from_secs(3600), ..StoreOptions::default() };
    EncryptedStore::open_at(&fx.root, fx.master(), &[tid("alpha"), tid("bravo")], opts).unwrap()
}

fn journal_files(fx: &Fixture, tenant: &str) -> Vec<PathBuf> {
    let dir = fx.root.join("tenants").join(tenant).join("journal");
    fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
}

/// Every session file's length, to cut them back to (what a checkpoint had made durable).
fn segment_lengths(fx: &Fixture, tenant: &str) -> BTreeMap<PathBuf, u64> {
    let sessions = fx.root.join("tenants").join(tenant).join("sessions");
    all_files(&sessions).into_iter().filter(|p| p.is_file()).map(|p| (p.clone(), fs::metadata(&p).unwrap().len())).collect()
}

/// What a power loss leaves of `tenant`'s sessions when the page cache held everything written
/// since the snapshot `durable`: files and directories made since are gone, files are cut back.
fn lose_unflushed_writes(fx: &Fixture, tenant: &str, durable: &BTreeMap<PathBuf, u64>) {
    let sessions = fx.root.join("tenants").join(tenant).join("sessions");
    for p in all_files(&sessions).into_iter().rev() {
        match durable.get(&p) {
            Some(len) => fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(*len).unwrap(),
            None if p.is_file() => fs::remove_file(&p).unwrap(),
            None if !durable.keys().any(|d| d.starts_with(&p)) => fs::remove_dir(&p).unwrap(),
            None => {}
        }
    }
}

#[tokio::test]
async fn acknowledged_turns_survive_a_power_loss_before_the_checkpoint() {
    let fx = Fixture::new();
    let s = open_unflushed(&fx, 3);
    let t = tid("alpha");
    // A checkpointed prefix: two sessions with turns the session files hold durably.
    for peer in ["old1", "old2"] {
        s.append(&t, &skey(peer), &[user(&format!("{peer}-a")), user(&format!("{peer}-b"))]).await.unwrap();
    }
    s.checkpoint().unwrap();
    let durable = segment_lengths(&fx, "alpha");
    // Then concurrent appends: new sessions, and old ones going on across segment boundaries.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let peer = if w < 2 { format!("old{}", w + 1) } else { format!("new{w}") };
            for i in 0..5 {
                s.append(&tid("alpha"), &skey(&peer), &[user(&format!("{peer}-{i}"))]).await.unwrap();
            }
            peer
        }));
    }
    let mut peers = Vec::new();
    for task in tasks {
        peers.push(task.await.unwrap());
    }
    let new_dir = fx.session_dir(&s, "alpha", "new2");
    s.crash();
    lose_unflushed_writes(&fx, "alpha", &durable);
    assert!(!new_dir.exists(), "the simulated power loss took the new sessions");
    assert!(!journal_files(&fx, "alpha").is_empty());

    let s = open_unflushed(&fx, 3);
    for peer in peers {
        let mut want: Vec<String> = Vec::new();
        if peer.starts_with("old") {
            want.extend([format!("{peer}-a"), format!("{peer}-b")]);
        }
        want.extend((0..5).map(|i| format!("{peer}-{i}")));
        assert_eq!(texts(&s.history(&t, &skey(&peer), None).await.unwrap()), want, "{peer}");
    }
    // And the sessions go on after the replayed records.
    s.append(&t, &skey("new2"), &[user("after")]).await.unwrap();
    assert_eq!(s.message_count(&t, &skey("new2")).await.unwrap(), 6);
}

#[tokio::test]
async fn checkpoints_empty_the_journal_and_the_store_closes_with_nothing_to_replay() {
    let fx = Fixture::new();
    let s = open_unflushed(&fx, 1024);
    let t = tid("alpha");
    for i in 0..50 {
        s.append(&t, &skey(&format!("p{i}")), &[user("hi"), user("there")]).await.unwrap();
    }
    let journal_bytes = |fx: &Fixture| -> u64 { journal_files(fx, "alpha").iter().map(|p| fs::metadata(p).unwrap().len()).sum() };
    assert!(journal_bytes(&fx) > 50 * 100, "every append went through the journal");
    s.checkpoint().unwrap();
    assert_eq!(journal_files(&fx, "alpha"), Vec::<PathBuf>::new(), "no generation left");
    assert_eq!(journal_files(&fx, "bravo"), Vec::<PathBuf>::new(), "an idle tenant has none");
    s.append(&t, &skey("p0"), &[user("again")]).await.unwrap();
    assert_eq!(journal_files(&fx, "alpha").len(), 1, "the next append starts one");
    drop(s);
    assert_eq!(journal_files(&fx, "alpha"), Vec::<PathBuf>::new(), "closing checkpoints");
    let s = open_unflushed(&fx, 1024);
    assert_eq!(texts(&s.history(&t, &skey("p0"), None).await.unwrap()), ["hi", "there", "again"]);
}

#[tokio::test]
async fn a_deleted_session_is_not_brought_back_by_a_replay() {
    let fx = Fixture::new();
    let s = open_unflushed(&fx, 1024);
    let t = tid("alpha");
    s.append(&t, &skey("gone"), &[user("forget me")]).await.unwrap();
    s.append(&t, &skey("kept"), &[user("keep me")]).await.unwrap();
    assert!(s.delete_session(&t, &skey("gone")).await.unwrap());
    s.append(&t, &skey("kept"), &[user("and me")]).await.unwrap();
    s.crash();
    let s = open_unflushed(&fx, 1024);
    assert!(!s.exists(&t, &skey("gone")).await.unwrap());
    assert_eq!(texts(&s.history(&t, &skey("kept"), None).await.unwrap()), ["keep me", "and me"]);
}

#[tokio::test]
async fn a_forged_journal_entry_is_not_applied_and_the_generation_is_kept_aside() {
    let fx = Fixture::new();
    let s = open_unflushed(&fx, 1024);
    let t = tid("alpha");
    s.append(&t, &skey("p"), &[user("one")]).await.unwrap();
    s.checkpoint().unwrap();
    let durable = segment_lengths(&fx, "alpha");
    s.append(&t, &skey("p"), &[user("two")]).await.unwrap();
    s.crash();
    lose_unflushed_writes(&fx, "alpha", &durable);
    // Flip one byte of the sealed record in the journal's only entry.
    let [generation] = journal_files(&fx, "alpha").try_into().unwrap();
    let mut bytes = fs::read(&generation).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&generation, bytes).unwrap();
    let s = open_unflushed(&fx, 1024);
    assert_eq!(texts(&s.history(&t, &skey("p"), None).await.unwrap()), ["one"], "the forged record is not there");
    let names: Vec<String> =
        journal_files(&fx, "alpha").iter().map(|p| p.file_name().unwrap().to_string_lossy().to_string()).collect();
    assert!(names.iter().any(|n| n.ends_with(".log.bad")), "kept aside: {names:?}");
}

#[tokio::test]
async fn sessions_in_the_format_1_metadata_still_open_and_new_ones_go_to_packs() {
    let fx = Fixture::new();
    let s = fx.open(1024);
    let t = tid("alpha");
    s.append(&t, &skey("new"), &[user("hi")]).await.unwrap();
    let entries = pack_entries(&fx.pack_path(&s, "alpha", "new"));
    let [(at, len, sid, 0)] = entries.as_slice() else { panic!("one entry: {entries:?}") };
    assert_eq!(*sid, fx.sid(&s, "alpha", "new"));
    let bytes = fs::read(fx.pack_path(&s, "alpha", "new")).unwrap();
    let body = journal::parse_body(&bytes[at + 4..at + len]).unwrap();
    assert!(body.meta.unwrap().starts_with(META_MAGIC), "no age file per conversation");
    assert!(!fx.session_dir(&s, "alpha", "new").exists(), "no directory");
    assert!(!fx.session_dir(&s, "alpha", "new").with_extension("ses").exists(), "no file per new conversation");
    // A session written by an earlier version: meta.age is age-encrypted JSON with a MAC.
    let keys = s.keys(&t).unwrap();
    let old_key = skey("old").to_string();
    let sid = keys.session_id(&old_key);
    let dk = [7u8; 32];
    let (created, data_key) = (1_700_000_000_000u64, hex(&dk));
    let mac = keys.mac(&[b"meta", b"alpha", sid.as_bytes(), old_key.as_bytes(), &created.to_be_bytes(), data_key.as_bytes()]);
    let v1 = MetaFile { v: 1, tenant: "alpha".into(), sid: sid.clone(), key: old_key, created_ms: created, data_key, mac };
    let dir = s.session_dir(&t, &sid);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("meta.age"), keys.encrypt(&serde_json::to_vec(&v1).unwrap()).unwrap()).unwrap();
    drop(s);
    let s = fx.open(1024);
    s.append(&t, &skey("old"), &[user("still works")]).await.unwrap();
    assert_eq!(texts(&s.history(&t, &skey("old"), None).await.unwrap()), ["still works"]);
    assert_eq!(texts(&s.history(&t, &skey("new"), None).await.unwrap()), ["hi"]);
}

#[tokio::test]
async fn a_session_file_cut_inside_its_header_is_an_integrity_error_and_an_empty_one_no_session() {
    let (fx, [a1, ..]) = tamper_fixture_v2().await;
    let file = a1.with_extension("ses");
    let bytes = fs::read(&file).unwrap();
    for cut in [3, 11, 20, 60] {
        fs::write(&file, &bytes[..cut]).unwrap();
        let s = fx.open(3);
        let err = s.history(&tid("alpha"), &skey("u1"), None).await.unwrap_err();
        assert!(matches!(err, StoreError::Integrity(_)), "cut at {cut}: {err}");
        assert!(err.to_string().contains("cut short"), "cut at {cut}: {err}");
        assert!(s.append(&tid("alpha"), &skey("u1"), &[user("x")]).await.is_err(), "nothing written over it");
    }
    fs::write(&file, b"").unwrap();
    let s = fx.open(3);
    assert!(!s.exists(&tid("alpha"), &skey("u1")).await.unwrap(), "an empty session file is no session");
}

// ---- Packs (format 3): tampering, torn tails, damage, bounded indexes ----

/// The entries of a pack file: offset, length, session id, first sequence number.
fn pack_entries(path: &Path) -> Vec<(usize, usize, String, u64)> {
    let bytes = fs::read(path).unwrap_or_default();
    let scanned = journal::scan(&bytes, pack::PACK_MAGIC);
    assert_eq!(scanned.problem, None);
    scanned.entries.iter().map(|e| (e.at, e.len, e.body.sid.to_string(), e.body.first_seq)).collect()
}

/// Rewrites the pack holding alpha's u1 through `edit` (given the bytes and u1's entries).
fn edit_pack(fx: &Fixture, edit: impl FnOnce(&mut Vec<u8>, &[(usize, usize, String, u64)])) {
    let s = fx.open(3);
    let (path, sid) = (fx.pack_path(&s, "alpha", "u1"), fx.sid(&s, "alpha", "u1"));
    drop(s);
    let mine: Vec<_> = pack_entries(&path).into_iter().filter(|e| e.2 == sid).collect();
    let mut bytes = fs::read(&path).unwrap();
    edit(&mut bytes, &mine);
    fs::write(&path, bytes).unwrap();
}

#[tokio::test]
async fn tamper_in_a_pack_is_detected() {
    // A byte of a record flipped: the records before it still read.
    let (fx, _) = tamper_fixture().await;
    edit_pack(&fx, |b, mine| {
        let (at, len, ..) = mine[2];
        b[at + len - 3] ^= 1;
    });
    expect_integrity_error(&fx, "alpha", "u1", 2).await;

    // An entry cut out of the middle: the gap is found.
    let (fx, _) = tamper_fixture().await;
    edit_pack(&fx, |b, mine| {
        let (at, len, ..) = mine[1];
        b.drain(at..at + len);
    });
    expect_integrity_error(&fx, "alpha", "u1", 1).await;

    // Two entries swapped: a record at another position does not open.
    let (fx, _) = tamper_fixture().await;
    edit_pack(&fx, |b, mine| {
        let ((a, alen, ..), (c, clen, ..)) = (mine[1].clone(), mine[2].clone());
        assert_eq!(a + alen, c, "u1's appends follow each other");
        let (x, y) = (b[a..a + alen].to_vec(), b[c..c + clen].to_vec());
        b.splice(a..c + clen, [y, x].concat());
    });
    expect_integrity_error(&fx, "alpha", "u1", 1).await;

    // The metadata replaced by an age file anyone could make, or with a byte changed.
    let (fx, _) = tamper_fixture().await;
    let s = fx.open(3);
    let keys = s.keys(&tid("alpha")).unwrap();
    let sid = fx.sid(&s, "alpha", "u1");
    let forged = serde_json::json!({"v": 1, "tenant": "alpha", "sid": sid, "key": skey("u1").to_string(),
        "createdMs": 1, "dataKey": hex(&[7u8; 32]), "mac": hex(&[0u8; 32])});
    let ct = age::encrypt(&keys.recipient, forged.to_string().as_bytes()).unwrap();
    drop(s);
    edit_pack(&fx, |b, mine| {
        let (at, len, ..) = mine[0];
        let body = journal::parse_body(&b[at + 4..at + len]).unwrap();
        let entry = journal::encode(&sid, Some(&ct), 0, body.frames);
        b.splice(at..at + len, entry);
    });
    let s = fx.open(3);
    let err = s.history(&tid("alpha"), &skey("u1"), None).await.unwrap_err();
    assert!(err.to_string().contains("not sealed with the tenant's meta key"), "{err}");
    assert!(s.append(&tid("alpha"), &skey("u1"), &[user("x")]).await.is_err(), "nothing written under it");
    drop(s);
    let (fx, _) = tamper_fixture().await;
    edit_pack(&fx, |b, mine| b[mine[0].0 + 4 + 32 + 4 + 30] ^= 1);
    let s = fx.open(3);
    let err = s.history(&tid("alpha"), &skey("u1"), None).await.unwrap_err();
    assert!(err.to_string().contains("fails authentication"), "{err}");
}

#[tokio::test]
async fn a_session_moved_into_another_tenants_pack_does_not_open_there() {
    let (fx, _) = tamper_fixture().await;
    let s = fx.open(3);
    let (from, sid) = (fx.pack_path(&s, "bravo", "u1"), fx.sid(&s, "bravo", "u1"));
    let to = s.pack_path(&tid("alpha"), &sid);
    drop(s);
    let bytes = fs::read(&from).unwrap();
    let mut dest = fs::read(&to).unwrap_or_else(|_| pack::PACK_MAGIC.to_vec());
    for (at, len, s, _) in pack_entries(&from) {
        if s == sid {
            dest.extend_from_slice(&bytes[at..at + len]);
        }
    }
    fs::write(&to, dest).unwrap();
    let s = fx.open(3);
    let reads = s.read_tenant(&tid("alpha")).unwrap();
    assert_eq!(reads.len(), 3, "alpha's two sessions and the planted one");
    assert_eq!(reads.iter().filter(|r| !r.problems.is_empty()).count(), 1, "the planted one does not open");
    for p in ["u1", "u2"] {
        assert_eq!(s.history(&tid("alpha"), &skey(p), None).await.unwrap().len(), 9);
    }
}

#[tokio::test]
async fn a_torn_pack_tail_is_cut_and_a_damaged_pack_fails_closed() {
    for garbage in [vec![0x55u8, 0, 0], vec![0u8; 300], vec![0x40, 0x01, 0, 0, 9, 9, 9, 9, 9, 9, 9]] {
        let (fx, _) = tamper_fixture().await;
        let s = fx.open(3);
        let pack = fx.pack_path(&s, "alpha", "u1");
        drop(s);
        let before = fs::metadata(&pack).unwrap().len();
        OpenOptions::new().append(true).open(&pack).unwrap().write_all(&garbage).unwrap();
        let s = fx.open(3);
        assert_eq!(s.history(&tid("alpha"), &skey("u1"), None).await.unwrap().len(), 9);
        assert_eq!(fs::metadata(&pack).unwrap().len(), before, "the torn tail is cut off");
        s.append(&tid("alpha"), &skey("u1"), &[user("more")]).await.unwrap();
        assert_eq!(s.history(&tid("alpha"), &skey("u1"), None).await.unwrap().len(), 10);
    }
    // An entry length changed in the middle of a pack: every session it may hold is refused
    // (reads and appends), and the other packs are unaffected.
    let (fx, _) = tamper_fixture().await;
    edit_pack(&fx, |b, mine| b[mine[0].0..mine[0].0 + 4].copy_from_slice(&u32::MAX.to_le_bytes()));
    let s = fx.open(3);
    let err = s.history(&tid("alpha"), &skey("u1"), None).await.unwrap_err();
    assert!(matches!(err, StoreError::Integrity(_)) && err.to_string().contains("pack"), "{err}");
    assert!(s.append(&tid("alpha"), &skey("u1"), &[user("x")]).await.is_err());
    assert_eq!(s.history(&tid("bravo"), &skey("u1"), None).await.unwrap().len(), 9);
}

#[test]
fn pack_indexes_are_bounded_and_dropped_packs_reload_from_disk() {
    let fx = Fixture::new();
    let opts = StoreOptions { max_cached_sessions: 8, max_indexed_sessions: 1, ..StoreOptions::default() };
    let store = EncryptedStore::open_at(&fx.root, fx.master(), &[tid("alpha")], opts).unwrap();
    let t = tid("alpha");
    for i in 0..2000 {
        store.append_blocking(&t, &skey(&format!("p{i}")), &[user(&format!("a{i}"))]).unwrap();
        // The bound (never below one index per pack), plus the pack in use.
        assert!(store.inner.packs.lock().unwrap().indexed() <= pack::PACKS + 64);
    }
    for i in (0..2000).step_by(97) {
        store.append_blocking(&t, &skey(&format!("p{i}")), &[user("b")]).unwrap();
        assert_eq!(texts(&store.history_blocking(&t, &skey(&format!("p{i}")), None).unwrap()), [format!("a{i}"), "b".into()]);
    }
    assert_eq!(store.list_blocking(&t).unwrap().len(), 2000);
    let files = all_files(&fx.root.join("tenants").join("alpha").join("sessions"));
    assert!(files.len() <= pack::PACKS, "no file per conversation: {} files", files.len());
}

#[tokio::test]
async fn deleting_a_packed_session_rewrites_its_pack_and_keeps_its_neighbours() {
    let fx = Fixture::new();
    let s = fx.open(3);
    let t = tid("alpha");
    // Sessions until two share a pack with "gone" (session ids are keyed hashes: random here).
    let gone_pack = pack::pack_of(&fx.sid(&s, "alpha", "gone"));
    let (mut n, mut sharing) = (0, 0);
    while sharing < 2 {
        s.append(&t, &skey(&format!("p{n}")), &[user(&format!("m{n}"))]).await.unwrap();
        sharing += usize::from(pack::pack_of(&fx.sid(&s, "alpha", &format!("p{n}"))) == gone_pack);
        n += 1;
    }
    s.append(&t, &skey("gone"), &[user(SENTENCE), user("two"), user("three"), user("four")]).await.unwrap();
    let pack = fx.pack_path(&s, "alpha", "gone");
    let sid = fx.sid(&s, "alpha", "gone");
    let neighbours = pack_entries(&pack).iter().filter(|e| e.2 != sid).count();
    assert!(neighbours >= 2);
    assert!(s.delete_session(&t, &skey("gone")).await.unwrap());
    assert!(pack_entries(&pack).iter().all(|e| e.2 != sid), "no entry of it is left");
    assert_eq!(pack_entries(&pack).len(), neighbours);
    assert!(!fx.session_dir(&s, "alpha", "gone").exists(), "its later segments are gone too");
    assert!(!s.exists(&t, &skey("gone")).await.unwrap());
    drop(s);
    let s = fx.open(3);
    assert!(!s.exists(&t, &skey("gone")).await.unwrap());
    for i in 0..n {
        assert_eq!(texts(&s.history(&t, &skey(&format!("p{i}")), None).await.unwrap()), [format!("m{i}")]);
    }
}

#[tokio::test]
async fn retention_takes_many_sessions_out_of_shared_packs_and_keeps_the_rest() {
    let fx = Fixture::new();
    let s = fx.open(3);
    let t = tid("alpha");
    for i in 0..300 {
        s.append(&t, &skey(&format!("old{i}")), &[user("x"), user("y"), user("z"), user("w")]).await.unwrap();
    }
    std::thread::sleep(Duration::from_millis(30));
    let mid = SystemTime::now();
    std::thread::sleep(Duration::from_millis(30));
    for i in 0..5 {
        s.append(&t, &skey(&format!("new{i}")), &[user(&format!("n{i}"))]).await.unwrap();
    }
    let retention = Retention { default_days: Some(1), per_tenant: BTreeMap::new() };
    let report = s.apply_retention(&retention, mid + Duration::from_secs(86_400)).unwrap();
    assert_eq!(report, vec![(tid("alpha"), 300), (tid("bravo"), 0)]);
    assert_eq!(s.list(&t).await.unwrap().len(), 5);
    drop(s);
    let s = fx.open(3);
    for i in 0..5 {
        assert_eq!(texts(&s.history(&t, &skey(&format!("new{i}")), None).await.unwrap()), [format!("n{i}")]);
    }
    let sessions = fx.root.join("tenants").join("alpha").join("sessions");
    let left: usize = all_files(&sessions).iter().map(|p| if p.is_dir() { 100 } else { 1 }).sum();
    assert!(left <= 5, "only the kept sessions' packs are left: {:?}", all_files(&sessions));
}

/// The pack files of a tenant and their lengths.
fn pack_lengths(fx: &Fixture, tenant: &str) -> BTreeMap<PathBuf, u64> {
    all_files(&fx.root.join("tenants").join(tenant).join("sessions"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .map(|p| {
            let len = fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}

#[test]
fn a_batch_of_appends_to_many_sessions_shares_one_fsync_and_keeps_each_sessions_order() {
    let fx = Fixture::new();
    let store = open_unflushed(&fx, 4);
    let t = tid("alpha");
    let probe = store.journal(&t).unwrap().probe.clone();
    let keys: Vec<SessionKey> = (0..40).map(|i| skey(&format!("p{i}"))).collect();
    let first: Vec<Vec<Message>> = (0..40).map(|i| vec![user(&format!("a{i}"))]).collect();
    let mut items: Vec<(&SessionKey, &[Message])> = keys.iter().zip(&first).map(|(k, m)| (k, m.as_slice())).collect();
    // Session p0 twice in one batch, and one append that runs past segment 0 into a segment file.
    let again = vec![user("b0")];
    let long: Vec<Message> = (0..6).map(|i| user(&format!("l{i}"))).collect();
    items.push((&keys[0], again.as_slice()));
    items.push((&keys[1], long.as_slice()));
    let results = store.append_batch(&t, &items);
    assert_eq!(results.len(), 42);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // The 40 distinct sessions are one run; p0 and p1 again start a second.
    assert_eq!(probe.syncs.load(std::sync::atomic::Ordering::SeqCst), 2, "one fsync per run of distinct sessions");
    assert_eq!(texts(&store.history_blocking(&t, &keys[0], None).unwrap()), ["a0", "b0"]);
    let mut p1 = vec!["a1".to_string()];
    p1.extend((0..6).map(|i| format!("l{i}")));
    assert_eq!(texts(&store.history_blocking(&t, &keys[1], None).unwrap()), p1);
    for (i, k) in keys.iter().enumerate().skip(2) {
        assert_eq!(texts(&store.history_blocking(&t, k, None).unwrap()), [format!("a{i}")]);
    }
    drop(store);
    let store = fx.open(4);
    assert_eq!(texts(&store.history_blocking(&t, &keys[1], None).unwrap()), p1);
    assert_eq!(store.list_blocking(&t).unwrap().len(), 40);
}

#[tokio::test]
async fn a_failed_journal_sync_takes_the_whole_batch_back_out_of_packs_and_segments() {
    let fx = Fixture::new();
    let store = open_unflushed(&fx, 2);
    let t = tid("alpha");
    let keys: Vec<SessionKey> = (0..48).map(|i| skey(&format!("p{i}"))).collect();
    // Eight sessions exist: p0 with a segment file past its pack entry, the others one record each.
    store.append(&t, &keys[0], &[user("x0"), user("x1"), user("x2")]).await.unwrap();
    for k in &keys[1..8] {
        store.append(&t, k, &[user("x0")]).await.unwrap();
    }
    let packs_before = pack_lengths(&fx, "alpha");
    let segments_before = segment_lengths(&fx, "alpha");
    let probe = store.journal(&t).unwrap().probe.clone();
    probe.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    // Forty new sessions over 256 packs share some (and the existing ones' packs), so entries
    // are taken back out of packs that hold entries of other sessions of the same batch.
    let more = vec![user("lost"), user("lost too")];
    let items: Vec<(&SessionKey, &[Message])> = keys.iter().map(|k| (k, more.as_slice())).collect();
    let results = store.append_batch(&t, &items);
    assert!(results.iter().all(|r| r.as_ref().is_err_and(|e| e.to_string().contains("injected fsync failure"))));
    assert_eq!(pack_lengths(&fx, "alpha"), packs_before, "every pack cut back to what was acknowledged");
    assert_eq!(segment_lengths(&fx, "alpha"), segments_before, "every segment cut back");
    assert_eq!(texts(&store.history(&t, &keys[0], None).await.unwrap()), ["x0", "x1", "x2"]);
    for k in &keys[1..8] {
        assert_eq!(texts(&store.history(&t, k, None).await.unwrap()), ["x0"]);
    }
    for k in &keys[8..] {
        assert!(!store.exists(&t, k).await.unwrap(), "a session whose creation failed does not exist");
    }
    // The failed entries left the journal with a checkpoint that made the undone files durable.
    assert!(journal_files(&fx, "alpha").is_empty(), "{:?}", journal_files(&fx, "alpha"));
    let durable = segment_lengths(&fx, "alpha");
    // The disk is back: the same appends go in after the acknowledged records.
    probe.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    for k in &keys {
        store.append(&t, k, &[user("after")]).await.unwrap();
    }
    assert_eq!(texts(&store.history(&t, &keys[0], None).await.unwrap()), ["x0", "x1", "x2", "after"]);
    assert_eq!(texts(&store.history(&t, &keys[47], None).await.unwrap()), ["after"]);
    // A power loss now: the replay brings back what was acknowledged, never a failed append
    // in its place.
    store.crash();
    lose_unflushed_writes(&fx, "alpha", &durable);
    let store = open_unflushed(&fx, 2);
    assert_eq!(texts(&store.history(&t, &keys[0], None).await.unwrap()), ["x0", "x1", "x2", "after"]);
    for k in &keys[1..8] {
        assert_eq!(texts(&store.history(&t, k, None).await.unwrap()), ["x0", "after"]);
    }
    for k in &keys[8..] {
        assert_eq!(texts(&store.history(&t, k, None).await.unwrap()), ["after"]);
    }
}

#[tokio::test]
async fn concurrent_appends_through_the_writer_are_all_acknowledged_in_order() {
    let fx = Fixture::new();
    let store = fx.open(3);
    let t = tid("alpha");
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (store, t) = (store.clone(), t.clone());
            tokio::spawn(async move {
                for j in 0..5 {
                    store.append(&t, &skey(&format!("c{i}")), &[user(&format!("{i}.{j}"))]).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for i in 0..64 {
        let want: Vec<String> = (0..5).map(|j| format!("{i}.{j}")).collect();
        assert_eq!(texts(&store.history(&t, &skey(&format!("c{i}")), None).await.unwrap()), want);
    }
    drop(store);
    let store = fx.open(3);
    assert_eq!(store.list(&t).await.unwrap().len(), 64);
}

#[tokio::test]
async fn a_turns_context_is_read_from_memory_when_kept_and_from_disk_otherwise() {
    let fx = Fixture::new();
    let store = fx.open(8);
    let t = tid("alpha");
    let k = skey("ctx");
    let all: Vec<String> = (0..30).map(|i| format!("{i:02}{}", "m".repeat(200))).collect();
    for m in &all {
        store.append(&t, &k, &[user(m)]).await.unwrap();
    }
    // The last few are kept (within RECENT_BYTES), the whole transcript is not.
    let kept = store.recent_history(&t, &k, Some(3)).expect("the last three are kept");
    assert_eq!(texts(&kept), all[27..]);
    assert!(store.recent_history(&t, &k, Some(20)).is_none());
    assert!(store.recent_history(&t, &k, None).is_none());
    // Either way a read gives the same answer.
    assert_eq!(texts(&store.history(&t, &k, Some(3)).await.unwrap()), all[27..]);
    assert_eq!(texts(&store.history(&t, &k, Some(20)).await.unwrap()), all[10..]);
    assert_eq!(texts(&store.history(&t, &k, None).await.unwrap()), all);
    // A session loaded from disk keeps nothing of what it held before: that is read (and verified).
    drop(store);
    let store = fx.open(8);
    assert_eq!(texts(&store.history(&t, &k, Some(2)).await.unwrap()), all[28..]);
    assert!(store.recent_history(&t, &k, Some(1)).is_none());
    store.append(&t, &k, &[user("next")]).await.unwrap();
    assert_eq!(texts(&store.recent_history(&t, &k, Some(1)).unwrap()), ["next"]);
    assert!(store.recent_history(&t, &k, Some(2)).is_none());
    // A failed append keeps nothing of itself.
    store.journal(&t).unwrap().probe.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(store.append(&t, &k, &[user("lost")]).await.is_err());
    store.journal(&t).unwrap().probe.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(texts(&store.history(&t, &k, Some(2)).await.unwrap()), ["29".to_string() + &"m".repeat(200), "next".into()]);
}

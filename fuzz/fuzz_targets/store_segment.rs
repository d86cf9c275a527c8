//! The store's segment reader, through the real store on disk: a session of 10 records in three
//! segments, one segment damaged (torn, zero-extended, corrupted, spliced), then the store opened
//! afresh and read strictly (`history`) and leniently (`read_tenant`, as export does).
//!
//! Never a panic; never a record that was not written; a damaged segment before the last never
//! silently loses records; a torn tail of the last segment loses only the records it cut, and
//! appending after it continues the transcript.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bulkhead::config::SecretString;
use bulkhead::ids::{AgentId, PeerKind, SessionKey, TenantId};
use bulkhead::session::{Message, SessionStore};
use bulkhead::store::{EncryptedStore, MasterKey, StoreOptions};
use bulkhead_fuzz::{Damage, damage};
use libfuzzer_sys::fuzz_target;

const PER_SEGMENT: u64 = 4;

struct Site {
    _dir: tempfile::TempDir,
    root: PathBuf,
    master: String,
    tenant: TenantId,
    key: SessionKey,
    messages: Vec<Message>,
    segments: Vec<(PathBuf, Vec<u8>)>,
    rt: tokio::runtime::Runtime,
}

impl Site {
    fn open(&self) -> EncryptedStore {
        let master = MasterKey::from_secret(&SecretString::new(self.master.clone()), "fuzz".into()).expect("key");
        let opts = StoreOptions { records_per_segment: PER_SEGMENT, ..StoreOptions::default() };
        EncryptedStore::open_at(&self.root, master, std::slice::from_ref(&self.tenant), opts).expect("store opens")
    }
}

fn message(i: usize) -> Message {
    match i % 3 {
        0 => Message::User { text: format!("question {i}") },
        1 => Message::Assistant { text: format!("answer {i}"), tool_calls: Vec::new() },
        _ => Message::ToolResult {
            call_id: format!("c{i}"),
            name: "read".into(),
            content: "x".repeat(i),
            is_error: false,
        },
    }
}

fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("state").join("store");
        let master = MasterKey::generate("fuzz".into()).to_text();
        let tenant = TenantId::parse("acme").expect("tenant");
        let key =
            SessionKey::new(AgentId::parse("acme-bot").expect("agent"), "api", PeerKind::Direct, "u1").expect("key");
        let messages: Vec<Message> = (0..10).map(message).collect();
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut site = Site { _dir: dir, root, master, tenant, key, messages, segments: Vec::new(), rt };
        let store = site.open();
        for m in &site.messages {
            site.rt.block_on(store.append(&site.tenant, &site.key, std::slice::from_ref(m))).expect("append");
        }
        drop(store);
        // Segment 0 is in the session's pack (`<xx>.pack`, with its metadata), segments 1 and 2
        // are in its directory.
        let sessions = site.root.join("tenants/acme/sessions");
        let session = std::fs::read_dir(&sessions)
            .expect("sessions")
            .map(|e| e.expect("entry").path())
            .find(|p| p.is_dir())
            .expect("the session's directory");
        let mut segs: Vec<PathBuf> = std::fs::read_dir(&session)
            .expect("session dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segs.sort();
        let pack = std::fs::read_dir(&sessions)
            .expect("sessions")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|x| x == "pack"))
            .expect("the session's pack");
        segs.insert(0, pack);
        assert_eq!(segs.len(), 3);
        site.segments = segs.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("segment"))).collect();
        site
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    segment: u8,
    damage: Vec<Damage>,
    append: bool,
}

fuzz_target!(|input: Input| {
    let site = site();
    let index = input.segment as usize % site.segments.len();
    let last = index + 1 == site.segments.len();
    let (path, original) = &site.segments[index];
    let damaged = damage(original, &input.damage);
    for (p, bytes) in &site.segments {
        std::fs::write(p, if p == path { &damaged } else { bytes }).expect("write segment");
    }
    let is_prefix = |got: &[Message]| got.len() <= site.messages.len() && got == &site.messages[..got.len()];
    let store = site.open();
    // Lenient read first (it changes nothing on disk).
    for read in store.read_tenant(&site.tenant).expect("lenient read") {
        let got: Vec<Message> = read.records.into_iter().map(|r| Message::from(r.msg)).collect();
        assert!(is_prefix(&got), "lenient read returned records that were not written");
    }
    let strict = site.rt.block_on(store.history(&site.tenant, &site.key, None));
    let Ok(got) = strict else { return };
    if index == 0 && damaged.is_empty() {
        // The pack (the session's metadata and segment 0) emptied: what a creation that never
        // reached the disk leaves, so no session, as if it had been deleted (which the store
        // cannot detect either; docs/store.md, non-goals).
        assert!(got.is_empty(), "an emptied pack still read as a session");
        return;
    }
    if index == 0 && got.is_empty() {
        // No session: only when the entry holding its metadata is gone from the pack (cut off,
        // or its session id changed), which is what a deletion leaves. A session whose metadata
        // entry is intact never silently vanishes.
        let first = 12 + u32::from_le_bytes(original[8..12].try_into().expect("4 bytes")) as usize;
        let entry = &original[8..first];
        assert!(
            !damaged.windows(entry.len()).any(|w| w == entry),
            "a session whose metadata entry is intact read as no session"
        );
        return;
    }
    assert!(is_prefix(&got), "history returned records that were not written");
    if got.len() < site.messages.len() {
        assert!(last, "a damaged segment before the last lost records silently ({} of 10 read)", got.len());
        assert!(got.len() as u64 >= 2 * PER_SEGMENT, "records of earlier segments lost");
    }
    if input.damage.iter().all(|d| matches!(d, Damage::ZeroTail(_))) {
        assert_eq!(got.len(), site.messages.len(), "a zero-filled extension lost records");
    }
    if input.append {
        let new = Message::User { text: "after the damage".into() };
        site.rt
            .block_on(store.append(&site.tenant, &site.key, std::slice::from_ref(&new)))
            .expect("append after damage");
        let again = site.rt.block_on(store.history(&site.tenant, &site.key, None)).expect("history after append");
        let mut want = got.clone();
        want.push(new);
        assert_eq!(again, want, "appending after a torn tail did not continue the transcript");
        // A fresh store reads the same.
        drop(store);
        let reopened = site.open();
        let again = site.rt.block_on(reopened.history(&site.tenant, &site.key, None)).expect("history after reopen");
        assert_eq!(again, want, "the transcript changed across a reopen");
    }
});

//! The store test suite both backends pass: the file store under a temporary `stateDir` and the
//! PostgreSQL store on a throwaway server. Each test opens two handles on one store (for
//! PostgreSQL, two gateways), so what one writes the other must read. Then the checks only the
//! database needs: nothing readable in any table, tampering with rows detected, a wrong master
//! key refused, one run per session across gateways.

use std::time::{Duration, SystemTime};

use super::postgres::PgStore;
use super::*;
use crate::cluster::Db;
use crate::ids::{AgentId, PeerKind};
use crate::session::ToolCall;

#[path = "../../../tests/pg_common.rs"]
mod pg_common;
use pg_common::Pg;

const SENTENCE: &str = "The quick brown fox deposits 4711 gold coins in Zurich";
const PEER: &str = "+41791234567";

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn skey(peer: &str) -> SessionKey {
    SessionKey::new(AgentId::parse("agent-x").unwrap(), "api", PeerKind::Direct, peer).unwrap()
}

fn tenants() -> [TenantId; 2] {
    [tid("alpha"), tid("bravo")]
}

enum Backend {
    File(tempfile::TempDir),
    Postgres(Pg),
}

/// One store, opened as often as a test needs (a file store once: it allows one process).
struct Bench {
    backend: Backend,
    master: String,
}

impl Bench {
    fn file() -> Self {
        Self { backend: Backend::File(tempfile::tempdir().unwrap()), master: MasterKey::generate("t".into()).to_text() }
    }
    fn postgres() -> Self {
        Self { backend: Backend::Postgres(Pg::start()), master: MasterKey::generate("t".into()).to_text() }
    }
    fn master(&self) -> MasterKey {
        MasterKey::from_secret(&crate::config::SecretString::new(self.master.clone()), "test key".into()).unwrap()
    }
    async fn open(&self) -> Durable {
        self.open_with(self.master()).await.unwrap()
    }
    async fn open_with(&self, master: MasterKey) -> Result<Durable, String> {
        match &self.backend {
            Backend::File(dir) => {
                EncryptedStore::open_at(&dir.path().join("store"), master, &tenants(), StoreOptions::default())
                    .map(Durable::File)
                    .map_err(|e| e.to_string())
            }
            Backend::Postgres(pg) => {
                let url = crate::config::SecretString::new(pg.url.clone());
                let db = Db::connect(&url, 4, crate::cluster::gateway_id()).await.map_err(|e| e.to_string())?;
                PgStore::open(db, master, &tenants()).await.map(Durable::Postgres).map_err(|e| e.to_string())
            }
        }
    }
    /// A second handle: another gateway on the same database, or the same file store.
    async fn second(&self, first: &Durable) -> Durable {
        match first {
            Durable::File(_) => first.clone(),
            Durable::Postgres(_) => self.open().await,
        }
    }
}

fn every_kind() -> Vec<Message> {
    vec![
        Message::User { text: SENTENCE.into() },
        Message::Assistant {
            text: "calling".into(),
            tool_calls: vec![ToolCall { id: "c1".into(), name: "read".into(), arguments: serde_json::json!({"p": 1}) }],
        },
        Message::ToolResult { call_id: "c1".into(), name: "read".into(), content: "body".into(), is_error: false },
        Message::FromSession { from: skey("other").to_string(), text: "hi".into() },
        Message::Assistant { text: "done".into(), tool_calls: vec![] },
    ]
}

async fn transcripts_round_trip(b: Bench) {
    let a = b.open().await;
    let other = b.second(&a).await;
    let (s1, s2) = (a.sessions(), other.sessions());
    let msgs = every_kind();
    s1.append(&tid("alpha"), &skey(PEER), &msgs[..2]).await.unwrap();
    s2.append(&tid("alpha"), &skey(PEER), &msgs[2..]).await.unwrap();
    for s in [&s1, &s2] {
        assert_eq!(s.history(&tid("alpha"), &skey(PEER), None).await.unwrap(), msgs);
        assert_eq!(s.history(&tid("alpha"), &skey(PEER), Some(2)).await.unwrap(), msgs[3..].to_vec());
        assert!(s.exists(&tid("alpha"), &skey(PEER)).await.unwrap());
        assert_eq!(s.message_count(&tid("alpha"), &skey(PEER)).await.unwrap(), 5);
        assert!(!s.exists(&tid("bravo"), &skey(PEER)).await.unwrap(), "another tenant sees nothing");
        assert!(s.history(&tid("bravo"), &skey(PEER), None).await.unwrap().is_empty());
        let list = s.list(&tid("alpha")).await.unwrap();
        assert_eq!((list.len(), list[0].key.clone(), list[0].messages), (1, skey(PEER), 5));
        assert!(s.list(&tid("bravo")).await.unwrap().is_empty());
    }
    assert!(s2.delete_session(&tid("alpha"), &skey(PEER)).await.unwrap());
    assert!(!s1.exists(&tid("alpha"), &skey(PEER)).await.unwrap());
    assert!(!s1.delete_session(&tid("alpha"), &skey(PEER)).await.unwrap());
    // A session created again after its deletion starts empty, under a new data key.
    s1.append(&tid("alpha"), &skey(PEER), &msgs[..1]).await.unwrap();
    assert_eq!(s2.history(&tid("alpha"), &skey(PEER), None).await.unwrap(), msgs[..1].to_vec());
}

async fn concurrent_appends_keep_every_message_in_order(b: Bench) {
    let a = b.open().await;
    let other = b.second(&a).await;
    let mut tasks = Vec::new();
    for (i, s) in [a.sessions(), other.sessions()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..40 {
                let m = Message::User { text: format!("{i}:{n}") };
                s.append(&tid("alpha"), &skey(PEER), &[m]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let h = a.sessions().history(&tid("alpha"), &skey(PEER), None).await.unwrap();
    assert_eq!(h.len(), 80, "no append lost or overwritten");
    for i in 0..2 {
        let mine: Vec<String> =
            h.iter().map(|m| m.text().to_string()).filter(|t| t.starts_with(&format!("{i}:"))).collect();
        let expected: Vec<String> = (0..40).map(|n| format!("{i}:{n}")).collect();
        assert_eq!(mine, expected, "each writer's messages in its order");
    }
}

async fn documents_are_per_tenant(b: Bench) {
    let a = b.open().await;
    let other = b.second(&a).await;
    let (s1, s2) = (a.sessions(), other.sessions());
    assert_eq!(s1.load_document(&tid("alpha"), "pairing").await.unwrap(), None);
    s1.save_document(&tid("alpha"), "pairing", PEER.as_bytes()).await.unwrap();
    s1.save_document(&tid("alpha"), "pairing", b"v2").await.unwrap();
    assert_eq!(s2.load_document(&tid("alpha"), "pairing").await.unwrap().as_deref(), Some(&b"v2"[..]));
    assert_eq!(s2.load_document(&tid("bravo"), "pairing").await.unwrap(), None);
    assert!(s1.save_document(&tid("alpha"), "../x", b"no").await.is_err(), "document names are checked");
}

async fn export_and_retention(b: Bench) {
    let a = b.open().await;
    let s = a.sessions();
    s.append(&tid("alpha"), &skey("p1"), &every_kind()).await.unwrap();
    s.append(&tid("alpha"), &skey("p2"), &every_kind()[..1]).await.unwrap();
    let read = a.read_tenant(&tid("alpha")).await.unwrap();
    assert_eq!(read.len(), 2);
    assert!(read.iter().all(|r| r.problems.is_empty()));
    let p1 = read.iter().find(|r| r.key == skey("p1").to_string()).expect("p1 exported");
    let msgs: Vec<Message> = p1.records.iter().map(|r| Message::from(r.msg.clone())).collect();
    assert_eq!(msgs, every_kind());
    // Retention of one day, two days from now: both sessions expire for alpha, none for bravo.
    s.append(&tid("bravo"), &skey("p1"), &every_kind()[..1]).await.unwrap();
    let retention = Retention { default_days: None, per_tenant: [(tid("alpha"), 1)].into_iter().collect() };
    let later = SystemTime::now() + Duration::from_secs(2 * 86_400);
    let report = a.apply_retention(retention, later).await.unwrap();
    assert_eq!(report, vec![(tid("alpha"), 2)]);
    assert!(s.list(&tid("alpha")).await.unwrap().is_empty());
    assert_eq!(s.list(&tid("bravo")).await.unwrap().len(), 1);
}

async fn delete_tenant_shreds_only_that_tenant(b: Bench) {
    let a = b.open().await;
    let s = a.sessions();
    s.append(&tid("alpha"), &skey(PEER), &every_kind()).await.unwrap();
    s.append(&tid("bravo"), &skey(PEER), &every_kind()).await.unwrap();
    s.save_document(&tid("alpha"), "pairing", b"x").await.unwrap();
    assert!(a.delete_tenant(&tid("alpha")).await.unwrap());
    assert!(!a.tenants().await.unwrap().contains(&tid("alpha")));
    drop((s, a));
    // Reopened, the tenant gets a new identity: nothing of the old one is readable or listed.
    let a = b.open().await;
    let s = a.sessions();
    assert!(s.list(&tid("alpha")).await.unwrap().is_empty());
    assert_eq!(s.load_document(&tid("alpha"), "pairing").await.unwrap(), None);
    assert_eq!(s.history(&tid("bravo"), &skey(PEER), None).await.unwrap(), every_kind());
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod file {
            $( #[tokio::test] async fn $name() { super::$name(super::Bench::file()).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Bench::postgres()).await } )*
        }
    };
}

both_backends!(
    transcripts_round_trip,
    concurrent_appends_keep_every_message_in_order,
    documents_are_per_tenant,
    export_and_retention,
    delete_tenant_shreds_only_that_tenant,
);

// ---- What only the database backend has to show ----

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under a directory, concatenated (the database's own disk).
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = fs::read(&p) {
                out.extend(b);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_holds_no_sentence_no_session_key_and_no_peer_id() {
    let b = Bench::postgres();
    let a = b.open().await;
    let s = a.sessions();
    s.append(&tid("alpha"), &skey(PEER), &every_kind()).await.unwrap();
    s.save_document(&tid("alpha"), "pairing", format!("{{\"approved\":[\"{PEER}\"]}}").as_bytes()).await.unwrap();
    let _lock = s.lock_run(&tid("alpha"), &skey(PEER), 4).await.unwrap();
    let Backend::Postgres(pg) = &b.backend else { unreachable!() };
    // The server's view (every table through pg_dump) and its disk (heap files, WAL).
    pg.psql("CHECKPOINT");
    let dump = pg.dump();
    assert!(contains(&dump, b"bh_records"), "the dump holds the tables");
    let disk = all_bytes(&pg.data_dir());
    for (what, bytes) in [("dump", &dump), ("disk", &disk)] {
        for needle in [SENTENCE, PEER, "quick brown fox", &skey(PEER).to_string(), "calling"] {
            assert!(!contains(bytes, needle.as_bytes()), "{what} holds {needle:?} in plaintext");
        }
    }
    let locks = pg.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'");
    assert_eq!(locks, "2", "the run lock and the tenant's run slot are held under digests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_rows_are_integrity_errors() {
    let b = Bench::postgres();
    let Backend::Postgres(pg) = &b.backend else { unreachable!() };
    let a = b.open().await;
    let s = a.sessions();
    for peer in ["p1", "p2"] {
        for m in every_kind() {
            s.append(&tid("alpha"), &skey(peer), &[m]).await.unwrap();
        }
    }
    s.append(&tid("bravo"), &skey("p1"), &every_kind()).await.unwrap();
    let is_integrity = |r: Result<Vec<Message>, StoreError>| matches!(r, Err(StoreError::Integrity(_)));
    let sids = pg.psql("SELECT sid FROM bh_sessions WHERE tenant = 'alpha' ORDER BY sid");
    let (a1, a2) = sids.split_once('\n').expect("two sessions");
    // Which of the two rows is which peer does not matter: both are checked.
    let histories = |s: Arc<dyn SessionStore>| async move {
        let mut v = Vec::new();
        for p in ["p1", "p2"] {
            v.push(s.history(&tid("alpha"), &skey(p), None).await);
        }
        v
    };
    // 1. A flipped byte in a record.
    pg.psql(&format!(
        "UPDATE bh_records SET sealed = overlay(sealed placing '\\x00'::bytea from 20 for 1) WHERE tenant = 'alpha' AND sid = '{a1}' AND seq = 2"
    ));
    assert!(histories(s.clone()).await.into_iter().any(is_integrity), "a modified record is refused");
    // 2. A record cut out of the middle (the counter says 5).
    pg.psql(&format!("DELETE FROM bh_records WHERE tenant = 'alpha' AND sid = '{a2}' AND seq = 1"));
    let h = histories(s.clone()).await;
    assert!(h.into_iter().all(is_integrity), "a missing record is refused");
    // 3. A record moved from another tenant into the cut position.
    pg.psql(&format!(
        "INSERT INTO bh_records SELECT 'alpha', '{a2}', 1, sealed FROM bh_records WHERE tenant = 'bravo' AND seq = 1"
    ));
    assert!(histories(s.clone()).await.into_iter().all(is_integrity), "a record from another tenant is refused");
    // 4. Session metadata swapped between tenants.
    pg.psql(&format!(
        "UPDATE bh_sessions SET meta = (SELECT meta FROM bh_sessions WHERE tenant = 'bravo' LIMIT 1) WHERE tenant = 'alpha' AND sid = '{a1}'"
    ));
    assert!(histories(s.clone()).await.into_iter().all(is_integrity));
    // 5. An identity swapped between tenants: the store refuses to open (nothing changed).
    drop((s, a));
    pg.psql("UPDATE bh_tenants SET identity = (SELECT identity FROM bh_tenants WHERE tenant = 'bravo') WHERE tenant = 'alpha'");
    let err = b.open_with(b.master()).await.err().expect("refused");
    assert!(err.contains("alpha") && err.contains("another tenant"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_master_key_is_refused_and_changes_nothing() {
    let b = Bench::postgres();
    let a = b.open().await;
    a.sessions().append(&tid("alpha"), &skey(PEER), &every_kind()).await.unwrap();
    let Backend::Postgres(pg) = &b.backend else { unreachable!() };
    let before = pg.psql("SELECT tenant, md5(identity) FROM bh_tenants ORDER BY tenant");
    let err = b.open_with(MasterKey::generate("other".into())).await.err().expect("refused");
    assert!(err.contains("does not open"), "{err}");
    assert_eq!(pg.psql("SELECT tenant, md5(identity) FROM bh_tenants ORDER BY tenant"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_one_session_never_overlap_across_gateways() {
    let b = Bench::postgres();
    let (g1, g2) = (b.open().await, b.open().await);
    let held = g1.sessions().lock_run(&tid("alpha"), &skey(PEER), 4).await.unwrap();
    let s2 = g2.sessions();
    let waiting = tokio::spawn(async move {
        let _g = s2.lock_run(&tid("alpha"), &skey(PEER), 4).await.unwrap();
        std::time::Instant::now()
    });
    // Another session of the same tenant is not held up.
    let other = tokio::time::timeout(Duration::from_secs(5), g2.sessions().lock_run(&tid("alpha"), &skey("p2"), 4)).await;
    assert!(other.is_ok(), "another session runs at once");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the second gateway waits while the first runs");
    let released = std::time::Instant::now();
    drop(held);
    let got = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("lock passed on").unwrap();
    assert!(got >= released);
}

#[tokio::test]
async fn a_remote_database_without_tls_is_refused_and_the_url_never_shown() {
    for url in ["postgres://u:hunter2@db.example.com/x", "host=10.0.0.5 user=u password=hunter2"] {
        let e = crate::cluster::check_url(url).expect_err("refused").to_string();
        assert!(e.contains("TLS") && !e.contains("hunter2"), "{e}");
    }
    for url in ["postgres://u@127.0.0.1:5/x", "postgres://u@localhost/x", "host=/run/postgresql user=u"] {
        assert!(crate::cluster::check_url(url).is_ok(), "{url}");
    }
    let e = crate::cluster::check_url("postgres://u:hunter2@[::1").expect_err("bad").to_string();
    assert!(!e.contains("hunter2"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_concurrency_cap_holds_across_gateways() {
    let b = Bench::postgres();
    let (g1, g2) = (b.open().await, b.open().await);
    // Cap 2: one run on each gateway fills it; a third session waits on either gateway.
    let r1 = g1.sessions().lock_run(&tid("alpha"), &skey("p1"), 2).await.unwrap();
    let r2 = g2.sessions().lock_run(&tid("alpha"), &skey("p2"), 2).await.unwrap();
    let s1 = g1.sessions();
    let third = tokio::spawn(async move { s1.lock_run(&tid("alpha"), &skey("p3"), 2).await.map(|_| ()) });
    // Another tenant is not held up by alpha's cap.
    let s2 = g2.sessions();
    let other = tokio::time::timeout(Duration::from_secs(5), s2.lock_run(&tid("bravo"), &skey("p1"), 2)).await;
    assert!(other.is_ok(), "bravo runs at once");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!third.is_finished(), "a third run of alpha waits while two run on two gateways");
    drop(r2);
    tokio::time::timeout(Duration::from_secs(10), third).await.expect("a slot freed").unwrap().unwrap();
    drop(r1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_usage_is_counted_across_gateways() {
    use crate::usage::UsageMeter;
    let pg = Pg::start();
    let url = crate::config::SecretString::new(pg.url.clone());
    let (d1, d2) = (
        Db::connect(&url, 2, crate::cluster::gateway_id()).await.unwrap(),
        Db::connect(&url, 2, crate::cluster::gateway_id()).await.unwrap(),
    );
    let (u1, u2) = (UsageMeter::in_memory(), UsageMeter::in_memory());
    let agent = AgentId::parse("agent-x").unwrap();
    u1.record(&tid("alpha"), &agent, |c| c.input_tokens += 700);
    u2.record(&tid("alpha"), &agent, |c| c.output_tokens += 300);
    u2.record(&tid("bravo"), &agent, |c| c.sandbox_ms += 50);
    for _ in 0..2 {
        crate::cluster::usage::sync(&d1, &u1).await.unwrap();
        crate::cluster::usage::sync(&d2, &u2).await.unwrap();
    }
    for u in [&u1, &u2] {
        assert_eq!(u.today(&tid("alpha")).model_tokens, 1000, "both gateways' tokens count");
        assert_eq!(u.today(&tid("bravo")).sandbox_ms, 50);
    }
    assert_eq!(u1.today_here(&tid("alpha")).model_tokens, 700, "its own stays its own");
    // The table holds counters and tenant ids only.
    let dump = pg.dump();
    assert!(!contains(&dump, b"agent-x"), "no agent ids or content in bh_usage");
}

#[test]
fn gateways_of_one_fleet_name_workspaces_alike_and_two_fleets_never_do() {
    use crate::sandbox::docker::Fleet;
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (dir.path().join("k1"), dir.path().join("k2"));
    std::fs::write(&k1, MasterKey::generate("a".into()).to_text()).unwrap();
    std::fs::write(&k2, MasterKey::generate("b".into()).to_text()).unwrap();
    for k in [&k1, &k2] {
        std::fs::set_permissions(k, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let config = |key: &std::path::Path, state: &str, backend: &str| {
        let text = format!(
            r#"{{ stateDir: "{state}", store: {{ masterKey: {{ file: {key:?} }}, {backend} }},
                 models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
                 tenants: [ {{ id: "alpha" }} ], agents: {{ list: [ {{ id: "a", tenant: "alpha", model: "demo/scripted" }} ] }} }}"#
        );
        crate::config::load_str(&text, dir.path()).unwrap_or_else(|e| panic!("{e:?}"))
    };
    let pg = r#"backend: "postgres", url: { env: "UNUSED_PG_URL" }"#;
    let (a, b) = (Fleet::of(&config(&k1, "gw-a", pg)).unwrap(), Fleet::of(&config(&k1, "gw-b", pg)).unwrap());
    assert_eq!(a.volumes, b.volumes, "two gateways of one fleet use the same volumes");
    assert_eq!(a.scope_secret, b.scope_secret, "and name session workspaces alike");
    let other = Fleet::of(&config(&k2, "gw-a", pg)).unwrap();
    assert_ne!(a.volumes, other.volumes, "another fleet (another master key) never shares a volume");
    assert_ne!(a.scope_secret, other.scope_secret);
    assert!(Fleet::of(&config(&k1, "gw-a", r#"backend: "file""#)).is_none(), "one host keeps its own");
    let one = crate::sandbox::docker::volume_owner(&config(&k1, "gw-a", r#"backend: "file""#));
    assert_ne!(one, crate::sandbox::docker::volume_owner(&config(&k1, "gw-b", r#"backend: "file""#)));
}

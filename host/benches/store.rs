//! Encrypted store benchmark: 1 KiB append latency (p50/p99, each append fsynced), sustained write
//! throughput, and the time to load a 10,000-turn session, each compared in the same run with
//! writing the same records unencrypted (length-prefixed JSON, same fsync policy).
//! Run with `cargo bench -p bulkhead --bench store`. Figures are recorded in BENCHMARKS.md.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead::ids::{AgentId, PeerKind, SessionKey, TenantId};
use bulkhead::session::{Message, SessionStore};
use bulkhead::store::{EncryptedStore, MasterKey, Record, RecordMessage, StoreOptions};

const APPENDS: usize = 2_000;
const LONG: usize = 10_000;

fn text_1k(i: usize) -> String {
    let mut s = format!("turn {i}: ");
    while s.len() < 1024 {
        s.push_str("lorem ipsum dolor sit amet ");
    }
    s.truncate(1024);
    s
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// The unencrypted baseline: the same record JSON, length-prefixed, appended and fsynced.
struct Plain {
    file: File,
}

impl Plain {
    fn open(path: &Path) -> Self {
        Self { file: OpenOptions::new().create(true).append(true).open(path).unwrap() }
    }
    fn append(&mut self, text: &str, sync: bool) {
        let rec = Record { v: 1, ts: 0, msg: RecordMessage::User { text: text.to_string() } };
        let json = serde_json::to_vec(&rec).unwrap();
        let mut frame = (json.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&json);
        self.file.write_all(&frame).unwrap();
        if sync {
            self.file.sync_data().unwrap();
        }
    }
    fn load(path: &Path) -> Vec<Message> {
        let mut bytes = Vec::new();
        File::open(path).unwrap().read_to_end(&mut bytes).unwrap();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos + 4 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            let rec: Record = serde_json::from_slice(&bytes[pos + 4..pos + 4 + len]).unwrap();
            out.push(Message::from(rec.msg));
            pos += 4 + len;
        }
        out
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let tenant = TenantId::parse("bench").unwrap();
    let key = |peer: &str| SessionKey::new(AgentId::parse("agent").unwrap(), "api", PeerKind::Direct, peer).unwrap();
    let master_text = MasterKey::generate("bench".into()).to_text();
    let mk =
        || MasterKey::from_secret(&bulkhead::config::SecretString::new(master_text.clone()), "bench".into()).unwrap();
    let store = EncryptedStore::open_at(
        &dir.path().join("state/store"),
        mk(),
        std::slice::from_ref(&tenant),
        StoreOptions::default(),
    )
    .unwrap();
    println!("encrypted store benchmark ({} appends of 1 KiB, each fsynced; {LONG}-turn load)", APPENDS);

    // 1. Append latency, encrypted vs plain, interleaved so both see the same disk conditions.
    let mut plain = Plain::open(&dir.path().join("plain.log"));
    let (mut enc_lat, mut plain_lat) = (Vec::new(), Vec::new());
    let k = key("latency");
    for i in 0..APPENDS {
        let t = text_1k(i);
        let m = [Message::User { text: t.clone() }];
        let s = Instant::now();
        rt.block_on(store.append(&tenant, &k, &m)).unwrap();
        enc_lat.push(s.elapsed());
        let s = Instant::now();
        plain.append(&t, true);
        plain_lat.push(s.elapsed());
    }
    let (e50, e99) = (pct(&mut enc_lat, 0.5), pct(&mut enc_lat, 0.99));
    let (p50, p99) = (pct(&mut plain_lat, 0.5), pct(&mut plain_lat, 0.99));
    println!(
        "append 1 KiB (fsync)      encrypted p50 {} p99 {} | plain p50 {} p99 {}",
        ms(e50),
        ms(e99),
        ms(p50),
        ms(p99)
    );

    // 2. Sustained throughput (1 KiB appends back to back, each fsynced).
    let k2 = key("throughput");
    let s = Instant::now();
    for i in 0..APPENDS {
        rt.block_on(store.append(&tenant, &k2, &[Message::User { text: text_1k(i) }])).unwrap();
    }
    let enc_t = s.elapsed();
    let mut plain2 = Plain::open(&dir.path().join("plain2.log"));
    let s = Instant::now();
    for i in 0..APPENDS {
        plain2.append(&text_1k(i), true);
    }
    let plain_t = s.elapsed();
    let mb = (APPENDS * 1024) as f64 / 1e6;
    println!(
        "throughput (fsync each)   encrypted {:.2} MB/s | plain {:.2} MB/s",
        mb / enc_t.as_secs_f64(),
        mb / plain_t.as_secs_f64()
    );
    // Without the per-append fsync cost, in batches of 100 turns (one fsync per batch).
    let k3 = key("batched");
    let batch: Vec<Message> = (0..100).map(|i| Message::User { text: text_1k(i) }).collect();
    let s = Instant::now();
    for _ in 0..(LONG / 100) {
        rt.block_on(store.append(&tenant, &k3, &batch)).unwrap();
    }
    let enc_b = s.elapsed();
    let mut plain3 = Plain::open(&dir.path().join("plain3.log"));
    let s = Instant::now();
    for b in 0..(LONG / 100) {
        for i in 0..100 {
            plain3.append(&text_1k(b * 100 + i), false);
        }
        plain3.file.sync_data().unwrap();
    }
    let plain_b = s.elapsed();
    let mb = (LONG * 1024) as f64 / 1e6;
    println!(
        "throughput (batches/100)  encrypted {:.1} MB/s | plain {:.1} MB/s",
        mb / enc_b.as_secs_f64(),
        mb / plain_b.as_secs_f64()
    );

    // 3. Load a 10,000-turn session from a freshly opened store (no cache).
    drop(store);
    let root2 = dir.path().join("state2/store");
    let store = EncryptedStore::open_at(&root2, mk(), std::slice::from_ref(&tenant), StoreOptions::default()).unwrap();
    let long = key("long");
    for b in 0..(LONG / 100) {
        let batch: Vec<Message> = (0..100).map(|i| Message::User { text: text_1k(b * 100 + i) }).collect();
        rt.block_on(store.append(&tenant, &long, &batch)).unwrap();
    }
    drop(store);
    let mut enc_load = Vec::new();
    let mut n = 0;
    for _ in 0..5 {
        let store =
            EncryptedStore::open_at(&root2, mk(), std::slice::from_ref(&tenant), StoreOptions::default()).unwrap();
        let s = Instant::now();
        n = rt.block_on(store.history(&tenant, &long, None)).unwrap().len();
        enc_load.push(s.elapsed());
    }
    assert_eq!(n, LONG);
    let mut plain_load = Vec::new();
    for _ in 0..5 {
        let s = Instant::now();
        let m = Plain::load(&dir.path().join("plain3.log"));
        plain_load.push(s.elapsed());
        assert_eq!(m.len(), LONG);
    }
    println!(
        "load 10,000 turns (median of 5, cold store) encrypted {} | plain {}",
        ms(pct(&mut enc_load, 0.5)),
        ms(pct(&mut plain_load, 0.5))
    );
}

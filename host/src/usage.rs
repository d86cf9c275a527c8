//! Usage metering for billing: per tenant, agent and UTC day — runs, model tokens in/out, tool
//! calls by tool, sandbox time, policy denials and refusals.
//!
//! Usage holds counters and ids only: no message content, no session keys, no peer ids. It is
//! kept in memory and flushed to `<stateDir>/usage/<tenant>.json` (atomic replace, fsync) every
//! `FLUSH_INTERVAL` and on shutdown, so a crash loses at most that interval and never leaves a
//! torn file. `UsageMeter::tenant_usage` is the one report function (CLI and admin API).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::ids::{AgentId, TenantId};
use crate::quota::Today;

/// How often the gateway writes changed usage to disk.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Version of the usage file format.
const FORMAT_VERSION: u32 = 1;
/// Largest usage file read (a tenant's whole history of counters).
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Tool-call names kept apart in usage; any other name the model invents counts as `other`.
const OTHER_TOOL: &str = "other";

/// A UTC calendar day, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(i64);

impl Day {
    /// Days since 1970-01-01.
    pub fn number(self) -> i64 {
        self.0
    }

    pub fn today() -> Day {
        Day::of(SystemTime::now())
    }

    pub fn of(t: SystemTime) -> Day {
        let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        Day(secs.div_euclid(86_400))
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Result<Day, String> {
        let bad = || format!("invalid date {s:?}: expected YYYY-MM-DD");
        let mut it = s.split('-');
        let (Some(y), Some(m), Some(d), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(bad());
        }
        let (y, m, d): (i64, u32, u32) =
            (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
        if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
            return Err(bad());
        }
        Ok(Day(days_from_civil(y, m, d)))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, days since 1970-01-01).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Counters of one agent on one day (and sums of them). Also the on-disk and report shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Counters {
    /// Turns that started (got a run slot).
    pub runs: u64,
    /// Runs that ended in an error (model, store).
    pub runs_failed: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Tool calls by tool name, allowed or not.
    pub tool_calls: BTreeMap<String, u64>,
    /// Wall-clock milliseconds of sandbox tool calls.
    pub sandbox_ms: u64,
    /// Sandbox tool calls that could not run (backend unavailable or failed).
    pub sandbox_failures: u64,
    /// Tool calls the policy denied.
    pub denials: u64,
    /// Turns or tool calls refused by a quota.
    pub quota_refusals: u64,
    /// Turns refused because the tenant's queue was full.
    pub busy_refusals: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.runs += o.runs;
        self.runs_failed += o.runs_failed;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        for (k, v) in &o.tool_calls {
            *self.tool_calls.entry(k.clone()).or_default() += v;
        }
        self.sandbox_ms += o.sandbox_ms;
        self.sandbox_failures += o.sandbox_failures;
        self.denials += o.denials;
        self.quota_refusals += o.quota_refusals;
        self.busy_refusals += o.busy_refusals;
    }

    /// Counts one tool call under its catalog name; names that are not tools count as `other`
    /// (a model could invent unboundedly many).
    pub fn tool_call(&mut self, name: &str) {
        let name = crate::tools::Tool::from_exact_name(name).map_or(OTHER_TOOL, |t| t.name());
        *self.tool_calls.entry(name.to_string()).or_default() += 1;
    }

    pub fn model_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// A tenant's usage since a day: totals and per agent. What `bulkhead usage` and `/admin/usage`
/// report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantUsage {
    pub tenant: String,
    /// First day counted (`None`: all recorded days).
    pub since: Option<String>,
    pub total: Counters,
    pub agents: BTreeMap<String, Counters>,
}

/// The file `<stateDir>/usage/<tenant>.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UsageFile {
    version: u32,
    tenant: String,
    /// `YYYY-MM-DD` → agent id → counters.
    days: BTreeMap<String, BTreeMap<String, Counters>>,
}

#[derive(Debug, Default, Clone)]
struct Book {
    days: BTreeMap<Day, BTreeMap<AgentId, Counters>>,
    dirty: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot read usage in {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("usage file {path} is invalid: {message}")]
    Invalid { path: String, message: String },
}

/// Usage of every tenant, in memory, optionally persisted in a folder.
pub struct UsageMeter {
    dir: Option<PathBuf>,
    books: Mutex<BTreeMap<TenantId, Book>>,
    /// What the other gateways sharing a database used today, per tenant, as last synced
    /// (`cluster::usage`): daily budgets count the whole fleet.
    fleet: Mutex<(Day, HashMap<TenantId, Today>)>,
}

impl UsageMeter {
    /// Usage kept in memory only (tests, tools).
    pub fn in_memory() -> Self {
        Self { dir: None, books: Mutex::default(), fleet: Mutex::new((Day(0), HashMap::new())) }
    }

    /// The folder usage lives in under a state directory.
    pub fn dir_in(state_dir: &Path) -> PathBuf {
        state_dir.join("usage")
    }

    /// Loads the usage recorded in `dir` (which need not exist yet; `flush` creates it).
    /// A file that does not parse is an error, never silently reset: it is billing data.
    pub fn open(dir: &Path) -> Result<Self, UsageError> {
        let io = |e| UsageError::Io { path: dir.display().to_string(), source: e };
        let mut books = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => Some(e),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        for entry in entries.into_iter().flatten() {
            let path = entry.map_err(io)?.path();
            let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue; // temp files of an interrupted write, and anything else
            };
            if stem.starts_with('.') {
                continue;
            }
            let shown = path.display().to_string();
            let invalid = |message: String| UsageError::Invalid { path: shown.clone(), message };
            let tenant = TenantId::parse(stem).map_err(|e| invalid(format!("file name: {e}")))?;
            let meta = std::fs::metadata(&path).map_err(io)?;
            if meta.len() > MAX_FILE_BYTES {
                return Err(invalid(format!("larger than {MAX_FILE_BYTES} bytes")));
            }
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let file: UsageFile = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
            if file.version != FORMAT_VERSION {
                return Err(invalid(format!("unsupported version {}", file.version)));
            }
            if file.tenant != tenant.as_str() {
                return Err(invalid(format!("holds tenant {:?}, not {:?}", file.tenant, tenant.as_str())));
            }
            let mut book = Book::default();
            for (day, agents) in file.days {
                let day = Day::parse(&day).map_err(invalid)?;
                let mut out = BTreeMap::new();
                for (agent, c) in agents {
                    let agent = AgentId::parse(&agent).map_err(|e| invalid(format!("agent id: {e}")))?;
                    out.insert(agent, c);
                }
                book.days.insert(day, out);
            }
            books.insert(tenant, book);
        }
        Ok(Self { dir: Some(dir.to_path_buf()), books: Mutex::new(books), fleet: Mutex::new((Day(0), HashMap::new())) })
    }

    /// Adds to today's counters of a tenant's agent.
    pub fn record(&self, tenant: &TenantId, agent: &AgentId, f: impl FnOnce(&mut Counters)) {
        self.record_on(Day::today(), tenant, agent, f);
    }

    pub fn record_on(&self, day: Day, tenant: &TenantId, agent: &AgentId, f: impl FnOnce(&mut Counters)) {
        let mut books = self.books.lock().expect("usage lock");
        let book = books.entry(tenant.clone()).or_default();
        book.dirty = true;
        f(book.days.entry(day).or_default().entry(agent.clone()).or_default());
    }

    /// What a tenant has used today, for daily quotas: here, and on the other gateways of a
    /// fleet as last synced.
    pub fn today(&self, tenant: &TenantId) -> Today {
        let mut t = self.today_here(tenant);
        let fleet = self.fleet.lock().expect("usage lock");
        if fleet.0 == Day::today()
            && let Some(o) = fleet.1.get(tenant)
        {
            t.model_tokens += o.model_tokens;
            t.sandbox_ms += o.sandbox_ms;
        }
        t
    }

    /// Sets what the other gateways used on `day` (replacing the last sync).
    pub fn set_fleet(&self, day: Day, others: HashMap<TenantId, Today>) {
        *self.fleet.lock().expect("usage lock") = (day, others);
    }

    /// What a tenant has used today on this gateway alone.
    pub fn today_here(&self, tenant: &TenantId) -> Today {
        let books = self.books.lock().expect("usage lock");
        let mut t = Today::default();
        if let Some(agents) = books.get(tenant).and_then(|b| b.days.get(&Day::today())) {
            for c in agents.values() {
                t.model_tokens += c.model_tokens();
                t.sandbox_ms += c.sandbox_ms;
            }
        }
        t
    }

    /// Tenants with recorded usage.
    pub fn tenants(&self) -> Vec<TenantId> {
        self.books.lock().expect("usage lock").keys().cloned().collect()
    }

    /// A tenant's usage from `since` (inclusive) on: the report for billing and `/admin/usage`.
    pub fn tenant_usage(&self, tenant: &TenantId, since: Option<Day>) -> TenantUsage {
        let books = self.books.lock().expect("usage lock");
        let mut out = TenantUsage {
            tenant: tenant.to_string(),
            since: since.map(|d| d.to_string()),
            total: Counters::default(),
            agents: BTreeMap::new(),
        };
        if let Some(book) = books.get(tenant) {
            for (_, agents) in book.days.range(since.unwrap_or(Day(i64::MIN))..) {
                for (agent, c) in agents {
                    out.total.add(c);
                    out.agents.entry(agent.to_string()).or_default().add(c);
                }
            }
        }
        out
    }

    /// A tenant's usage per day (all agents summed) for the last `days` days up to today, oldest
    /// first, days without usage included at zero (the operator console's chart).
    pub fn tenant_daily(&self, tenant: &TenantId, days: i64) -> Vec<(String, Counters)> {
        let books = self.books.lock().expect("usage lock");
        let today = Day::today();
        (0..days)
            .rev()
            .map(|back| {
                let day = Day(today.0 - back);
                let mut sum = Counters::default();
                if let Some(agents) = books.get(tenant).and_then(|b| b.days.get(&day)) {
                    for c in agents.values() {
                        sum.add(c);
                    }
                }
                (day.to_string(), sum)
            })
            .collect()
    }

    /// Writes every tenant whose usage changed since the last flush (atomically, fsynced).
    /// A tenant whose write fails stays marked and is retried by the next flush.
    pub fn flush(&self) -> Result<(), UsageError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let changed: Vec<(TenantId, Book)> = {
            let mut books = self.books.lock().expect("usage lock");
            books
                .iter_mut()
                .filter(|(_, b)| b.dirty)
                .map(|(t, b)| {
                    b.dirty = false;
                    (t.clone(), b.clone())
                })
                .collect()
        };
        if changed.is_empty() {
            return Ok(());
        }
        let dir_ready = fsutil::create_private_dir(dir);
        let mut first_error = None;
        for (tenant, book) in changed {
            let written = match &dir_ready {
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                Ok(()) => {
                    let file = UsageFile {
                        version: FORMAT_VERSION,
                        tenant: tenant.to_string(),
                        days: book
                            .days
                            .iter()
                            .map(|(d, a)| (d.to_string(), a.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()))
                            .collect(),
                    };
                    let bytes = serde_json::to_vec(&file).expect("usage serialises");
                    fsutil::write_atomic(&dir.join(format!("{tenant}.json")), &bytes)
                }
            };
            if let Err(e) = written {
                if let Some(b) = self.books.lock().expect("usage lock").get_mut(&tenant) {
                    b.dirty = true;
                }
                first_error.get_or_insert(UsageError::Io { path: dir.display().to_string(), source: e });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (TenantId, AgentId) {
        (TenantId::parse("acme").unwrap(), AgentId::parse("bot").unwrap())
    }

    #[test]
    fn days_round_trip_through_the_calendar() {
        for s in ["1970-01-01", "2000-02-29", "2026-11-25", "2100-03-01", "1969-12-31"] {
            assert_eq!(Day::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Day::parse("1970-01-02").unwrap(), Day(1));
        assert_eq!(Day::of(UNIX_EPOCH + Duration::from_secs(86_400 * 365 + 5)).to_string(), "1971-01-01");
        for bad in ["2026-02-29", "2026-13-01", "2026-1-01", "26-01-01", "2026-01-01x", "", "2026-00-10"] {
            let e = Day::parse(bad).unwrap_err();
            assert!(e.contains("expected YYYY-MM-DD"), "{bad}: {e}");
        }
    }

    #[test]
    fn usage_survives_a_reopen_and_reports_since_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let udir = dir.path().join("usage");
        let (t, a) = ids();
        let m = UsageMeter::open(&udir).unwrap();
        let (d1, d2) = (Day::parse("2026-11-01").unwrap(), Day::parse("2026-11-02").unwrap());
        m.record_on(d1, &t, &a, |c| {
            c.runs += 2;
            c.input_tokens += 10;
            c.tool_call("exec");
        });
        m.record_on(d2, &t, &a, |c| {
            c.runs += 1;
            c.output_tokens += 7;
            c.tool_call("made-up-tool");
            c.sandbox_ms += 1500;
        });
        m.flush().unwrap();
        assert_eq!(fsutil::mode_of(&udir.join("acme.json")).unwrap(), 0o600);
        let again = UsageMeter::open(&udir).unwrap();
        let all = again.tenant_usage(&t, None);
        assert_eq!(all.total.runs, 3);
        assert_eq!(all.total.tool_calls.get("exec"), Some(&1));
        assert_eq!(all.total.tool_calls.get("other"), Some(&1));
        assert_eq!(all.agents["bot"].sandbox_ms, 1500);
        let since = again.tenant_usage(&t, Some(d2));
        assert_eq!((since.total.runs, since.total.input_tokens, since.total.output_tokens), (1, 0, 7));
        assert_eq!(since.since.as_deref(), Some("2026-11-02"));
        let none = again.tenant_usage(&TenantId::parse("other").unwrap(), None);
        assert_eq!(none.total, Counters::default());
    }

    #[test]
    fn a_corrupt_usage_file_is_a_clear_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acme.json"), b"{ not json").unwrap();
        let e = UsageMeter::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("acme.json") && e.contains("invalid"), "{e}");
        std::fs::write(dir.path().join("acme.json"), br#"{"version":1,"tenant":"other","days":{}}"#).unwrap();
        let e = UsageMeter::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("holds tenant \"other\""), "{e}");
    }

    #[test]
    fn today_sums_tokens_and_sandbox_time_of_all_agents() {
        let m = UsageMeter::in_memory();
        let (t, a) = ids();
        let b = AgentId::parse("bot2").unwrap();
        m.record(&t, &a, |c| {
            c.input_tokens += 5;
            c.sandbox_ms += 100;
        });
        m.record(&t, &b, |c| c.output_tokens += 6);
        m.record_on(Day::parse("2001-01-01").unwrap(), &t, &a, |c| c.input_tokens += 1000);
        assert_eq!(m.today(&t), Today { model_tokens: 11, sandbox_ms: 100 });
    }

    #[test]
    fn the_file_holds_counters_and_ids_only() {
        let dir = tempfile::tempdir().unwrap();
        let m = UsageMeter::open(dir.path()).unwrap();
        let (t, a) = ids();
        m.record(&t, &a, |c| c.tool_call("read"));
        m.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("acme.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v.as_object().unwrap().len(), 3, "{text}");
    }
}

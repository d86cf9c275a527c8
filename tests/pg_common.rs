//! A throwaway PostgreSQL server for tests: a new cluster in a temporary directory (Debian's
//! `postgresql` package, installed by scripts/setup.sh), on a free loopback port, stopped and
//! removed on drop. A missing PostgreSQL fails the test: it never skips.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Pg {
    dir: tempfile::TempDir,
    pub port: u16,
    /// `postgres://bulkhead@127.0.0.1:PORT/bulkhead`
    pub url: String,
}

/// The directory holding `initdb`, `pg_ctl` and `postgres` (Debian keeps them out of PATH).
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run scripts/setup.sh, which installs Debian's postgresql")
    })
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a PostgreSQL program as the `postgres` user when we are root (the server refuses root).
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn run(mut c: Command, what: &str) {
    let out = c.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pg {
    /// A new server for tests (`fsync` off: a test's data need not survive a power cut).
    pub fn start() -> Pg {
        Self::start_with(false)
    }

    /// A new server; `durable` keeps fsync on (benchmarks measure the real cost).
    pub fn start_with(durable: bool) -> Pg {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("bulkhead-pg-").tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        if is_root() {
            let pw = Command::new("id").args(["-u", "postgres"]).output().expect("id postgres");
            let gw = Command::new("id").args(["-g", "postgres"]).output().expect("id postgres");
            let uid: u32 = String::from_utf8_lossy(&pw.stdout).trim().parse().expect("the postgres user exists");
            let gid: u32 = String::from_utf8_lossy(&gw.stdout).trim().parse().expect("the postgres group exists");
            for p in [dir.path(), &data] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
            }
        }
        let mut init = pg_command(&bin.join("initdb"));
        init.args(["-A", "trust", "-U", "bulkhead", "-E", "UTF8", "--no-instructions", "-D"]).arg(&data);
        run(init, "initdb");
        let port = free_port();
        let fsync = if durable { "on" } else { "off" };
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync={fsync} -c max_connections=300 -c shared_buffers=32MB",
            dir.path().display()
        );
        let mut start = pg_command(&bin.join("pg_ctl"));
        start
            .args(["-w", "-t", "60", "-s", "-D"])
            .arg(&data)
            .args(["-l"])
            .arg(dir.path().join("log"))
            .args(["-o", &opts, "start"]);
        run(start, "pg_ctl start");
        let url = format!("postgres://bulkhead@127.0.0.1:{port}/postgres");
        Pg { dir, port, url }
    }

    /// Every table's bytes as the server holds them (a dump of all data, as text).
    pub fn dump(&self) -> Vec<u8> {
        let out = Command::new("pg_dump")
            .args(["--data-only", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "bulkhead", "postgres"])
            .output()
            .expect("pg_dump");
        assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// The data directory's files (what is on the database host's disk).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs SQL with psql, returning its output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "bulkhead", "-d", "postgres", "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let mut stop = pg_command(&bin_dir().join("pg_ctl"));
        stop.args(["-s", "-m", "immediate", "-D"]).arg(self.data_dir()).arg("stop");
        let _ = stop.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

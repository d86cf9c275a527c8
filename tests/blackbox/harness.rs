//! Starts the real `bulkhead` binary on an ephemeral port with a config written for the test,
//! captures its logs, and stops it with SIGTERM.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

pub struct Gateway {
    child: Child,
    pub base: String,
    /// Holds the config and state directory for the gateway's lifetime (`None`: the caller's).
    _dir: Option<tempfile::TempDir>,
    logs: Arc<Mutex<String>>,
}

impl Gateway {
    /// Writes `config` (JSON5; `gateway.bind` should be `127.0.0.1:0`) and serves it.
    pub async fn start(config: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut gw = Self::start_in(dir.path(), config, env).await;
        gw._dir = Some(dir);
        gw
    }

    /// Like `start`, with the config and state in `dir`, which the caller keeps (for restarts).
    pub async fn start_in(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_with(dir, config, env, &[]).await
    }

    /// `start_in` with more `serve` arguments (`--no-watch`).
    pub async fn start_with(dir: &std::path::Path, config: &str, env: &[(&str, &str)], args: &[&str]) -> Gateway {
        let path = dir.join("bulkhead.json5");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(args)
            .arg("--config")
            .arg(&path)
            .env_remove("BULKHEAD_CONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn bulkhead");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await;
        let base = match line {
            Ok(Ok(Some(l))) if l.starts_with("listening on ") => l["listening on ".len()..].to_string(),
            other => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                panic!("gateway did not start: {other:?}\nlogs:\n{}", logs.lock().unwrap());
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Gateway { child, base, _dir: None, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn ws_url(&self) -> String {
        format!("{}/ws", self.base.replacen("http://", "ws://", 1))
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits (up to 60 s) until the logs hold `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.logs().contains(needle) {
            assert!(std::time::Instant::now() < deadline, "no log line with {needle:?}:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (`"HUP"`, ...) to the gateway.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// The gateway's resident memory (`VmRSS` of `/proc/PID/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id().expect("running"))).unwrap();
        let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("VmRSS in /proc/PID/status");
        line.trim().trim_end_matches(" kB").parse().unwrap()
    }

    /// Sends SIGKILL (no cleanup at all) and waits for the process to be gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }

    /// Sends SIGTERM and waits for the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().expect("running").to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let status =
            tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("exit in time").unwrap();
        status.code()
    }
}

/// Runs the binary to completion (for CLI commands).
pub fn run_cli(args: &[&str], cwd: Option<&std::path::Path>) -> (i32, String, String) {
    run_cli_env(args, cwd, &[])
}

/// `run_cli` with environment variables set (the secrets a config refers to).
pub fn run_cli_env(args: &[&str], cwd: Option<&std::path::Path>, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(args).env_remove("BULKHEAD_CONFIG").envs(env.iter().copied());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().expect("run bulkhead");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Runs the binary to completion with `env` set: (exit code, stdout + stderr).
pub fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let (code, out, err) = run_cli_env(args, None, env);
    (code, format!("{out}{err}"))
}

/// `config check --json` on `config` (JSON5, in a file of its own), which must refuse it: the key
/// paths of its errors and the whole output (to check that no secret is echoed).
pub fn refused_paths(config: &str) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.json5");
    std::fs::write(&path, config).expect("write config");
    let (code, out, _) = run_cli(&["config", "check", "--json", path.to_str().unwrap()], None);
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("config check --json prints JSON");
    let paths =
        v["errors"].as_array().expect("errors").iter().map(|e| e["path"].as_str().unwrap().to_string()).collect();
    (paths, out)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// A tmpfs of `mb` MiB mounted at `dir` (this suite runs as root, as CI does), unmounted on drop.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    pub fn mount(dir: &std::path::Path, mb: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "cannot mount a small tmpfs state dir: {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file until it is full; returns the file.
pub fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5a_u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let byte = [0u8; 1];
    while f.write_all(&byte).is_ok() {}
    path
}

//! `exec` for the Docker sandbox: a real `sh -c` (BusyBox) in its own process group.
//!
//! The runner is the container's PID 1 (no init beside it: nothing else may hold the protocol
//! pipes), so it also reaps every orphan a command leaves behind. The command runs inside the
//! container's namespaces, cgroup, seccomp profile and capability set. Here the runner adds, per call: a fresh
//! process group, a wall-clock timeout that SIGKILLs the whole group, a sweep that kills every
//! other process left in the container when the call ends (so a `setsid` escapee or a background
//! job cannot outlive it), an output cap, an empty environment and the workspace as working
//! directory. With a disk budget, the quota holds while the command runs: a watchdog measures the
//! workspace every `QUOTA_EVERY` and kills the command once it has grown past the budget, and the
//! command's `RLIMIT_FSIZE` (set by the shell prelude before the command, soft = hard) caps any
//! single file at the budget in between. The command raises its own OOM score so that a memory bomb, not the runner, is what
//! the kernel kills; an OOM kill is detected through the cgroup's `oom_kill` counter.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use sandbox_runner::protocol::Access;
use serde::Deserialize;

use crate::ws::{ToolError, ToolResult, Ws};

/// The shell every command runs under (BusyBox, statically linked, in the image).
pub const SHELL: &str = "/bin/sh";
/// Timeout when the host sends none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest timeout accepted.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often the quota watchdog measures the workspace while a command runs.
const QUOTA_EVERY: Duration = Duration::from_millis(50);
/// Prefix run before the command: make this process tree the OOM killer's first choice, and cap
/// the size of any file it writes (`$2`, 512-byte blocks) when there is a disk budget. The limit
/// is set hard and soft, so the command cannot raise it again.
const PRELUDE: &str = "echo 1000 >/proc/self/oom_score_adj 2>/dev/null; \
    if [ -n \"$2\" ]; then ulimit -f \"$2\" || exit 125; fi; exec /bin/sh -c \"$1\"";

/// What ended a native command other than a normal exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    Timeout,
    Memory,
    /// It grew the workspace past the disk budget.
    Quota,
}

/// Output of one native command.
#[derive(Debug)]
pub struct NativeRun {
    pub output: Vec<u8>,
    pub truncated: bool,
    pub exit_code: i32,
    pub killed: Option<Killed>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExecArgs {
    command: String,
    #[serde(rename = "timeoutSec")]
    timeout_sec: Option<f64>,
    stdin: Option<String>,
}

/// Runs `exec` natively. The workspace must be mounted for the command to see it; with no access
/// the command still runs, in the empty, read-only `/workspace` of the image.
pub fn exec(ws: &Ws, args: serde_json::Value, max_out: usize) -> ToolResult<NativeRun> {
    let a: ExecArgs = serde_json::from_value(args).map_err(|e| ToolError::Invalid(e.to_string()))?;
    if a.command.len() > sandbox_runner::shell::MAX_COMMAND_BYTES {
        return Err(ToolError::Invalid(format!(
            "command of {} bytes is longer than {}",
            a.command.len(),
            sandbox_runner::shell::MAX_COMMAND_BYTES
        )));
    }
    if a.command.contains('\0') {
        return Err(ToolError::Invalid("command contains a NUL byte".into()));
    }
    let timeout = match a.timeout_sec {
        None => DEFAULT_TIMEOUT,
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s).min(MAX_TIMEOUT),
        Some(s) => return Err(ToolError::Invalid(format!("timeoutSec must be a positive number, got {s}"))),
    };
    let budget = if ws.access() == Access::Rw { ws.budget_left() } else { None };
    if budget == Some(0) {
        return Err(ToolError::Quota("workspace disk quota exceeded: no space left for exec".into()));
    }
    run(ws.root(), &a.command, a.stdin.as_deref(), timeout, max_out, budget)
        .map_err(|e| ToolError::Failed(format!("cannot run the command: {e}")))
}

/// Spawns `sh -c command` in a new process group under `dir` and waits at most `timeout`; with a
/// `budget`, the command may grow `dir` by at most that many bytes.
pub fn run(
    dir: &Path,
    command: &str,
    stdin: Option<&str>,
    timeout: Duration,
    max_out: usize,
    budget: Option<u64>,
) -> std::io::Result<NativeRun> {
    let (reader, writer) = std::io::pipe()?;
    // One block more than the budget: a file stopped by the limit is over the budget, so the call
    // is reported as over quota (not as a command that happened to fail).
    let blocks = budget.map(|b| (b / 512 + 1).to_string()).unwrap_or_default();
    let base = budget.map(|_| sandbox_runner::quota::disk_usage(dir));
    let mut cmd = Command::new(SHELL);
    cmd.args(["-c", PRELUDE, "sh", command, &blocks])
        .env_clear()
        .env("PATH", "/bin:/usr/bin")
        .env("HOME", "/tmp")
        .env("TMPDIR", "/tmp")
        .env("LANG", "C.UTF-8")
        .current_dir(dir)
        .process_group(0)
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let ooms_before = oom_kills();
    let mut child = cmd.spawn()?;
    // The Command still holds the pipe's write ends; drop them so EOF arrives when the group ends.
    drop(cmd);
    let pgid = Pid::from_child(&child);
    if let (Some(mut input), Some(text)) = (child.stdin.take(), stdin.map(str::to_owned)) {
        std::thread::spawn(move || {
            let _ = input.write_all(text.as_bytes());
        });
    }
    let collector = std::thread::spawn(move || collect(reader, max_out));
    let watchdog = budget.zip(base).map(|(b, base)| Watchdog::start(dir.to_path_buf(), base, b, pgid));
    // The child is waited for by pid (never through `Child`), by a thread that, as PID 1, also
    // reaps the orphans that die meanwhile.
    drop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(wait_child(pgid));
    });
    let (status, timed_out) = match rx.recv_timeout(timeout) {
        Ok(s) => (s?, false),
        Err(_) => {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
            (rx.recv().map_err(|_| std::io::Error::other("lost the child's status"))??, true)
        }
    };
    // Whatever the command left behind (its group, or anything that escaped it) goes now: the
    // runner is the only process that may outlive a call.
    let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
    sweep();
    let over_quota = watchdog.is_some_and(Watchdog::stop);
    let (output, truncated) = collector.join().map_err(|_| std::io::Error::other("output reader failed"))?;
    let signal = status.terminating_signal();
    let killed = if over_quota || (budget.is_some() && signal == Some(Signal::XFSZ.as_raw())) {
        Some(Killed::Quota)
    } else if timed_out {
        Some(Killed::Timeout)
    } else if signal == Some(9) && oom_kills() > ooms_before {
        Some(Killed::Memory)
    } else {
        None
    };
    let exit_code = status.exit_status().unwrap_or_else(|| 128 + signal.unwrap_or(0));
    Ok(NativeRun { output, truncated, exit_code, killed })
}

/// Waits until `pid` (the call's child) ends. As the container's PID 1 the runner is the parent
/// of every orphan too: any child is waited for, so zombies never pile up during a long call
/// (they count against the pids limit). Elsewhere (tests) only `pid` is waited for.
fn wait_child(pid: Pid) -> std::io::Result<WaitStatus> {
    let init = SWEEP.load(std::sync::atomic::Ordering::Relaxed);
    loop {
        let got = if init {
            rustix::process::wait(WaitOptions::empty())
        } else {
            rustix::process::waitpid(Some(pid), WaitOptions::empty())
        };
        match got {
            Ok(Some((p, status))) if p == pid => return Ok(status),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reaps every child that has ended (PID 1's duty), without blocking.
fn reap() {
    while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
}

/// Measures the workspace while a command runs and kills it once it has grown past its budget.
struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<bool>,
    dir: std::path::PathBuf,
    base: u64,
    budget: u64,
}

impl Watchdog {
    fn start(dir: std::path::PathBuf, base: u64, budget: u64, pgid: Pid) -> Self {
        use std::sync::atomic::Ordering;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d, root) = (done.clone(), dir.clone());
        let thread = std::thread::spawn(move || {
            while !d.load(Ordering::Acquire) {
                if sandbox_runner::quota::disk_usage(&root).saturating_sub(base) > budget {
                    let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
                    // As PID 1: whatever else the command started (another group) stops too.
                    if SWEEP.load(Ordering::Relaxed) {
                        let _ = rustix::process::kill_process_group(Pid::INIT, Signal::KILL);
                    }
                    return true;
                }
                std::thread::sleep(QUOTA_EVERY);
            }
            false
        });
        Self { done, thread, dir, base, budget }
    }

    /// Stops measuring; whether the command went over its budget (during the call or by its end).
    fn stop(self) -> bool {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        let fired = self.thread.join().unwrap_or(true);
        fired || sandbox_runner::quota::disk_usage(&self.dir).saturating_sub(self.base) > self.budget
    }
}

/// Reads the pipe to its end, keeping at most `max` bytes.
fn collect(mut r: std::io::PipeReader, max: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let mut truncated = false;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}

/// Kills every process this one may signal except itself and init (`kill(-1)`): in the
/// container that is everything a command started. Repeated until no other live process is left
/// (a fork bomb forks between two sweeps). Only done when the runner was started as a container's
/// main process (`--serve --native-exec`), never in a test on a developer's machine.
fn sweep() {
    if !SWEEP.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let me = std::process::id();
    for _ in 0..500 {
        let _ = rustix::process::kill_process_group(Pid::INIT, Signal::KILL);
        reap();
        if !others_alive(me) {
            reap();
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether a process other than init and `me` is alive (zombies not yet reaped do not count).
fn others_alive(me: u32) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else { return false };
    rd.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()).filter(|&p| p != me && p != 1).any(|p| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
            .unwrap_or(false)
    })
}

/// Set by `main` when the runner is the container's main process.
pub static SWEEP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The memory cgroup's OOM-kill counter (cgroup v2 `memory.events`, or v1 `memory.oom_control`).
fn oom_kills() -> u64 {
    for f in ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"] {
        if let Ok(text) = std::fs::read_to_string(f)
            && let Some(n) = text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
        {
            return n;
        }
    }
    0
}

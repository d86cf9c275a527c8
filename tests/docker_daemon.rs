//! The Docker daemon stopped and started again while a tool call runs in it: the call in flight
//! fails closed (an error, never a result and never a hang), calls while it is down fail with a
//! clear error, and the first call once it is back runs, with the tenant's workspace intact.
//!
//! Its own test binary: cargo runs test binaries one at a time, so no other Docker test of the
//! suite runs while this one has the daemon down. Run as root (as CI does): it stops the daemon
//! with `service docker stop` (or SIGTERM to `dockerd`) and starts it again the same way; the
//! daemon is started again even when an assertion fails.

use std::process::Command;
use std::time::{Duration, Instant};

use bulkhead::sandbox::{Sandbox, SandboxError};

#[path = "docker_common.rs"]
mod common;
use common::*;

fn daemon_up() -> bool {
    Command::new("docker").args(["info", "--format", "{{.ID}}"]).output().is_ok_and(|o| o.status.success())
}

fn wait_daemon(up: bool, within: Duration) {
    let deadline = Instant::now() + within;
    while daemon_up() != up {
        assert!(Instant::now() < deadline, "the Docker daemon did not go {}", if up { "up" } else { "down" });
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop_daemon() {
    // `service docker stop` succeeds without stopping a daemon it did not start itself.
    let _ = Command::new("service").args(["docker", "stop"]).output();
    let deadline = Instant::now() + Duration::from_secs(5);
    while daemon_up() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    if daemon_up() {
        let _ = Command::new("pkill").args(["-TERM", "-x", "dockerd"]).status();
    }
    wait_daemon(false, Duration::from_secs(60));
    // The API goes away before the process has exited and removed its pid file; a new daemon
    // started before that refuses to run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while dockerd_running() {
        assert!(Instant::now() < deadline, "dockerd did not exit");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn dockerd_running() -> bool {
    Command::new("pgrep").args(["-x", "dockerd"]).output().is_ok_and(|o| o.status.success())
}

/// Starts the daemon; whether it answers within 90 s.
fn start_daemon() -> bool {
    let by_service = Command::new("service").args(["docker", "start"]).output().is_ok_and(|o| o.status.success());
    if !by_service && !dockerd_running() {
        // A daemon the init script did not start (or cannot: no ulimit in a container) is started
        // the way scripts/setup.sh does, detached from this process.
        let _ = Command::new("sh")
            .args(["-c", "setsid \"$(command -v dockerd || echo /usr/sbin/dockerd)\" >/tmp/dockerd.log 2>&1 &"])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while !daemon_up() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// Starts the daemon again when the test ends, pass or fail.
struct BringBack;

impl Drop for BringBack {
    fn drop(&mut self) {
        if !daemon_up() && !start_daemon() {
            eprintln!("the Docker daemon could not be started again: see /tmp/dockerd.log");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_restart_mid_call_fails_that_call_closed_and_the_next_call_works() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    e.sh("acme", "echo kept > /workspace/k").await;
    let first = e.sb.container_of(&exec("acme", "")).await.unwrap();
    let sb = e.sb.clone();
    let in_flight = tokio::spawn(async move { sb.call(&exec("acme", "sleep 40; echo finished")).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _back = BringBack;
    stop_daemon();

    // The call that was running: an error, well before its own timeout.
    let r = tokio::time::timeout(Duration::from_secs(60), in_flight)
        .await
        .expect("the call in flight never ended")
        .unwrap();
    eprintln!("the call in flight: {r:?}");
    assert!(r.is_err(), "a call whose daemon went away returned a result: {r:?}");
    // While the daemon is down: a clear error, at once.
    let t0 = Instant::now();
    let r = e.run(&exec("acme", "echo hi")).await;
    assert!(matches!(&r, Err(SandboxError::Unavailable(m)) if m.contains("Docker")), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(30), "a call with the daemon down took {:?}", t0.elapsed());

    assert!(start_daemon(), "the Docker daemon did not come back (see /tmp/dockerd.log)");
    // The first call once it is back runs, in a container that is running again, and sees the
    // tenant's workspace.
    let r = e.run(&exec("acme", "cat k")).await.expect("the first call after the restart");
    assert_eq!(r.text, "kept\n");
    let now = e.sb.container_of(&exec("acme", "")).await.unwrap();
    let state = Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", &now]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "true");
    if now != first {
        let gone = Command::new("docker").args(["inspect", &first]).output().unwrap();
        assert!(!gone.status.success(), "the container from before the restart was left behind");
    }
}

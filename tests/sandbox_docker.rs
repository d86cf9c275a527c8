//! The Docker sandbox backend against the real daemon, attacked from inside: every hardening
//! property is checked by a probe the runner executes in the container, and the lifecycle
//! (recovery, reconciliation, reaping, tenant removal) against real containers.
//!
//! With `BULKHEAD_REQUIRE_DOCKER=1` (set by `.ci/run`) a missing daemon or image fails every
//! test; without it each test says loudly that it did not run. Every container a test creates
//! carries its own gateway label and is removed when the test ends, pass or fail.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bulkhead::config::{SandboxScope, WorkspaceAccess};
use bulkhead::ids::{SessionKey, TenantId};
use bulkhead::sandbox::docker::{self, DockerOptions, DockerSandbox};
use bulkhead::sandbox::{Sandbox, SandboxCall, SandboxError};
use bulkhead::tools::Tool;
use serde_json::{Value, json};

#[path = "docker_common.rs"]
mod common;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn capabilities_privileges_and_user_are_dropped_from_inside() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    let st =
        e.sh("acme", "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status").await;
    assert_eq!(st.exit_code, Some(0), "{st:?}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(st.text.contains(&format!("{cap}:\t0000000000000000")), "{cap} not empty: {}", st.text);
    }
    assert!(st.text.contains("NoNewPrivs:\t1"), "{}", st.text);
    // Seccomp mode 2 = a filter is installed (Docker's default profile).
    assert!(st.text.contains("Seccomp:\t2"), "{}", st.text);
    let id = e.sh("acme", "id -u; id -g").await;
    assert_eq!(id.text, "65532\n65532\n", "{id:?}");
    // Positive/negative: the runner's identity is not root, and privileged syscalls fail.
    let chown = e.sh("acme", "touch /tmp/f && chown 0:0 /tmp/f").await;
    assert_ne!(chown.exit_code, Some(0), "chown to root worked: {chown:?}");
}

/// `printf` escapes for arbitrary bytes.
fn printf_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:03o}")).collect()
}

/// A response frame as a runner of protocol 1 wrote it (no id, no seal), and one shaped like a
/// protocol 2 frame for request `id` with a guessed (zero) tag.
fn forged_frames(id: u64) -> Vec<u8> {
    let body = br#"{"v":1,"output":"FORGED","isError":false,"exitCode":0,"truncated":false,"failure":null}"#;
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    let body = br#"{"v":2,"output":"FORGED","isError":false,"exitCode":0,"truncated":false,"failure":null}"#;
    out.extend_from_slice(&((8 + 32 + body.len()) as u32).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0u8; 32]);
    out.extend_from_slice(body);
    out
}

/// The protocol channel, attacked from inside: a command writes forged response frames to every
/// process's stdout it can open and tries to read the runner's stdin, memory and environment.
/// Only the runner (PID 1, non-dumpable) holds the pipes, so nothing gets through; and were a
/// frame to reach the stream, it would not carry the container's seal. The call gets its real
/// answer and the next call its own.
#[tokio::test(flavor = "multi_thread")]
async fn commands_cannot_read_or_forge_the_runner_protocol() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    assert_eq!(e.sh("acme", "echo warm").await.text, "warm\n");
    let first = e.sb.container_of(&exec("acme", "")).await.unwrap();
    let frames = printf_bytes(&[forged_frames(2), forged_frames(3)].concat());
    let probe = format!(
        "for p in /proc/[0-9]*; do for fd in 0 1 2; do \
           if printf '{frames}' 2>/dev/null > $p/fd/$fd; then echo \"wrote $p/fd/$fd $(cat $p/comm)\" >&2; fi; \
         done; done; \
         echo \"pid1=$(cat /proc/1/comm)\"; cat /proc/[0-9]*/comm | grep -c -e init -e tini; \
         timeout 2 head -c 1 /proc/1/fd/0; echo \"stdin=$?\"; \
         head -c 1 /proc/1/mem; head -c 1 /proc/1/environ; cat /proc/1/maps; ls /proc/1/fd /proc/1/root/; \
         echo real-end; exit 7"
    );
    let r = e.run(&exec("acme", &probe)).await.unwrap();
    assert_eq!(r.exit_code, Some(7), "a forged result was accepted: {r:?}");
    assert!(r.text.contains("real-end"), "{r:?}");
    assert!(r.text.contains("pid1=sandbox-runner\n0\n"), "the runner is not PID 1 or an init runs beside it: {r:?}");
    for line in r.text.lines().filter(|l| l.starts_with("wrote ")) {
        assert!(!line.starts_with("wrote /proc/1/"), "a command reached the runner's pipes: {line}");
    }
    assert!(!r.text.contains("stdin=0"), "a command read the runner's stdin: {r:?}");
    // stdin, mem, environ, maps, fd, root: all refused.
    assert!(r.text.matches("Permission denied").count() >= 6, "{r:?}");
    // The stream is in step: the next call gets its own answer, from the same container.
    assert_eq!(e.sh("acme", "echo next").await.text, "next\n");
    assert_eq!(e.sb.container_of(&exec("acme", "")).await.unwrap(), first);
    // As PID 1 the runner reaps orphans during a call: 300 of them, 20 at a time, fit under a
    // pids limit of 64 (unreaped zombies would count against it).
    let orphans = "b=0; while [ $b -lt 15 ]; do i=0; while [ $i -lt 20 ]; do (true &); i=$((i+1)); done; \
                   sleep 0.2; b=$((b+1)); done; echo reaped $((b*20))";
    let mut orphans = exec("acme", orphans);
    orphans.settings.docker.pids_limit = 64;
    let r = e.run(&orphans).await.unwrap();
    assert_eq!(r.text, "reaped 300\n", "{r:?}");
}

/// The container's user is the image's non-root one (or the configured one), never the owner of
/// the workspace or the gateway's: a workspace left by another uid is handed over, not adopted.
#[tokio::test(flavor = "multi_thread")]
async fn containers_run_as_the_sandbox_user_not_the_workspace_owner() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    let ws = e.state.join("workspaces/acme/agents/acme-bot");
    std::fs::create_dir_all(&ws).unwrap();
    // As a non-root gateway would have left it (before this fix, the container then ran as 1000).
    std::os::unix::fs::chown(&ws, Some(1000), Some(1000)).unwrap();
    let r = e.sh("acme", "id -u; id -g; touch mine && ls -n mine | tr -s ' ' | cut -d' ' -f3,4").await;
    assert_eq!(r.text, "65532\n65532\n65532 65532\n", "{r:?}");
    let id = e.sb.container_of(&exec("acme", "")).await.unwrap();
    assert_eq!(inspect(&id, "{{.Config.User}}"), "65532:65532");
    // A configured user is used as given.
    let mut other = exec("acme", "id -u");
    other.settings.docker.user = Some("4242:4242".into());
    assert_eq!(e.run(&other).await.unwrap().text, "4242\n");
    // The gateway's own uid (root here) is never a sandbox's.
    let mut own = exec("acme", "id -u");
    own.settings.docker.user = Some("0:0".into());
    assert!(matches!(e.run(&own).await, Err(SandboxError::Unavailable(m)) if m.contains("root")));
}

#[tokio::test(flavor = "multi_thread")]
async fn root_is_read_only_tmp_is_noexec_and_sized() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    for probe in ["touch /bin/evil", "mkdir /newdir", "echo x > /etc/passwd"] {
        let r = e.sh("acme", probe).await;
        assert_ne!(r.exit_code, Some(0), "{probe} succeeded: {r:?}");
        assert!(r.text.contains("Read-only file system"), "{probe}: {r:?}");
    }
    let ok = e.sh("acme", "echo hi > /tmp/t && cat /tmp/t && echo ws > /workspace/w && cat w").await;
    assert_eq!(ok.text, "hi\nws\n", "{ok:?}");
    // noexec: a copied binary cannot be started from /tmp (Permission denied).
    let r = e.sh("acme", "cp /bin/busybox /tmp/bb && chmod +x /tmp/bb && /tmp/bb true").await;
    assert_ne!(r.exit_code, Some(0), "{r:?}");
    assert!(r.text.contains("Permission denied"), "{r:?}");
    let df = e.sh("acme", "df -k /tmp | tail -n 1").await;
    let kb: u64 = df.text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert_eq!(kb, 64 * 1024, "{df:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_network_no_socket_masked_proc_no_host_env() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    let net = e.sh("acme", "ls /sys/class/net").await;
    assert_eq!(net.text, "lo\n", "{net:?}");
    let sock =
        e.sh("acme", "find / -xdev -name '*.sock' 2>/dev/null; ls /var/run/docker.sock /run/docker.sock 2>&1").await;
    assert!(!sock.text.contains("docker.sock\n") || sock.text.contains("No such file"), "{sock:?}");
    assert!(!sock.text.lines().any(|l| l.ends_with(".sock")), "a socket is reachable: {sock:?}");
    // Masked: read as empty. Read-only: /proc/sys cannot be written.
    // Masked (Docker's defaults): those present read as empty.
    let masked = e
        .sh("acme", "for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /proc/latency_stats; do [ -e $f ] && echo $f $(wc -c < $f); done")
        .await;
    assert!(masked.text.lines().count() >= 2, "{masked:?}");
    assert!(masked.text.lines().all(|l| l.ends_with(" 0")), "{masked:?}");
    let sys = e.sh("acme", "echo 1 > /proc/sys/kernel/panic").await;
    assert_ne!(sys.exit_code, Some(0), "{sys:?}");
    // The environment is the runner's fixed one: nothing from the host or the gateway. (The
    // runner's own, /proc/1/environ, is not readable at all: see the protocol test.)
    let env = e.sh("acme", "env | sort").await;
    assert!(env.text.contains("PATH="), "{env:?}");
    for line in env.text.lines().filter(|l| !l.is_empty()) {
        let key = line.split('=').next().unwrap_or("");
        assert!(
            ["PATH", "HOME", "TMPDIR", "LANG", "PWD", "SHLVL", "HOSTNAME", "_"].contains(&key),
            "unexpected variable in the sandbox: {line}"
        );
    }
    // Outside, the container has no mount but the workspace, no env but PATH/HOSTNAME.
    let id = e.sb.container_of(&exec("acme", "true")).await.unwrap();
    let mounts = inspect(&id, "{{range .Mounts}}{{.Source}} -> {{.Destination}};{{end}}");
    let ws = std::fs::canonicalize(e.state.join("workspaces/acme/agents/acme-bot")).unwrap();
    assert_eq!(mounts, format!("{} -> /workspace;", ws.display()));
    assert_eq!(
        inspect(&id, "{{.HostConfig.Privileged}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.NetworkMode}}"),
        "false true none"
    );
    // The limits as the daemon recorded them (defaults: 512 MiB = swap, 1 CPU, 256 pids, nofile 1024;
    // no init: the runner is PID 1).
    assert_eq!(
        inspect(
            &id,
            "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}} \
             {{.HostConfig.Init}} {{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}} {{.HostConfig.IpcMode}} {{.Config.User}}"
        ),
        "536870912 536870912 1000000000 256 false [ALL] [no-new-privileges:true] private 65532:65532"
    );
    assert_eq!(
        inspect(&id, "{{range .HostConfig.Ulimits}}{{.Name}}={{.Soft}}/{{.Hard}} {{end}}"),
        "nofile=1024/1024 core=0/0"
    );
    // And from inside: the nofile ulimit and the pids cgroup limit the runner's commands live under.
    let limits = e.sh("acme", "ulimit -n; cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null").await;
    assert_eq!(limits.text.split_whitespace().collect::<Vec<_>>(), ["1024", "256"], "{limits:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_bomb_hits_the_pids_limit_and_the_host_stays_responsive() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    let mut call = exec("acme", "i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done; echo started $i");
    call.settings.docker.pids_limit = 64;
    call.args["timeoutSec"] = json!(10);
    let r = e.run(&call).await.unwrap();
    assert!(r.text.contains("can't fork") || r.text.contains("Resource temporarily unavailable"), "{r:?}");
    // A real fork bomb, cut off by the timeout; meanwhile the host forks fine.
    let mut bomb = exec("acme", "b(){ b | b & }; b; sleep 100");
    bomb.settings.docker.pids_limit = 64;
    bomb.args["timeoutSec"] = json!(3);
    let sb = e.sb.clone();
    let task = tokio::spawn(async move { sb.call(&bomb).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    let host = std::process::Command::new("true").status().unwrap();
    assert!(host.success() && t.elapsed() < Duration::from_secs(2), "host slow: {:?}", t.elapsed());
    let r = task.await.unwrap();
    assert!(matches!(r, Err(SandboxError::Timeout(_))), "{r:?}");
    // Everything it started is gone and the sandbox serves the next call.
    let mut after = exec("acme", "ls /proc | grep -c '^[0-9]'");
    after.settings.docker.pids_limit = 64;
    let n = e.run(&after).await.unwrap();
    // init, the runner, this shell, ls, grep (and perhaps a zombie init has not reaped yet).
    let procs: u32 = n.text.trim().parse().unwrap();
    assert!(procs <= 8, "left over processes: {n:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_is_oom_killed_and_reported() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    let mut call = exec("acme", "a=$(head -c 400000000 /dev/zero | tr '\\0' x); echo ${#a}");
    call.settings.docker.memory_bytes = 64 << 20;
    let r = e.run(&call).await;
    assert_eq!(r, Err(SandboxError::Memory));
    // The runner survived: the same container answers.
    let mut again = exec("acme", "echo alive");
    again.settings.docker.memory_bytes = 64 << 20;
    let id = e.sb.container_of(&again).await;
    assert_eq!(e.run(&again).await.unwrap().text, "alive\n");
    assert_eq!(e.sb.container_of(&again).await, id);
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_bounds_a_cpu_spinner_and_kills_grandchildren() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    let mut spin = exec("acme", "while :; do :; done");
    spin.args["timeoutSec"] = json!(2);
    let t = Instant::now();
    assert_eq!(e.run(&spin).await, Err(SandboxError::Timeout(Duration::from_secs(2))));
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    // Grandchildren in the background, one of them in a new session (escaping the group).
    let mut tree = exec("acme", "(sleep 1000 &) ; sh -c 'sleep 1001 & sleep 1002' & setsid sleep 1003 & sleep 1004");
    tree.args["timeoutSec"] = json!(2);
    assert!(matches!(e.run(&tree).await, Err(SandboxError::Timeout(_))));
    let ps = e.sh("acme", "ps -o comm,args").await;
    assert!(!ps.text.contains("sleep 10"), "survivors: {}", ps.text);
    // A command that exits at once may not leave background work behind either.
    e.sh("acme", "sleep 1005 &").await;
    let ps = e.sh("acme", "ps -o args").await;
    assert!(!ps.text.contains("sleep 1005"), "survivor: {}", ps.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_cannot_see_each_other_and_run_at_once() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    e.sh("acme", "echo acme-private > /workspace/secret.txt").await;
    let (ca, cb) = (
        exec("acme", "sleep 2; cat secret.txt"),
        exec("bravo", "sleep 1; ps -o args; ls -a /workspace; find / -xdev -name secret.txt 2>/dev/null"),
    );
    let (a, b) = tokio::join!(e.run(&ca), e.run(&cb));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.text, "acme-private\n", "{a:?}");
    assert!(!b.text.contains("sleep 2"), "bravo sees acme's processes: {b:?}");
    assert!(!b.text.contains("acme-private"), "bravo reads acme's file: {b:?}");
    assert!(!b.text.lines().any(|l| l.ends_with("/secret.txt")), "bravo sees acme's workspace: {b:?}");
    assert!(b.text.contains("\n.\n..\n"), "bravo's own workspace is empty: {b:?}");
    let ids =
        (e.sb.container_of(&exec("acme", "")).await.unwrap(), e.sb.container_of(&exec("bravo", "")).await.unwrap());
    assert_ne!(ids.0, ids.1);
    assert_eq!(inspect(&ids.0, &format!("{{{{index .Config.Labels \"{}\"}}}}", docker::LABEL_TENANT)), "acme");
    assert_eq!(inspect(&ids.1, &format!("{{{{index .Config.Labels \"{}\"}}}}", docker::LABEL_TENANT)), "bravo");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_killed_from_outside_is_replaced() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    e.sh("acme", "echo kept > /workspace/k").await;
    let first = e.sb.container_of(&exec("acme", "")).await.unwrap();
    let out = std::process::Command::new("docker").args(["kill", &first]).output().unwrap();
    assert!(out.status.success());
    // The call in flight when it dies (if any) fails clearly; the next one runs in a new container.
    let r = e.run(&exec("acme", "cat k")).await;
    if let Err(err) = &r {
        assert!(matches!(err, SandboxError::Unavailable(m) if m.contains("next call")), "{err:?}");
    }
    let r = e.run(&exec("acme", "cat k")).await.unwrap();
    assert_eq!(r.text, "kept\n");
    let second = e.sb.container_of(&exec("acme", "")).await.unwrap();
    assert_ne!(first, second);
    assert!(!containers_of(e.sb.gateway()).contains(&first), "the dead container was not removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_daemon_fails_closed_and_the_backend_recovers() {
    if !docker_ready().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let e = Env::with(DockerOptions { socket: Some(sock.clone()), ..DockerOptions::default() });
    let r = e.run(&exec("acme", "echo hi")).await;
    assert!(matches!(&r, Err(SandboxError::Unavailable(m)) if m.contains("Docker daemon")), "{r:?}");
    // The daemon "comes back" at the configured socket.
    let real = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
    std::os::unix::fs::symlink(&real, &sock).unwrap();
    let r = e.run(&exec("acme", "echo hi")).await.unwrap();
    assert_eq!(r.text, "hi\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn orphans_of_a_previous_gateway_run_are_removed_at_start() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    e.sh("acme", "true").await;
    let orphan = e.sb.container_of(&exec("acme", "")).await.unwrap();
    // A new gateway over the same state: the old container is removed, not adopted.
    let sb2 = DockerSandbox::start(&e.state, DockerOptions::default());
    let deadline = Instant::now() + Duration::from_secs(20);
    while containers_of(sb2.gateway()).contains(&orphan) {
        assert!(Instant::now() < deadline, "orphan not reconciled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sb2.call(&exec("acme", "echo fresh")).await.unwrap().text, "fresh\n");
    assert_eq!(containers_of(sb2.gateway()).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_change_recreates_and_idle_containers_are_reaped() {
    if !docker_ready().await {
        return;
    }
    let e = Env::with(DockerOptions { reap_every: Duration::from_millis(200), ..DockerOptions::default() });
    let mut call = exec("acme", "true");
    e.run(&call).await.unwrap();
    let first = e.sb.container_of(&call).await.unwrap();
    call.settings.docker.pids_limit = 128;
    e.run(&call).await.unwrap();
    let second = e.sb.container_of(&call).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(inspect(&second, "{{.HostConfig.PidsLimit}}"), "128");
    assert_eq!(containers_of(e.sb.gateway()), vec![second.clone()]);
    call.settings.docker.idle = Duration::from_secs(1);
    e.run(&call).await.unwrap();
    let third = e.sb.container_of(&call).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !containers_of(e.sb.gateway()).is_empty() {
        assert!(Instant::now() < deadline, "idle container {third} not reaped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reaped is not broken: the next call starts a new one.
    assert_eq!(e.run(&exec("acme", "echo back")).await.unwrap().text, "back\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_removal_removes_only_that_tenants_containers() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    e.sh("acme", "true").await;
    e.sh("bravo", "true").await;
    assert_eq!(containers_of(e.sb.gateway()).len(), 2);
    assert_eq!(e.sb.remove_tenant("acme").await.unwrap(), 1);
    let left = containers_of(e.sb.gateway());
    assert_eq!(left.len(), 1);
    assert_eq!(inspect(&left[0], &format!("{{{{index .Config.Labels \"{}\"}}}}", docker::LABEL_TENANT)), "bravo");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_tools_and_quota_work_over_the_attached_runner() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    // Files left in the workspace by the gateway's user (here root; e.g. by the wasm backend)
    // are handed to the sandbox user, except multiply-linked ones.
    let ws = e.state.join("workspaces/acme/agents/acme-bot");
    std::fs::create_dir_all(ws.join("old")).unwrap();
    std::fs::write(ws.join("old/f.txt"), "from before\n").unwrap();
    let outside = e.state.join("outside.txt");
    std::fs::write(&outside, "outside").unwrap();
    std::fs::hard_link(&outside, ws.join("linked.txt")).unwrap();
    let r = e.sh("acme", "echo more >> old/f.txt && cat old/f.txt; echo x >> linked.txt").await;
    assert!(r.text.starts_with("from before\nmore\n"), "{r:?}");
    assert!(r.text.contains("Permission denied"), "a multiply-linked file was handed over: {r:?}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&outside).unwrap().uid(), std::fs::metadata(&e.state).unwrap().uid());
    let w = e.run(&mk("acme", Tool::Write, json!({"path": "a/b.txt", "content": "one\ntwo\n"}))).await.unwrap();
    assert!(!w.is_error, "{w:?}");
    let r = e.run(&mk("acme", Tool::Read, json!({"path": "a/b.txt"}))).await.unwrap();
    assert_eq!(r.text, "one\ntwo\n");
    let x = e.sh("acme", "wc -l < a/b.txt; ls -ln a | tail -n 1").await;
    assert!(x.text.starts_with("2\n"), "{x:?}");
    // Output is capped by the runner and re-capped by the host.
    let mut big = exec("acme", "head -c 100000 /dev/zero | tr '\\0' y");
    big.limits.max_output_bytes = 1000;
    let b = e.run(&big).await.unwrap();
    assert!(b.truncated && b.text.len() == 1000, "{}", b.text.len());
    // The quota holds while a command runs: one big file stops at the quota, and many files
    // written in parallel are stopped by the runner's watchdog near it; the call reports it.
    let mut fill = exec("acme", "dd if=/dev/zero of=big.bin bs=64k count=100 2>/dev/null; echo done");
    fill.settings.docker.disk_quota_bytes = 1 << 20;
    assert_eq!(e.run(&fill).await, Err(SandboxError::Quota));
    let on_disk = bulkhead::sandbox::workspace::disk_usage(&e.state.join("workspaces/acme"));
    assert!(on_disk <= (1 << 20) + 8192 + 512, "{on_disk} bytes on disk after a 6.5 MB dd under a 1 MiB quota");
    // Over quota: refused before running.
    assert_eq!(e.run(&fill).await, Err(SandboxError::Quota));
    std::fs::remove_file(ws.join("big.bin")).unwrap();
    let mut flood = exec("acme", "for f in 1 2 3 4; do (yes > y$f &); done; sleep 30");
    flood.settings.docker.disk_quota_bytes = 4 << 20;
    let t = Instant::now();
    assert_eq!(e.run(&flood).await, Err(SandboxError::Quota));
    assert!(t.elapsed() < Duration::from_secs(15), "the flood ran for {:?}", t.elapsed());
    let on_disk = bulkhead::sandbox::workspace::disk_usage(&e.state.join("workspaces/acme"));
    // Each file is capped at the budget; the watchdog stops them all within a measurement or two.
    assert!(on_disk <= (16 << 20) + 8192, "{on_disk} bytes on disk after 4 yes floods under a 4 MiB quota");
    for f in ["y1", "y2", "y3", "y4"] {
        let _ = std::fs::remove_file(ws.join(f));
    }
    // Read-only for this call while the container mounts rw: exec refused (fail closed).
    let mut ro = exec("acme", "echo x > y");
    ro.limits.workspace_access = WorkspaceAccess::Ro;
    assert!(matches!(e.run(&ro).await, Err(SandboxError::InvalidArguments(_))));
    // An agent configured read-only gets a read-only mount: its commands read but cannot write.
    let mut ro = exec("acme", "cat a/b.txt; echo x > y");
    ro.settings.workspace_access = WorkspaceAccess::Ro;
    let r = e.run(&ro).await.unwrap();
    assert!(r.text.starts_with("one\ntwo\n") && r.text.contains("Read-only file system"), "{r:?}");
    // No access: no mount at all; /workspace is the image's empty directory.
    let mut none = exec("acme", "ls -A /workspace | wc -l");
    none.settings.workspace_access = WorkspaceAccess::None;
    none.limits.workspace_access = WorkspaceAccess::None;
    assert_eq!(e.run(&none).await.unwrap().text.trim(), "0");
}

/// End to end: the real binary, a docker agent, the scripted model's `/tool` commands.
#[tokio::test(flavor = "multi_thread")]
async fn tools_run_in_the_tenants_container_through_the_gateway() {
    if !docker_ready().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["keys", "init", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let config = r#"{
  gateway: { bind: "127.0.0.1:0" },
  stateDir: "state",
  store: { masterKey: { file: "master.key" } },
  models: { providers: {
    demo: { api: "scripted" },
    fakeai: { api: "openai", baseUrl: "http://127.0.0.1:9", apiKey: { env: "FAKE_OPENAI_KEY" } },
  } },
  tenants: [ { id: "alpha", name: "Alpha", apiTokens: [ { env: "TOKEN_A" } ] } ],
  agents: { list: [
    { id: "a-dock", tenant: "alpha", model: "demo/scripted", tools: { allow: ["group:fs", "exec"] },
      sandbox: { mode: "all", backend: "docker", docker: { prewarm: true, image: "IMAGE" } } },
  ] },
}"#
    .replace("IMAGE", &image());
    let path = dir.path().join("bulkhead.json5");
    std::fs::write(&path, config).unwrap();
    let secret = "sk-never-in-a-container-4242";
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("TOKEN_A", "tok-alpha-3f9c2a7e5b1d4c8f9a6e2b7d1c5f8a3e")
        .env("FAKE_OPENAI_KEY", secret)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let state = dir.path().join("state");
    let _cleanup = Cleanup(docker::gateway_label(&state));
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let base = first.strip_prefix("listening on ").expect("listening line").to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // Prewarmed: the agent's container exists before its first tool call, and that call uses it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let prewarmed = loop {
        if let [id] = containers_of(&docker::gateway_label(&state)).as_slice() {
            break id.clone();
        }
        assert!(Instant::now() < deadline, "the prewarmed container did not appear");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let http = reqwest::Client::new();
    let mut replies = Vec::new();
    for cmd in [
        r#"/tool write {"path":"notes.txt","content":"alpha plans\n"}"#,
        r#"/tool exec {"command":"id -u; cat notes.txt; env; tr '\\0' '\\n' < /proc/1/environ; grep -rl sk-never /bin /etc /workspace /tmp; echo done"}"#,
    ] {
        let body = json!({ "model": "a-dock", "user": "u1", "messages": [{ "role": "user", "content": cmd }] });
        let resp = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth("tok-alpha-3f9c2a7e5b1d4c8f9a6e2b7d1c5f8a3e")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        replies.push(v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string());
    }
    let out = &replies[1];
    assert!(out.contains("65532") && out.contains("alpha plans") && out.contains("done"), "{replies:?}");
    assert!(!out.contains(secret), "a secret reached the container: {out}");
    assert!(!out.contains("tok-alpha"), "an API token reached the container: {out}");
    let ids = containers_of(&docker::gateway_label(&state));
    assert_eq!(ids, vec![prewarmed]);
    let env = inspect(&ids[0], "{{json .Config.Env}}");
    assert!(!env.contains(secret), "{env}");
    // `tenant delete` (with the gateway stopped) removes the tenant's containers too.
    let _ = child.kill().await;
    let _ = child.wait().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--config")
        .arg(&path)
        .args(["tenant", "delete", "alpha", "--yes"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("removed 1 sandbox container(s) of tenant alpha"), "{stdout}");
    assert!(containers_of(&docker::gateway_label(&state)).is_empty());
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_tells_a_missing_image_and_an_unreachable_daemon() {
    if !docker_ready().await {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulkhead.json5");
    std::fs::write(
        &path,
        r#"{ stateDir: "state", store: { mode: "memory" }, agents: { list: [
          { id: "good", sandbox: { backend: "docker", docker: { image: "IMAGE" } } },
          { id: "stale", sandbox: { backend: "docker", docker: { image: "bulkhead/missing:none" } } },
        ] } }"#
            .replace("IMAGE", &image()),
    )
    .unwrap();
    let doctor = |docker_host: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"));
        cmd.arg("--config").arg(&path).arg("doctor").env_remove("BULKHEAD_CONFIG");
        if let Some(h) = docker_host {
            cmd.env("DOCKER_HOST", h);
        }
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = doctor(None);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("ok    docker daemon"), "{out}");
    assert!(out.contains(&format!("ok    sandbox image {} (agents good)", image())), "{out}");
    assert!(
        out.contains("FAIL  sandbox image \"bulkhead/missing:none\" is missing; build it with images/build.sh"),
        "{out}"
    );
    let gone = format!("unix://{}", dir.path().join("no-daemon.sock").display());
    let (code, out) = doctor(Some(&gone));
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("FAIL  docker sandbox backend: cannot reach the Docker daemon"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_seccomp_profile_is_applied() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    // A test-only profile that refuses mkdir (a real one would start from Docker's default).
    let profile = e.state.parent().unwrap().join("seccomp.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let mut call = exec("acme", "mkdir /tmp/d && echo made");
    assert_eq!(e.run(&call).await.unwrap().text, "made\n", "positive control under the default profile");
    call.settings.docker.seccomp_profile = Some(profile);
    let r = e.run(&call).await.unwrap();
    assert!(r.is_error && r.text.contains("Operation not permitted"), "{r:?}");
    // A profile that cannot be read fails the call closed, naming the file.
    call.settings.docker.seccomp_profile = Some(e.state.join("missing.json"));
    let r = e.run(&call).await;
    assert!(matches!(&r, Err(SandboxError::Unavailable(m)) if m.contains("seccomp profile")), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_container_outlives_the_api_request_timeout() {
    if !docker_ready().await {
        return;
    }
    // The attached runner stream and the container wait are long-lived: a request timeout of
    // 1 s must not cut them (or the container would be replaced after every idle second).
    let e = Env::with(DockerOptions { request_timeout: Duration::from_secs(1), ..DockerOptions::default() });
    assert_eq!(e.sh("acme", "echo one").await.text, "one\n");
    let first = e.sb.container_of(&exec("acme", "")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(e.sh("acme", "echo two").await.text, "two\n");
    assert_eq!(e.sb.container_of(&exec("acme", "")).await.unwrap(), first);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_is_capped_in_containers_and_the_least_recently_used_makes_room() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    let in_session = |peer: &str| {
        let mut c = exec("acme", "echo hi");
        c.settings.scope = SandboxScope::Session;
        c.settings.docker.max_containers = 2;
        c.session = SessionKey::parse(&format!("agent:acme-bot:api:direct:{peer}")).unwrap();
        c
    };
    let (s1, s2, s3) = (in_session("one"), in_session("two"), in_session("three"));
    e.run(&s1).await.unwrap();
    e.run(&s2).await.unwrap();
    let first = e.sb.container_of(&s1).await.unwrap();
    e.run(&s2).await.unwrap();
    assert_eq!(containers_of(e.sb.gateway()).len(), 2);
    // A third session: the least recently used container (session one's) makes room.
    assert_eq!(e.run(&s3).await.unwrap().text, "hi\n");
    let left = containers_of(e.sb.gateway());
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&first), "the LRU container was not the one removed");
    // Scope labels name sessions by the keyed digest of their workspace directory, never by an
    // unkeyed hash of the session key (peer ids could be brute-forced from it).
    let dirs: Vec<String> = std::fs::read_dir(e.state.join("workspaces/acme/sessions"))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for id in &left {
        let label = inspect(id, &format!("{{{{index .Config.Labels \"{}\"}}}}", docker::LABEL_SCOPE));
        let digest = label.strip_prefix("sessions/").unwrap_or_else(|| panic!("scope label {label:?}"));
        assert!(dirs.iter().any(|d| d == digest), "{label} is not a session directory: {dirs:?}");
        for peer in ["one", "two", "three"] {
            let key = format!("agent:acme-bot:api:direct:{peer}");
            let sha: String = ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_ne!(digest, sha, "the scope label is SHA-256 of {key}");
        }
    }
    // Another tenant is not affected by acme's cap.
    e.sh("bravo", "true").await;
    assert_eq!(containers_of(e.sb.gateway()).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_to_one_container_each_get_their_own_answer() {
    if !docker_ready().await {
        return;
    }
    let e = Env::new();
    let calls: Vec<SandboxCall> = (0..8).map(|i| exec("acme", &format!("sleep 0.1; echo call-{i}"))).collect();
    let results = futures_util::future::join_all(calls.iter().map(|c| e.run(c))).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap().text, format!("call-{i}\n"));
    }
    assert_eq!(containers_of(e.sb.gateway()).len(), 1, "one agent scope, one container");
}

#[tokio::test(flavor = "multi_thread")]
async fn container_starts_are_recorded_in_the_tenants_audit_log() {
    use bulkhead::audit::{Audit, LogWriter, Scope, read_records};
    if !docker_ready().await {
        return;
    }
    let audit_dir = tempfile::tempdir().unwrap();
    let master = bulkhead::store::MasterKey::generate("test".into());
    let writer = LogWriter::open(audit_dir.path(), &master).unwrap();
    let keys = writer.keys().clone();
    let audit = Audit::start(writer).unwrap();
    let e = Env::with(DockerOptions { audit: audit.clone(), ..DockerOptions::default() });
    assert_eq!(e.sh("acme", "echo one").await.text.trim(), "one");
    assert_eq!(e.sh("acme", "echo two").await.text.trim(), "two", "the warm container serves the second call");
    audit.close().await;
    let scope = Scope::Tenant(TenantId::parse("acme").unwrap());
    let recs = read_records(&std::fs::read(scope.log_path(audit_dir.path())).unwrap(), &keys, &scope, None).unwrap();
    let started: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "sandbox.container").collect();
    assert_eq!(started.len(), 1, "{recs:?}");
    assert_eq!((started[0]["agent"].as_str(), started[0]["state"].as_str()), (Some("acme-bot"), Some("started")));
    assert!(!started[0].to_string().contains("peer-42"), "no peer id in the record: {}", started[0]);
}

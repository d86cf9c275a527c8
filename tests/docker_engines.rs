//! Sandboxes on two real Docker engines: the machine's daemon and a second `dockerd` this test
//! starts (its own socket, data root, exec root, pid file and no bridge, so it touches nothing of
//! the first). Tenants run where the placement rule puts them (checked on the engines, not in
//! the gateway's memory), their workspaces are volumes there and count against their quota as
//! the engine measures them; when one engine stops, its tenants' tool calls fail closed with a
//! clear error while the other engine's tenants go on; with failover allowed those tenants move
//! to the other engine, and come back (to their workspace) when theirs is up again; deleting a
//! tenant removes its containers and volumes on every engine. The gateway reaches the second
//! engine over TCP with mutual TLS (certificates made with openssl for the test).
//!
//! Its own test binary: cargo runs test binaries one at a time, so no other Docker test of the
//! suite runs meanwhile. Run as root (as CI does). It never stops the machine's daemon.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bulkhead::config::{Endpoint, EngineConfig, EngineTls, EnginesConfig};
use bulkhead::sandbox::docker::{self, DockerOptions, DockerSandbox};
use bulkhead::sandbox::placement::{Candidate, order};
use bulkhead::sandbox::{Sandbox, SandboxError};

#[path = "docker_common.rs"]
mod common;
use common::*;

const MAIN: &str = "/var/run/docker.sock";
const SOCK2: &str = "/run/bulkhead-docker2.sock";
const ROOT2: &str = "/var/lib/bulkhead-docker2";
const EXEC2: &str = "/run/bulkhead-docker2";
const PID2: &str = "/run/bulkhead-docker2.pid";
/// The second engine's certificates: a CA, its server certificate, the gateway's client one.
const TLS2: &str = "/run/bulkhead-docker2-tls";

/// The second engine's TCP port (it listens with mutual TLS there, and on its Unix socket for
/// this test's own `docker` commands); the same across its restarts.
fn port2() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
}

/// Makes a CA, a server certificate for localhost, a client certificate, and a second CA that
/// signed neither (openssl).
fn make_certs() {
    let _ = std::fs::remove_dir_all(TLS2);
    std::fs::create_dir_all(TLS2).unwrap();
    let script = r#"set -e
        key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
        key ca-key.pem; openssl req -x509 -new -key ca-key.pem -out ca.pem -days 2 -subj /CN=bulkhead-test-ca
        key other-ca-key.pem; openssl req -x509 -new -key other-ca-key.pem -out other-ca.pem -days 2 -subj /CN=other-ca
        key server-key.pem; openssl req -new -key server-key.pem -out server.csr -subj /CN=localhost
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
        key client-key.pem; openssl req -new -key client-key.pem -out client.csr -subj /CN=gateway
        printf 'extendedKeyUsage=clientAuth\n' > client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
        chmod 600 *-key.pem"#;
    let out = Command::new("sh").arg("-c").arg(script).current_dir(TLS2).output().unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
}

/// The second engine as the gateway reaches it: TCP with mutual TLS, trusting `ca`.
fn tls_endpoint(ca: &str) -> Endpoint {
    let at = |f: &str| Path::new(TLS2).join(f);
    Endpoint::Tcp {
        addr: format!("localhost:{}", port2()),
        tls: EngineTls { ca: at(ca), cert: at("client.pem"), key: at("client-key.pem") },
    }
}

fn docker_on(sock: &str, args: &[&str]) -> Output {
    Command::new("docker").arg("-H").arg(format!("unix://{sock}")).args(args).output().unwrap()
}

fn up(sock: &str) -> bool {
    Path::new(sock).exists() && docker_on(sock, &["info", "--format", "{{.ID}}"]).status.success()
}

fn pid2() -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(PID2).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// The second engine; stopped (never the machine's daemon) when dropped.
struct Engine2;

impl Engine2 {
    fn start() -> Engine2 {
        if pid2().is_some() {
            Engine2::stop();
        }
        std::fs::create_dir_all(EXEC2).unwrap();
        std::fs::create_dir_all(ROOT2).unwrap();
        // Its own config file: the machine's /etc/docker/daemon.json names the first daemon's data
        // root. The storage driver is the first daemon's (the only one known to work here).
        let driver = String::from_utf8(docker_on(MAIN, &["info", "--format", "{{.Driver}}"]).stdout).unwrap();
        let conf = Path::new(EXEC2).join("daemon.json");
        std::fs::write(&conf, format!("{{\"storage-driver\": {:?}}}", driver.trim())).unwrap();
        let started = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "setsid \"$(command -v dockerd || echo /usr/sbin/dockerd)\" --config-file {} --host unix://{SOCK2} \
                 --host tcp://127.0.0.1:{port} --tlsverify --tlscacert {TLS2}/ca.pem --tlscert {TLS2}/server.pem \
                 --tlskey {TLS2}/server-key.pem \
                 --data-root {ROOT2} --exec-root {EXEC2} --pidfile {PID2} --bridge none --iptables=false \
                 --ip-masq=false >/tmp/bulkhead-docker2.log 2>&1 &",
                conf.display(),
                port = port2(),
            ))
            .status()
            .unwrap();
        assert!(started.success());
        let deadline = Instant::now() + Duration::from_secs(90);
        while !up(SOCK2) {
            assert!(Instant::now() < deadline, "the second dockerd did not start: see /tmp/bulkhead-docker2.log");
            std::thread::sleep(Duration::from_millis(200));
        }
        Engine2
    }

    /// Removes what earlier runs left on the second engine (it is this test's alone).
    fn clear(&self) {
        let filter = format!("label={}=1", docker::LABEL_SANDBOX);
        let ids = String::from_utf8(docker_on(SOCK2, &["ps", "-aq", "--filter", &filter]).stdout).unwrap();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            docker_on(SOCK2, &[&["rm", "-f"][..], &ids].concat());
        }
        let vols = String::from_utf8(docker_on(SOCK2, &["volume", "ls", "-q", "--filter", &filter]).stdout).unwrap();
        let vols: Vec<&str> = vols.split_whitespace().collect();
        if !vols.is_empty() {
            docker_on(SOCK2, &[&["volume", "rm", "-f"][..], &vols].concat());
        }
    }

    /// SIGTERM to the second daemon (by its pid file) and wait until it is gone.
    fn stop() {
        let Some(pid) = pid2() else { return };
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while pid2().is_some() {
            assert!(Instant::now() < deadline, "the second dockerd did not exit");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The sandbox image, copied from the first engine (there is no registry).
    fn load_image(&self) {
        let id = |sock: &str| {
            String::from_utf8(docker_on(sock, &["image", "inspect", "-f", "{{.Id}}", &image()]).stdout).unwrap()
        };
        if id(SOCK2) != id(MAIN) {
            let loaded = Command::new("sh")
                .arg("-c")
                .arg(format!("docker -H unix://{MAIN} save {} | docker -H unix://{SOCK2} load", image()))
                .output()
                .unwrap();
            assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
        }
        assert_eq!(id(SOCK2), id(MAIN));
    }
}

impl Drop for Engine2 {
    fn drop(&mut self) {
        Engine2::stop();
    }
}

/// Removes every container and volume of a gateway label on both engines (pass or fail).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for sock in [MAIN, SOCK2] {
            if !up(sock) {
                continue;
            }
            let filter = format!("label={}={}", docker::LABEL_GATEWAY, self.0);
            let ids = String::from_utf8(docker_on(sock, &["ps", "-aq", "--filter", &filter]).stdout).unwrap();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                docker_on(sock, &[&["rm", "-f"][..], &ids].concat());
            }
            let vols = String::from_utf8(docker_on(sock, &["volume", "ls", "-q", "--filter", &filter]).stdout).unwrap();
            let vols: Vec<&str> = vols.split_whitespace().collect();
            if !vols.is_empty() {
                docker_on(sock, &[&["volume", "rm", "-f"][..], &vols].concat());
            }
        }
    }
}

fn engines(failover: bool) -> EnginesConfig {
    EnginesConfig {
        engines: vec![
            EngineConfig { name: "one".into(), endpoint: Endpoint::Unix(MAIN.into()), weight: 100 },
            EngineConfig { name: "two".into(), endpoint: tls_endpoint("ca.pem"), weight: 100 },
        ],
        failover,
        health_every: Duration::from_secs(1),
    }
}

/// The tenant's containers and workspace volumes on the engine at `sock`.
fn held_on(sock: &str, gateway: &str, tenant: &str) -> (usize, usize) {
    let f = [format!("label={}={gateway}", docker::LABEL_GATEWAY), format!("label={}={tenant}", docker::LABEL_TENANT)];
    let count = |o: Output| String::from_utf8(o.stdout).unwrap().split_whitespace().count();
    let c = count(docker_on(sock, &["ps", "-q", "--filter", &f[0], "--filter", &f[1]]));
    let v = count(docker_on(sock, &["volume", "ls", "-q", "--filter", &f[0], "--filter", &f[1]]));
    (c, v)
}

fn sock_of(engine: &str) -> &'static str {
    if engine == "one" { MAIN } else { SOCK2 }
}

async fn wait_health(sb: &DockerSandbox, engine: &str, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sb.engines_health().iter().any(|(n, u)| n == engine && *u == want) {
        assert!(Instant::now() < deadline, "engine {engine} never reported {}", if want { "up" } else { "down" });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tests of this binary take turns: each starts and stops the second engine.
static ENGINE2: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn tenants_run_on_their_engine_and_fail_closed_when_it_stops() {
    let _turn = ENGINE2.lock().await;
    if !docker_ready().await {
        return;
    }
    make_certs();
    let engine2 = Engine2::start();
    engine2.clear();
    // Engine "two" is reached over TCP with mutual TLS; a server certificate the configured CA
    // did not sign is refused.
    docker::connect_endpoint(&tls_endpoint("ca.pem")).await.expect("mutual TLS to the second engine");
    let e = docker::connect_endpoint(&tls_endpoint("other-ca.pem")).await.unwrap_err();
    assert!(e.contains("tcp://localhost:") && !e.contains("PRIVATE KEY"), "{e}");
    engine2.load_image();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let _cleanup = Cleanup(docker::gateway_label(&state));
    let gateway = docker::gateway_label(&state);

    // Two tenants the rule puts on each engine, and one it puts on "one" but pinned to "two".
    let config = engines(false);
    let cands: Vec<_> = config.engines.iter().map(|e| Candidate { name: &e.name, weight: e.weight }).collect();
    let home = |t: &str| cands[order(t, None, &cands)[0]].name.to_string();
    let all: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
    let on = |e: &str| all.iter().filter(|t| home(t) == e).take(3).cloned().collect::<Vec<_>>();
    let (mut ones, twos) = (on("one"), on("two"));
    assert!(ones.len() == 3 && twos.len() == 3, "the rule put everything on one engine");
    let pinned = ones.pop().unwrap();
    let with_pin = |t: &str, cmd: &str| {
        let mut c = exec(t, cmd);
        if t == pinned {
            c.settings.docker.engine = Some("two".into());
        }
        c
    };
    let placed = |t: &str| if t == pinned { "two".to_string() } else { home(t) };

    let sb = DockerSandbox::start(&state, DockerOptions { engines: Some(engines(false)), ..DockerOptions::default() });
    let tenants: Vec<String> = ones.iter().chain(&twos).chain([&pinned]).cloned().collect();
    for t in &tenants {
        let r = sb.call(&with_pin(t, &format!("echo {t} > f; cat f; ls -ld /workspace"))).await.unwrap();
        assert!(r.text.starts_with(&format!("{t}\n")), "{t}: {r:?}");
        // On the engine the rule names, and only there: a container and a workspace volume.
        let (here, there) = (sock_of(&placed(t)), sock_of(if placed(t) == "one" { "two" } else { "one" }));
        assert_eq!(held_on(here, &gateway, t), (1, 1), "{t} is not on engine {}", placed(t));
        assert_eq!(held_on(there, &gateway, t), (0, 0), "{t} is also on the other engine");
    }
    // The workspace is a volume of that engine, not a directory of the gateway.
    assert!(!docker::volume_name(&gateway, &ones[0], "agents/x").is_empty());
    assert!(!state.join("workspaces").join(&ones[0]).join(format!("agents/{}-bot/f", ones[0])).exists());

    // Export reads a volume through its engine (a container created, never started), in the
    // layout of workspace directories.
    let t = &twos[1];
    sb.call(&exec(t, "mkdir -p d/e; echo deep > d/e/x; ln -s /etc/passwd link")).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let d2 = docker::connect_endpoint(&tls_endpoint("ca.pem")).await.unwrap();
    let (scopes, u) = docker::fetch_volumes(&d2, &gateway, t, &image(), out.path(), &[]).await.unwrap();
    let ws = out.path().join(format!("agents/{t}-bot"));
    assert_eq!(scopes, [format!("agents/{t}-bot")]);
    assert_eq!(std::fs::read_to_string(ws.join("f")).unwrap(), format!("{t}\n"));
    assert_eq!(std::fs::read_to_string(ws.join("d/e/x")).unwrap(), "deep\n");
    assert_eq!(std::fs::read_link(ws.join("link")).unwrap(), Path::new("/etc/passwd"));
    assert_eq!((u.files, u.skipped.len()), (3, 0), "{u:?}");
    // Nothing of the read is left on the engine.
    assert_eq!(held_on(SOCK2, &gateway, t), (1, 1));
    let all = docker_on(
        SOCK2,
        &[
            "ps",
            "-aq",
            "--filter",
            &format!("label={}={gateway}", docker::LABEL_GATEWAY),
            "--filter",
            &format!("label={}={t}", docker::LABEL_TENANT),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&all.stdout).split_whitespace().count(), 1);

    // The quota holds on volumes, measured by the engine: a command that writes past it is
    // stopped, and the next write is refused because the engine counts what is there.
    let quota_tenant = &twos[0];
    let mut big = exec(quota_tenant, "dd if=/dev/zero of=big bs=1024 count=3000 2>/dev/null; echo done");
    big.settings.docker.disk_quota_bytes = 1 << 20;
    let r = sb.call(&big).await;
    assert!(matches!(r, Err(SandboxError::Quota)), "wrote past the quota on a volume: {r:?}");
    let mut small = exec(quota_tenant, "echo x > small");
    small.settings.docker.disk_quota_bytes = 1 << 20;
    let r = sb.call(&small).await;
    assert!(matches!(r, Err(SandboxError::Quota)), "a write over the quota was not refused: {r:?}");
    sb.call(&exec(quota_tenant, "rm -f big")).await.unwrap();

    // Engine "two" stops: its tenants fail closed with the reason, at once; "one"'s go on.
    Engine2::stop();
    wait_health(&sb, "two", false).await;
    for t in &tenants {
        let t0 = Instant::now();
        let r = sb.call(&with_pin(t, "cat f")).await;
        if placed(t) == "two" {
            match &r {
                Err(SandboxError::Unavailable(m)) => {
                    assert!(m.contains("\"two\" is down") && m.contains("failover"), "{t}: {m}")
                }
                other => panic!("{t}, whose engine is down, got {other:?}"),
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "{t}: failing took {:?}", t0.elapsed());
            // Not moved: nothing of it appeared on the engine that is up.
            assert_eq!(held_on(MAIN, &gateway, t), (0, 0), "{t} was moved silently");
        } else {
            assert_eq!(r.unwrap().text, format!("{t}\n"), "{t} on the engine that is up");
        }
    }
    sb.stop().await;
    drop(sb);

    // With failover allowed, those tenants are served on the other engine (a new, empty
    // workspace there: failover buys availability, not the data of the engine that is down)...
    let sb = DockerSandbox::start(&state, DockerOptions { engines: Some(engines(true)), ..DockerOptions::default() });
    for t in tenants.iter().filter(|t| placed(t) == "two") {
        let r = sb.call(&with_pin(t, "cat f 2>/dev/null || echo empty; echo moved > g")).await.unwrap();
        assert_eq!(r.text, "empty\n", "{t}");
        assert_eq!(held_on(MAIN, &gateway, t), (1, 1), "{t} did not move to engine one");
    }
    // ...and go back to their own engine, and workspace, once it is up again.
    let _engine2 = Engine2::start();
    wait_health(&sb, "two", true).await;
    for t in tenants.iter().filter(|t| placed(t) == "two") {
        let r = sb.call(&with_pin(t, "cat f")).await.unwrap();
        assert_eq!(r.text, format!("{t}\n"), "{t} back on its engine");
        assert_eq!(held_on(SOCK2, &gateway, t).0, 1, "{t} is not back on engine two");
    }

    // Deleting a tenant removes its containers and volumes on every engine.
    let moved = tenants.iter().find(|t| placed(t) == "two").unwrap();
    sb.remove_tenant(moved).await.unwrap();
    assert_eq!(held_on(MAIN, &gateway, moved), (0, 0));
    assert_eq!(held_on(SOCK2, &gateway, moved), (0, 0));
    sb.stop().await;
}

/// The real binary: `serve` places a tenant on the TLS engine and reports both engines'
/// health on `/metrics`; `doctor` checks both; `tenant export` reads the tenant's workspace back
/// through its engine; `tenant delete` removes its containers and volumes there.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_exports_and_deletes_through_the_engines() {
    let _turn = ENGINE2.lock().await;
    if !docker_ready().await {
        return;
    }
    make_certs();
    let engine2 = Engine2::start();
    engine2.clear();
    engine2.load_image();
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_bulkhead");
    let made = Command::new(bin).args(["keys", "init", "--out"]).arg(dir.path().join("master.key")).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let config = format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", operators: [ {{ id: "ops", token: {{ env: "OPS_TOKEN" }}, role: "admin" }} ] }},
  stateDir: "state",
  store: {{ masterKey: {{ file: "master.key" }} }},
  models: {{ providers: {{ demo: {{ api: "scripted" }} }} }},
  sandbox: {{ docker: {{ healthCheckSec: 1, engines: [
    {{ name: "one", endpoint: "unix://{MAIN}" }},
    {{ name: "two", endpoint: "tcp://localhost:{port}",
      tls: {{ ca: "{TLS2}/ca.pem", cert: "{TLS2}/client.pem", key: "{TLS2}/client-key.pem" }} }},
  ] }} }},
  tenants: [ {{ id: "alpha", apiTokens: [ {{ env: "TOKEN_A" }} ], sandbox: {{ engine: "two" }} }} ],
  agents: {{ list: [
    {{ id: "a-dock", tenant: "alpha", model: "demo/scripted", tools: {{ allow: ["group:fs", "exec"] }},
      sandbox: {{ mode: "all", backend: "docker", docker: {{ image: "{image}" }} }} }},
  ] }},
}}"#,
        port = port2(),
        image = image(),
    );
    let path = dir.path().join("bulkhead.json5");
    std::fs::write(&path, config).unwrap();
    let state = dir.path().join("state");
    let gateway = docker::gateway_label(&state);
    let _cleanup = Cleanup(gateway.clone());
    let (token, ops) = ("tok-alpha-3f9c2a7e5b1d4c8f9a6e2b7d1c5f8a3e", "ops-7d2c9e4b1a6f3e8d5c2b9a7f4e1d6c3b");
    let mut child = tokio::process::Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("TOKEN_A", token)
        .env("OPS_TOKEN", ops)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let base = first.strip_prefix("listening on ").expect("listening line").to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http = reqwest::Client::new();
    let cmd = r#"/tool exec {"command":"mkdir -p plans; echo alpha plans > plans/notes.txt; cat plans/notes.txt"}"#;
    let body = serde_json::json!({ "model": "a-dock", "user": "u1", "messages": [{ "role": "user", "content": cmd }] });
    let resp = http.post(format!("{base}/v1/chat/completions")).bearer_auth(token).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    let reply = v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
    assert!(reply.contains("alpha plans"), "{reply}");
    // On the pinned engine, reached over mutual TLS; nothing on the other.
    assert_eq!(held_on(SOCK2, &gateway, "alpha"), (1, 1));
    assert_eq!(held_on(MAIN, &gateway, "alpha"), (0, 0));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = http.get(format!("{base}/metrics")).bearer_auth(ops).send().await.unwrap().text().await.unwrap();
        if m.contains("gateway_docker_engine_up{engine=\"one\"} 1")
            && m.contains("gateway_docker_engine_up{engine=\"two\"} 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "engine health not on /metrics:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill().await;
    let _ = child.wait().await;

    let run = |args: &[&str]| {
        let out =
            Command::new(bin).arg("--config").arg(&path).args(args).env_remove("BULKHEAD_CONFIG").output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (_, doctor) = run(&["doctor"]);
    for line in [
        "ok    docker engine one at unix://",
        "ok    docker engine two at tcp://localhost:",
        "ok    tenant alpha pinned on engine two",
    ] {
        assert!(doctor.contains(line), "{line} not in:\n{doctor}");
    }
    let export = dir.path().join("alpha.jsonl");
    let (ok, out) = run(&["tenant", "export", "alpha", "--out", export.to_str().unwrap()]);
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&export).unwrap();
    let file = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "file" && v["path"].as_str().is_some_and(|p| p.ends_with("plans/notes.txt")))
        .unwrap_or_else(|| panic!("the workspace file is not in the export:\n{text}"));
    assert_eq!(file["data"], "alpha plans\n");
    // Nothing of the export is left in the state dir.
    assert!(
        !std::fs::read_dir(&state).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".export-"))
    );
    let (ok, out) = run(&["tenant", "delete", "alpha", "--yes"]);
    assert!(ok, "{out}");
    assert!(out.contains("workspace volume(s) of tenant alpha on engine two"), "{out}");
    assert_eq!(held_on(SOCK2, &gateway, "alpha"), (0, 0));
    let all =
        docker_on(SOCK2, &["volume", "ls", "-q", "--filter", &format!("label={}={gateway}", docker::LABEL_GATEWAY)]);
    assert!(String::from_utf8_lossy(&all.stdout).trim().is_empty());
}

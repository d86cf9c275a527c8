//! The audit trail, operator roles and TLS through the real binary: tool decisions chained and
//! verified from the CLI, tampering located, logs cut behind their anchors, per-log keys across a
//! tenant's re-creation, SIGKILL during appends, the admin API's roles,
//! white-label responses, and HTTPS with a real rustls client.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Gateway, http, repo_root, run_cli};
use crate::store::{Site, chat};
use crate::{TOKEN_A, TOKEN_B, env, fakes};

const ADMIN: &str = "admin-token-9b3e7a1d5f8c2e6b4a9d3f7c1e5b8a2d";
const OPERATOR: &str = "operator-token-4f8a2d6c1e9b5f3a7d2c8e4b6a1f9d5c";
const AUDITOR: &str = "auditor-token-6d1a9f4c8e2b7d5a3f9c1e6b4d8a2f7e";

fn cli(site: &Site, args: &[&str]) -> (i32, String, String) {
    let config = site.config_path();
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    run_cli(&all, None)
}

/// `audit show --json` records of a log.
fn records(site: &Site, log: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "show", "--json"];
    args.extend_from_slice(log);
    let (code, out, err) = cli(site, &args);
    assert_eq!(code, 0, "{out}{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn kinds(recs: &[Value], kind: &str) -> Vec<Value> {
    recs.iter().filter(|r| r["kind"] == kind).cloned().collect()
}

fn tenant_log(site: &Site, tenant: &str) -> std::path::PathBuf {
    site.state().join("audit").join("tenants").join(format!("{tenant}.log"))
}

#[tokio::test]
async fn tool_decisions_are_chained_verified_exported_and_tampering_is_located() {
    let fake = fakes::start().await;
    let site = Site::new();
    let mut gw = Gateway::start_in(site.path(), &site.config(&fake.base), &env()).await;
    // Allowed (a-demo: built-in default policy) and denied (a-sessions: session tools only).
    let (s, b) = chat(&gw, TOKEN_A, "a-demo", "conv-secret-peer", r#"/tool exec {"command":"echo Zebulon"}"#).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["choices"][0]["message"]["content"].as_str().unwrap().contains("Zebulon"), "{b}");
    let (s, b) = chat(&gw, TOKEN_A, "a-sessions", "conv-secret-peer", r#"/tool exec {"command":"id"}"#).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["choices"][0]["message"]["content"].as_str().unwrap().contains("denied"), "{b}");
    assert_eq!(gw.terminate().await, Some(0));

    let (code, out, err) = cli(&site, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("host: ok") && out.contains("tenant:alpha: ok") && out.contains("checkpoint"), "{out}");

    let recs = records(&site, &["--tenant", "alpha"]);
    let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=recs.len() as u64).collect::<Vec<_>>());
    assert!(
        kinds(&recs, "policy.load")
            .iter()
            .any(|r| r["agent"] == "a-demo" && r["digest"].as_str().unwrap().starts_with("sha256:"))
    );
    let decisions = kinds(&recs, "tool.decision");
    let allowed = decisions.iter().find(|r| r["agent"] == "a-demo").expect("a-demo's decision");
    assert_eq!((allowed["tool"].as_str(), allowed["allowed"].as_bool()), (Some("exec"), Some(true)));
    let denied = decisions.iter().find(|r| r["agent"] == "a-sessions").expect("a-sessions' decision");
    assert_eq!(denied["allowed"], false);
    assert_eq!(denied["actor"], "agent:a-sessions");
    assert_eq!(denied["channel"], "api");
    let outcome = &kinds(&recs, "tool.outcome")[0];
    assert_eq!((outcome["sandbox"].as_str(), outcome["exitCode"].as_i64()), (Some("wasm"), Some(0)), "{outcome}");
    assert!(outcome["argsDigest"].as_str().unwrap().len() == 32 && outcome["durationMs"].is_u64());
    // Who/what/when/where, but no content and no peer id: the session is a keyed digest.
    let text = serde_json::to_string(&recs).unwrap();
    for needle in ["Zebulon", "echo", "conv-secret-peer", TOKEN_A] {
        assert!(!text.contains(needle), "an audit record holds {needle:?}: {text}");
    }
    assert_eq!(decisions[0]["session"], outcome["session"], "the same session digests alike");
    assert!(recs.iter().all(|r| r["ts"].as_str().unwrap().ends_with('Z')));
    let host = records(&site, &["--host"]);
    assert!(!kinds(&host, "gateway.start").is_empty() && !kinds(&host, "gateway.stop").is_empty(), "{host:?}");
    // --since filters by time; a bad value is a clear error.
    assert!(records(&site, &["--tenant", "alpha", "--since", "2999-01-01"]).is_empty());
    let (code, _, err) = cli(&site, &["audit", "show", "--tenant", "alpha", "--since", "last week"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--since"), "{err}");

    // The export carries the tenant's audit trail, including the export itself.
    let out_file = site.path().join("alpha-export.jsonl");
    let (code, out, err) = cli(&site, &["tenant", "export", "alpha", "--out", out_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<Value> =
        std::fs::read_to_string(&out_file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let head = lines.iter().find(|l| l["type"] == "audit").expect("audit header");
    let audit_lines: Vec<&Value> = lines.iter().filter(|l| l["type"] == "auditRecord").collect();
    assert_eq!(head["records"].as_u64(), Some(audit_lines.len() as u64));
    assert_eq!(audit_lines.last().unwrap()["kind"], "tenant.export");
    assert_eq!(head["checkpoint"]["seq"].as_u64(), Some(audit_lines.len() as u64));

    // A checkpoint anchored outside the host, then tampering: each is located by sequence number.
    let anchor = site.path().join("alpha.checkpoint");
    let (code, out, err) = cli(&site, &["audit", "checkpoint", "--tenant", "alpha", "--out", anchor.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let log = tenant_log(&site, "alpha");
    let good = std::fs::read(&log).unwrap();
    let lines_of = |b: &[u8]| -> Vec<Vec<u8>> { b.split_inclusive(|c| *c == b'\n').map(<[u8]>::to_vec).collect() };
    let n = lines_of(&good).len();
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", "--tenant", "alpha"];
        args.extend_from_slice(extra);
        cli(&site, &args)
    };
    // A flipped byte in record 3.
    let mut t = lines_of(&good);
    let at = t[2].len() - 5;
    t[2][at] ^= 1;
    std::fs::write(&log, t.concat()).unwrap();
    let (code, out, _) = verify(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED at record 3"), "{out}");
    // Records swapped.
    let mut t = lines_of(&good);
    t.swap(1, 2);
    std::fs::write(&log, t.concat()).unwrap();
    assert!(verify(&[]).1.contains("FAILED at record 2"));
    // Truncated by two records: caught by the stored checkpoint and by the anchored one, even
    // when the stored checkpoint is deleted too.
    std::fs::write(&log, lines_of(&good)[..n - 2].concat()).unwrap();
    let (code, out, _) = verify(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("FAILED at record {}", n - 1)) && out.contains("truncated"), "{out}");
    std::fs::remove_file(log.with_extension("checkpoint")).unwrap();
    let (code, out, _) = verify(&[]);
    assert_eq!(code, 1, "the host chain's anchor catches it without the checkpoint: {out}");
    assert!(out.contains("tenant:alpha: FAILED") && out.contains("anchor in the host log"), "{out}");
    let (code, out, _) = cli(&site, &["audit", "verify", "--checkpoint", anchor.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("FAILED at record {}", n - 1)), "{out}");
    // Restored, the anchored checkpoint verifies.
    std::fs::write(&log, &good).unwrap();
    let (code, out, err) = cli(&site, &["audit", "verify", "--checkpoint", anchor.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("matches the given checkpoint"), "{out}");

    // Deleting the tenant removes its log and leaves a host record with its final state.
    let (code, out, err) = cli(&site, &["tenant", "delete", "alpha", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!log.exists());
    let host = records(&site, &["--host"]);
    let deleted = kinds(&host, "tenant.delete");
    assert_eq!(deleted.len(), 1, "{host:?}");
    assert_eq!((deleted[0]["tenant"].as_str(), deleted[0]["actor"].as_str()), (Some("alpha"), Some("cli")));
    assert_eq!(deleted[0]["finalSeq"].as_u64(), Some(n as u64));
    assert_eq!(cli(&site, &["audit", "verify"]).0, 0);
}

#[tokio::test]
async fn sigkill_during_audited_tool_calls_loses_no_acknowledged_record() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = site.config(&fake.base);
    let mut acked = 0usize;
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    for round in 0..3 {
        let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
        let mut tasks = Vec::new();
        for t in 0..3 {
            let base = gw.base.clone();
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
                let mut ok = 0;
                for n in 0..150 {
                    let body = json!({ "model": "a-sessions", "user": format!("k-{round}-{t}"),
                        "messages": [{ "role": "user", "content": format!("/tool exec {{\"n\":{n}}}") }] });
                    let resp = client
                        .post(format!("{base}/v1/chat/completions"))
                        .bearer_auth(TOKEN_A)
                        .json(&body)
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status().as_u16() == 200 => ok += 1,
                        _ => break,
                    }
                }
                ok
            }));
        }
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(150 + (seed >> 33) % 700)).await;
        gw.kill().await;
        for task in tasks {
            acked += task.await.unwrap();
        }
    }
    eprintln!("acknowledged audited tool calls before the SIGKILLs: {acked}");
    assert!(acked > 0, "some calls were acknowledged before the kills");
    // The logs verify (a torn tail is reported, not a failure) and hold every acknowledged decision.
    let (code, out, err) = cli(&site, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let recs = records(&site, &["--tenant", "alpha"]);
    let decisions = kinds(&recs, "tool.decision").len();
    assert!(decisions >= acked, "{decisions} decisions on disk < {acked} acknowledged");
    // A restart cuts any torn tail, records it, and keeps appending to a valid chain.
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    let (s, b) = chat(&gw, TOKEN_A, "a-sessions", "after", r#"/tool exec {}"#).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(gw.terminate().await, Some(0));
    let (code, out, err) = cli(&site, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("warning"), "no torn tail is left after a clean restart: {out}");
    assert_eq!(kinds(&records(&site, &["--tenant", "alpha"]), "tool.decision").len(), decisions + 1);
}

fn roles_config(site: &Site, model_base: &str) -> String {
    site.config(model_base).replacen(
        r#"operators: [ { id: "ops", token: { env: "OPS_TOKEN" }, role: "admin" } ]"#,
        r#"operators: [ { id: "root", token: { env: "ADMIN_TOKEN" }, role: "admin" },
                        { id: "oncall", token: { env: "OPERATOR_TOKEN" }, role: "operator" },
                        { id: "soc2", token: { env: "AUDITOR_TOKEN" }, role: "auditor" } ],
            auth: { maxFailures: 100 }"#,
        1,
    )
}

fn role_env() -> Vec<(&'static str, &'static str)> {
    let mut e = env();
    e.extend([("ADMIN_TOKEN", ADMIN), ("OPERATOR_TOKEN", OPERATOR), ("AUDITOR_TOKEN", AUDITOR)]);
    e
}

/// Fails if a response names the product or its stack in a header or (for errors) its body.
fn assert_white_label(what: &str, resp_headers: &reqwest::header::HeaderMap, body: &str) {
    assert!(resp_headers.get("server").is_none() && resp_headers.get("x-powered-by").is_none(), "{what}");
    for (name, value) in resp_headers {
        let v = value.to_str().unwrap_or("").to_ascii_lowercase();
        for word in ["bulkhead", "axum", "hyper", "rust", "tokio", env!("CARGO_PKG_VERSION")] {
            assert!(!v.contains(word) && !name.as_str().contains(word), "{what}: header {name}: {v}");
        }
    }
    let b = body.to_ascii_lowercase();
    for word in ["bulkhead", "axum", "hyper", "rust", "tokio"] {
        assert!(!b.contains(word), "{what}: body names {word:?}: {body}");
    }
}

#[tokio::test]
async fn admin_roles_tenant_tokens_and_every_admin_action_is_audited() {
    let fake = fakes::start().await;
    let site = Site::new();
    let mut gw = Gateway::start_in(site.path(), &roles_config(&site, &fake.base), &role_env()).await;
    let client = http();
    let call = |method: &'static str, path: &str, token: Option<&str>| {
        let mut req = match method {
            "GET" => client.get(gw.url(path)),
            _ => client.post(gw.url(path)),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.unwrap();
            let (status, headers) = (r.status().as_u16(), r.headers().clone());
            let body = r.text().await.unwrap();
            assert_white_label(&format!("{method} {status}"), &headers, if status >= 400 { &body } else { "" });
            (status, body)
        }
    };
    // Tenant tokens, wrong tokens and no token never reach /admin/, known path or not.
    for token in [Some(TOKEN_A), Some(TOKEN_B), Some("nope"), None] {
        for (m, p) in [
            ("GET", "/admin/tenants"),
            ("POST", "/admin/reload"),
            ("GET", "/admin/audit"),
            ("GET", "/admin/usage"),
            ("GET", "/admin/x"),
        ] {
            assert_eq!(call(m, p, token).await.0, 401, "{m} {p} with {token:?}");
        }
    }
    // Every role reads the tenant list (never tokens).
    for token in [ADMIN, OPERATOR, AUDITOR] {
        let (s, body) = call("GET", "/admin/tenants", Some(token)).await;
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let ids: Vec<&str> = v["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["alpha", "bravo"]);
        assert!(!body.contains(TOKEN_A));
    }
    // Every role reads usage (billing); a bad date or an unknown tenant is a clear error.
    for token in [ADMIN, OPERATOR, AUDITOR] {
        let (s, body) = call("GET", "/admin/usage?tenant=alpha", Some(token)).await;
        assert_eq!(s, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["tenants"][0]["tenant"], "alpha", "{body}");
        assert!(!body.contains("bravo"), "only the tenant asked for: {body}");
    }
    let (s, body) = call("GET", "/admin/usage", Some(ADMIN)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["tenants"].as_array().unwrap().len(), 2);
    assert_eq!(call("GET", "/admin/usage?since=yesterday", Some(ADMIN)).await.0, 400);
    assert_eq!(call("GET", "/admin/usage?tenant=ghost", Some(ADMIN)).await.0, 404);
    // The auditor cannot mutate; admin and operator reload (the unchanged config: nothing changes).
    let (s, body) = call("POST", "/admin/reload", Some(AUDITOR)).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("auditor role may not"), "{body}");
    for token in [ADMIN, OPERATOR] {
        let (s, body) = call("POST", "/admin/reload", Some(token)).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("\"applied\":true") && body.contains("\"tenantsAdded\":[]"), "{body}");
    }
    // Audit export: auditor and admin yes, operator no; unknown tenants 404.
    assert_eq!(call("GET", "/admin/audit?tenant=alpha", Some(OPERATOR)).await.0, 403);
    assert_eq!(call("GET", "/admin/audit?tenant=ghost", Some(AUDITOR)).await.0, 404);
    assert_eq!(call("GET", "/admin/nothing-here", Some(ADMIN)).await.0, 404);
    let (s, body) = call("GET", "/admin/audit?tenant=alpha", Some(AUDITOR)).await;
    assert_eq!(s, 200, "{body}");
    let export: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(export["log"], "tenant:alpha");
    assert!(export["records"].as_array().unwrap().iter().any(|r| r["kind"] == "policy.load"));
    // The exported checkpoint anchors the log: the CLI verifies it after the gateway stops.
    let anchor = site.path().join("exported.checkpoint");
    std::fs::write(&anchor, serde_json::to_string(&export["checkpoint"]).unwrap()).unwrap();
    let (s, body) = call("GET", "/admin/audit", Some(ADMIN)).await;
    assert_eq!(s, 200, "{body}");
    let host: Value = serde_json::from_str(&body).unwrap();
    let actions: Vec<&Value> =
        host["records"].as_array().unwrap().iter().filter(|r| r["kind"] == "admin.action").collect();
    assert!(
        actions.iter().any(|r| r["operator"] == "soc2"
            && r["path"] == "/admin/reload"
            && r["status"] == 403
            && r["outcome"] == "denied"),
        "{actions:?}"
    );
    // The web chat page is white-label too.
    let page = client.get(gw.url("/")).send().await.unwrap();
    let headers = page.headers().clone();
    assert_white_label("web chat page", &headers, &page.text().await.unwrap());
    assert_eq!(gw.terminate().await, Some(0));

    let (code, out, err) = cli(&site, &["audit", "verify", "--checkpoint", anchor.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let host = records(&site, &["--host"]);
    let failures = kinds(&host, "auth.failure");
    assert!(failures.iter().any(|r| r["surface"] == "admin" && r["reason"] == "tenant token"), "{failures:?}");
    assert!(failures.iter().any(|r| r["surface"] == "admin" && r["reason"] == "no token"), "{failures:?}");
    assert!(
        failures.iter().all(|r| !r["client"].as_str().unwrap().contains("127.0.0.1")),
        "client addresses are digests"
    );
    let actions = kinds(&host, "admin.action");
    // Every authenticated admin request: 3 tenant lists, 6 usage reads, 3 reloads, 4 audit/unknown
    // requests, 1 host export.
    assert_eq!(actions.len(), 17, "{actions:?}");
    assert!(actions.iter().any(|r| r["operator"] == "oncall" && r["status"] == 200 && r["actor"] == "operator:oncall"));
    assert_eq!(kinds(&host, "config.reload").len(), 2, "each applied reload is recorded");
}

fn tls_config(site: &Site, model_base: &str, tls: &str) -> String {
    site.config(model_base).replacen("gateway: {", &format!("gateway: {{ tls: {tls},"), 1)
}

#[tokio::test]
async fn tls_serves_a_real_rustls_client_and_required_refuses_plaintext_off_loopback() {
    let fake = fakes::start().await;
    let site = Site::new();
    let fixtures = repo_root().join("tests/fixtures/tls");
    let files = format!(
        "{{ cert: {:?}, key: {:?} }}",
        fixtures.join("cert.pem").to_str().unwrap(),
        fixtures.join("key.pem").to_str().unwrap()
    );
    let mut gw = Gateway::start_in(site.path(), &tls_config(&site, &fake.base, &files), &env()).await;
    assert!(gw.base.starts_with("https://127.0.0.1:"), "{}", gw.base);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(fixtures.join("ca.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .https_only(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let body = json!({ "model": "a-demo", "user": "tls", "messages": [{ "role": "user", "content": "over tls" }] });
    let resp = client.post(gw.url("/v1/chat/completions")).bearer_auth(TOKEN_A).json(&body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo: over tls");
    // A client that does not trust the certificate is refused by its own TLS stack.
    let untrusting = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    assert!(untrusting.get(gw.url("/healthz")).send().await.is_err());
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = gw.url("/healthz").replacen("https://", "http://", 1);
    let r = http().get(&plain).send().await;
    assert!(r.is_err() || !r.unwrap().status().is_success(), "plaintext must not be served");
    assert_eq!(gw.terminate().await, Some(0));
    let host = records(&site, &["--host"]);
    assert_eq!(kinds(&host, "gateway.start")[0]["tls"], true);

    // `required` without certificates refuses a non-loopback address at startup, naming the key;
    // `config check` reports the same. On loopback it starts.
    let refused = tls_config(&site, &fake.base, "{ required: true }").replacen("127.0.0.1:0", "0.0.0.0:0", 1);
    std::fs::write(site.config_path(), &refused).unwrap();
    let (code, out, err) = cli(&site, &["serve"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("gateway.tls.required") && err.contains("plaintext"), "{err}");
    assert!(!out.contains("listening"), "{out}");
    let (code, out, err) = cli(&site, &["config", "check"]);
    assert_eq!(code, 2);
    assert!(format!("{out}{err}").contains("gateway.tls.required"), "{out}{err}");
    let loopback = tls_config(&site, &fake.base, "{ required: true }");
    let mut gw = Gateway::start_in(site.path(), &loopback, &env()).await;
    assert!(gw.base.starts_with("http://127.0.0.1:"));
    assert_eq!(gw.terminate().await, Some(0));
    // Unreadable or mismatched files are clear errors.
    let bad = format!(
        "{{ cert: {:?}, key: {:?} }}",
        fixtures.join("cert.pem").to_str().unwrap(),
        fixtures.join("cert.pem").to_str().unwrap()
    );
    std::fs::write(site.config_path(), tls_config(&site, &fake.base, &bad)).unwrap();
    let (code, _, err) = cli(&site, &["serve"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("gateway.tls.key") && err.contains("no PEM private key"), "{err}");
    let missing = "{ cert: \"/nonexistent/cert.pem\", key: \"/nonexistent/key.pem\" }";
    std::fs::write(site.config_path(), tls_config(&site, &fake.base, missing)).unwrap();
    let (code, _, err) = cli(&site, &["serve"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("gateway.tls.cert: cannot read /nonexistent/cert.pem"), "{err}");
}

#[tokio::test]
async fn a_tenant_whose_log_fails_verification_gets_no_tools_and_the_others_are_unaffected() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = site.config(&fake.base);
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    assert_eq!(chat(&gw, TOKEN_A, "a-demo", "u", "hello").await.0, 200);
    assert_eq!(gw.terminate().await, Some(0));
    let log = tenant_log(&site, "alpha");
    let bytes = std::fs::read(&log).unwrap();
    let mut lines: Vec<&[u8]> = bytes.split_inclusive(|c| *c == b'\n').collect();
    lines.swap(0, 1);
    std::fs::write(&log, lines.concat()).unwrap();

    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    let exec = r#"/tool exec {"command":"echo still-works"}"#;
    let (s, b) = chat(&gw, TOKEN_A, "a-demo", "u", exec).await;
    assert_eq!(s, 200, "{b}");
    let answer = b["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(answer.contains("audit log is unavailable") && !answer.contains("still-works"), "{answer}");
    let (s, b) = chat(&gw, TOKEN_B, "b-secret", "u", exec).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["choices"][0]["message"]["content"].as_str().unwrap().contains("still-works"), "{b}");
    assert_eq!(gw.terminate().await, Some(0));
    let (code, out, _) = cli(&site, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tenant:alpha: FAILED at record 1") && out.contains("tenant:bravo: ok"), "{out}");
    assert_eq!(std::fs::read(&log).unwrap(), lines.concat(), "the tampered log is kept as evidence, untouched");
}

#[tokio::test]
async fn an_audit_export_of_a_log_cut_short_on_disk_is_refused_not_shortened() {
    let fake = fakes::start().await;
    let site = Site::new();
    let gw = Gateway::start_in(site.path(), &roles_config(&site, &fake.base), &role_env()).await;
    let client = http();
    let export = || client.get(gw.url("/admin/audit?tenant=alpha")).bearer_auth(AUDITOR).send();
    let r = export().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    let records = body["records"].as_array().unwrap().len();
    assert!(records >= 2, "policy loads are on record: {body}");
    // Cut the tenant's log to its first record behind the gateway's back.
    let log = tenant_log(&site, "alpha");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, format!("{}\n", text.lines().next().unwrap())).unwrap();
    let r = export().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 409, "a shortened log must not be exported under a checkpoint claiming more: {body}");
    assert!(body.contains("audit_broken"), "{body}");
}

#[tokio::test]
async fn a_tenant_log_deleted_with_its_checkpoint_is_reported_missing() {
    let fake = fakes::start().await;
    let site = Site::new();
    let mut gw = Gateway::start_in(site.path(), &site.config(&fake.base), &env()).await;
    let (s, b) = chat(&gw, TOKEN_A, "a-demo", "conv-x", "hello").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(gw.terminate().await, Some(0));
    let (code, out, err) = cli(&site, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    // Remove alpha's whole trail: the log and its stored checkpoint.
    let log = tenant_log(&site, "alpha");
    std::fs::remove_file(&log).unwrap();
    let _ = std::fs::remove_file(log.with_extension("checkpoint"));
    for args in [&["audit", "verify"][..], &["audit", "verify", "--tenant", "alpha"][..]] {
        let (code, out, err) = cli(&site, args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(out.contains("tenant:alpha: FAILED") && out.contains("missing"), "{out}");
    }
}

/// An exec call's answer through the real gateway.
async fn exec_answer(gw: &Gateway, token: &str, agent: &str) -> String {
    let (s, b) = chat(gw, token, agent, "u", r#"/tool exec {"command":"echo still-works"}"#).await;
    assert_eq!(s, 200, "{b}");
    b["choices"][0]["message"]["content"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_tenant_log_cut_rolled_back_or_deleted_behind_its_anchor_fails_verify_and_gets_no_tools() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = site.config(&fake.base);
    let read = |p: &std::path::Path| std::fs::read(p).ok();
    let (alpha, bravo) = (tenant_log(&site, "alpha"), tenant_log(&site, "bravo"));
    let (alpha_cp, bravo_cp) = (alpha.with_extension("checkpoint"), bravo.with_extension("checkpoint"));
    // Two runs of the gateway, each stopped cleanly (checkpoints, anchored in the host log).
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    assert!(exec_answer(&gw, TOKEN_A, "a-demo").await.contains("still-works"));
    assert_eq!(gw.terminate().await, Some(0));
    let (old_log, old_cp) = (read(&alpha).unwrap(), read(&alpha_cp).unwrap());
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    assert!(exec_answer(&gw, TOKEN_A, "a-demo").await.contains("still-works"));
    assert_eq!(gw.terminate().await, Some(0));
    let (good_log, good_cp) = (read(&alpha).unwrap(), read(&alpha_cp).unwrap());
    let (code, out, err) = cli(&site, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("tenant:alpha: ok") && out.contains("reaches its anchor"), "{out}");

    // Each tampering: verify exits 1 naming the log; the gateway refuses to append to it (the
    // tenant's tool calls are refused, the other tenant works) and leaves its files untouched.
    let cases: [(&str, &str, &str, &str); 3] = [
        ("cut at a record boundary, checkpoint deleted", "alpha", TOKEN_A, "a-demo"),
        ("cut and checkpoint rolled back to an older copy", "alpha", TOKEN_A, "a-demo"),
        ("log and checkpoint deleted (a tenant with no stored conversations)", "bravo", TOKEN_B, "b-secret"),
    ];
    let mut bravo_files = (Vec::new(), Vec::new());
    for (i, (what, tenant, token, agent)) in cases.into_iter().enumerate() {
        match i {
            0 => {
                let lines: Vec<&[u8]> = good_log.split_inclusive(|c| *c == b'\n').collect();
                std::fs::write(&alpha, lines[..lines.len() - 2].concat()).unwrap();
                std::fs::remove_file(&alpha_cp).unwrap();
            }
            1 => {
                std::fs::write(&alpha, &old_log).unwrap();
                std::fs::write(&alpha_cp, &old_cp).unwrap();
            }
            _ => {
                // Bravo's current pair (each run above checkpointed it anew).
                bravo_files = (read(&bravo).unwrap(), read(&bravo_cp).unwrap());
                std::fs::remove_file(&bravo).unwrap();
                std::fs::remove_file(&bravo_cp).unwrap();
            }
        }
        let log = tenant_log(&site, tenant);
        let files = || (read(&log), read(&log.with_extension("checkpoint")), read(&log.with_extension("key")));
        let before = files();
        let (code, out, _) = cli(&site, &["audit", "verify"]);
        assert_eq!(code, 1, "{what}: {out}");
        let line = out.lines().find(|l| l.starts_with(&format!("tenant:{tenant}:"))).unwrap_or_default();
        assert!(line.contains("FAILED") && line.contains("anchor in the host log"), "{what}: {out}");
        let (code, out, _) = cli(&site, &["audit", "verify", "--tenant", tenant]);
        assert_eq!(code, 1, "{what}: {out}");
        let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
        let answer = exec_answer(&gw, token, agent).await;
        assert!(answer.contains("audit log is unavailable") && !answer.contains("still-works"), "{what}: {answer}");
        if tenant == "bravo" {
            // (Bravo is not used before this case, so it has no stored conversations.)
            assert!(exec_answer(&gw, TOKEN_A, "a-demo").await.contains("still-works"), "{what}: alpha works");
        }
        assert_eq!(gw.terminate().await, Some(0));
        assert_eq!(files(), before, "{what}: the log is kept as evidence, untouched");
        // Put back, for the next case.
        if i < 2 {
            std::fs::write(&alpha, &good_log).unwrap();
            std::fs::write(&alpha_cp, &good_cp).unwrap();
        }
    }
    std::fs::write(&bravo, &bravo_files.0).unwrap();
    std::fs::write(&bravo_cp, &bravo_files.1).unwrap();
    let (code, out, err) = cli(&site, &["audit", "verify"]);
    assert_eq!(code, 0, "restored, every log reaches its anchor again: {out}{err}");
    // The way out for an operator: the refused log moved aside as evidence, on record.
    std::fs::write(&alpha, &old_log).unwrap();
    let (code, out, err) = cli(&site, &["audit", "reset", "--tenant", "alpha", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("evidence"), "{out}");
    let (code, out, err) = cli(&site, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let host = records(&site, &["--host"]);
    assert_eq!(kinds(&host, "log.reset").len(), 1, "{host:?}");
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    assert!(exec_answer(&gw, TOKEN_A, "a-demo").await.contains("still-works"), "a new log begins");
    assert_eq!(gw.terminate().await, Some(0));
    let evidence = site.state().join("audit").join("evidence");
    let kept = std::fs::read_dir(&evidence).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::read(kept.join("alpha.log")).unwrap(), old_log, "the evidence is kept as it was");
}

#[tokio::test]
async fn a_tenant_recreated_with_the_same_id_cannot_read_the_old_tenants_audit_log() {
    let fake = fakes::start().await;
    let site = Site::new();
    let config = site.config(&fake.base);
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    assert!(exec_answer(&gw, TOKEN_A, "a-demo").await.contains("still-works"));
    assert_eq!(gw.terminate().await, Some(0));
    let log = tenant_log(&site, "alpha");
    let (old_log, old_key) = (std::fs::read(&log).unwrap(), std::fs::read(log.with_extension("key")).unwrap());
    let (code, out, err) = cli(&site, &["tenant", "delete", "alpha", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!log.with_extension("key").exists(), "the old log's key is destroyed with the tenant");
    // Still in the config, alpha comes back with the same id: a new log under a new key.
    let mut gw = Gateway::start_in(site.path(), &config, &env()).await;
    assert!(exec_answer(&gw, TOKEN_A, "a-demo").await.contains("still-works"));
    assert_eq!(gw.terminate().await, Some(0));
    assert_ne!(std::fs::read(log.with_extension("key")).unwrap(), old_key);
    let (code, out, err) = cli(&site, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    // The old tenant's log, put where the new one's is, neither verifies nor reads.
    std::fs::write(&log, &old_log).unwrap();
    let (code, out, _) = cli(&site, &["audit", "verify", "--tenant", "alpha"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tenant:alpha: FAILED at record 1") && out.contains("fails authentication"), "{out}");
    let (code, out, err) = cli(&site, &["audit", "show", "--tenant", "alpha", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty() && err.contains("record 1"), "{out}{err}");
}

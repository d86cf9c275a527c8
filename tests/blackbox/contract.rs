//! The API contract, `docs/openapi.json`, against the server.
//!
//! - `router_and_document_agree`: every route the router declares (read from the `.route(..)` and
//!   `.nest(..)` calls in `host/src/gateway/`, and the webhook routes' `.route(..)` calls in
//!   `host/src/channels/`) is documented with the same methods, every
//!   documented path and method is answered by the real binary (not the 404 fallback, not 405),
//!   and a method the document does not list gets 405.
//! - `schemathesis_and_openai_client_against_the_binary`: `tests/contract/check.py` (the official
//!   `openai` client, streaming and not, then schemathesis on every operation) against the real
//!   binary. Its Python packages come from the venv `scripts/setup.sh` installs; without them the
//!   test fails, it never skips.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Gateway, http, repo_root};
use crate::{OPENAI_KEY, OPS_TOKEN, TOKEN_A, fakes};

/// Method and path, e.g. `("POST", "/v1/chat/completions")`.
type Route = (String, String);

const METHODS: [&str; 8] = ["get", "post", "put", "delete", "patch", "head", "options", "trace"];

fn documented() -> BTreeSet<Route> {
    let text = std::fs::read_to_string(repo_root().join("docs/openapi.json")).expect("read docs/openapi.json");
    let doc: Value = serde_json::from_str(&text).expect("docs/openapi.json is JSON");
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            assert!(METHODS.contains(&method.as_str()), "docs/openapi.json {path}: unexpected key {method:?}");
            routes.insert((method.to_uppercase(), path.clone()));
        }
    }
    routes
}

/// The routes declared in the gateway's source: `.route("PATH", get(..).post(..))` calls, under
/// the prefix of a `.nest("PREFIX", module::routes(..))` when they are in `module.rs`, and the
/// channel adapters' webhook routes (`.route(..)` calls under `host/src/channels/`, with their
/// full path; the router merges them as `.merge(extra)`). Any other way of adding routes fails
/// the test until this reader learns it (it must not go unseen).
fn declared() -> BTreeSet<Route> {
    let dir = repo_root().join("host/src/gateway");
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("read host/src/gateway") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            // Comment lines mention `.route(..)` in prose; only code declares routes.
            let code: String = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            sources.insert(stem, code);
        }
    }
    let mut prefixes = BTreeMap::new();
    let mut routes = BTreeSet::new();
    // The channel adapters' webhook routes (`channels::adapter::Adapter::routes`), merged into the
    // router as `.merge(extra)`: each `.route(..)` names its full path.
    for (file, src) in &channel_sources() {
        for unsupported in [".nest(", ".route_service(", ".nest_service(", ".merge("] {
            assert!(!src.contains(unsupported), "{file} uses {unsupported}: teach contract::declared to read it");
        }
        read_routes(file, src, "", &mut routes);
    }
    for (file, src) in &sources {
        let src = if file == "mod" { src.replacen(".merge(extra)", "", 1) } else { src.clone() };
        for unsupported in [".merge(", ".route_service(", ".nest_service("] {
            assert!(!src.contains(unsupported), "{file}.rs uses {unsupported}: teach contract::declared to read it");
        }
        for call in calls(&src, ".nest(") {
            let (prefix, rest) = string_arg(&call).unwrap_or_else(|| panic!("{file}.rs: cannot read .nest({call})"));
            let module = rest.trim_start_matches([',', ' ']).split("::routes(").next().unwrap().trim();
            assert!(sources.contains_key(module), "{file}.rs: .nest({call}) names no module file");
            prefixes.insert(module.to_string(), prefix);
        }
    }
    for (file, src) in &sources {
        let prefix = prefixes.get(file).cloned().unwrap_or_default();
        read_routes(&format!("{file}.rs"), src, &prefix, &mut routes);
    }
    routes
}

/// The `.route("PATH", get(..).post(..))` calls of one source file, under `prefix`.
fn read_routes(file: &str, src: &str, prefix: &str, routes: &mut BTreeSet<Route>) {
    for call in calls(src, ".route(") {
        let (path, rest) = string_arg(&call).unwrap_or_else(|| panic!("{file}: cannot read .route({call})"));
        let methods = top_level_calls(rest.trim_start_matches([',', ' ', '\n']));
        assert!(!methods.is_empty(), "{file}: no method in .route({call})");
        for m in methods {
            assert!(METHODS.contains(&m.as_str()), "{file}: .route({path:?}) uses {m}(..): not a method");
            routes.insert((m.to_uppercase(), format!("{prefix}{path}")));
        }
    }
}

/// Every `.rs` file under `host/src/channels`, by its path there, without comment lines (which
/// mention `.route(..)` in prose).
fn channel_sources() -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("read host/src/channels") {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let code: String = std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                out.push((path.display().to_string(), code));
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo_root().join("host/src/channels"), &mut out);
    out
}

/// The argument text of every `name(..)` call in `src` (balanced parentheses, strings skipped).
fn calls(src: &str, name: &str) -> Vec<String> {
    src.match_indices(name).map(|(at, _)| balanced(&src[at + name.len()..])).collect()
}

/// The text up to the parenthesis that closes the one just before `s`.
fn balanced(s: &str) -> String {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if in_str => {
                chars.next();
            }
            '"' => in_str = !in_str,
            '(' | '{' | '[' if !in_str => depth += 1,
            ')' | '}' | ']' if !in_str => {
                if depth == 0 {
                    return s[..i].to_string();
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    panic!("unbalanced call in the gateway source: {s:.80}")
}

/// A leading string literal and what follows it.
fn string_arg(args: &str) -> Option<(String, &str)> {
    let rest = args.trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    Some((rest[..end].to_string(), &rest[end + 1..]))
}

/// `get(a).post(b)` → `["get", "post"]`: the calls chained at the top level of `expr`.
fn top_level_calls(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr.trim();
    while let Some(open) = rest.find('(') {
        names.push(rest[..open].trim().trim_start_matches('.').to_string());
        let inner = balanced(&rest[open + 1..]);
        rest = rest[open + 1 + inner.len() + 1..].trim();
    }
    names
}

/// A request that reaches a route's handler (not a fallback) with the right kind of token.
async fn probe(gw: &Gateway, method: &str, path: &str) -> (u16, Value) {
    let token = if path.starts_with("/admin") || path == "/metrics" { OPS_TOKEN } else { TOKEN_A };
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http().request(method.clone(), gw.url(path)).bearer_auth(token);
    if method == reqwest::Method::POST {
        req = req.header("content-type", "application/json").body("{}");
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn contract_config(model_base: &str) -> String {
    format!(
        r#"{{
  gateway: {{ bind: "127.0.0.1:0", maxBodyBytes: 65536, shutdownGraceSec: 2,
              // schemathesis checks that a missing or wrong token is refused, many times over.
              auth: {{ maxFailures: 1000000 }},
              operators: [ {{ id: "ops", token: {{ env: "OPS_TOKEN" }}, role: "admin" }} ] }},
  stateDir: "state", store: {{ mode: "memory" }},
  models: {{ providers: {{
    fakeai: {{ api: "openai", baseUrl: "{model_base}", apiKey: {{ env: "FAKE_OPENAI_KEY" }}, timeoutSec: 5 }},
    demo: {{ api: "scripted" }},
  }} }},
  tenants: [ {{ id: "alpha", name: "Alpha Co", apiTokens: [ {{ env: "TOKEN_A" }} ] }} ],
  agents: {{ list: [
    {{ id: "my-agent", tenant: "alpha", model: "demo/scripted" }},
    {{ id: "gpt-agent", tenant: "alpha", model: "fakeai/gpt-fake" }},
  ] }},
}}"#
    )
}

async fn contract_gateway() -> (Gateway, fakes::Running) {
    let fake = fakes::start().await;
    let env = [("TOKEN_A", TOKEN_A), ("OPS_TOKEN", OPS_TOKEN), ("FAKE_OPENAI_KEY", OPENAI_KEY), ("RUST_LOG", "warn")];
    (Gateway::start(&contract_config(&fake.base), &env).await, fake)
}

#[tokio::test]
async fn router_and_document_agree() {
    let (documented, declared) = (documented(), declared());
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&declared).collect();
    assert!(undocumented.is_empty(), "routes missing from docs/openapi.json: {undocumented:?}");
    assert!(unserved.is_empty(), "docs/openapi.json documents routes the router lacks: {unserved:?}");
    // The reading of the source is checked against the real binary: every route answers from its
    // handler, and a method not documented for a path is refused with 405.
    let (gw, _fake) = contract_gateway().await;
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for (method, path) in &documented {
        let (status, body) = probe(&gw, method, path).await;
        assert!(
            status != 405 && body["error"]["code"] != "not_found",
            "{method} {path} is not served: {status} {body}"
        );
    }
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if !documented.contains(&(method.to_string(), path.clone())) {
                let (status, body) = probe(&gw, method, path).await;
                assert_eq!(status, 405, "{method} {path} is not documented but answered {body}");
            }
        }
    }
    let (status, body) = probe(&gw, "GET", "/v1/no-such-route").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "the probe can tell the fallback");
}

/// The Python of the venv `scripts/setup.sh` installs (`BULKHEAD_VENV` overrides its place).
fn venv_python() -> PathBuf {
    let venv =
        std::env::var_os("BULKHEAD_VENV").map_or_else(|| PathBuf::from("/var/cache/bulkhead/venv"), PathBuf::from);
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh to install the contract checks' Python packages (schemathesis, openai)",
        python.display()
    );
    python
}

#[tokio::test]
async fn schemathesis_and_openai_client_against_the_binary() {
    let python = venv_python();
    let (gw, fake) = contract_gateway().await;
    let root = repo_root();
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(root.join("tests/contract/check.py"))
        .arg(&gw.base)
        .arg(root.join("docs/openapi.json"))
        .args([TOKEN_A, OPS_TOKEN, "gpt-agent"])
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(900), cmd.output())
        .await
        .expect("the contract checks finish within 15 minutes")
        .expect("run tests/contract/check.py");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "contract checks failed ({}):\n{stdout}\n{stderr}\ngateway logs:\n{}",
        out.status,
        gw.logs()
    );
    assert!(stdout.contains("contract: all checks passed"), "{stdout}");
    assert!(
        fake.requests().iter().any(|r| r.body["stream"] == true),
        "the openai client's turns went through the provider"
    );
}

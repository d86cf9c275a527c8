//! The API contract: `docs/openapi.json` names exactly the routes the router serves, and every
//! documented operation of the real binary answers with a status the document lists.
//! (`scripts/contract.sh` goes further: schemathesis and the official openai client.)

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::harness::{Gateway, http, repo_root};
use crate::{OPS_TOKEN, TOKEN_A, env, fakes};

fn document() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_root().join("docs/openapi.json")).unwrap()).unwrap()
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

/// `(METHOD, path)` of every `.route("path", method(..))` in a router source file, under `prefix`.
fn routes_in(file: &str, prefix: &str) -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(repo_root().join("host/src/gateway").join(file)).unwrap();
    let mut out = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
        let rest = &line[".route(\"".len()..];
        let (path, rest) = rest.split_once('"').unwrap();
        for method in ["get", "post", "put", "patch", "delete"] {
            if rest.contains(&format!("{method}(")) {
                out.insert((method.to_uppercase(), format!("{prefix}{path}")));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let doc = document();
    let ops = documented(&doc);
    let mut served = routes_in("mod.rs", "");
    served.extend(routes_in("admin.rs", "/admin"));
    assert!(served.len() >= 13, "the router's routes were found: {served:?}");
    assert_eq!(ops, served, "docs/openapi.json and the router disagree");

    let fake = fakes::start().await;
    let gw = Gateway::start(&crate::two_tenant_config(&fake.base, ""), &env()).await;
    for (method, path) in &ops {
        let token = if path.starts_with("/v1/") {
            Some(TOKEN_A)
        } else if path.starts_with("/admin/") || path == "/metrics" {
            Some(OPS_TOKEN)
        } else {
            None
        };
        let mut req = match method.as_str() {
            "GET" => http().get(gw.url(path)),
            "POST" => http().post(gw.url(path)),
            m => panic!("undocumented method {m}"),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if method == "POST" {
            let body = if path == "/v1/chat/completions" {
                json!({ "model": "a-demo", "messages": [{ "role": "user", "content": "contract" }] })
            } else {
                json!({ "code": "NOSUCHCODE" })
            };
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16().to_string();
        let body = resp.text().await.unwrap();
        let responses = &doc["paths"][path][method.to_lowercase()]["responses"];
        assert!(responses.get(&status).is_some(), "{method} {path} answered {status}, not documented: {body}");
        assert!(!body.contains("no such route"), "{method} {path} is not routed: {body}");
    }
    // A path the document does not name is not served.
    let r = http().get(gw.url("/v1/undocumented")).bearer_auth(TOKEN_A).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

//! `/v1/chat/completions`, `/v1/models`, `/healthz`, `/metrics` through the real binary.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::harness::{Gateway, http};
use crate::{ANTHROPIC_KEY, OPENAI_KEY, TOKEN_A, TOKEN_B, env, fakes, two_tenant_config};

async fn gateway() -> (Gateway, fakes::Running) {
    let fake = fakes::start().await;
    let gw = Gateway::start(&two_tenant_config(&fake.base, "auth: { maxFailures: 5 },"), &env()).await;
    (gw, fake)
}

async fn chat(gw: &Gateway, token: &str, body: Value) -> (u16, Value) {
    let resp = http().post(gw.url("/v1/chat/completions")).bearer_auth(token).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn turn(model: &str, user: &str, text: &str) -> Value {
    json!({ "model": model, "user": user, "messages": [{ "role": "user", "content": text }] })
}

/// Reads an SSE response into its `data:` payloads.
async fn sse_payloads(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn openai_provider_round_trip_keeps_the_conversation() {
    let (gw, fake) = gateway().await;
    let (status, body) = chat(&gw, TOKEN_A, turn("a-openai", "u1", "hello")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "a-openai");
    assert_eq!(body["choices"][0]["message"]["content"], "fake says: hello");
    assert_eq!(body["usage"]["prompt_tokens"], 11);

    let (status, body) = chat(&gw, TOKEN_A, turn("a-openai", "u1", "again")).await;
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["message"]["content"], "fake says: again");
    let reqs = fake.requests();
    let last = &reqs.last().unwrap();
    assert_eq!(last.headers["authorization"], format!("Bearer {OPENAI_KEY}"));
    assert_eq!(last.body["model"], "gpt-fake");
    assert_eq!(last.body["stream"], true);
    let contents: Vec<&str> =
        last.body["messages"].as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
    assert_eq!(contents, ["hello", "fake says: hello", "again"], "the gateway keeps the conversation");
    // Offered tools follow the policy: group:fs + exec, never the session tools.
    let mut offered: Vec<&str> =
        last.body["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    offered.sort();
    assert_eq!(offered, ["edit", "exec", "list", "read", "write"]);
}

#[tokio::test]
async fn streaming_is_server_sent_events_in_openai_chunks() {
    let (gw, _fake) = gateway().await;
    let mut req = turn("a-claude", "s1", "stream me");
    req["stream"] = json!(true);
    let resp = http().post(gw.url("/v1/chat/completions")).bearer_auth(TOKEN_A).json(&req).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let payloads = sse_payloads(resp).await;
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = payloads[..payloads.len() - 1].iter().map(|p| serde_json::from_str(p).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "fake says: stream me");
    assert!(chunks.len() > 3, "the reply arrives in several chunks");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn anthropic_tool_use_reaches_the_gate_and_the_refusal_goes_back() {
    let (gw, fake) = gateway().await;
    // a-claude is offered only `read`; the model asks for `exec` anyway and the gate refuses it.
    let (status, body) = chat(&gw, TOKEN_A, turn("a-claude", "t1", "please call-tool:exec")).await;
    assert_eq!(status, 200, "{body}");
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.starts_with("tool said: denied"), "{answer}");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "one round for the tool call, one with its result");
    let offered: Vec<&str> =
        reqs[0].body["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(offered, ["read"]);
    assert!(reqs[0].body["tools"][0]["input_schema"].is_object());
    let second = &reqs[1];
    assert_eq!(second.path, "/v1/messages");
    assert_eq!(second.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(second.headers["anthropic-version"], "2023-06-01");
    let msgs = second.body["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["content"][0]["type"], "tool_use");
    assert_eq!(msgs[1]["content"][0]["input"]["path"], "notes.txt");
    assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
    assert_eq!(msgs[2]["content"][0]["tool_use_id"], "toolu_fake");
    assert_eq!(msgs[2]["content"][0]["is_error"], true);
}

#[tokio::test]
async fn openai_streamed_tool_call_fragments_are_joined() {
    let (gw, fake) = gateway().await;
    let (status, body) = chat(&gw, TOKEN_A, turn("a-openai", "t2", "call-tool:exec")).await;
    assert_eq!(status, 200, "{body}");
    let reqs = fake.requests();
    let msgs = reqs[1].body["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["tool_calls"][0]["function"]["arguments"], "{\"path\":\"notes.txt\"}");
    assert_eq!(msgs[2]["role"], "tool");
    assert_eq!(msgs[2]["tool_call_id"], "call_fake");
}

#[tokio::test]
async fn tenants_cannot_list_address_or_probe_each_other() {
    let (gw, _fake) = gateway().await;
    let models = |token: &'static str| {
        let c = http();
        let url = gw.url("/v1/models");
        async move { c.get(url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let a = models(TOKEN_A).await;
    let ids: Vec<&str> = a["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a-openai", "a-claude", "a-demo", "a-sessions"]);
    let b = models(TOKEN_B).await;
    assert_eq!(b["data"].as_array().unwrap().len(), 1);
    assert_eq!(b["data"][0]["id"], "b-secret");

    // Bravo's agent answers Alpha exactly like an agent that does not exist.
    let (s1, other) = chat(&gw, TOKEN_A, turn("b-secret", "x", "hi")).await;
    let (s2, missing) = chat(&gw, TOKEN_A, turn("no-such", "x", "hi")).await;
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(
        other.to_string().replace("b-secret", "ID"),
        missing.to_string().replace("no-such", "ID"),
        "another tenant's agent must be indistinguishable from an unknown one"
    );
    // Same conversation id in two tenants: two separate sessions.
    let (_, r) = chat(&gw, TOKEN_B, turn("b-secret", "shared-id", "bravo private")).await;
    assert_eq!(r["choices"][0]["message"]["content"], "echo: bravo private");
    let (_, r) = chat(&gw, TOKEN_A, turn("a-demo", "shared-id", "alpha")).await;
    assert_eq!(r["choices"][0]["message"]["content"], "echo: alpha");
}

#[tokio::test]
async fn bad_tokens_are_rejected_then_throttled() {
    let (gw, _fake) = gateway().await;
    let resp = http().post(gw.url("/v1/chat/completions")).json(&turn("a-demo", "u", "hi")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    for _ in 0..5 {
        let _ = chat(&gw, "wrong-token", turn("a-demo", "u", "hi")).await;
    }
    let resp = http().get(gw.url("/v1/models")).bearer_auth(TOKEN_A).send().await.unwrap();
    assert_eq!(resp.status(), 429, "after repeated failures even a good token waits out the lockout");
    assert!(resp.headers().contains_key("retry-after"));
    assert!(!gw.logs().contains("wrong-token"), "rejected tokens are not logged");
}

#[tokio::test]
async fn interleaving_good_tokens_does_not_reset_the_failure_count() {
    let (gw, _fake) = gateway().await; // maxFailures: 5
    let models = |token: &'static str| {
        let req = http().get(gw.url("/v1/models")).bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // A guess, then a valid request that would once have reset the count, four times over.
    for _ in 0..4 {
        assert_eq!(models("guess-that-is-not-a-token").await, 401);
        assert_eq!(models(TOKEN_A).await, 200, "not locked out yet");
    }
    assert_eq!(models("guess-that-is-not-a-token").await, 401);
    assert_eq!(models(TOKEN_A).await, 429, "the fifth failure locks the client out, good tokens or not");
}

#[tokio::test]
async fn operator_guesses_are_throttled_on_their_own_budget() {
    let (gw, _fake) = gateway().await; // maxFailures: 5
    let metrics = |token: &str| {
        let req = http().get(gw.url("/metrics")).bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // A tenant with a valid API token guesses operator tokens, using the API in between.
    for _ in 0..4 {
        assert_eq!(metrics(TOKEN_A).await, 401);
        assert_eq!(chat(&gw, TOKEN_A, turn("a-demo", "op", "hi")).await.0, 200);
    }
    assert_eq!(metrics("ops-guess").await, 401);
    assert_eq!(metrics(crate::OPS_TOKEN).await, 429, "operator guesses are locked out");
    // The API budget is separate: the tenant's own traffic still works, and API failures
    // neither unlock nor further lock the operator surface.
    assert_eq!(chat(&gw, TOKEN_A, turn("a-demo", "op", "still")).await.0, 200);
    let (gw2, _fake2) = gateway().await;
    for _ in 0..5 {
        assert_eq!(chat(&gw2, "api-guess", turn("a-demo", "op", "x")).await.0, 401);
    }
    assert_eq!(chat(&gw2, TOKEN_A, turn("a-demo", "op", "x")).await.0, 429);
    let r = http().get(gw2.url("/metrics")).bearer_auth(crate::OPS_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200, "a tenant-token lockout does not lock the operator budget");
}

#[tokio::test]
async fn a_proxy_header_tells_clients_apart_only_from_the_proxy() {
    let fake = fakes::start().await;
    let start = |from: &'static str| {
        let auth =
            format!(r#"auth: {{ maxFailures: 3, trustedProxy: {{ header: "X-Forwarded-For", from: ["{from}"] }} }},"#);
        let config = two_tenant_config(&fake.base, &auth);
        async move { Gateway::start(&config, &env()).await }
    };
    let models = |gw: &Gateway, token: &str, client: &str| {
        let req = http().get(gw.url("/v1/models")).bearer_auth(token).header("x-forwarded-for", client);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // The test connects from 127.0.0.1: here that is the proxy.
    let gw = start("127.0.0.0/8").await;
    for _ in 0..3 {
        assert_eq!(models(&gw, "guess", "203.0.113.1").await, 401);
    }
    assert_eq!(models(&gw, TOKEN_A, "203.0.113.1").await, 429, "the guessing client is locked out");
    assert_eq!(models(&gw, TOKEN_A, "203.0.113.2").await, 200, "another client behind the proxy is not");
    // A client cannot choose its address by sending the header itself: the proxy appends.
    assert_eq!(models(&gw, TOKEN_A, "203.0.113.2, 203.0.113.1").await, 429);
    drop(gw);
    // Here the proxy is elsewhere: the header is ignored, so changing it buys no new budget.
    let gw = start("10.9.9.9").await;
    for i in 0..3 {
        assert_eq!(models(&gw, "guess", &format!("198.51.100.{i}")).await, 401);
    }
    assert_eq!(models(&gw, TOKEN_A, "198.51.100.77").await, 429, "counted under the peer's own address");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_session_stays_usable() {
    let (gw, _fake) = gateway().await;
    let post = |body: Vec<u8>| {
        let c = http();
        let url = gw.url("/v1/chat/completions");
        async move {
            let r = c
                .post(url)
                .bearer_auth(TOKEN_A)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "invalid_json"),
        (
            b"{\"model\":\"a-demo\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(),
            400,
            "invalid_json",
        ),
        (vec![b'x'; 70_000], 413, "body_too_large"),
        (json!({"model":"a-demo","messages":[]}).to_string().into_bytes(), 400, "invalid_messages"),
        (
            json!({"model":"a-demo","messages":[{"role":"assistant","content":"x"}]}).to_string().into_bytes(),
            400,
            "invalid_messages",
        ),
        (
            json!({"model":"a-demo","user":"bad user id!","messages":[{"role":"user","content":"x"}]})
                .to_string()
                .into_bytes(),
            400,
            "invalid_user",
        ),
        (json!({"model":"a-demo"}).to_string().into_bytes(), 400, "invalid_json"),
        (
            json!({"model":"A-DEMO\u{0}\u{1b}[31m","messages":[{"role":"user","content":"x"}]})
                .to_string()
                .into_bytes(),
            404,
            "model_not_found",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v) = post(body).await;
        assert_eq!(s, status, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (s, v) = chat(&gw, TOKEN_A, turn("a-demo", "u", "still here")).await;
    assert_eq!((s, v["choices"][0]["message"]["content"].as_str()), (200, Some("echo: still here")));
}

#[tokio::test]
async fn upstream_failures_are_explained_without_leaking() {
    let (gw, _fake) = gateway().await;
    for (text, needle) in [
        ("upstream-401", "not available"),
        ("upstream-500", "failed to answer"),
        ("upstream-429", "busy"),
        ("slow", "too long"),
        ("garbage", "failed"),
    ] {
        for agent in ["a-openai", "a-claude"] {
            let (s, v) = chat(&gw, TOKEN_A, turn(agent, "errs", text)).await;
            assert_eq!(s, 502, "{agent} {text}: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains(needle), "{agent} {text}: {msg}");
            for leak in ["internal.example", "127.0.0.1", "sk-", "http"] {
                assert!(!msg.contains(leak), "{msg}");
            }
        }
    }
    let (s, v) = chat(&gw, TOKEN_A, turn("a-openai", "errs", "recovered")).await;
    assert_eq!((s, v["choices"][0]["message"]["content"].as_str()), (200, Some("fake says: recovered")));
    let logs = gw.logs();
    assert!(logs.contains("Model call failed"), "the operator sees the failure");
    assert!(logs.contains("HTTP 401: invalid_api_key"), "by status and kind: {logs}");
    // The fake's 401 echoes the key as OpenAI's does ("Incorrect API key provided: sk-test-****…"),
    // in full and masked: no part of that body may reach the logs.
    let masked_head = &OPENAI_KEY[..8];
    let masked_tail = &OPENAI_KEY[OPENAI_KEY.len() - 4..];
    for secret in [
        OPENAI_KEY,
        ANTHROPIC_KEY,
        TOKEN_A,
        "recovered",
        masked_head,
        masked_tail,
        "************",
        "Incorrect API key",
        "invalid x-api-key",
        "platform.openai.com",
        "internal.example",
    ] {
        assert!(!logs.contains(secret), "logs must not contain {secret:?}:\n{logs}");
    }
}

#[tokio::test]
async fn model_chosen_tool_names_and_arguments_stay_out_of_the_logs() {
    let (gw, _fake) = gateway().await;
    const NAME: &str = "zz_model_named_tool_q7k";
    const VALUE: &str = "model-chosen-value-x9w";
    let cases = [
        // Not a tool: denied, and the decision is logged.
        format!("call-tool:{NAME}"),
        format!("call-tool:exec_{NAME}"),
        // Arguments that fail, with errors that would quote them.
        format!(r#"call-tool:exec {{"command":"true","timeoutSec":"{VALUE}-1"}}"#),
        format!(r#"call-tool:read {{"path":"notes.txt","offset":"{VALUE}-2"}}"#),
        format!(r#"call-tool:read {{"path":"../{VALUE}-3"}}"#),
        format!(r#"call-tool:read {{"path":"missing-{VALUE}-4.txt"}}"#),
    ];
    for (i, text) in cases.iter().enumerate() {
        let (s, v) = chat(&gw, TOKEN_A, turn("a-openai", &format!("names{i}"), text)).await;
        assert_eq!(s, 200, "{text}: {v}");
    }
    let logs = gw.logs();
    assert!(logs.contains("Tool call decided") && logs.contains("unknown"), "decisions are logged: {logs}");
    assert!(logs.contains("Sandbox call failed") && logs.contains("invalid_arguments"), "failures are logged: {logs}");
    for needle in [NAME, VALUE] {
        assert!(!logs.contains(needle), "model-chosen text {needle:?} reached the logs:\n{logs}");
    }
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_loses_nothing() {
    let (gw, fake) = gateway().await;
    let mut req = turn("a-openai", "dc", "slow-stream");
    req["stream"] = json!(true);
    let resp = http().post(gw.url("/v1/chat/completions")).bearer_auth(TOKEN_A).json(&req).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(stream); // hang up after the first chunk
    // The next turn of the same conversation waits for the first to finish and sees its reply.
    let (s, v) = chat(&gw, TOKEN_A, turn("a-openai", "dc", "after")).await;
    assert_eq!(s, 200, "{v}");
    let last = fake.requests().last().unwrap().body.clone();
    let contents: Vec<&str> =
        last["messages"].as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
    assert_eq!(contents, ["slow-stream", "w1 w2 w3 w4 w5 ", "after"]);
}

#[tokio::test]
async fn sigterm_drains_runs_in_flight() {
    let (mut gw, _fake) = gateway().await;
    let c = http();
    let url = gw.url("/v1/chat/completions");
    let pending = tokio::spawn(async move {
        let r = c.post(url).bearer_auth(TOKEN_A).json(&turn("a-openai", "drain", "slow-stream")).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let code = gw.terminate().await;
    assert_eq!(code, Some(0));
    let (s, v) = pending.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(v["choices"][0]["message"]["content"], "w1 w2 w3 w4 w5 ");
}

#[tokio::test]
async fn health_and_operator_metrics() {
    let (gw, _fake) = gateway().await;
    let r = http().get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    chat(&gw, TOKEN_A, turn("a-demo", "m", "count me")).await;
    let r = http().get(gw.url("/metrics")).bearer_auth(TOKEN_A).send().await.unwrap();
    assert_eq!(r.status(), 401, "a tenant token is not an operator token");
    let r = http().get(gw.url("/metrics")).bearer_auth(crate::OPS_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("gateway_runs_total{tenant=\"alpha\"} 1"), "{text}");
    assert!(!text.contains("count me"));
    let r = http().get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
}

/// Scripted `/tool` commands for `agent` in conversation `user`; returns each reply.
async fn tool_turns(gw: &Gateway, token: &str, agent: &str, user: &str, commands: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for c in commands {
        let (s, v) = chat(gw, token, turn(agent, user, c)).await;
        assert_eq!(s, 200, "{c}: {v}");
        out.push(v["choices"][0]["message"]["content"].as_str().unwrap().to_string());
    }
    out
}

#[tokio::test]
async fn tools_run_in_the_tenants_wasm_sandbox_end_to_end() {
    let (gw, _fake) = gateway().await;
    let replies = tool_turns(
        &gw,
        TOKEN_A,
        "a-demo",
        "tools",
        &[
            r#"/tool write {"path":"notes.txt","content":"alpha secret plans\nline two\n"}"#,
            r#"/tool read {"path":"notes.txt"}"#,
            r#"/tool exec {"command":"cat notes.txt | grep two"}"#,
            r#"/tool read {"path":"../../../../etc/passwd"}"#,
            r#"/tool EXEC {"command":"echo hi"}"#,
        ],
    )
    .await;
    assert!(replies[1].contains("alpha secret plans"), "{replies:?}");
    assert!(replies[2].contains("line two"), "{replies:?}");
    assert!(!replies[3].contains("root:"), "escape: {replies:?}");
    assert!(replies[4].starts_with("denied"), "{replies:?}");
    // Bravo's sandbox is another workspace: alpha's file does not exist there.
    let replies = tool_turns(&gw, TOKEN_B, "b-secret", "tools", &[r#"/tool read {"path":"notes.txt"}"#]).await;
    assert!(!replies[0].contains("alpha secret"), "{replies:?}");
}

#[tokio::test]
async fn session_tools_see_only_the_callers_tenant_whatever_the_policy() {
    let (gw, _fake) = gateway().await;
    let (_, _) = chat(&gw, TOKEN_B, turn("b-secret", "private", "bravo private words")).await;
    let (_, _) = chat(&gw, TOKEN_A, turn("a-demo", "mine", "alpha words")).await;
    let replies = tool_turns(
        &gw,
        TOKEN_A,
        "a-sessions",
        "probe",
        &[
            "/tool sessions_list {}",
            r#"/tool sessions_history {"sessionKey":"agent:b-secret:api:direct:private"}"#,
            r#"/tool sessions_history {"sessionKey":"agent:b-secret:api:direct:does-not-exist"}"#,
            r#"/tool sessions_send {"sessionKey":"agent:b-secret:api:direct:private","message":"hi from alpha"}"#,
            r#"/tool sessions_history {"sessionKey":"agent:a-demo:api:direct:mine"}"#,
        ],
    )
    .await;
    assert!(replies[0].contains("agent:a-demo:api:direct:mine"), "{replies:?}");
    assert!(!replies[0].contains("b-secret"), "{replies:?}");
    assert_eq!(replies[1], replies[2], "another tenant's session answers like a missing one");
    assert_eq!(replies[1], "session not found");
    assert_eq!(replies[3], "session not found");
    assert!(replies[4].contains("alpha words"), "{replies:?}");
    // Nothing reached bravo's session.
    let (_, v) = chat(&gw, TOKEN_B, turn("b-secret", "private", "check")).await;
    assert_eq!(v["choices"][0]["message"]["content"], "echo: check");
}

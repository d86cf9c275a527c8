//! Contract test of the web chat page: real Chromium against a fake `/ws` that speaks the protocol.
//!
//! It pins the page's DOM contract (ids, classes, `#status`, `#log[data-busy]`) that the tests
//! against the real gateway rely on, and checks that hostile server strings render as text.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::cdp::Browser;

const PAGE: &str = include_str!("../../host/src/gateway/webchat.html");
const TOKEN: &str = "tok-acme-2d8f4b1e6a9c3f7d5b2e8a4c1f6d9b3e";
/// Sets `window.__pwned` if it is ever parsed as markup.
const HOSTILE: &str = "<img src=x onerror=\"window.__pwned=1\">";
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// The fake gateway: records the `send` frames it gets; `/slow` turns wait for `release`.
#[derive(Clone, Default)]
struct Fake {
    sends: Arc<Mutex<Vec<Value>>>,
    release: Arc<Notify>,
}

impl Fake {
    fn sends(&self) -> Vec<Value> {
        self.sends.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn start_fake() -> anyhow::Result<(SocketAddr, Fake)> {
    let fake = Fake::default();
    let app =
        Router::new().route("/", get(|| async { Html(PAGE) })).route("/ws", get(upgrade)).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, fake))
}

async fn upgrade(ws: WebSocketUpgrade, State(fake): State<Fake>) -> impl IntoResponse {
    ws.on_upgrade(move |socket| serve_socket(socket, fake))
}

async fn send(socket: &mut WebSocket, frame: Value) -> bool {
    socket.send(Message::Text(frame.to_string().into())).await.is_ok()
}

async fn next_frame(socket: &mut WebSocket) -> Option<Value> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(text)) => return serde_json::from_str(text.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn serve_socket(mut socket: WebSocket, fake: Fake) {
    let Some(auth) = next_frame(&mut socket).await else {
        return;
    };
    if auth["type"] != "auth" || auth["token"] != TOKEN {
        send(&mut socket, json!({"type": "error", "message": "invalid token"})).await;
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    let ready = json!({
        "type": "ready",
        "tenant": format!("Acme {HOSTILE}"),
        "agents": [
            {"id": "demo", "name": "Demo Bot", "emoji": null, "scripted": true},
            {"id": "real", "name": "Real <i>Bot</i>", "emoji": "🤖", "scripted": false},
        ],
    });
    if !send(&mut socket, ready).await {
        return;
    }
    while let Some(frame) = next_frame(&mut socket).await {
        if frame["type"] != "send" {
            continue;
        }
        fake.sends.lock().unwrap_or_else(|e| e.into_inner()).push(frame.clone());
        let text = frame["text"].as_str().unwrap_or_default().to_string();
        let mut frames = Vec::new();
        if text == "/notice" {
            frames.push(json!({"type": "error", "message": format!("queue full {HOSTILE}")}));
        } else if let Some(args) = text.strip_prefix("/tool exec ") {
            let arguments: Value = serde_json::from_str(args).unwrap_or(Value::Null);
            frames.extend([
                json!({"type": "start"}),
                json!({"type": "tool_call", "id": "call-1", "name": "exec", "arguments": arguments}),
                json!({"type": "tool_result", "id": "call-1", "name": "exec",
                       "content": format!("out: {HOSTILE}"), "isError": false}),
                json!({"type": "delta", "text": "ran: "}),
                json!({"type": "delta", "text": "ok"}),
                json!({"type": "done", "text": "ran: ok", "failed": false}),
            ]);
        } else if text == "/fail" {
            frames.extend([
                json!({"type": "start"}),
                json!({"type": "tool_call", "id": "call-2", "name": "exec", "arguments": {"command": "rm -rf /"}}),
                json!({"type": "tool_result", "id": "call-2", "name": "exec",
                       "content": "denied by policy", "isError": true}),
                json!({"type": "done", "text": "the model provider is unavailable", "failed": true}),
            ]);
        } else if text == "/slow" {
            if !send(&mut socket, json!({"type": "start"})).await
                || !send(&mut socket, json!({"type": "delta", "text": "wait"})).await
            {
                return;
            }
            fake.release.notified().await;
            frames.extend([
                json!({"type": "delta", "text": "ed"}),
                json!({"type": "done", "text": "waited", "failed": false}),
            ]);
        } else {
            let reply = format!("echo: {text}");
            let (head, tail) = reply.split_at(reply.len().min(4));
            frames.extend([
                json!({"type": "start"}),
                json!({"type": "delta", "text": head}),
                json!({"type": "delta", "text": tail}),
                json!({"type": "done", "text": reply, "failed": false}),
            ]);
        }
        for frame in frames {
            if !send(&mut socket, frame).await {
                return;
            }
        }
    }
}

/// A JavaScript string literal for `text`.
pub(crate) fn js(text: &str) -> String {
    Value::from(text).to_string()
}

pub(crate) async fn type_and_send(browser: &Browser, text: &str) -> anyhow::Result<()> {
    browser
        .eval(&format!(
            "document.getElementById('input').value = {}; document.getElementById('send').click()",
            js(text)
        ))
        .await?;
    Ok(())
}

/// Waits until the turn is over and the last assistant message has exactly `text`.
pub(crate) async fn wait_reply(browser: &Browser, text: &str) -> anyhow::Result<()> {
    browser
        .wait_for(
            &format!(
                "document.getElementById('log').dataset.busy === 'false' && \
                 [...document.querySelectorAll('#log .msg.assistant')].pop()?.textContent === {}",
                js(text)
            ),
            WAIT,
        )
        .await?;
    Ok(())
}

async fn status(browser: &Browser) -> anyhow::Result<Value> {
    Ok(browser.eval("document.getElementById('status').textContent").await?)
}

pub(crate) async fn not_pwned(browser: &Browser) -> anyhow::Result<()> {
    let verdict =
        browser.eval("[window.__pwned === undefined, document.querySelectorAll('body img, body i').length]").await?;
    assert_eq!(verdict, json!([true, 0]), "server text was parsed as markup");
    Ok(())
}

#[tokio::test]
async fn page_speaks_the_protocol_in_real_chromium() -> anyhow::Result<()> {
    let (addr, fake) = start_fake().await?;
    let browser = Browser::launch().await?;
    browser.set_viewport(900, 760).await?;
    browser.navigate(&format!("http://{addr}/")).await?;
    assert_eq!(browser.eval("document.title").await?, json!("Chat"));
    assert_ne!(status(&browser).await?, json!("ready"));
    assert_eq!(
        browser.eval("['send', 'input', 'agent'].map(id => document.getElementById(id).disabled)").await?,
        json!([true, true, true])
    );
    assert_eq!(browser.eval("document.getElementById('log').dataset.busy").await?, json!("false"));

    // A wrong token: status "error", a notice, nothing stored.
    browser
        .eval("document.getElementById('token').value = 'wrong'; document.getElementById('connect').click()")
        .await?;
    browser.wait_for("document.getElementById('status').textContent === 'error'", WAIT).await?;
    assert_eq!(
        browser.eval("document.querySelector('#log .notice.error')?.textContent.includes('invalid token')").await?,
        json!(true)
    );
    assert_eq!(browser.eval("sessionStorage.getItem('token')").await?, Value::Null);

    // The right token: ready, tenant and agents shown as text, the scripted label visible.
    browser
        .eval(&format!(
            "document.getElementById('token').value = {}; document.getElementById('connect').click()",
            js(TOKEN)
        ))
        .await?;
    browser.wait_for("document.getElementById('status').textContent === 'ready'", WAIT).await?;
    assert_eq!(browser.eval("document.getElementById('tenant').textContent").await?, json!(format!("Acme {HOSTILE}")));
    assert_eq!(
        browser.eval("[...document.querySelectorAll('#agent option')].map(o => [o.value, o.textContent])").await?,
        json!([["demo", "Demo Bot"], ["real", "🤖 Real <i>Bot</i>"]])
    );
    let label_visible = "(() => { const l = document.getElementById('scripted-label'); \
                         return !l.hidden && l.offsetParent !== null && /scripted/.test(l.textContent); })()";
    assert_eq!(browser.eval(label_visible).await?, json!(true));
    browser
        .eval("const s = document.getElementById('agent'); s.value = 'real'; s.dispatchEvent(new Event('change'))")
        .await?;
    assert_eq!(browser.eval(label_visible).await?, json!(false));
    browser
        .eval("const t = document.getElementById('agent'); t.value = 'demo'; t.dispatchEvent(new Event('change'))")
        .await?;
    assert_eq!(browser.eval(label_visible).await?, json!(true));
    not_pwned(&browser).await?;

    // A plain message streams back; a hostile string stays text.
    let hello = format!("hello {HOSTILE}");
    type_and_send(&browser, &hello).await?;
    wait_reply(&browser, &format!("echo: {hello}")).await?;
    assert_eq!(
        browser.eval("[...document.querySelectorAll('#log .msg.user')].map(m => m.textContent)").await?,
        json!([hello])
    );
    not_pwned(&browser).await?;
    let first = fake.sends();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["agent"], "demo");
    assert_eq!(first[0]["text"], json!(hello));
    let conversation = first[0]["conversation"].as_str().unwrap_or_default().to_string();
    assert!(
        !conversation.is_empty()
            && conversation.len() <= 64
            && conversation.chars().all(|c| c.is_ascii_alphanumeric() || "._@+=-".contains(c)),
        "bad conversation id {conversation:?}"
    );

    // Enter sends; tool events show inline, in order, with their classes.
    browser
        .eval(&format!(
            "const i = document.getElementById('input'); i.value = {}; \
             i.dispatchEvent(new KeyboardEvent('keydown', {{key: 'Enter', bubbles: true, cancelable: true}}))",
            js(r#"/tool exec {"command":"echo hi"}"#)
        ))
        .await?;
    wait_reply(&browser, "ran: ok").await?;
    let kinds = browser.eval("[...document.getElementById('log').children].slice(-4).map(e => e.className)").await?;
    assert_eq!(kinds, json!(["msg user", "tool-call", "tool-result", "msg assistant"]));
    let call = browser.eval("document.querySelector('#log .tool-call').textContent").await?;
    let call = call.as_str().unwrap_or_default();
    assert!(call.contains("exec") && call.contains("echo hi"), "{call}");
    assert_eq!(
        browser.eval("document.querySelector('#log .tool-result .tool-body').textContent").await?,
        json!(format!("out: {HOSTILE}"))
    );
    not_pwned(&browser).await?;

    // A failed tool result and a failed turn are styled as errors.
    type_and_send(&browser, "/fail").await?;
    wait_reply(&browser, "the model provider is unavailable").await?;
    assert_eq!(
        browser
            .eval(
                "[document.querySelectorAll('#log .tool-result.error').length, \
                  [...document.querySelectorAll('#log .msg.assistant')].pop().classList.contains('failed'), \
                  document.querySelectorAll('#log .msg.failed').length]"
            )
            .await?,
        json!([1, true, 1])
    );
    // For humans: target/tmp/webchat.png and webchat-narrow.png show the page mid-conversation.
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    browser.screenshot(&artifacts.join("webchat.png")).await?;

    // While a turn runs the log is busy and sending is disabled.
    type_and_send(&browser, "/slow").await?;
    browser
        .wait_for(
            "document.getElementById('log').dataset.busy === 'true' && document.getElementById('send').disabled \
             && [...document.querySelectorAll('#log .msg.assistant')].pop()?.textContent === 'wait'",
            WAIT,
        )
        .await?;
    fake.release.notify_one();
    wait_reply(&browser, "waited").await?;
    assert_eq!(browser.eval("document.getElementById('send').disabled").await?, json!(false));

    // An error frame outside a turn is a notice; the connection stays usable.
    type_and_send(&browser, "/notice").await?;
    browser
        .wait_for(
            "document.getElementById('log').dataset.busy === 'false' && \
             [...document.querySelectorAll('#log .notice.error')].pop()?.textContent.startsWith('queue full')",
            WAIT,
        )
        .await?;
    assert_eq!(status(&browser).await?, json!("ready"));
    not_pwned(&browser).await?;

    // The token lives in sessionStorage only; a reload reconnects and continues the conversation.
    assert_eq!(
        browser.eval("[sessionStorage.getItem('token'), localStorage.length, location.href.includes('tok')]").await?,
        json!([TOKEN, 0, false])
    );
    browser.eval("window.__before_reload = true; setTimeout(() => location.reload(), 0)").await?;
    browser
        .wait_for(
            "window.__before_reload === undefined && document.readyState === 'complete' \
             && document.getElementById('status').textContent === 'ready'",
            WAIT,
        )
        .await?;
    type_and_send(&browser, "again").await?;
    wait_reply(&browser, "echo: again").await?;
    let sends = fake.sends();
    assert_eq!(sends.last().map(|s| s["conversation"].clone()), Some(json!(conversation)));

    // "New conversation" starts a fresh id and clears the log.
    browser.eval("document.getElementById('new-conversation').click()").await?;
    assert_eq!(browser.eval("document.querySelectorAll('#log .msg').length").await?, json!(0));
    type_and_send(&browser, "fresh").await?;
    wait_reply(&browser, "echo: fresh").await?;
    let fresh = fake.sends().last().map(|s| s["conversation"].clone());
    assert!(
        fresh.as_ref().and_then(Value::as_str).is_some() && fresh != Some(json!(conversation)),
        "new conversation kept id {conversation:?}"
    );

    // Narrow screens: nothing overflows sideways.
    browser.set_viewport(360, 640).await?;
    assert_eq!(browser.eval("document.documentElement.scrollWidth <= window.innerWidth").await?, json!(true));
    browser.screenshot(&artifacts.join("webchat-narrow.png")).await?;
    browser.close().await?;
    Ok(())
}

//! Minimal Chrome DevTools Protocol client: drives a real headless Chromium (Debian's `chromium`).
//!
//! ```ignore
//! let browser = Browser::launch().await?;
//! browser.navigate("http://127.0.0.1:1234/").await?;
//! browser.wait_for("document.querySelector('#status').textContent === 'ready'", SECS_10).await?;
//! let n = browser.eval("document.querySelectorAll('.msg').length").await?;
//! browser.screenshot(Path::new("/tmp/page.png")).await?;
//! ```
//!
//! Every call is bounded by a timeout, so a hung browser fails the test instead of hanging CI. The
//! browser (its whole process group) is killed when the [`Browser`] is dropped.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// Binaries tried in order; `BULKHEAD_CHROMIUM` overrides them.
const CANDIDATES: [&str; 2] = ["chromium", "chromium-browser"];
/// Generous: on two cores busy with the rest of the suite (and a first start that builds the
/// font cache) Chromium has been seen to take over 30 s to print its address.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(120);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What went wrong talking to the browser.
#[derive(Debug, thiserror::Error)]
pub enum CdpError {
    #[error("cannot start the browser: {0}")]
    Launch(String),
    #[error("devtools connection failed: {0}")]
    Connection(String),
    #[error("devtools command {method} failed: {message}")]
    Command { method: String, message: String },
    #[error("javascript exception: {0}")]
    Js(String),
    #[error("timed out after {after:?} {what}")]
    Timeout { after: Duration, what: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, CdpError>;

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
/// Waiters for command replies, by command id; `None` once the connection is gone.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value>>>>>>;

/// A headless Chromium with one page (target) attached in flat session mode.
pub struct Browser {
    // Field order matters on drop: the process goes first, then its profile directory.
    child: Child,
    sink: tokio::sync::Mutex<Sink>,
    pending: Pending,
    next_id: AtomicU64,
    session_id: String,
    reader: JoinHandle<()>,
    stderr_drain: JoinHandle<()>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a fresh profile and opens one blank page.
    pub async fn launch() -> Result<Self> {
        let profile = tempfile::Builder::new().prefix("bulkhead-chromium-").tempdir()?;
        let mut child = spawn_chromium(profile.path())?;
        let stderr = child.stderr.take().ok_or_else(|| CdpError::Launch("chromium stderr was not captured".into()))?;
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let ws_url = tokio::time::timeout(LAUNCH_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split("DevTools listening on ").nth(1) {
                    return Ok(rest.trim().to_string());
                }
                seen.push(line);
            }
            Err(CdpError::Launch(format!(
                "chromium exited before printing its devtools address; its stderr:\n{}",
                seen.join("\n")
            )))
        })
        .await
        .map_err(|_| CdpError::Timeout {
            after: LAUNCH_TIMEOUT,
            what: "waiting for chromium to print its devtools address".into(),
        })??;
        // Keep draining stderr: a full pipe would block the browser.
        let stderr_drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (socket, _) = tokio::time::timeout(COMMAND_TIMEOUT, connect_async(ws_url.as_str()))
            .await
            .map_err(|_| CdpError::Timeout { after: COMMAND_TIMEOUT, what: format!("connecting to {ws_url}") })?
            .map_err(|e| CdpError::Connection(format!("{ws_url}: {e}")))?;
        let (sink, stream) = socket.split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader = tokio::spawn(read_replies(stream, pending.clone()));

        let mut browser = Browser {
            child,
            sink: tokio::sync::Mutex::new(sink),
            pending,
            next_id: AtomicU64::new(1),
            session_id: String::new(),
            reader,
            stderr_drain,
            _profile: profile,
        };
        let target = browser.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await?;
        let target_id = str_field(&target, "targetId", "Target.createTarget")?;
        let attached =
            browser.call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true })).await?;
        browser.session_id = str_field(&attached, "sessionId", "Target.attachToTarget")?;
        browser.page("Page.enable", json!({})).await?;
        Ok(browser)
    }

    /// Loads `url` and waits until the document has finished loading.
    pub async fn navigate(&self, url: &str) -> Result<()> {
        let reply = self.page("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = reply.get("errorText").and_then(Value::as_str) {
            return Err(CdpError::Command {
                method: "Page.navigate".into(),
                message: format!("{error} loading {url}"),
            });
        }
        // Page.navigate answers once the new document is committed; wait for it to load.
        self.wait_for("document.readyState === 'complete'", COMMAND_TIMEOUT).await
    }

    /// Evaluates a JavaScript expression in the page (awaiting a promise result) and returns its
    /// value as JSON (`null` for `undefined`). A thrown exception is an error.
    pub async fn eval(&self, expression: &str) -> Result<Value> {
        self.eval_within(expression, COMMAND_TIMEOUT).await
    }

    async fn eval_within(&self, expression: &str, timeout: Duration) -> Result<Value> {
        let params = json!({
            "expression": expression,
            "returnByValue": true,
            "awaitPromise": true,
            "userGesture": true,
        });
        let reply = self.call_within(Some(&self.session_id), "Runtime.evaluate", params, timeout).await?;
        if let Some(details) = reply.get("exceptionDetails") {
            let text = details
                .pointer("/exception/description")
                .and_then(Value::as_str)
                .or_else(|| details.get("text").and_then(Value::as_str))
                .unwrap_or("unknown exception");
            return Err(CdpError::Js(format!("{text} (evaluating `{expression}`)")));
        }
        let result = reply.get("result").cloned().unwrap_or(Value::Null);
        if let Some(value) = result.get("value") {
            return Ok(value.clone());
        }
        if let Some(special) = result.get("unserializableValue") {
            return Ok(special.clone());
        }
        Ok(Value::Null)
    }

    /// Polls a JavaScript condition (truthy, or a promise of a truthy value) until it holds. Errors
    /// while polling (an element not there yet, a page still loading) count as "not yet"; on timeout
    /// the error names the condition, the last error and the start of the page's text.
    pub async fn wait_for(&self, condition: &str, timeout: Duration) -> Result<()> {
        let expression = format!("(async () => Boolean(await ({condition})))()");
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.eval_within(&expression, left.max(POLL_INTERVAL)).await {
                Ok(Value::Bool(true)) => return Ok(()),
                Ok(_) => {}
                Err(e) => last_error = Some(e.to_string()),
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let page_text = self
            .eval_within("document.body ? document.body.innerText.slice(0, 2000) : ''", Duration::from_secs(2))
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut what = format!("waiting for `{condition}`");
        if let Some(e) = last_error {
            what.push_str(&format!("; last error: {e}"));
        }
        what.push_str(&format!("; page text:\n{page_text}"));
        Err(CdpError::Timeout { after: timeout, what })
    }

    /// Saves a PNG of the page's viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let reply = self.page("Page.captureScreenshot", json!({ "format": "png" })).await?;
        let data = str_field(&reply, "data", "Page.captureScreenshot")?;
        let png = decode_base64(&data).ok_or_else(|| CdpError::Command {
            method: "Page.captureScreenshot".into(),
            message: "the image is not valid base64".into(),
        })?;
        tokio::fs::write(path, png).await?;
        Ok(())
    }

    /// Sets the page's viewport size (CSS pixels), e.g. to check a narrow layout.
    pub async fn set_viewport(&self, width: u32, height: u32) -> Result<()> {
        let params = json!({
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false,
        });
        self.page("Emulation.setDeviceMetricsOverride", params).await.map(drop)
    }

    /// Sends a raw command to the attached page, for what the helpers above do not cover.
    pub async fn page(&self, method: &str, params: Value) -> Result<Value> {
        self.call(Some(&self.session_id), method, params).await
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        self.call_within(session, method, params, COMMAND_TIMEOUT).await
    }

    async fn call_within(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.as_mut() {
                Some(map) => map.insert(id, tx),
                None => return Err(CdpError::Connection("the browser connection is closed".into())),
            };
        }
        let mut frame = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            frame["sessionId"] = json!(session);
        }
        let outcome = tokio::time::timeout(timeout, async {
            self.sink
                .lock()
                .await
                .send(Message::text(frame.to_string()))
                .await
                .map_err(|e| CdpError::Connection(format!("sending {method}: {e}")))?;
            rx.await.map_err(|_| CdpError::Connection(format!("the browser closed the connection during {method}")))?
        })
        .await;
        match outcome {
            Ok(result) => result.map_err(|e| match e {
                CdpError::Command { message, .. } => CdpError::Command { method: method.into(), message },
                other => other,
            }),
            Err(_) => {
                if let Some(map) = self.pending.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    map.remove(&id);
                }
                Err(CdpError::Timeout { after: timeout, what: format!("waiting for the reply to {method}") })
            }
        }
    }

    /// Closes the browser politely and waits (bounded) for it to exit; dropping also kills it.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.call_within(None, "Browser.close", json!({}), Duration::from_secs(5)).await;
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(status) => status.map(drop).map_err(CdpError::from),
            Err(_) => {
                Err(CdpError::Timeout { after: Duration::from_secs(5), what: "waiting for the browser to exit".into() })
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.reader.abort();
        self.stderr_drain.abort();
        // Chromium forks helpers (zygote, renderers): kill its whole process group, then the child.
        if let Ok(None) = self.child.try_wait()
            && let Some(pid) = self.child.id()
        {
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
    }
}

fn spawn_chromium(profile: &Path) -> Result<Child> {
    let override_bin = std::env::var("BULKHEAD_CHROMIUM").ok();
    let candidates: Vec<&str> = match override_bin.as_deref() {
        Some(bin) => vec![bin],
        None => CANDIDATES.to_vec(),
    };
    for bin in &candidates {
        let spawned = Command::new(bin)
            .arg("--headless=new")
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .arg("--no-first-run")
            .arg("--no-default-browser-check")
            .arg("--disable-extensions")
            .arg("--disable-background-networking")
            .arg("--disable-sync")
            .arg("--mute-audio")
            .arg("--password-store=basic")
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Ok(child) => return Ok(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CdpError::Launch(format!("running {bin}: {e}"))),
        }
    }
    Err(CdpError::Launch(format!(
        "no Chromium found (tried {}); the browser tests need Debian's chromium: run `.ci/run` (the \
         test script installs it) or `apt-get install -y chromium`",
        candidates.join(", ")
    )))
}

/// Routes command replies to their waiters; events are ignored. When the connection ends, every
/// waiter learns it at once.
async fn read_replies(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>,
    pending: Pending,
) {
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let Some(id) = frame.get("id").and_then(Value::as_u64) else {
            continue; // an event
        };
        let waiter = pending.lock().unwrap_or_else(|e| e.into_inner()).as_mut().and_then(|map| map.remove(&id));
        let Some(waiter) = waiter else { continue };
        let reply = match frame.get("error") {
            Some(error) => Err(CdpError::Command {
                method: String::new(),
                message: error.get("message").and_then(Value::as_str).map_or_else(|| error.to_string(), str::to_owned),
            }),
            None => Ok(frame.get("result").cloned().unwrap_or(Value::Null)),
        };
        let _ = waiter.send(reply);
    }
    // Dropping the senders wakes every waiter with "connection closed".
    pending.lock().unwrap_or_else(|e| e.into_inner()).take();
}

fn str_field(value: &Value, field: &str, method: &str) -> Result<String> {
    value.get(field).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| CdpError::Command {
        method: method.into(),
        message: format!("reply has no string field {field:?}: {value}"),
    })
}

/// Standard base64 (with padding), as CDP sends binary data.
fn decode_base64(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for byte in input.bytes().filter(|b| !b.is_ascii_whitespace()) {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "<!doctype html><title>smoke</title>\
        <input id=name><button id=go onclick=\"document.getElementById('out').textContent = \
        'hello ' + document.getElementById('name').value\">go</button><p id=out>nothing</p>";

    #[test]
    fn base64_decodes_standard_alphabet() {
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGk+Pz8/").as_deref(), Some(&b"hi>???"[..]));
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_base64("a*b="), None);
    }

    /// Proves the driver against the real browser: load a page, type, click, see the DOM change.
    #[tokio::test]
    async fn drives_real_chromium() -> Result<()> {
        let browser = Browser::launch().await?;
        let url = format!("data:text/html,{}", percent_encode(PAGE));
        browser.navigate(&url).await?;
        assert_eq!(browser.eval("document.title").await?, json!("smoke"));
        assert_eq!(browser.eval("document.getElementById('out').textContent").await?, json!("nothing"));

        browser.eval("document.getElementById('name').value = 'cdp'; document.getElementById('go').click()").await?;
        browser.wait_for("document.getElementById('out').textContent === 'hello cdp'", Duration::from_secs(5)).await?;

        // Values round-trip as JSON; promises are awaited; exceptions are errors.
        assert_eq!(browser.eval("({a: [1, 'two', null]})").await?, json!({"a": [1, "two", null]}));
        assert_eq!(browser.eval("Promise.resolve(41 + 1)").await?, json!(42));
        assert_eq!(browser.eval("undefined").await?, Value::Null);
        let err = browser.eval("nope.nope").await.unwrap_err();
        assert!(matches!(err, CdpError::Js(ref m) if m.contains("nope")), "{err}");

        // A condition that never holds times out, naming itself.
        let err = browser.wait_for("false", Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, CdpError::Timeout { ref what, .. } if what.contains("`false`")), "{err}");

        let shot = tempfile::Builder::new().suffix(".png").tempfile()?;
        browser.screenshot(shot.path()).await?;
        let png = std::fs::read(shot.path())?;
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

        browser.close().await
    }

    fn percent_encode(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
}

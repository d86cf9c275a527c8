//! A fake WhatsApp Cloud API speaking the real wire formats: the Graph API's
//! `POST /{version}/{phone-number-id}/messages` (Bearer token, Meta's error objects with their
//! codes, 429) and `GET /{version}/{phone-number-id}` (the number's display fields), and the
//! webhook side Meta drives: signed deliveries (`X-Hub-Signature-256`) and the verification
//! handshake, built here and posted to the gateway. Several numbers, one access token each.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// A message the gateway sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub to: String,
    pub text: String,
    pub at: Instant,
    pub body: Value,
}

#[derive(Default)]
struct Number {
    token: String,
    display: String,
    sent: Vec<Sent>,
    /// Meta error codes (0: HTTP 500 without a body) the next sends answer, in order.
    fail: VecDeque<i64>,
    next: u64,
}

#[derive(Default)]
struct Inner {
    numbers: Mutex<HashMap<String, Number>>,
    down: Mutex<bool>,
}

#[derive(Clone)]
pub struct FakeWhatsApp {
    /// The Graph API base URL with its version, for `apiUrl`.
    pub api: String,
    inner: Arc<Inner>,
}

fn meta_error(status: StatusCode, code: i64) -> Response {
    let body = json!({ "error": { "message": format!("(#{code}) fake error"), "type": "OAuthException",
                                  "code": code, "fbtrace_id": "AbCdEf" } });
    (status, axum::Json(body)).into_response()
}

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string()
}

async fn messages(
    State(inner): State<Arc<Inner>>,
    Path((_v, pnid)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if *inner.down.lock().unwrap() {
        return StatusCode::BAD_GATEWAY.into_response();
    }
    let mut numbers = inner.numbers.lock().unwrap();
    let Some(n) = numbers.get_mut(&pnid) else { return meta_error(StatusCode::BAD_REQUEST, 100) };
    if bearer(&headers) != n.token {
        return meta_error(StatusCode::UNAUTHORIZED, 190);
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else { return meta_error(StatusCode::BAD_REQUEST, 100) };
    if v["messaging_product"] != "whatsapp"
        || v["type"] != "text"
        || !v["to"].is_string()
        || !v["text"]["body"].is_string()
    {
        return meta_error(StatusCode::BAD_REQUEST, 100);
    }
    if let Some(code) = n.fail.pop_front() {
        return match code {
            0 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            130429 => meta_error(StatusCode::TOO_MANY_REQUESTS, code),
            c => meta_error(StatusCode::BAD_REQUEST, c),
        };
    }
    n.next += 1;
    let id = format!("wamid.OUT{}{}", pnid, n.next);
    let to = v["to"].as_str().unwrap().to_string();
    n.sent.push(Sent {
        to: to.clone(),
        text: v["text"]["body"].as_str().unwrap().to_string(),
        at: Instant::now(),
        body: v,
    });
    axum::Json(json!({ "messaging_product": "whatsapp", "contacts": [{ "input": to, "wa_id": to }],
                       "messages": [{ "id": id }] }))
    .into_response()
}

async fn number(
    State(inner): State<Arc<Inner>>,
    Path((_v, pnid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let numbers = inner.numbers.lock().unwrap();
    let Some(n) = numbers.get(&pnid) else { return meta_error(StatusCode::BAD_REQUEST, 100) };
    if bearer(&headers) != n.token {
        return meta_error(StatusCode::UNAUTHORIZED, 190);
    }
    axum::Json(json!({ "display_phone_number": n.display, "verified_name": format!("Business {pnid}"),
                       "quality_rating": "GREEN", "id": pnid }))
    .into_response()
}

impl FakeWhatsApp {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/{version}/{pnid}/messages", post(messages))
            .route("/{version}/{pnid}", get(number))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { api: format!("http://{addr}/v23.0"), inner }
    }

    /// A business number: its phone-number id, the access token that may use it, its display.
    pub fn add_number(&self, pnid: &str, token: &str, display: &str) {
        let n = Number { token: token.into(), display: display.into(), ..Default::default() };
        self.inner.numbers.lock().unwrap().insert(pnid.into(), n);
    }

    /// The next sends from `pnid` answer these Meta error codes (0: a bare HTTP 500).
    pub fn fail_next(&self, pnid: &str, codes: &[i64]) {
        self.inner.numbers.lock().unwrap().get_mut(pnid).unwrap().fail.extend(codes);
    }

    /// Every send answers 502 while down.
    pub fn set_down(&self, down: bool) {
        *self.inner.down.lock().unwrap() = down;
    }

    pub fn sent(&self, pnid: &str) -> Vec<Sent> {
        self.inner.numbers.lock().unwrap().get(pnid).map(|n| n.sent.clone()).unwrap_or_default()
    }

    pub async fn wait_sent(&self, pnid: &str, n: usize) -> Vec<Sent> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.sent(pnid);
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{pnid} sent {} of {n} messages: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A webhook delivery of text messages to the number `pnid`: `(from, wamid, text)` each.
pub fn delivery(pnid: &str, messages: &[(&str, &str, &str)]) -> String {
    let msgs: Vec<Value> = messages
        .iter()
        .map(|(from, id, text)| {
            json!({ "from": from, "id": id, "timestamp": "1700000000", "type": "text", "text": { "body": text } })
        })
        .collect();
    let contacts: Vec<Value> =
        messages.iter().map(|(from, _, _)| json!({ "profile": { "name": "Customer" }, "wa_id": from })).collect();
    change(pnid, json!({ "contacts": contacts, "messages": msgs }))
}

/// A delivery whose one change has `value` (metadata added) for the number `pnid`.
pub fn change(pnid: &str, mut value: Value) -> String {
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] = json!({ "display_phone_number": "15550000000", "phone_number_id": pnid });
    json!({ "object": "whatsapp_business_account",
            "entry": [{ "id": "102290129340398", "changes": [{ "field": "messages", "value": value }] }] })
    .to_string()
}

/// `X-Hub-Signature-256` of `body` under the app secret, as Meta sends it.
pub fn signature(app_secret: &str, body: &str) -> String {
    use ring::hmac;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, app_secret.as_bytes()), body.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

//! What every adapter's platform client shares: an HTTP client with bounded waits, network errors
//! in words that never carry the request URL (a URL can hold a token or a password), and a pause
//! that ends early when the account is told to stop.

use std::time::Duration;

use tokio::sync::watch;

/// Longest wait for a platform's TCP/TLS connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for a platform API: `connect` bounded by [`CONNECT_TIMEOUT`], each request by
/// `timeout`; `headers` sent with every request (mark credentials sensitive).
pub fn http_client(timeout: Duration, headers: reqwest::header::HeaderMap) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// A network error talking to `service` ("the Graph API"), in words, without its URL.
pub fn network_error(e: &reqwest::Error, service: &str) -> String {
    if e.is_timeout() {
        format!("{service} did not answer in time")
    } else if e.is_connect() {
        format!("cannot connect to {service}")
    } else {
        format!("network error talking to {service}")
    }
}

/// Waits `d`, or returns false when the account is told to stop first.
pub async fn pause(d: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        _ = stopped.wait_for(|s| *s) => false,
    }
}

/// The body of `resp`, refused once it passes `max` bytes (a hostile or broken server cannot make
/// the gateway allocate without bound); `Err` says which, without the URL.
pub async fn read_capped(mut resp: reqwest::Response, max: usize, service: &str) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("{service} answered more than {max} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| network_error(&e, service))? {
        if body.len() + chunk.len() > max {
            return Err(format!("{service} answered more than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

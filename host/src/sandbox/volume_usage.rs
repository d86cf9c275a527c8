//! How much each workspace volume on an engine holds, as the engine measures it
//! (`GET /system/df`, computed by the daemon as root, so no file a sandbox hides from its own
//! user escapes it).
//!
//! bollard 0.21 models only the `/system/df` answer of API 1.52+ (`VolumeUsage.Items`); older
//! engines (Debian 12's Docker 20.10 speaks 1.41) answer with a top-level `Volumes` list, which
//! bollard drops. So this one request is made directly, over the same transport as the engine's
//! client (its Unix socket, or TCP with the same mutual TLS, trusting only the configured CA),
//! and both shapes are read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Endpoint;

/// Largest `/system/df` answer read.
const MAX_BODY: usize = 64 << 20;
/// Longest a measurement may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One volume: its labels and its size in bytes (`None`: the engine could not size it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSize {
    pub labels: HashMap<String, String>,
    pub size: Option<u64>,
}

/// The volumes of `endpoint` with their sizes; `api` is the negotiated version (`1.41`).
pub async fn volume_sizes(endpoint: &Endpoint, api: &str) -> Result<Vec<VolumeSize>, String> {
    // `type=volume` (API 1.42+) spares the engine sizing images and containers.
    let query = if version_at_least(api, 1, 42) { "?type=volume" } else { "" };
    let request = format!("GET /v{api}/system/df{query} HTTP/1.0\r\nHost: docker\r\n\r\n");
    let answer = tokio::time::timeout(TIMEOUT, async {
        match endpoint {
            Endpoint::Unix(p) => {
                let s =
                    tokio::net::UnixStream::connect(p).await.map_err(|e| format!("cannot connect: {}", e.kind()))?;
                exchange(s, &request).await
            }
            Endpoint::Tcp { addr, tls } => {
                let connector = connector(tls)?;
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h).trim_matches(['[', ']']);
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|_| format!("invalid server name {host:?}"))?;
                let tcp =
                    tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot connect: {}", e.kind()))?;
                let s = connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake failed: {e}"))?;
                exchange(s, &request).await
            }
        }
    })
    .await
    .map_err(|_| "the engine did not measure its volumes in time".to_string())??;
    parse(&answer)
}

fn version_at_least(api: &str, major: u32, minor: u32) -> bool {
    let mut it = api.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// A TLS client that presents the gateway's certificate and trusts only the engine's CA.
fn connector(tls: &crate::config::EngineTls) -> Result<tokio_rustls::TlsConnector, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {}", p.display(), e.kind()));
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(&tls.ca)?) {
        let c = c.map_err(|_| format!("{} holds no PEM certificate", tls.ca.display()))?;
        roots.add(c).map_err(|_| format!("{} holds an unusable CA certificate", tls.ca.display()))?;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&tls.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{} holds no PEM certificate", tls.cert.display()))?;
    // Only whether the key parsed is said, never anything of it.
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?)
        .map_err(|_| format!("{} holds no PEM private key", tls.key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|_| format!("{} and {} do not form a usable pair", tls.cert.display(), tls.key.display()))?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Sends `request` and reads the answer to its end (HTTP/1.0: the engine closes), bounded.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str) -> Result<Vec<u8>, String> {
    s.write_all(request.as_bytes()).await.map_err(|e| format!("cannot send: {}", e.kind()))?;
    s.flush().await.map_err(|e| format!("cannot send: {}", e.kind()))?;
    let mut out = Vec::new();
    let mut limited = (&mut s).take(MAX_BODY as u64 + 1);
    limited.read_to_end(&mut out).await.map_err(|e| format!("cannot read the answer: {}", e.kind()))?;
    if out.len() > MAX_BODY {
        return Err("the engine's answer is too large".into());
    }
    Ok(out)
}

/// Reads an HTTP answer holding a `/system/df` document (either shape).
fn parse(answer: &[u8]) -> Result<Vec<VolumeSize>, String> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or("malformed answer from the engine")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("the engine answered {:?}", status.chars().take(80).collect::<String>()));
    }
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:")) {
        return Err("the engine answered with a transfer encoding this client does not read".into());
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&answer[split + 4..]).map_err(|_| "the engine's answer is not JSON".to_string())?;
    let list = doc
        .get("Volumes")
        .filter(|v| v.is_array())
        .or_else(|| doc.get("VolumeUsage").and_then(|u| u.get("Items")))
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(list
        .iter()
        .map(|v| {
            let labels = v
                .get("Labels")
                .and_then(|l| l.as_object())
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .unwrap_or_default();
            let size = v.get("UsageData").and_then(|u| u.get("Size")).and_then(|s| s.as_i64()).filter(|s| *s >= 0);
            VolumeSize { labels, size: size.map(|s| s as u64) }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_of_the_answer_are_read() {
        let old = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Volumes\":[{\"Name\":\"a\",\"Labels\":{\"t\":\"x\"},\"UsageData\":{\"Size\":42,\"RefCount\":0}},{\"Name\":\"b\",\"Labels\":null,\"UsageData\":{\"Size\":-1}}]}";
        let v = parse(old).unwrap();
        assert_eq!(v[0], VolumeSize { labels: HashMap::from([("t".into(), "x".into())]), size: Some(42) });
        assert_eq!(v[1].size, None);
        let new = b"HTTP/1.1 200 OK\r\n\r\n{\"VolumeUsage\":{\"Items\":[{\"Name\":\"a\",\"Labels\":{},\"UsageData\":{\"Size\":7}}]}}";
        assert_eq!(parse(new).unwrap()[0].size, Some(7));
        assert!(parse(b"HTTP/1.1 500 Internal\r\n\r\n{}").unwrap_err().contains("500"));
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n").is_err());
        assert!(parse(b"garbage").is_err());
        assert!(version_at_least("1.42", 1, 42) && version_at_least("1.53", 1, 42) && !version_at_least("1.41", 1, 42));
    }
}

//! Pass `gateway`: the listener, TLS, operators, the auth throttle and trusted proxy; and
//! `logging`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::raw::{RawGateway, RawLogging, RawTls, RawTrustedProxy};
use super::super::secret::SecretRef;
use super::{Errors, one_of, secret};

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub bind: SocketAddr,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub operators: Vec<OperatorConfig>,
    pub auth_max_failures: u32,
    pub auth_window: Duration,
    pub auth_lockout: Duration,
    /// `gateway.auth.trustedProxy`, when clients come through a reverse proxy.
    pub trusted_proxy: Option<crate::gateway::TrustedProxy>,
    /// `gateway.tls`: certificate and key files (absolute), when HTTPS is configured.
    pub tls: Option<TlsFiles>,
    /// `gateway.minFreeDiskMb`: below this much free space on the state directory's filesystem
    /// tool calls are refused (the gateway keeps serving and auditing in what is left).
    pub min_free_disk_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorRole {
    Admin,
    Operator,
    Auditor,
}

#[derive(Debug, Clone)]
pub struct OperatorConfig {
    pub id: String,
    pub token: SecretRef,
    pub role: OperatorRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
}

const DEFAULT_BIND: &str = "127.0.0.1:7878";

/// `gateway`: everything about the HTTP listener and who may use the admin API.
pub(super) fn gateway(
    errs: &mut Errors,
    warnings: &mut Vec<String>,
    raw: Option<RawGateway>,
    base: &Path,
) -> GatewayConfig {
    let g = raw.unwrap_or_default();
    let bind_text = g.bind.as_deref().unwrap_or(DEFAULT_BIND);
    let bind = match bind_text {
        "loopback" => DEFAULT_BIND.parse().ok(),
        other => other.parse::<SocketAddr>().ok(),
    };
    let bind = bind.unwrap_or_else(|| {
        errs.push(
            "gateway.bind",
            format!("invalid address {bind_text:?}: expected IP:PORT such as \"127.0.0.1:7878\""),
        );
        DEFAULT_BIND.parse().expect("default bind parses")
    });
    let mut operators = Vec::new();
    for (i, op) in g.operators.iter().flatten().enumerate() {
        let path = format!("gateway.operators[{i}]");
        let role = one_of(
            errs,
            &format!("{path}.role"),
            op.role.as_deref(),
            // Least privilege when unsaid: read-only.
            OperatorRole::Auditor,
            &[("admin", OperatorRole::Admin), ("operator", OperatorRole::Operator), ("auditor", OperatorRole::Auditor)],
        );
        let id = op.id.clone().unwrap_or_else(|| {
            errs.push(format!("{path}.id"), "missing key");
            String::new()
        });
        if !id.is_empty() && operators.iter().any(|o: &OperatorConfig| o.id == id) {
            errs.push(
                format!("{path}.id"),
                format!("operator id {id:?} is used twice; audit records name operators by id"),
            );
        }
        match &op.token {
            Some(t) => {
                secret(errs, warnings, &format!("{path}.token"), t);
                operators.push(OperatorConfig { id, token: t.clone(), role });
            }
            None => errs.push(format!("{path}.token"), "missing key"),
        }
    }
    let auth = g.auth.unwrap_or_default();
    let max_body_bytes = g.max_body_bytes.unwrap_or(1 << 20);
    if !(1024..=64 << 20).contains(&max_body_bytes) {
        errs.push("gateway.maxBodyBytes", "must be between 1024 and 67108864");
    }
    let min_free_disk_mb = g.min_free_disk_mb.unwrap_or(256);
    if min_free_disk_mb > 1 << 30 {
        errs.push("gateway.minFreeDiskMb", format!("minFreeDiskMb {min_free_disk_mb} is more than 1073741824"));
    }
    GatewayConfig {
        min_free_disk_bytes: min_free_disk_mb.min(1 << 30) << 20,
        bind,
        max_body_bytes: max_body_bytes as usize,
        shutdown_grace: Duration::from_secs(g.shutdown_grace_sec.unwrap_or(10)),
        operators,
        auth_max_failures: auth.max_failures.unwrap_or(10).max(1),
        auth_window: Duration::from_secs(auth.window_sec.unwrap_or(60).max(1)),
        auth_lockout: Duration::from_secs(auth.lockout_sec.unwrap_or(300)),
        trusted_proxy: trusted_proxy(errs, auth.trusted_proxy.as_ref()),
        tls: tls_files(errs, g.tls.as_ref(), bind, base),
    }
}

/// `logging`: format and level.
pub(super) fn logging(errs: &mut Errors, raw: Option<RawLogging>) -> LoggingConfig {
    let l = raw.unwrap_or_default();
    LoggingConfig {
        format: one_of(
            errs,
            "logging.format",
            l.format.as_deref(),
            LogFormat::Text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        ),
        level: l.level.unwrap_or_else(|| "info".into()),
    }
}

/// `gateway.tls`: both files or neither; with `required`, no plaintext on a non-loopback address.
fn tls_files(errs: &mut Errors, tls: Option<&RawTls>, bind: SocketAddr, base: &Path) -> Option<TlsFiles> {
    let tls = tls?;
    let files = match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => Some(TlsFiles { cert: base.join(c), key: base.join(k) }),
        (Some(_), None) => {
            errs.push("gateway.tls.key", "missing key: a certificate needs its private key");
            None
        }
        (None, Some(_)) => {
            errs.push("gateway.tls.cert", "missing key: a private key needs its certificate");
            None
        }
        (None, None) => None,
    };
    if tls.required == Some(true)
        && files.is_none()
        && !bind.ip().is_loopback()
        && tls.cert.is_none() == tls.key.is_none()
    {
        errs.push(
            "gateway.tls.required",
            format!(
                "plaintext HTTP on the non-loopback address {bind} is refused; set gateway.tls.cert and gateway.tls.key, or bind to 127.0.0.1"
            ),
        );
    }
    files
}

/// `gateway.auth.trustedProxy`: a header name and at least one proxy address or CIDR range.
fn trusted_proxy(errs: &mut Errors, raw: Option<&RawTrustedProxy>) -> Option<crate::gateway::TrustedProxy> {
    let raw = raw?;
    let path = "gateway.auth.trustedProxy";
    let header = match raw.header.as_deref().map(|h| axum::http::HeaderName::try_from(h.to_ascii_lowercase())) {
        None => {
            errs.push(format!("{path}.header"), "missing key (for example \"x-forwarded-for\")");
            None
        }
        Some(Err(_)) => {
            errs.push(format!("{path}.header"), "not a valid HTTP header name");
            None
        }
        Some(Ok(h)) => Some(h),
    };
    let mut from = Vec::new();
    for (i, entry) in raw.from.iter().flatten().enumerate() {
        let net = entry.parse::<ipnet::IpNet>().or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(net) => from.push(net.trunc()),
            Err(_) => errs.push(
                format!("{path}.from[{i}]"),
                format!("invalid address {entry:?}: expected an IP address or CIDR range such as \"10.0.0.0/8\""),
            ),
        }
    }
    if raw.from.as_ref().is_none_or(|f| f.is_empty()) {
        errs.push(format!("{path}.from"), "list the proxy's addresses; the header is believed only from them");
    }
    Some(crate::gateway::TrustedProxy { header: header?, from })
}

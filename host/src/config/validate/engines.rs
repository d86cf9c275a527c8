//! Pass `engines`: `sandbox.docker.engines`, the Docker engines tenants' sandboxes are placed on,
//! and each tenant's explicit `sandbox.engine`. Absent, the gateway uses the one local daemon as
//! it always has. Endpoints are `unix:///path` or `tcp://host:port` with mutual TLS; anything
//! else (plain TCP, which hands root on the engine's host to whoever reaches the port, SSH,
//! named pipes) is refused here, before anything connects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::raw::{RawGatewaySandbox, RawTenant};
use super::Errors;
use crate::ids::TenantId;

/// Most engines one gateway places tenants on.
pub const MAX_ENGINES: usize = 64;

/// The engines of `sandbox.docker.engines`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct EnginesConfig {
    /// In declaration order (placement does not depend on it: it hashes names).
    pub engines: Vec<EngineConfig>,
    /// Whether a tenant whose engine is down is served on the next engine of its order.
    pub failover: bool,
    /// How often every engine is health-checked.
    pub health_every: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Stable name: placement hashes it, containers and volumes are found by it.
    pub name: String,
    pub endpoint: Endpoint,
    /// Relative share of tenants.
    pub weight: u32,
}

/// How the gateway reaches an engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// The engine's Unix socket.
    Unix(PathBuf),
    /// `host:port`, always with mutual TLS.
    Tcp { addr: String, tls: EngineTls },
}

/// PEM files of a TCP engine's mutual TLS (paths only: their contents are read when connecting
/// and never logged).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "tcp://{addr} (mutual TLS)"),
        }
    }
}

/// Validates `sandbox.docker` and the tenants' `sandbox.engine`; returns the engines (if any)
/// and each pinned tenant's engine name.
pub(super) fn engines(
    errs: &mut Errors,
    raw: Option<&RawGatewaySandbox>,
    tenants: Option<&Vec<RawTenant>>,
    base: &Path,
) -> (Option<EnginesConfig>, BTreeMap<TenantId, String>) {
    let config = raw.and_then(|s| s.docker.as_ref()).map(|d| {
        let mut list = Vec::new();
        let raw_engines = d.engines.as_deref().unwrap_or_default();
        if raw_engines.is_empty() {
            errs.push("sandbox.docker.engines", "no engines listed: list at least one, or remove sandbox.docker");
        }
        if raw_engines.len() > MAX_ENGINES {
            errs.push("sandbox.docker.engines", format!("{} engines listed; at most {MAX_ENGINES}", raw_engines.len()));
        }
        let (mut names, mut endpoints) = (BTreeSet::new(), BTreeSet::new());
        for (i, e) in raw_engines.iter().enumerate().take(MAX_ENGINES) {
            let path = format!("sandbox.docker.engines[{i}]");
            let name = match e.name.as_deref() {
                None => {
                    errs.push(format!("{path}.name"), "missing: every engine needs a stable name");
                    None
                }
                Some(n) if !valid_name(n) => {
                    errs.push(
                        format!("{path}.name"),
                        format!("invalid engine name {n:?}: 1 to 32 of a-z, 0-9 and '-', starting with a letter or digit"),
                    );
                    None
                }
                Some(n) if !names.insert(n.to_string()) => {
                    errs.push(format!("{path}.name"), format!("engine name {n:?} is listed twice"));
                    None
                }
                Some(n) => Some(n.to_string()),
            };
            let endpoint = endpoint(errs, &path, e.endpoint.as_deref(), e.tls.as_ref(), base);
            if let Some(ep) = &endpoint
                && !endpoints.insert(ep.to_string())
            {
                errs.push(format!("{path}.endpoint"), format!("endpoint {ep} is listed twice"));
            }
            let weight = match e.weight {
                None => 100,
                Some(w) if (1..=10_000).contains(&w) => w,
                Some(w) => {
                    errs.push(format!("{path}.weight"), format!("weight {w} is outside 1..=10000"));
                    100
                }
            };
            if let (Some(name), Some(endpoint)) = (name, endpoint) {
                list.push(EngineConfig { name, endpoint, weight });
            }
        }
        let health_every = match d.health_check_sec {
            None => Duration::from_secs(5),
            Some(s) if (1..=300).contains(&s) => Duration::from_secs(s),
            Some(s) => {
                errs.push("sandbox.docker.healthCheckSec", format!("healthCheckSec {s} is outside 1..=300"));
                Duration::from_secs(5)
            }
        };
        EnginesConfig { engines: list, failover: d.failover.unwrap_or(false), health_every }
    });
    let mut pins = BTreeMap::new();
    for (i, t) in tenants.into_iter().flatten().enumerate() {
        let Some(engine) = t.sandbox.as_ref().and_then(|s| s.engine.as_deref()) else { continue };
        let path = format!("tenants[{i}].sandbox.engine");
        match &config {
            None => errs.push(path, format!("engine {engine:?} named, but no sandbox.docker.engines are configured")),
            Some(c) if !c.engines.iter().any(|e| e.name == engine) => {
                let known: Vec<_> = c.engines.iter().map(|e| format!("{:?}", e.name)).collect();
                errs.push(path, format!("unknown engine {engine:?}: sandbox.docker.engines names {}", known.join(", ")));
            }
            Some(_) => {
                if let Some(id) = t.id.as_deref().and_then(|id| TenantId::parse(id).ok()) {
                    pins.insert(id, engine.to_string());
                }
            }
        }
    }
    (config, pins)
}

fn valid_name(n: &str) -> bool {
    (1..=32).contains(&n.len())
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
}

fn endpoint(
    errs: &mut Errors,
    path: &str,
    raw: Option<&str>,
    tls: Option<&super::super::raw::RawEngineTls>,
    base: &Path,
) -> Option<Endpoint> {
    let at = format!("{path}.endpoint");
    let Some(raw) = raw else {
        errs.push(at, "missing: unix:///path/to/docker.sock or tcp://host:port (with tls)");
        return None;
    };
    if let Some(p) = raw.strip_prefix("unix://") {
        let p = Path::new(p);
        if tls.is_some() {
            errs.push(format!("{path}.tls"), "tls applies to tcp:// endpoints only; a Unix socket needs none");
        }
        // sun_path holds 108 bytes with its terminating NUL.
        if !p.is_absolute() || p.as_os_str().len() > 107 || p.components().any(|c| c.as_os_str() == "..") {
            errs.push(at, format!("invalid socket path in {raw:?}: an absolute path of at most 107 bytes, without '..'"));
            return None;
        }
        return Some(Endpoint::Unix(p.to_path_buf()));
    }
    if let Some(addr) = raw.strip_prefix("tcp://") {
        let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c))
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            errs.push(at, format!("invalid address in {raw:?}: expected tcp://host:port"));
            return None;
        }
        let Some(tls) = tls else {
            errs.push(
                at,
                format!(
                    "{raw:?} without tls: the Engine API over plain TCP gives whoever reaches the port root on the \
                     engine's host; refused: add tls {{ ca, cert, key }} (mutual TLS)"
                ),
            );
            return None;
        };
        let mut file = |key: &str, v: Option<&String>| -> Option<PathBuf> {
            let at = format!("{path}.tls.{key}");
            let Some(v) = v else {
                errs.push(at, "missing: mutual TLS needs ca, cert and key (PEM files)");
                return None;
            };
            let p = base.join(v);
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() => Some(p),
                Ok(_) => {
                    errs.push(at, format!("{} is not a file", p.display()));
                    None
                }
                Err(e) => {
                    errs.push(at, format!("cannot read {}: {}", p.display(), e.kind()));
                    None
                }
            }
        };
        let (ca, cert, key) = (file("ca", tls.ca.as_ref()), file("cert", tls.cert.as_ref()), file("key", tls.key.as_ref()));
        return Some(Endpoint::Tcp { addr: addr.to_string(), tls: EngineTls { ca: ca?, cert: cert?, key: key? } });
    }
    let scheme = raw.split_once("://").map_or("", |(s, _)| s);
    let why = match scheme {
        "http" | "https" => "write tcp://host:port with tls { ca, cert, key }",
        "ssh" | "npipe" | "fd" => "only unix:// and tcp:// (with mutual TLS) are supported",
        _ => "expected unix:///path/to/docker.sock or tcp://host:port (with tls)",
    };
    errs.push(at, format!("invalid endpoint {raw:?}: {why}"));
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Endpoint, load_str};

    fn errors(text: &str) -> Vec<(String, String)> {
        load_str(text, Path::new(".")).expect_err("config should be invalid").into_iter().map(|e| (e.path, e.message)).collect()
    }

    #[test]
    fn engines_load_with_defaults_and_pins_reach_the_tenants_agents() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let c = load_str(
            "{ sandbox: { docker: { failover: true, engines: [
                 { name: 'a', endpoint: 'unix:///run/a.sock' },
                 { name: 'b', endpoint: 'tcp://10.0.0.2:2376', weight: 300,
                   tls: { ca: 'ca.pem', cert: 'cert.pem', key: 'key.pem' } } ] } },
               tenants: [ { id: 'acme', sandbox: { engine: 'b' } }, { id: 'beta' } ],
               agents: { list: [ { id: 'x', tenant: 'acme', sandbox: { backend: 'docker' } },
                                 { id: 'y', tenant: 'beta', sandbox: { backend: 'docker' } } ] } }",
            dir.path(),
        )
        .unwrap();
        let e = c.engines.as_ref().unwrap();
        assert!(e.failover);
        assert_eq!(e.health_every.as_secs(), 5);
        assert_eq!((e.engines[0].weight, e.engines[1].weight), (100, 300));
        assert_eq!(e.engines[0].endpoint, Endpoint::Unix("/run/a.sock".into()));
        assert!(matches!(&e.engines[1].endpoint, Endpoint::Tcp { addr, tls } if addr == "10.0.0.2:2376" && tls.key == dir.path().join("key.pem")));
        assert_eq!(c.agents[0].sandbox.docker.engine.as_deref(), Some("b"));
        assert_eq!(c.agents[1].sandbox.docker.engine, None);
        // No `sandbox` key: today's single daemon.
        assert!(load_str("{}", Path::new(".")).unwrap().engines.is_none());
    }

    #[test]
    fn bad_engines_are_refused_naming_the_key() {
        let p = "sandbox.docker.engines";
        for (engines, path, says) in [
            ("[]", p.to_string(), "no engines"),
            ("[ { endpoint: 'unix:///a' } ]", format!("{p}[0].name"), "missing"),
            ("[ { name: 'A!', endpoint: 'unix:///a' } ]", format!("{p}[0].name"), "invalid engine name"),
            ("[ { name: 'a', endpoint: 'unix:///a' }, { name: 'a', endpoint: 'unix:///b' } ]", format!("{p}[1].name"), "twice"),
            ("[ { name: 'a', endpoint: 'unix:///a' }, { name: 'b', endpoint: 'unix:///a' } ]", format!("{p}[1].endpoint"), "twice"),
            ("[ { name: 'a' } ]", format!("{p}[0].endpoint"), "missing"),
            ("[ { name: 'a', endpoint: 'tcp://10.0.0.1:2375' } ]", format!("{p}[0].endpoint"), "root on the engine's host"),
            ("[ { name: 'a', endpoint: 'http://10.0.0.1:2375' } ]", format!("{p}[0].endpoint"), "tcp://host:port"),
            ("[ { name: 'a', endpoint: 'ssh://me@host' } ]", format!("{p}[0].endpoint"), "only unix://"),
            ("[ { name: 'a', endpoint: '/var/run/docker.sock' } ]", format!("{p}[0].endpoint"), "expected unix://"),
            ("[ { name: 'a', endpoint: 'unix://docker.sock' } ]", format!("{p}[0].endpoint"), "absolute"),
            ("[ { name: 'a', endpoint: 'unix:///a/../b' } ]", format!("{p}[0].endpoint"), "'..'"),
            ("[ { name: 'a', endpoint: 'tcp://nohost' , tls: {} } ]", format!("{p}[0].endpoint"), "tcp://host:port"),
            ("[ { name: 'a', endpoint: 'tcp://h:2376', tls: { ca: 'ca.pem' } } ]", format!("{p}[0].tls.cert"), "missing"),
            ("[ { name: 'a', endpoint: 'tcp://h:2376', tls: { ca: 'no.pem', cert: 'no.pem', key: 'secret.key' } } ]", format!("{p}[0].tls.key"), "cannot read"),
            ("[ { name: 'a', endpoint: 'unix:///a', tls: {} } ]", format!("{p}[0].tls"), "tcp:// endpoints only"),
            ("[ { name: 'a', endpoint: 'unix:///a', weight: 0 } ]", format!("{p}[0].weight"), "outside"),
        ] {
            let errs = errors(&format!("{{ sandbox: {{ docker: {{ engines: {engines} }} }} }}"));
            assert!(errs.iter().any(|(at, m)| *at == path && m.contains(says)), "{engines}: {errs:?}");
        }
        let errs = errors("{ sandbox: { docker: { healthCheckSec: 0, engines: [ { name: 'a', endpoint: 'unix:///a' } ] } } }");
        assert!(errs.iter().any(|(at, _)| at == "sandbox.docker.healthCheckSec"), "{errs:?}");
        // A pin must name a configured engine.
        let errs = errors("{ tenants: [ { id: 'acme', sandbox: { engine: 'a' } } ] }");
        assert!(errs.iter().any(|(at, m)| at == "tenants[0].sandbox.engine" && m.contains("no sandbox.docker.engines")), "{errs:?}");
        let errs = errors(
            "{ sandbox: { docker: { engines: [ { name: 'a', endpoint: 'unix:///a' } ] } },
               tenants: [ { id: 'acme', sandbox: { engine: 'b' } } ] }",
        );
        assert!(errs.iter().any(|(at, m)| at == "tenants[0].sandbox.engine" && m.contains("unknown engine \"b\"")), "{errs:?}");
        // Workspace volumes belong to the image's user: no other may be set.
        let errs = errors(
            "{ sandbox: { docker: { engines: [ { name: 'a', endpoint: 'unix:///a' } ] } },
               agents: { list: [ { id: 'x', sandbox: { backend: 'docker', docker: { user: '4242' } } } ] } }",
        );
        assert!(errs.iter().any(|(at, m)| at == p && m.contains("sandbox.docker.user")), "{errs:?}");
    }
}

//! Detached Ed25519 signatures for policy files, so an auditor can prove which policy runs.
//!
//! The Ed25519 primitives and the public-key text live in `crypto`; this module owns the files.
//! Formats (all text, one item per line):
//! - public key: `ed25519:` followed by the 32-byte key in 64 lowercase hex digits;
//! - key file (private, written by `bulkhead policy keygen`): the key pair's PKCS#8 v2 document
//!   in hex on one line;
//! - signature file `FILE.sig`, next to the policy file:
//!   ```text
//!   bulkhead-policy-signature v1
//!   key ed25519:<64 hex digits>
//!   signature <128 hex digits>
//!   ```
//!   The signature covers the bytes `bulkhead-policy-signature v1\n` followed by the policy
//!   file's exact bytes: any changed byte, including whitespace and comments, breaks it. It binds
//!   content, not the file name.

use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;

use crate::crypto::{SigningKey, format_public_key, hex, parse_public_key, unhex, verify_signature};

const HEADER: &str = "bulkhead-policy-signature v1";

/// Why a policy file's signature was not accepted, or could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("policy file {0}: cannot read: {1}")]
    Read(String, String),
    #[error("policy file {0}: unsigned (no signature file {1})")]
    Missing(String, String),
    #[error("signature file {0}: malformed: {1}")]
    Malformed(String, String),
    #[error("policy file {0}: signed by {1}, which is not a trusted key")]
    Untrusted(String, String),
    #[error("policy file {0}: signature does not match its content (the file was modified after signing)")]
    Mismatch(String),
    #[error("key file {0}: {1}")]
    Key(String, String),
}

/// Where the detached signature of `policy` lives: the same path with `.sig` appended.
pub fn sig_path(policy: &Path) -> PathBuf {
    let mut s = policy.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

fn message(content: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER.len() + 1 + content.len());
    m.extend_from_slice(HEADER.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(content);
    m
}

/// A new key pair: the key file's text and the public key.
pub fn generate_key() -> Result<(String, [u8; 32]), SignatureError> {
    let doc = SigningKey::generate_pkcs8(&SystemRandom::new())
        .ok_or_else(|| SignatureError::Key("(new)".into(), "cannot generate a key".into()))?;
    let text = format!("{}\n", hex(&doc));
    let pair = key_pair("(new)", &text)?;
    Ok((text, pair.public_key()))
}

fn key_pair(key_name: &str, key_text: &str) -> Result<SigningKey, SignatureError> {
    let bad = |why: &str| SignatureError::Key(key_name.into(), why.into());
    let der = unhex(key_text.trim()).ok_or_else(|| bad("expected a hex-encoded PKCS#8 Ed25519 key on one line"))?;
    SigningKey::from_pkcs8(&der).ok_or_else(|| bad("not a PKCS#8 v2 Ed25519 key"))
}

/// The public key of a key file.
pub fn key_file_public_key(key_name: &str, key_text: &str) -> Result<[u8; 32], SignatureError> {
    key_pair(key_name, key_text).map(|p| p.public_key())
}

/// Signs `content`; returns the text of the signature file.
pub fn sign(content: &[u8], key_name: &str, key_text: &str) -> Result<String, SignatureError> {
    let pair = key_pair(key_name, key_text)?;
    let sig = pair.sign(&message(content));
    Ok(format!("{HEADER}\nkey {}\nsignature {}\n", format_public_key(&pair.public_key()), hex(&sig)))
}

/// Checks a signature file's text against `content` and the trusted keys; returns the signer.
/// `name` is the policy file's name for messages.
pub fn verify(
    name: &str,
    content: &[u8],
    sig_name: &str,
    sig_text: &str,
    trusted: &[[u8; 32]],
) -> Result<[u8; 32], SignatureError> {
    let malformed = |why: &str| SignatureError::Malformed(sig_name.into(), why.into());
    let mut lines = sig_text.lines();
    if lines.next() != Some(HEADER) {
        return Err(malformed(&format!("the first line must be {HEADER:?}")));
    }
    let key = lines.next().and_then(|l| l.strip_prefix("key ")).ok_or_else(|| malformed("missing \"key\" line"))?;
    let key = parse_public_key(key).map_err(|e| malformed(&e))?;
    let sig = lines
        .next()
        .and_then(|l| l.strip_prefix("signature "))
        .and_then(unhex)
        .filter(|s| s.len() == 64)
        .ok_or_else(|| malformed("missing or invalid \"signature\" line (128 hex digits)"))?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(malformed("unexpected text after the signature"));
    }
    if !trusted.contains(&key) {
        return Err(SignatureError::Untrusted(name.into(), format_public_key(&key)));
    }
    if !verify_signature(&key, &message(content), &sig) {
        return Err(SignatureError::Mismatch(name.into()));
    }
    Ok(key)
}

/// Reads `policy` and `policy.sig` and verifies them against the trusted keys.
pub fn verify_file(policy: &Path, trusted: &[[u8; 32]]) -> Result<[u8; 32], SignatureError> {
    let name = policy.display().to_string();
    let content = std::fs::read(policy).map_err(|e| SignatureError::Read(name.clone(), e.to_string()))?;
    let sig = sig_path(policy);
    let sig_name = sig.display().to_string();
    let sig_text = match std::fs::read_to_string(&sig) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SignatureError::Missing(name, sig_name)),
        Err(e) => return Err(SignatureError::Malformed(sig_name, e.to_string())),
    };
    verify(&name, &content, &sig_name, &sig_text, trusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &[u8] = b"// test policy\n{ tools: { allow: [\"read\"] } }\n";

    #[test]
    fn sign_then_verify_roundtrip() {
        let (key, public) = generate_key().unwrap();
        let sig = sign(POLICY, "k", &key).unwrap();
        assert_eq!(verify("p", POLICY, "p.sig", &sig, &[public]), Ok(public));
        assert_eq!(parse_public_key(&format_public_key(&public)), Ok(public));
    }

    #[test]
    fn tampered_content_is_rejected() {
        let (key, public) = generate_key().unwrap();
        let sig = sign(POLICY, "k", &key).unwrap();
        for i in 0..POLICY.len() {
            let mut changed = POLICY.to_vec();
            changed[i] ^= 0x01;
            assert_eq!(verify("p", &changed, "p.sig", &sig, &[public]), Err(SignatureError::Mismatch("p".into())));
        }
        let mut longer = POLICY.to_vec();
        longer.push(b' ');
        assert!(matches!(verify("p", &longer, "p.sig", &sig, &[public]), Err(SignatureError::Mismatch(_))));
    }

    #[test]
    fn wrong_key_and_forged_key_line_are_rejected() {
        let (key, _) = generate_key().unwrap();
        let (_, other) = generate_key().unwrap();
        let sig = sign(POLICY, "k", &key).unwrap();
        assert!(matches!(verify("p", POLICY, "p.sig", &sig, &[other]), Err(SignatureError::Untrusted(..))));
        // Claiming the trusted key in the key line does not help: the signature does not verify.
        let forged = sig
            .lines()
            .map(|l| if l.starts_with("key ") { format!("key {}", format_public_key(&other)) } else { l.to_string() })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(verify("p", POLICY, "p.sig", &forged, &[other]), Err(SignatureError::Mismatch("p".into())));
    }

    #[test]
    fn malformed_signature_files_are_rejected() {
        let (key, public) = generate_key().unwrap();
        let sig = sign(POLICY, "k", &key).unwrap();
        for bad in ["", "garbage", &sig.replace("signature ", "signature zz"), &format!("{sig}extra\n")] {
            assert!(
                matches!(verify("p", POLICY, "p.sig", bad, &[public]), Err(SignatureError::Malformed(..))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn missing_signature_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json5");
        std::fs::write(&p, POLICY).unwrap();
        let err = verify_file(&p, &[[0; 32]]).unwrap_err();
        assert!(matches!(err, SignatureError::Missing(..)));
        assert!(err.to_string().contains("x.json5.sig"), "{err}");
    }

    #[test]
    fn key_files_are_parsed_strictly() {
        assert!(key_file_public_key("k", "nothex").is_err());
        // Hex, but not a PKCS#8 Ed25519 document.
        assert!(key_file_public_key("k", "00ff").is_err());
        let (key, public) = generate_key().unwrap();
        assert_eq!(key_file_public_key("k", &key), Ok(public));
    }
}

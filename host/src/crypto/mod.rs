//! Low-level cryptography shared by the store, the audit log, policy signatures and the
//! sandboxes: hex text, random bytes, keyed MACs, the record AEAD and Ed25519 keys.
//!
//! Nothing here knows about tenants, configs or files on disk: it imports no other module of the
//! crate, so every subsystem can use it without a back-edge.

mod ed25519;
mod mac;
mod seal;

pub use ed25519::{SigningKey, format_public_key, parse_public_key, verify_signature};
pub use mac::{derive_key, derive_mac_key, mac_parts, verify_parts};
pub use seal::{NONCE_LEN, RecordKey, TAG_LEN};

use ring::rand::{SecureRandom, SystemRandom};

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The bytes of hex text (either case); `None` unless every character is a hex digit and there
/// is an even number of them.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// Fresh random bytes.
pub fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    rng.fill(&mut b).map_err(|_| "the system random source failed".to_string())?;
    Ok(b)
}

/// The first `n` bytes (at most 32) of the SHA-256 digest of `data`, as hex.
pub fn sha256_hex(data: &[u8], n: usize) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    hex(&d.as_ref()[..n.min(32)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_unhex_is_strict() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)), Some(bytes));
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
        assert_eq!(unhex("0FA0"), Some(vec![0x0f, 0xa0]));
        // Odd length, non-hex, and what `from_str_radix` alone would take ("+f" is 15).
        for bad in ["0", "zz", "+f", "-1", " 0", "0g", "é0"] {
            assert_eq!(unhex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sha256_hex_is_the_digest_prefix() {
        // SHA-256("abc") = ba7816bf 8f01cfea ...
        assert_eq!(sha256_hex(b"abc", 8), "ba7816bf8f01cfea");
        assert_eq!(sha256_hex(b"abc", 64).len(), 64);
    }
}

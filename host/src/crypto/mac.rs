//! HMAC-SHA256 keys derived for one purpose, and MACs over length-prefixed parts.

use ring::hmac;

use super::{hex, unhex};

/// A MAC key for one purpose: HMAC of `label` under `secret`, so keys for different labels are
/// independent.
pub fn derive_mac_key(secret: &[u8], label: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &derive_key(secret, label))
}

/// 32 bytes of key for one purpose: HMAC-SHA256 of `label` under `secret`.
pub fn derive_key(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let k = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), label);
    k.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
}

/// MAC over length-prefixed parts, so part boundaries cannot shift.
fn encode_parts(parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Vec::new();
    for p in parts {
        m.extend_from_slice(&(p.len() as u64).to_be_bytes());
        m.extend_from_slice(p);
    }
    m
}

/// The MAC of `parts` under `key`, as hex.
pub fn mac_parts(key: &hmac::Key, parts: &[&[u8]]) -> String {
    hex(hmac::sign(key, &encode_parts(parts)).as_ref())
}

/// Whether `tag_hex` is the MAC of `parts` under `key` (compared in constant time).
pub fn verify_parts(key: &hmac::Key, parts: &[&[u8]], tag_hex: &str) -> bool {
    match unhex(tag_hex) {
        Some(tag) => hmac::verify(key, &encode_parts(parts), &tag).is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_boundaries_and_labels_matter() {
        let key = derive_mac_key(b"secret", b"label");
        let tag = mac_parts(&key, &[b"ab", b"c"]);
        assert!(verify_parts(&key, &[b"ab", b"c"], &tag));
        assert!(!verify_parts(&key, &[b"a", b"bc"], &tag));
        assert!(!verify_parts(&derive_mac_key(b"secret", b"other"), &[b"ab", b"c"], &tag));
        assert!(!verify_parts(&key, &[b"ab", b"c"], "not hex"));
    }
}

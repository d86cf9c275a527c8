//! Ed25519 keys: signing (policy files, audit checkpoints) and the text form of public keys,
//! `ed25519:` followed by the 32-byte key in 64 lowercase hex digits.

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::{hex, unhex};

const KEY_PREFIX: &str = "ed25519:";

/// An Ed25519 key pair, read from its PKCS#8 v2 document.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// A new key pair's PKCS#8 v2 document; `None` when the random source fails.
    pub fn generate_pkcs8(rng: &SystemRandom) -> Option<Vec<u8>> {
        Ed25519KeyPair::generate_pkcs8(rng).ok().map(|doc| doc.as_ref().to_vec())
    }

    /// `None` unless `der` is a PKCS#8 v2 Ed25519 document.
    pub fn from_pkcs8(der: &[u8]) -> Option<Self> {
        Ed25519KeyPair::from_pkcs8(der).ok().map(Self)
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.0.public_key().as_ref().try_into().expect("ed25519 public keys are 32 bytes")
    }

    /// The 64-byte signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).as_ref().to_vec()
    }
}

/// Whether `signature` is `public`'s signature of `message`.
pub fn verify_signature(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public).verify(message, signature).is_ok()
}

/// Parses `ed25519:<64 hex digits>`.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let bad = || format!("invalid public key {text:?}: expected \"ed25519:\" followed by 64 hex digits");
    let hex_part = text.trim().strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
    let bytes = unhex(hex_part).ok_or_else(bad)?;
    bytes.try_into().map_err(|_| bad())
}

pub fn format_public_key(key: &[u8; 32]) -> String {
    format!("{KEY_PREFIX}{}", hex(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_key_text_round_trip() {
        let der = SigningKey::generate_pkcs8(&SystemRandom::new()).unwrap();
        let key = SigningKey::from_pkcs8(&der).unwrap();
        let public = key.public_key();
        let sig = key.sign(b"message");
        assert!(verify_signature(&public, b"message", &sig));
        assert!(!verify_signature(&public, b"messagE", &sig));
        assert_eq!(parse_public_key(&format_public_key(&public)), Ok(public));
        assert!(SigningKey::from_pkcs8(b"not a key").is_none());
    }

    #[test]
    fn public_key_parsing_is_strict() {
        for bad in
            ["", "ed25519:", "ed25519:zz", &format!("rsa:{}", "0".repeat(64)), &format!("ed25519:{}", "0".repeat(62))]
        {
            assert!(parse_public_key(bad).is_err(), "{bad:?}");
        }
    }
}

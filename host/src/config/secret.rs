//! Secret references (`{ env: "NAME" }`, `{ file: "PATH" }`) and the redacting string they resolve to.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// A secret as written in the config. A literal string is accepted (with a warning) for
/// compatibility with OpenClaw configs; it is never echoed back.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    Literal(SecretString),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "{{ env: {name:?} }}"),
            SecretRef::File(path) => write!(f, "{{ file: {path:?} }}"),
            SecretRef::Literal(_) => f.write_str("<literal secret>"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let expected = "expected a secret reference { env: \"NAME\" } or { file: \"PATH\" }";
        match value {
            serde_json::Value::String(s) => Ok(SecretRef::Literal(SecretString::new(s))),
            serde_json::Value::Object(map) => {
                if map.len() != 1 {
                    return Err(de::Error::custom(expected));
                }
                match map.into_iter().next() {
                    Some((k, serde_json::Value::String(v))) if k == "env" => {
                        let valid = !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                        if valid {
                            Ok(SecretRef::Env(v))
                        } else {
                            Err(de::Error::custom(format!("invalid environment variable name {v:?}")))
                        }
                    }
                    Some((k, serde_json::Value::String(v))) if k == "file" && !v.is_empty() => {
                        Ok(SecretRef::File(PathBuf::from(v)))
                    }
                    _ => Err(de::Error::custom(expected)),
                }
            }
            _ => Err(de::Error::custom(expected)),
        }
    }
}

impl SecretRef {
    pub fn is_literal(&self) -> bool {
        matches!(self, SecretRef::Literal(_))
    }

    /// Reads the secret. `base` resolves relative `file` paths (the config file's folder).
    /// Errors name the reference, never the value.
    pub fn resolve(&self, base: &Path) -> Result<SecretString, String> {
        match self {
            SecretRef::Literal(s) => Ok(s.clone()),
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => Ok(SecretString::new(v.trim().to_string())),
                Ok(_) => Err(format!("environment variable {name} is empty")),
                Err(_) => Err(format!("environment variable {name} is not set")),
            },
            SecretRef::File(path) => {
                let path = base.join(path);
                match read_bounded(&path) {
                    Ok(v) if !v.trim().is_empty() => Ok(SecretString::new(v.trim().to_string())),
                    Ok(_) => Err(format!("secret file {} is empty", path.display())),
                    Err(e) => Err(format!("cannot read secret file {}: {e}", path.display())),
                }
            }
        }
    }
}

/// Longest secret file read. Tokens and keys are far shorter; a reference that points at
/// `/dev/zero` or a log file must fail, not fill memory.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// The file's text, refusing one longer than [`MAX_SECRET_FILE_BYTES`] (read at most one byte
/// past the bound, so an endless device is never read through).
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(MAX_SECRET_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {} KiB: not a secret", MAX_SECRET_FILE_BYTES / 1024),
        ));
    }
    Ok(text)
}

/// A secret value. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The only way to see the value: call sites are easy to audit with grep.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SecretRef, String> {
        json5::from_str::<SecretRef>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn references_parse_and_literals_do_not_leak() {
        assert_eq!(parse("{ env: 'ACME_TOKEN' }").unwrap(), SecretRef::Env("ACME_TOKEN".into()));
        assert!(matches!(parse("{ file: 'x' }").unwrap(), SecretRef::File(_)));
        let lit = parse("'hunter2'").unwrap();
        assert!(lit.is_literal());
        assert!(!format!("{lit:?}").contains("hunter2"));
        assert!(!format!("{:?}", lit.resolve(Path::new(".")).unwrap()).contains("hunter2"));
        for bad in ["{ env: 'A', file: 'b' }", "{ vault: 'x' }", "42", "{ env: 'A B' }"] {
            let err = parse(bad).unwrap_err();
            assert!(!err.contains('B') || bad.contains("A B"), "{err}");
        }
    }

    #[test]
    fn missing_env_names_the_variable() {
        let err = SecretRef::Env("BULKHEAD_TEST_SURELY_UNSET".into()).resolve(Path::new(".")).unwrap_err();
        assert!(err.contains("BULKHEAD_TEST_SURELY_UNSET"), "{err}");
    }

    #[test]
    fn a_secret_file_is_read_within_a_bound() {
        let dir = std::env::temp_dir().join(format!("bulkhead-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        let err = SecretRef::File(big.clone()).resolve(Path::new(".")).unwrap_err();
        assert!(err.contains("longer than 64 KiB") && err.contains("big"), "{err}");
        let fits = dir.join("fits");
        std::fs::write(&fits, vec![b'a'; MAX_SECRET_FILE_BYTES as usize]).unwrap();
        assert!(SecretRef::File(fits).resolve(Path::new(".")).is_ok());
        // An endless device is refused after one bound's worth of bytes, not read through.
        let err = SecretRef::File("/dev/zero".into()).resolve(Path::new(".")).unwrap_err();
        assert!(err.contains("longer than"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! `bulkhead keys ...`: the operator's master key and tenant key rotation.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::store::MasterKey;

/// `keys init --out FILE`: writes a new master key (mode 0600); never overwrites a file.
pub fn init(out: &Path) -> i32 {
    let key = MasterKey::generate(format!("file {}", out.display()));
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(out);
    let result = file.and_then(|mut f| {
        f.write_all(key.to_text().as_bytes())?;
        f.sync_all()
    });
    match result {
        Ok(()) => {
            println!("wrote a new master key to {}", out.display());
            println!(
                "keep it outside the state directory, back it up offline, and set store.masterKey: {{ file: \"...\" }}"
            );
            EXIT_OK
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!("error: {} already exists; refusing to overwrite a key", out.display());
            EXIT_INVALID
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", out.display());
            EXIT_FAILURE
        }
    }
}

/// `keys rotate --tenant ID`: re-encrypts the tenant's data to a new identity (gateway stopped).
pub fn rotate_tenant(source: &ConfigSource, id: &str) -> i32 {
    let Some((config, tenant)) = super::load_with_tenant(source, id) else { return EXIT_INVALID };
    let store = match super::open_store(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !store.tenants().contains(&tenant) {
        eprintln!("error: tenant {id:?} has no data in the store");
        return EXIT_INVALID;
    }
    let mut audit = match crate::audit::LogWriter::open_config(&config) {
        Ok(Some(w)) => w,
        Ok(None) => {
            eprintln!("error: store.masterKey is not configured, so there is no audit log to record this in");
            return EXIT_INVALID;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    match store.rotate_tenant(&tenant) {
        Ok(n) => {
            let scope = crate::audit::Scope::Tenant(tenant.clone());
            let event = crate::audit::Event::KeyRotate { sessions: n };
            if let Err(e) = audit.append(&scope, &crate::audit::Actor::Cli, &event) {
                eprintln!("error: the key is rotated, but the audit record failed: {e}");
                return EXIT_FAILURE;
            }
            println!("rotated the key of tenant {id}: {n} session(s) re-encrypted, the old key destroyed");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: key rotation of tenant {id:?} failed (the old key and data are unchanged): {e}");
            EXIT_FAILURE
        }
    }
}

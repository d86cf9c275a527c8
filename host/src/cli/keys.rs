//! `bulkhead keys ...`: the operator's master key and tenant key rotation.

use std::io::Write;
use std::path::Path;

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::store::MasterKey;

/// `keys init --out FILE`: writes a new master key (mode 0600); never overwrites a file.
pub fn init(out: &Path) -> i32 {
    let key = MasterKey::generate(format!("file {}", out.display()));
    let file = crate::fsutil::create_new_private(out);
    let result = file.and_then(|mut f| {
        f.write_all(key.to_text().as_bytes())?;
        f.sync_all()
    });
    match result {
        Ok(()) => {
            outln!("wrote a new master key to {}", out.display());
            outln!(
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
    let store = match super::open_existing_store(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !store.tenants().contains(&tenant) {
        eprintln!("error: tenant {id:?} has no data in the store");
        return EXIT_INVALID;
    }
    let mut audit = match super::open_audit(&config) {
        Ok(w) => w,
        Err(code) => return code,
    };
    match store.rotate_tenant(&tenant) {
        Ok(n) => {
            let scope = crate::audit::Scope::Tenant(tenant.clone());
            let event = crate::audit::Event::KeyRotate { sessions: n };
            if let Err(e) = audit.append(&scope, &crate::audit::Actor::Cli, &event) {
                eprintln!("error: the key is rotated, but the audit record failed: {e}");
                return EXIT_FAILURE;
            }
            outln!("rotated the key of tenant {id}: {n} session(s) re-encrypted, the old key destroyed");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: key rotation of tenant {id:?} failed (the old key and data are unchanged): {e}");
            EXIT_FAILURE
        }
    }
}

/// `keys rotate-master --new-key FILE`: re-wraps every tenant identity to a new master key
/// (made with `keys init`); tenant data is not touched. Gateway stopped.
pub fn rotate_master(source: &ConfigSource, new_key: &Path) -> i32 {
    let config = match source.load(false) {
        Ok(c) => c,
        Err(e) => {
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    let reference = crate::config::SecretRef::File(new_key.to_path_buf());
    let new = match MasterKey::load(&reference, Path::new("."), &config.state_dir) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: --new-key: {e}");
            return EXIT_INVALID;
        }
    };
    let store = match super::open_existing_store(&config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let old_origin = store.master_origin().to_string();
    if store.master_is(&new) {
        eprintln!("error: --new-key is the key already in use ({old_origin}); make a new one with `keys init`");
        return EXIT_INVALID;
    }
    // The audit keys are wrapped to the master key too: prepared before the store commits.
    let mut audit = match super::open_audit(&config) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let audit_dir = audit.dir().to_path_buf();
    if let Err(e) = audit.keys().prepare_rewrap(&audit_dir, &new) {
        eprintln!("error: master-key rotation failed (nothing changed): {e}");
        crate::audit::AuditKeys::discard_rewrap(&audit_dir);
        return EXIT_FAILURE;
    }
    match store.rotate_master(new) {
        Ok(n) => {
            if let Err(e) = crate::audit::AuditKeys::finish_rewrap(&audit_dir) {
                eprintln!(
                    "error: the store uses the new key, but the audit keys were not moved into place ({e}); the next start with the new key finishes it"
                );
                return EXIT_FAILURE;
            }
            let event = crate::audit::Event::MasterKeyRotate { tenants: n };
            if let Err(e) = audit.append(&crate::audit::Scope::Host, &crate::audit::Actor::Cli, &event) {
                eprintln!("error: the master key is rotated, but the audit record failed: {e}");
                return EXIT_FAILURE;
            }
            outln!("re-wrapped {n} tenant key(s) to the master key in {}", new_key.display());
            outln!(
                "now: set store.masterKey to {{ file: \"{}\" }} (the old key no longer opens the store),",
                new_key.display()
            );
            outln!("back the new key up offline, then destroy the old key ({old_origin}).");
            EXIT_OK
        }
        Err(e) => {
            // The audit keys follow the store: the next open with whichever master key the
            // store now uses finishes or discards `keys.next.age`.
            eprintln!("error: master-key rotation failed: {e}");
            EXIT_FAILURE
        }
    }
}

//! Drop-in tenant files: `tenants.d/<id>.json5` beside the main config (the folder is
//! `tenantsDir`), one tenant per file with everything that is only that tenant's: the tenant
//! itself, its agents, its bindings and its chat-channel accounts. Onboarding a client is
//! dropping in a file; an auditor reads one file per tenant.
//!
//! ```json5
//! // tenants.d/acme.json5
//! {
//!   tenant: { id: "acme", name: "Acme", apiTokens: [{ env: "ACME_TOKEN" }] },  // id defaults to the file name
//!   agents: [{ id: "acme-support", model: "anthropic/claude-sonnet-4-5" }],     // tenant defaults to "acme"
//!   bindings: [{ agentId: "acme-support", match: { channel: "telegram", accountId: "acme-bot" } }],
//!   channels: { telegram: { accounts: { "acme-bot": { token: { env: "ACME_TG_TOKEN" } } } } },
//! }
//! ```
//!
//! A file may name only its own tenant: its agents belong to it, its bindings route to its
//! agents, its accounts are bound to it. The files are merged into the main file's raw config
//! and validated with it in one pass; every error names the file and the key path inside it.
//! Relative paths inside a tenant file (secret files, policy files) resolve against the main
//! file's folder, like everything else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::raw::{RawAgent, RawBinding, RawChannel, RawConfig, RawTenant};
use super::{Config, ConfigError, LoadError, parse_as, parse_raw, validate_parsed};

/// The drop-in folder when the main file names none.
pub const DEFAULT_TENANTS_DIR: &str = "tenants.d";

/// Most drop-in files read from the folder; beyond it the load is refused.
const MAX_TENANT_FILES: usize = 10_000;

/// A drop-in tenant file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTenantFile {
    #[serde(rename = "$schema")]
    pub schema: Option<String>,
    pub tenant: Option<RawTenant>,
    pub agents: Option<Vec<RawAgent>>,
    pub bindings: Option<Vec<RawBinding>>,
    /// Chat-channel accounts of this tenant, by channel (`telegram: { accounts: {...} }`).
    pub channels: Option<BTreeMap<String, RawTenantChannel>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawTenantChannel {
    pub accounts: Option<BTreeMap<String, RawChannel>>,
}

/// A loaded config with where it came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The drop-in folder (it may not exist).
    pub tenants_dir: PathBuf,
    /// The main file and every drop-in file read, in order.
    pub files: Vec<PathBuf>,
    /// `sha256:` over the names and bytes of `files`: equal digests, equal config.
    pub digest: String,
}

/// Where merged entries came from, to name the file and its own key path in errors.
#[derive(Default)]
struct Origins {
    /// Index in the merged list → (file, index in the file).
    tenants: BTreeMap<usize, String>,
    agents: BTreeMap<usize, (String, usize)>,
    bindings: BTreeMap<usize, (String, usize)>,
    /// `channels.<channel>.accounts.<id>` → file.
    accounts: BTreeMap<String, String>,
    /// Account key → the tenant its file holds.
    account_tenants: Vec<(String, String, String)>,
}

fn file_error(file: &str, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { file: Some(file.to_string()), ..ConfigError::at(path, message) }
}

/// Reads and validates the main config file and its drop-in tenant files, reporting every
/// error of every file at once.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    load_with(path, None)
}

/// `load`, with one more tenant file (`name`, `text`) as if it were in the drop-in folder
/// (replacing a file of that name): how `tenant add` checks a file before writing it.
pub fn load_with(path: &Path, extra: Option<(&str, &str)>) -> Result<Loaded, LoadError> {
    let source = path.display().to_string();
    let fail = |errors| LoadError { source: source.clone(), errors };
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(vec![ConfigError::at("", format!("cannot read config file: {e}"))]))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    add_to_digest(&mut digest, "", text.as_bytes());

    let parsed = parse_raw(&text);
    let setting = match &parsed {
        Ok(r) => r.tenants_dir.clone(),
        Err((Some(r), _)) => r.tenants_dir.clone(),
        Err((None, _)) => None,
    };
    let shown_dir = setting.clone().unwrap_or_else(|| DEFAULT_TENANTS_DIR.into());
    let tenants_dir = base.join(&shown_dir);
    let mut errors = Vec::new();
    let mut files = vec![path.to_path_buf()];
    let mut tenant_files = Vec::new();
    let mut texts: Vec<(String, Result<String, String>)> = Vec::new();
    match list_tenant_files(&tenants_dir, setting.is_some()) {
        Ok(list) => {
            for file in list {
                let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                texts.push((name, std::fs::read_to_string(&file).map_err(|e| e.to_string())));
                files.push(file);
            }
        }
        Err(e) => errors.push(ConfigError::at("tenantsDir", e)),
    }
    if let Some((name, text)) = extra {
        texts.retain(|(n, _)| n != name);
        texts.push((name.to_string(), Ok(text.to_string())));
        texts.sort_by(|a, b| a.0.cmp(&b.0));
    }
    for (name, text) in texts {
        let shown = format!("{}/{name}", shown_dir.trim_end_matches('/'));
        let stem = name.trim_end_matches(".json5").to_string();
        match text {
            Ok(text) => {
                add_to_digest(&mut digest, &name, text.as_bytes());
                match parse_as::<RawTenantFile>(&text) {
                    Ok(raw) => tenant_files.push((shown, stem, raw)),
                    Err((_, es)) => {
                        errors.extend(es.into_iter().map(|e| ConfigError { file: Some(shown.clone()), ..e }))
                    }
                }
            }
            Err(e) => errors.push(file_error(&shown, "", format!("cannot read tenant file: {e}"))),
        }
    }
    let digest = format!("sha256:{}", crate::crypto::hex(digest.finish().as_ref()));
    let (mut raw, main_errors) = match parsed {
        Ok(r) => (r, Vec::new()),
        Err((Some(r), es)) => (*r, es),
        Err((None, mut es)) => {
            es.extend(errors);
            return Err(fail(es));
        }
    };
    let origins = merge(&mut raw, tenant_files, &mut errors);
    let parsed = if main_errors.is_empty() { Ok(raw) } else { Err((Some(Box::new(raw)), main_errors)) };
    match validate_parsed(parsed, &base) {
        Ok(config) => {
            check_account_tenants(&config, &origins, &mut errors);
            if errors.is_empty() { Ok(Loaded { config, tenants_dir, files, digest }) } else { Err(fail(errors)) }
        }
        Err(es) => {
            errors.extend(es.into_iter().map(|e| origins.remap(e)));
            Err(fail(errors))
        }
    }
}

fn add_to_digest(d: &mut ring::digest::Context, name: &str, bytes: &[u8]) {
    d.update(&(name.len() as u64).to_be_bytes());
    d.update(name.as_bytes());
    d.update(&(bytes.len() as u64).to_be_bytes());
    d.update(bytes);
}

/// `*.json5` files in the folder, by name. A missing default folder is no drop-ins; a missing
/// folder the config names is an error.
fn list_tenant_files(dir: &Path, named: bool) -> Result<Vec<PathBuf>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read the tenant folder {}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read the tenant folder {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().to_string();
        // Editors' temporary and hidden files are not tenants.
        if name.starts_with('.') || !name.ends_with(".json5") {
            continue;
        }
        out.push(entry.path());
        if out.len() > MAX_TENANT_FILES {
            return Err(format!("more than {MAX_TENANT_FILES} tenant files in {}", dir.display()));
        }
    }
    out.sort();
    Ok(out)
}

/// Appends each tenant file to the main raw config, checking that a file names only its own
/// tenant. Returns where each merged entry came from.
fn merge(raw: &mut RawConfig, files: Vec<(String, String, RawTenantFile)>, errors: &mut Vec<ConfigError>) -> Origins {
    let mut o = Origins::default();
    for (file, stem, tf) in files {
        let Some(mut tenant) = tf.tenant else {
            errors.push(file_error(
                &file,
                "tenant",
                "missing key: the tenant this file holds, e.g. { id: \"acme\", name: \"Acme\" }",
            ));
            continue;
        };
        let id = tenant.id.get_or_insert_with(|| stem.clone()).clone();
        if id != stem {
            errors.push(file_error(
                &file,
                "tenant.id",
                format!(
                    "{id:?} is not the file's name: a tenant file holds one tenant and is named after it ({id}.json5)"
                ),
            ));
            continue;
        }
        let tenants = raw.tenants.get_or_insert_with(Vec::new);
        o.tenants.insert(tenants.len(), file.clone());
        tenants.push(tenant);
        let mut own_agents = Vec::new();
        for (k, mut a) in tf.agents.into_iter().flatten().enumerate() {
            match a.tenant.get_or_insert_with(|| id.clone()) {
                t if *t == id => {}
                t => {
                    errors.push(file_error(
                        &file,
                        format!("agents[{k}].tenant"),
                        format!("{t:?}: an agent in a tenant file belongs to that file's tenant ({id:?})"),
                    ));
                    continue;
                }
            }
            own_agents.extend(a.id.clone());
            let list = raw.agents.get_or_insert_with(Default::default).list.get_or_insert_with(Vec::new);
            o.agents.insert(list.len(), (file.clone(), k));
            list.push(a);
        }
        for (k, b) in tf.bindings.into_iter().flatten().enumerate() {
            if let Some(agent) = &b.agent_id
                && !own_agents.contains(agent)
            {
                errors.push(file_error(
                    &file,
                    format!("bindings[{k}].agentId"),
                    format!("{agent:?} is not an agent of this file: a tenant file binds only its own agents"),
                ));
                continue;
            }
            let list = raw.bindings.get_or_insert_with(Vec::new);
            o.bindings.insert(list.len(), (file.clone(), k));
            list.push(b);
        }
        for (channel, ch) in tf.channels.into_iter().flatten() {
            let path = format!("channels.{channel}");
            let Some(block) = raw.channels.get_or_insert_with(Default::default).block_mut(&channel) else {
                errors.push(file_error(&file, &path, format!("unknown chat channel {channel:?}")));
                continue;
            };
            let main_has_block = block.is_some();
            let block = block.get_or_insert_with(RawChannel::default);
            if main_has_block && block.accounts.as_ref().is_none_or(|a| a.is_empty()) {
                errors.push(file_error(
                    &file,
                    &path,
                    format!(
                        "the main file's channels.{channel} has no accounts (its bot is the implicit default account), so accounts cannot be added to it: list the main bot under channels.{channel}.accounts"
                    ),
                ));
                continue;
            }
            for (acc, settings) in ch.accounts.into_iter().flatten() {
                let key = format!("{path}.accounts.{acc}");
                let accounts = block.accounts.get_or_insert_with(BTreeMap::new);
                if accounts.contains_key(&acc) {
                    let other = o.accounts.get(&key).map_or("the main file".to_string(), Clone::clone);
                    errors.push(file_error(&file, &key, format!("account {acc:?} is also defined in {other}")));
                    continue;
                }
                accounts.insert(acc.clone(), settings);
                o.account_tenants.push((channel.clone(), acc, id.clone()));
                o.accounts.insert(key, file.clone());
            }
        }
    }
    o
}

/// An account defined in a tenant file serves that tenant only.
fn check_account_tenants(config: &Config, o: &Origins, errors: &mut Vec<ConfigError>) {
    for (channel, acc, tenant) in &o.account_tenants {
        let bound = config.channels.account(channel, acc).and_then(|a| a.tenant.as_ref());
        if let Some(bound) = bound.filter(|b| b.as_str() != tenant.as_str()) {
            let key = format!("channels.{channel}.accounts.{acc}");
            let file = o.accounts.get(&key).cloned().unwrap_or_default();
            errors.push(file_error(
                &file,
                key,
                format!(
                    "this account is bound to tenant {:?}; an account in a tenant file serves only that file's tenant",
                    bound.as_str()
                ),
            ));
        }
    }
}

impl Origins {
    /// Moves an error on a merged entry to its file and the key path inside it.
    fn remap(&self, e: ConfigError) -> ConfigError {
        let indexed = |prefix: &str| -> Option<(usize, String)> {
            let rest = e.path.strip_prefix(prefix)?.strip_prefix('[')?;
            let (n, tail) = rest.split_once(']')?;
            Some((n.parse().ok()?, tail.to_string()))
        };
        if let Some((i, tail)) = indexed("tenants")
            && let Some(file) = self.tenants.get(&i)
        {
            return ConfigError { file: Some(file.clone()), path: format!("tenant{tail}"), ..e };
        }
        if let Some((i, tail)) = indexed("agents.list")
            && let Some((file, k)) = self.agents.get(&i)
        {
            return ConfigError { file: Some(file.clone()), path: format!("agents[{k}]{tail}"), ..e };
        }
        if let Some((i, tail)) = indexed("bindings")
            && let Some((file, k)) = self.bindings.get(&i)
        {
            return ConfigError { file: Some(file.clone()), path: format!("bindings[{k}]{tail}"), ..e };
        }
        let account = self.accounts.iter().find(|(key, _)| {
            e.path == **key || e.path.starts_with(&format!("{key}.")) || e.path.starts_with(&format!("{key}["))
        });
        if let Some((_, file)) = account {
            return ConfigError { file: Some(file.clone()), ..e };
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(main: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulkhead.json5");
        std::fs::write(&path, main).unwrap();
        std::fs::create_dir_all(dir.path().join("tenants.d")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join("tenants.d").join(name), text).unwrap();
        }
        (dir, path)
    }

    const MAIN: &str = r#"{ store: { mode: "memory" }, models: { providers: { demo: { api: "scripted" } } },
        agents: { defaults: { model: "demo/scripted" }, list: [ { id: "main-bot", tenant: "main" } ] },
        tenants: [ { id: "main" } ],
        channels: { telegram: { accounts: { mainbot: { token: { env: "T0" } } } } },
        bindings: [ { agentId: "main-bot", match: { channel: "telegram", accountId: "mainbot" } } ] }"#;

    fn errors(main: &str, files: &[(&str, &str)]) -> Vec<String> {
        let (_dir, path) = site(main, files);
        load(&path).map(|_| Vec::new()).unwrap_or_else(|e| e.errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_tenant_file_brings_its_tenant_agents_bindings_and_accounts() {
        let acme = r#"{ tenant: { name: "Acme" }, agents: [ { id: "acme-bot" } ],
            bindings: [ { agentId: "acme-bot", match: { channel: "telegram", accountId: "acmebot" } } ],
            channels: { telegram: { accounts: { acmebot: { token: { env: "T1" } } } } } }"#;
        let (dir, path) = site(MAIN, &[("acme.json5", acme), (".acme.json5.swp", "garbage"), ("notes.txt", "x")]);
        let loaded = load(&path).unwrap_or_else(|e| panic!("{e}"));
        let c = &loaded.config;
        let acme_id = crate::ids::TenantId::parse("acme").unwrap();
        assert_eq!(c.tenants[&acme_id].name, "Acme");
        let agent = c.agent(&crate::ids::AgentId::parse("acme-bot").unwrap()).unwrap();
        assert_eq!(agent.tenant, acme_id, "an agent's tenant defaults to its file's");
        let acc = c.channels.account("telegram", "acmebot").unwrap();
        assert_eq!(acc.tenant.as_ref(), Some(&acme_id));
        assert_eq!(loaded.files.len(), 2, "hidden and non-json5 files are not tenants");
        // The digest covers every file: a change to the tenant file changes it.
        std::fs::write(dir.path().join("tenants.d/acme.json5"), acme.replace("Acme", "Acme Corp")).unwrap();
        assert_ne!(load(&path).unwrap().digest, loaded.digest);
    }

    #[test]
    fn errors_name_the_file_and_the_key_path_inside_it() {
        let bad = r#"{ tenant: { apiTokens: [ { env: "X" } ] }, agents: [ { id: "g-bot", tools: { allow: ["exce"] } } ], colour: 1 }"#;
        let e = errors(MAIN, &[("gamma.json5", bad)]);
        assert!(e.iter().any(|e| e.starts_with("tenants.d/gamma.json5: colour")), "{e:?}");
        let bad = r#"{ tenant: {}, agents: [ { id: "g-bot", tools: { allow: ["exce"] } } ] }"#;
        let e = errors(MAIN, &[("gamma.json5", bad)]);
        assert!(e.iter().any(|e| e.starts_with("tenants.d/gamma.json5: agents[0].tools.allow[0]")), "{e:?}");
        let e = errors(MAIN, &[("gamma.json5", "{ tenant: { id: \"gamma\" }, agents: [ { id: \"main-bot\" } ] }")]);
        assert!(e.iter().any(|e| e.starts_with("tenants.d/gamma.json5: agents[0].id")), "a duplicate agent id: {e:?}");
        let e = errors(MAIN, &[("gamma.json5", "{ tenant: ")]);
        assert!(e.iter().any(|e| e.starts_with("tenants.d/gamma.json5: (root) (line 1")), "{e:?}");
    }

    #[test]
    fn a_tenant_file_cannot_reach_into_another_tenant() {
        let cases = [
            (r#"{ tenant: { id: "other" } }"#, "tenant.id"),
            (r#"{ agents: [ { id: "x" } ] }"#, "tenant: missing key"),
            (r#"{ tenant: {}, agents: [ { id: "x", tenant: "main" } ] }"#, "agents[0].tenant"),
            (
                r#"{ tenant: {}, agents: [ { id: "x" } ], bindings: [ { agentId: "main-bot", match: { channel: "telegram" } } ] }"#,
                "bindings[0].agentId",
            ),
            (
                r#"{ tenant: {}, agents: [ { id: "x" } ], channels: { telegram: { accounts: { mainbot: { token: { env: "T2" } } } } } }"#,
                "channels.telegram.accounts.mainbot: account \"mainbot\" is also defined in the main file",
            ),
            (
                r#"{ tenant: {}, agents: [ { id: "x" } ], channels: { telegram: { accounts: { stolen: { token: { env: "T3" } } } } } }"#,
                "",
            ),
            (r#"{ tenant: {}, channels: { pigeon: { accounts: {} } } }"#, "unknown chat channel"),
        ];
        for (text, want) in cases {
            let e = errors(MAIN, &[("gamma.json5", text)]);
            if want.is_empty() {
                assert!(e.is_empty(), "{text}: {e:?}");
                continue;
            }
            assert!(
                e.iter().any(|e| e.starts_with("tenants.d/gamma.json5: ") && e.contains(want)),
                "{text}: {want} not in {e:?}"
            );
        }
        // An account of gamma's file bound (by the main file) to another tenant's agent.
        let main = MAIN.replace(
            "bindings: [",
            r#"bindings: [ { agentId: "main-bot", match: { channel: "telegram", accountId: "stolen" } },"#,
        );
        let text = r#"{ tenant: {}, agents: [ { id: "x" } ], channels: { telegram: { accounts: { stolen: { token: { env: "T3" } } } } } }"#;
        let e = errors(&main, &[("gamma.json5", text)]);
        assert!(
            e.iter().any(|e| e.contains("tenants.d/gamma.json5") && e.contains("bound to tenant \"main\"")),
            "{e:?}"
        );
        // The main file's single-bot block cannot silently become account defaults.
        let single = r#"{ store: { mode: "memory" }, tenants: [ { id: "main" } ], agents: { list: [ { id: "m", tenant: "main" } ] },
            channels: { telegram: { token: { env: "T0" } } } }"#;
        let e = errors(single, &[("gamma.json5", text)]);
        assert!(e.iter().any(|e| e.contains("no accounts")), "{e:?}");
    }

    #[test]
    fn a_missing_default_folder_is_no_tenants_but_a_named_one_must_exist() {
        let (dir, path) = site(MAIN, &[]);
        std::fs::remove_dir(dir.path().join("tenants.d")).unwrap();
        assert!(load(&path).is_ok());
        std::fs::write(&path, MAIN.replacen('{', "{ tenantsDir: \"clients\",", 1)).unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.errors.iter().any(|e| e.path == "tenantsDir"), "{e}");
    }
}

//! Command-line subcommands, one module each. `main.rs` only parses arguments and calls these.
//! Every function returns the process exit code: 0 ok, 1 runtime failure, 2 invalid input/config.

/// Prints to stdout like `print!`; when the reader has gone away (`bulkhead audit show | head -1`)
/// the command ends quietly (exit 1: its output was not all read) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` through `out!`.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod audit;
pub mod channels;
pub mod config_check;
pub mod doctor;
pub mod keys;
pub mod onboard;
pub mod pairing;
pub mod policy;
pub mod serve;
pub mod tenant;
pub mod usage;

use std::path::{Path, PathBuf};

use crate::config::{self, Config, LoadError};

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_INVALID: i32 = 2;

/// Which config a command reads: `--config`/`$BULKHEAD_CONFIG`, else `config/bulkhead.json5`,
/// else (for `serve` only) the embedded default.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// True when the path was given explicitly (flag or environment): then it must exist.
    pub explicit: bool,
}

impl ConfigSource {
    pub fn new(flag: Option<PathBuf>) -> Self {
        match flag {
            Some(path) => Self { path, explicit: true },
            None => {
                let explicit = std::env::var_os("BULKHEAD_CONFIG").is_some();
                Self { path: config::default_path(), explicit }
            }
        }
    }

    /// Loads the config; falls back to the embedded default when allowed and no file exists.
    pub fn load(&self, allow_embedded: bool) -> Result<Config, LoadError> {
        if !self.explicit && allow_embedded && !self.path.exists() {
            let base = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            return config::load_str(config::EMBEDDED_DEFAULT, base)
                .map_err(|errors| LoadError { source: "embedded default config".into(), errors });
        }
        config::load_file(&self.path)
    }

    /// `load`, with where the config came from for the application root (reload reads the
    /// file and its drop-ins again; the embedded default cannot be reloaded).
    pub fn load_for_app(&self, allow_embedded: bool) -> Result<(Config, crate::app::Source), LoadError> {
        if !self.explicit && allow_embedded && !self.path.exists() {
            let digest = ring::digest::digest(&ring::digest::SHA256, config::EMBEDDED_DEFAULT.as_bytes());
            let source = crate::app::Source {
                digest: format!("sha256:{}", crate::crypto::hex(digest.as_ref())),
                ..Default::default()
            };
            return self.load(true).map(|c| (c, source));
        }
        let loaded = config::load(&self.path)?;
        let source = crate::app::Source::file(&self.path, &loaded);
        Ok((loaded.config, source))
    }
}

/// Parses a tenant id given on the command line and loads the config (no embedded fallback);
/// reports either problem on stderr.
pub(crate) fn load_with_tenant(source: &ConfigSource, id: &str) -> Option<(Config, crate::ids::TenantId)> {
    let Ok(tenant) = crate::ids::TenantId::parse(id) else {
        eprintln!("error: invalid tenant id {id:?}");
        return None;
    };
    match source.load(false) {
        Ok(c) => Some((c, tenant)),
        Err(e) => {
            report_load_error(&e);
            None
        }
    }
}

/// Where `out!` and `outln!` write. Any write error on stdout ends the process: a closed pipe
/// quietly, anything else with one line on stderr.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: cannot write to stdout: {e}");
        }
        std::process::exit(EXIT_FAILURE);
    }
}

/// Prints a load error for a person, on stderr.
pub fn report_load_error(e: &LoadError) {
    eprint!("{e}");
}

/// Opens the encrypted store of a config for a command; prints the error and returns the exit
/// code on failure (2 for key and permission problems the operator must fix, 1 otherwise).
pub fn open_store(config: &Config) -> Result<crate::store::EncryptedStore, i32> {
    use crate::store::StoreOpenError as E;
    crate::store::EncryptedStore::open(config).map_err(|e| {
        eprintln!("error: {e}");
        match e {
            E::Locked { .. } | E::Io { .. } => EXIT_FAILURE,
            _ => EXIT_INVALID,
        }
    })
}

/// `open_store` for commands that work on data already stored (export, delete, key rotation):
/// a store directory that does not exist is said to be missing, never created.
pub fn open_existing_store(config: &Config) -> Result<crate::store::EncryptedStore, i32> {
    let root = crate::store::store_root(config);
    if !root.is_dir() {
        eprintln!("error: no store at {}: the directory does not exist (check stateDir in the config)", root.display());
        return Err(EXIT_INVALID);
    }
    open_store(config)
}

/// The durable store of a config for export and delete: the file store (which must exist), or
/// the shared database, with the runtime its calls run on.
pub fn open_durable(config: &Config) -> Result<(tokio::runtime::Runtime, crate::store::Durable), i32> {
    let rt = crate::channels::adapter::command_runtime().map_err(|e| {
        eprintln!("error: {e}");
        EXIT_FAILURE
    })?;
    if matches!(config.store.backend, crate::config::StoreBackend::File) {
        return open_existing_store(config).map(|s| (rt, crate::store::Durable::File(s)));
    }
    match rt.block_on(crate::store::Durable::open(config)) {
        Ok(d) => Ok((rt, d)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(EXIT_FAILURE)
        }
    }
}

/// Asks on the terminal for `expected` to be typed; refuses without a terminal.
pub fn confirm(prompt: &str, expected: &str) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        eprintln!("error: refusing a destructive command without a terminal to confirm on; pass --yes");
        return false;
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() || line.trim() != expected {
        eprintln!("error: not confirmed; nothing was changed");
        return false;
    }
    true
}

/// Opens the audit log for a CLI command that records what it does; prints why not and returns
/// the exit code when it cannot (the command then changes nothing).
pub(crate) fn open_audit(config: &crate::config::Config) -> Result<crate::audit::LogWriter, i32> {
    match crate::audit::LogWriter::open_config(config) {
        Ok(Some(w)) => Ok(w),
        Ok(None) => {
            eprintln!("error: store.masterKey is not configured, so this host keeps no audit log");
            Err(EXIT_INVALID)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(EXIT_FAILURE)
        }
    }
}

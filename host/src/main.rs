//! The `bulkhead` binary: parses arguments and calls the library (see `bulkhead::cli`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use bulkhead::cli::{self, ConfigSource};
use bulkhead::config::LogFormat;
use clap::{Parser, Subcommand, ValueEnum};

/// Multi-tenant agent gateway. Exit codes: 0 ok, 1 runtime failure, 2 invalid input or config.
#[derive(Parser)]
#[command(name = "bulkhead", version)]
struct Args {
    /// Config file [default: $BULKHEAD_CONFIG, else config/bulkhead.json5]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format (overrides the config's logging.format and $BULKHEAD_LOG_FORMAT)
    #[arg(long, global = true, value_enum, env = "BULKHEAD_LOG_FORMAT")]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the gateway (SIGHUP, `POST /admin/reload` or a changed config file reloads it)
    Serve {
        /// Do not watch the config file and its drop-in tenant folder for changes (reload on
        /// SIGHUP or `POST /admin/reload` only).
        #[arg(long)]
        no_watch: bool,
    },
    /// Work with config files
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Tenant data lifecycle
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Check the environment: config, secrets, state directory, backends
    Doctor,
    /// Master key and tenant key rotation
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Explain, test, diff, sign and verify tool policies
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
    /// Usage per tenant and agent, for billing (runs, tokens, tool calls, sandbox time)
    Usage {
        /// Only this tenant
        #[arg(long, value_name = "ID")]
        tenant: Option<String>,
        /// Only usage on or after this UTC day (YYYY-MM-DD)
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Verify and read the tamper-evident audit logs
    #[command(subcommand)]
    Audit(cli::audit::AuditCommand),
    /// Chat channel accounts: link one to its platform
    #[command(subcommand)]
    Channels(ChannelsCommand),
    /// Approve or deny chat pairing requests (through the running gateway)
    Pairing {
        /// Gateway URL [default: http://<gateway.bind>]
        #[arg(long, global = true, value_name = "URL")]
        url: Option<String>,
        #[command(subcommand)]
        action: PairingCommand,
    },
}

#[derive(Subcommand)]
enum ChannelsCommand {
    /// Link an account to its platform (Signal: scan the QR code it shows with the account's phone)
    Login {
        /// The channel (`signal`, ...)
        #[arg(long, value_name = "NAME")]
        channel: String,
        /// The account id under channels.<channel>.accounts
        #[arg(long, value_name = "ID")]
        account: String,
    },
}

#[derive(Subcommand)]
enum PairingCommand {
    /// Pending pairing requests
    List {
        #[arg(long)]
        json: bool,
    },
    /// Approve a pairing code: the sender may then talk to the agent
    Approve { code: String },
    /// Deny (forget) a pairing code
    Deny { code: String },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new master key file (mode 0600); refuses to overwrite
    Init {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Re-encrypt a tenant's stored data to a new key (stop the gateway first)
    Rotate {
        #[arg(long, value_name = "ID")]
        tenant: String,
    },
    /// Re-wrap every tenant key to a new master key made with `keys init` (stop the gateway first)
    RotateMaster {
        #[arg(long, value_name = "FILE")]
        new_key: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config; every error at once, each with its key path
    Check {
        /// Config file (default: --config, $BULKHEAD_CONFIG, config/bulkhead.json5)
        path: Option<PathBuf>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum TenantCommand {
    /// List tenants and their agents
    List {
        #[arg(long)]
        json: bool,
    },
    /// Write a tenant's decrypted data (JSON Lines) to a file
    Export {
        id: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Onboard a tenant: template, bot credentials checked live, drop-in file, API token, reload
    Add(cli::onboard::AddArgs),
    /// Stop serving a drop-in tenant (its file is moved aside, its data stays) and reload
    Remove {
        id: String,
        /// The running gateway [default: http://<gateway.bind>]
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Crypto-shred a tenant's stored data (stop the gateway first)
    Delete {
        id: String,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let log_format = args.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    let code = match args.command {
        Command::Serve { no_watch } => cli::serve::run(&ConfigSource::new(args.config), log_format, !no_watch),
        Command::Config(ConfigCommand::Check { path, json }) => {
            cli::config_check::run(&ConfigSource::new(path.or(args.config)), json)
        }
        Command::Tenant(TenantCommand::List { json }) => cli::tenant::list(&ConfigSource::new(args.config), json),
        Command::Tenant(TenantCommand::Export { id, out }) => {
            cli::tenant::export(&ConfigSource::new(args.config), &id, &out)
        }
        Command::Tenant(TenantCommand::Add(add)) => cli::onboard::add(&ConfigSource::new(args.config), add),
        Command::Tenant(TenantCommand::Remove { id, url }) => {
            cli::onboard::remove(&ConfigSource::new(args.config), &id, url.as_deref())
        }
        Command::Tenant(TenantCommand::Delete { id, yes }) => {
            cli::tenant::delete(&ConfigSource::new(args.config), &id, yes)
        }
        Command::Keys(KeysCommand::Init { out }) => cli::keys::init(&out),
        Command::Keys(KeysCommand::Rotate { tenant }) => {
            cli::keys::rotate_tenant(&ConfigSource::new(args.config), &tenant)
        }
        Command::Keys(KeysCommand::RotateMaster { new_key }) => {
            cli::keys::rotate_master(&ConfigSource::new(args.config), &new_key)
        }
        Command::Doctor => cli::doctor::run(&ConfigSource::new(args.config)),
        Command::Channels(ChannelsCommand::Login { channel, account }) => {
            cli::channels::login(&ConfigSource::new(args.config), &channel, &account)
        }
        Command::Policy(cmd) => cli::policy::run(cmd, &ConfigSource::new(args.config).path),
        Command::Pairing { url, action } => {
            let action = match action {
                PairingCommand::List { json } => cli::pairing::Action::List { json },
                PairingCommand::Approve { code } => cli::pairing::Action::Approve(code),
                PairingCommand::Deny { code } => cli::pairing::Action::Deny(code),
            };
            cli::pairing::run(&ConfigSource::new(args.config), url.as_deref(), action)
        }
        Command::Usage { tenant, since, json } => {
            cli::usage::run(&ConfigSource::new(args.config), tenant.as_deref(), since.as_deref(), json)
        }
        Command::Audit(cmd) => cli::audit::run(cmd, &ConfigSource::new(args.config)),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

//! `bulkhead tenant add` (onboarding in one command) and `bulkhead tenant remove` (stop serving,
//! keep the data).
//!
//! `add` asks for what the flags do not give when it runs on a terminal (and, with `--yes` or
//! without a terminal, lists every missing answer at once and exits 2). Nothing is written until
//! everything passed: the tenant file is rendered from a template (`config/templates/`), checked
//! together with the running config by the same load and start-up checks as `serve` (so no
//! JSON5 error, binding conflict or shared bot token reaches the gateway), and the bot's
//! credentials are checked live through its channel adapter (`doctor` for that account: token,
//! intents, privacy mode...). Then the tenant's API token is created (printed once, kept in a 0600
//! file the tenant file references), the file is written atomically into the drop-in folder, and
//! the running gateway is asked to reload (`POST /admin/reload`), so the tenant serves with no
//! restart. Secrets are always references (`{ env }` or `{ file }`), never inline.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::channels::adapter::{Level, adapter};
use crate::config::Config;

/// A tenant template: its file, the suffix of its agent's id, and the policy file it points at.
struct Template {
    name: &'static str,
    what: &'static str,
    text: &'static str,
    agent_suffix: &'static str,
    policy: (&'static str, &'static str),
    /// The tools its agent gets, as `policy explain` lists them (checked by a test).
    promises: &'static [&'static str],
}

const TEMPLATES: &[Template] = &[
    Template {
        name: "support",
        what: "a support bot with no tools",
        text: include_str!("../../../config/templates/support.json5"),
        agent_suffix: "support",
        policy: ("policies/support.json5", include_str!("../../../policies/support.json5")),
        promises: &[],
    },
    Template {
        name: "coder",
        what: "a coder with exec and files in its own Docker sandbox",
        text: include_str!("../../../config/templates/coder.json5"),
        agent_suffix: "coder",
        policy: ("policies/coding.json5", include_str!("../../../policies/coding.json5")),
        promises: &["exec", "read", "write", "edit", "list"],
    },
    Template {
        name: "analyst",
        what: "a read-only analyst (read and list, read-only workspace)",
        text: include_str!("../../../config/templates/analyst.json5"),
        agent_suffix: "analyst",
        policy: ("policies/untrusted.json5", include_str!("../../../policies/untrusted.json5")),
        promises: &["read", "list"],
    },
];

/// The answers `tenant add` needs (its command-line flags); `None` ones are asked on a terminal.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct AddArgs {
    /// The tenant id (asked on a terminal when missing)
    #[arg(long)]
    pub id: Option<String>,
    /// Display name users see [default: the id]
    #[arg(long)]
    pub name: Option<String>,
    /// support (no tools) | coder (exec in its own Docker sandbox) | analyst (read-only)
    #[arg(long)]
    pub template: Option<String>,
    /// Chat channel of the tenant's bot (telegram, discord, ...), or none
    #[arg(long)]
    pub channel: Option<String>,
    /// The bot's account id [default: the tenant id]
    #[arg(long)]
    pub account: Option<String>,
    /// A file holding the bot token (referenced, never copied)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the bot token (the gateway needs it too)
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Slack: a file holding the app-level token (xapp-, Socket Mode)
    #[arg(long, value_name = "FILE")]
    pub app_token_file: Option<PathBuf>,
    /// Slack: an environment variable holding the app-level token
    #[arg(long, value_name = "VAR")]
    pub app_token_env: Option<String>,
    /// The platform's API base URL (proxies, self-hosted Bot API)
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// Discord: the gateway WebSocket URL
    #[arg(long, value_name = "URL")]
    pub gateway_url: Option<String>,
    /// Discord: a server (guild) id to answer in (repeatable)
    #[arg(long = "guild", value_name = "ID")]
    pub guilds: Vec<String>,
    /// pairing | allowlist | open | disabled
    #[arg(long)]
    pub dm_policy: Option<String>,
    /// A sender allowed to message the bot (repeatable; "*" with --dm-policy open)
    #[arg(long = "allow-from", value_name = "ID")]
    pub allow_from: Vec<String>,
    /// The running gateway [default: http://<gateway.bind>]
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Send one test message from the new bot to this chat (a chat, channel or user id;
    /// Telegram group ids start with "-")
    #[arg(long, value_name = "CHAT", allow_hyphen_values = true)]
    pub test_message: Option<String>,
    /// Never ask: fail with every missing answer instead
    #[arg(long)]
    pub yes: bool,
}

/// Renders a template for `id` with the channel block (empty: API only).
fn render(t: &Template, id: &str, name: &str, token_file: &str, channels: &str) -> String {
    // The JSON string's inside: the template supplies the quotes.
    let inner = |s: &str| {
        let q = serde_json::to_string(s).unwrap_or_default();
        q[1..q.len() - 1].to_string()
    };
    t.text
        .replace("{{tenant}}", &inner(id))
        .replace("{{name}}", &inner(name))
        .replace("{{token_file}}", &inner(token_file))
        .replace("{{channels}}", channels)
}

/// The bindings and channel block of the tenant's one bot account.
fn channel_block(a: &AddArgs, channel: &str, account: &str, agent: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let reference = |file: &Option<PathBuf>, env: &Option<String>| match (file, env) {
        (Some(f), _) => format!("{{ file: {} }}", q(&f.display().to_string())),
        (_, Some(e)) => format!("{{ env: {} }}", q(e)),
        _ => String::new(),
    };
    let token = reference(&a.token_file, &a.token_env);
    // Slack calls the bot token `botToken` and needs the app token for Socket Mode.
    let mut fields = if channel == "slack" {
        vec![format!("botToken: {token}"), format!("appToken: {}", reference(&a.app_token_file, &a.app_token_env))]
    } else {
        vec![format!("token: {token}")]
    };
    if let Some(u) = &a.api_url {
        fields.push(format!("apiUrl: {}", q(u)));
    }
    if let Some(u) = &a.gateway_url {
        fields.push(format!("gatewayUrl: {}", q(u)));
    }
    if let Some(p) = &a.dm_policy {
        fields.push(format!("dmPolicy: {}", q(p)));
    }
    if !a.allow_from.is_empty() {
        let list: Vec<String> = a.allow_from.iter().map(|s| q(s)).collect();
        fields.push(format!("allowFrom: [{}]", list.join(", ")));
    }
    if !a.guilds.is_empty() {
        let list: Vec<String> = a.guilds.iter().map(|g| format!("{}: {{}}", q(g))).collect();
        fields.push(format!("guilds: {{ {} }}", list.join(", ")));
    }
    format!(
        "// Its {channel} bot: this account serves this tenant only.\n  bindings: [{{ agentId: {agent}, match: {{ channel: {ch}, accountId: {acc} }} }}],\n  channels: {{ {channel}: {{ accounts: {{ {acc}: {{ {fields} }} }} }} }},",
        agent = q(agent),
        ch = q(channel),
        acc = q(account),
        fields = fields.join(", ")
    )
}

fn ask(prompt: &str, default: Option<&str>) -> Option<String> {
    let shown = default.map(|d| format!(" [{d}]")).unwrap_or_default();
    eprint!("? {prompt}{shown}: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).ok()? == 0 {
        return None;
    }
    let line = line.trim();
    if line.is_empty() { default.map(str::to_string) } else { Some(line.to_string()) }
}

/// Fills in what the flags left out, from a terminal.
fn interview(a: &mut AddArgs) {
    if a.id.is_none() {
        a.id = ask("Tenant id (lowercase letters, digits, '-')", None);
    }
    if a.name.is_none() {
        a.name = ask("Display name (what users see)", a.id.as_deref());
    }
    if a.template.is_none() {
        for t in TEMPLATES {
            let tools = if t.promises.is_empty() { "no tools".to_string() } else { t.promises.join(", ") };
            eprintln!("  {:<8} {} ({tools})", t.name, t.what);
        }
        a.template = ask("Template", Some("support"));
    }
    if a.channel.is_none() {
        let built: Vec<&str> = crate::channels::adapter::ADAPTERS.iter().map(|x| x.channel()).collect();
        a.channel = ask(&format!("Chat channel ({} or none)", built.join(", ")), Some("none"));
    }
    if a.channel.as_deref().is_some_and(|c| c != "none") && a.token_file.is_none() && a.token_env.is_none() {
        let r = ask("The bot token: a file path, or env:NAME for an environment variable", None);
        match r.as_deref().and_then(|r| r.strip_prefix("env:")) {
            Some(v) => a.token_env = Some(v.to_string()),
            None => a.token_file = r.map(PathBuf::from),
        }
    }
    if a.channel.as_deref() == Some("slack") && a.app_token_file.is_none() && a.app_token_env.is_none() {
        let r = ask("The Slack app-level token (xapp-): a file path, or env:NAME", None);
        match r.as_deref().and_then(|r| r.strip_prefix("env:")) {
            Some(v) => a.app_token_env = Some(v.to_string()),
            None => a.app_token_file = r.map(PathBuf::from),
        }
    }
    if a.channel.as_deref() == Some("discord")
        && a.guilds.is_empty()
        && let Some(g) = ask("Discord server (guild) id to answer in, or empty for direct messages only", Some(""))
    {
        a.guilds.extend(g.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
    }
}

/// Every problem with the answers, at once.
fn problems(a: &AddArgs) -> Vec<String> {
    let mut out = Vec::new();
    match &a.id {
        None => out.push("--id: missing (the tenant id)".to_string()),
        Some(id) => {
            if let Err(e) = crate::ids::TenantId::parse(id) {
                out.push(format!("--id: {e}"));
            }
        }
    }
    let template = a.template.as_deref().unwrap_or("support");
    if !TEMPLATES.iter().any(|t| t.name == template) {
        let names: Vec<&str> = TEMPLATES.iter().map(|t| t.name).collect();
        out.push(format!("--template: unknown template {template:?}: expected one of {}", names.join(", ")));
    }
    let channel = a.channel.as_deref().unwrap_or("none");
    if channel != "none" {
        if adapter(channel).is_none() {
            out.push(format!("--channel: {channel:?} has no adapter in this build"));
        }
        // A bridge account (URL, password, webhook secret) has no bot token to onboard with.
        if channel == "imessage" {
            out.push(
                "--channel: tenant add does not onboard iMessage bridges yet; add channels.imessage.accounts.<id> (url, password, webhookSecret) by hand, see README \"iMessage\"".into(),
            );
        }
        match (&a.token_file, &a.token_env) {
            (None, None) => out.push(format!(
                "--token-file or --token-env: missing (the {channel} bot's token; it is referenced, never copied into the config)"
            )),
            (Some(_), Some(_)) => out.push("--token-file and --token-env: give one".into()),
            (Some(f), None) if !f.is_file() => out.push(format!("--token-file: {} is not a readable file", f.display())),
            (None, Some(v)) if std::env::var(v).map_or(true, |x| x.is_empty()) => out.push(format!(
                "--token-env: {v} is not set here; set it for this command and for the gateway's process"
            )),
            _ => {}
        }
        if channel == "slack" {
            match (&a.app_token_file, &a.app_token_env) {
                (None, None) => out.push(
                    "--app-token-file or --app-token-env: missing (the Slack app-level token, xapp-, for Socket Mode)"
                        .into(),
                ),
                (Some(_), Some(_)) => out.push("--app-token-file and --app-token-env: give one".into()),
                (Some(f), None) if !f.is_file() => {
                    out.push(format!("--app-token-file: {} is not a readable file", f.display()))
                }
                (None, Some(v)) if std::env::var(v).map_or(true, |x| x.is_empty()) => out.push(format!(
                    "--app-token-env: {v} is not set here; set it for this command and for the gateway's process"
                )),
                _ => {}
            }
        }
        if let Some(acc) = &a.account
            && let Err(e) = crate::ids::validate_id(acc)
        {
            out.push(format!("--account: {e}"));
        }
    }
    out
}

/// Files this command created, removed again when a later step fails (nothing left behind).
#[derive(Default)]
struct Created(Vec<PathBuf>);

impl Created {
    fn undo(&mut self) {
        for p in self.0.drain(..).rev() {
            let _ = std::fs::remove_file(&p);
        }
    }
}

pub fn add(source: &ConfigSource, mut a: AddArgs) -> i32 {
    if !a.yes && std::io::stdin().is_terminal() {
        interview(&mut a);
    }
    let found = problems(&a);
    if !found.is_empty() {
        eprintln!("error: tenant add needs:");
        for p in &found {
            eprintln!("  {p}");
        }
        return EXIT_INVALID;
    }
    let id = a.id.clone().unwrap_or_default();
    let name = a.name.clone().unwrap_or_else(|| id.clone());
    let template = TEMPLATES.iter().find(|t| t.name == a.template.as_deref().unwrap_or("support")).expect("checked");
    let channel = a.channel.clone().filter(|c| c != "none");
    let account = a.account.clone().unwrap_or_else(|| id.clone());
    let agent = format!("{id}-{}", template.agent_suffix);

    let main = source.path.clone();
    let current = match crate::config::load(&main) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: tenant add writes beside a config file, and {} does not load:", main.display());
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    let base = main.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| ".".into());
    let file_name = format!("{id}.json5");
    let target = current.tenants_dir.join(&file_name);
    if current.config.tenants.keys().any(|t| t.as_str() == id) || target.exists() {
        eprintln!(
            "error: tenant {id:?} already exists ({}); tenant add never overwrites: remove it first (`bulkhead tenant remove {id}`) or pick another id",
            if target.exists() { target.display().to_string() } else { "in the main config".into() }
        );
        return EXIT_INVALID;
    }

    let mut created = Created::default();
    let code = add_checked(
        &a,
        &current.config,
        &base,
        &main,
        template,
        channel.as_deref(),
        (&id, &name, &account, &agent),
        &file_name,
        &target,
        &mut created,
    );
    if code != EXIT_OK {
        created.undo();
    }
    code
}

#[allow(clippy::too_many_arguments)]
fn add_checked(
    a: &AddArgs,
    running: &Config,
    base: &Path,
    main: &Path,
    template: &Template,
    channel: Option<&str>,
    (id, name, account, agent): (&str, &str, &str, &str),
    file_name: &str,
    target: &Path,
    created: &mut Created,
) -> i32 {
    // The policy the template points at, beside the config (kept if it is already there).
    let policy = base.join(template.policy.0);
    match std::fs::read_to_string(&policy) {
        Ok(_) => {}
        Err(_) => {
            if let Some(dir) = policy.parent()
                && let Err(e) = std::fs::create_dir_all(dir)
            {
                eprintln!("error: cannot create {}: {e}", dir.display());
                return EXIT_FAILURE;
            }
            if let Err(e) = std::fs::write(&policy, template.policy.1) {
                eprintln!("error: cannot write {}: {e}", policy.display());
                return EXIT_FAILURE;
            }
            created.0.push(policy);
        }
    }
    // The tenant's API token: random, in a 0600 file the tenant file references.
    let token = match crate::crypto::random::<32>(&ring::rand::SystemRandom::new()) {
        Ok(b) => format!("tok-{}", crate::crypto::hex(&b)),
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILURE;
        }
    };
    let token_rel = format!("secrets/{id}.api-token");
    let token_path = base.join(&token_rel);
    if let Err(e) = crate::fsutil::create_private_dir(&base.join("secrets")) {
        eprintln!("error: cannot create {}: {e}", base.join("secrets").display());
        return EXIT_FAILURE;
    }
    match crate::fsutil::create_new_private(&token_path)
        .and_then(|mut f| f.write_all(token.as_bytes()).and_then(|()| f.sync_all()))
    {
        Ok(()) => created.0.push(token_path.clone()),
        Err(e) => {
            eprintln!("error: cannot create {}: {e}", token_path.display());
            return EXIT_FAILURE;
        }
    }

    let channels = channel.map(|c| channel_block(a, c, account, agent)).unwrap_or_default();
    let text = render(template, id, name, &token_rel, &channels);
    // The same load and start-up checks as `serve`, on the running config plus this file.
    let loaded = match crate::config::load_with(main, Some((file_name, &text))) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: the new tenant file would not load; nothing was written:");
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    if let Err(errors) = crate::app::check(&loaded.config) {
        eprintln!("error: the config with the new tenant would not start; nothing was written:");
        for e in errors {
            eprintln!("  {e}");
        }
        return EXIT_INVALID;
    }
    // The bot's credentials, live, before anything reaches the gateway.
    if let Some(ch) = channel {
        let checks = adapter(ch)
            .map(|ad| crate::channels::adapter::doctor(ad, &loaded.config, Some(account)))
            .unwrap_or_default();
        let mut stop = false;
        for c in &checks {
            let tag = match c.level {
                Level::Ok => "ok   ",
                Level::Note => "note ",
                Level::Warn => "warn ",
                Level::Fail => "FAIL ",
            };
            eprintln!("{tag} {}", c.text);
            stop |= matches!(c.level, Level::Warn | Level::Fail);
        }
        if stop {
            eprintln!("error: the {ch} bot is not ready (see above); nothing was written");
            return EXIT_FAILURE;
        }
    }
    if target.exists() {
        eprintln!("error: {} appeared meanwhile; nothing was overwritten", target.display());
        return EXIT_INVALID;
    }
    if let Err(e) = std::fs::create_dir_all(target.parent().unwrap_or(Path::new("."))) {
        eprintln!("error: cannot create the tenant folder: {e}");
        return EXIT_FAILURE;
    }
    if let Err(e) = crate::fsutil::write_atomic(target, text.as_bytes()) {
        eprintln!("error: cannot write {}: {e}", target.display());
        return EXIT_FAILURE;
    }
    created.0.push(target.to_path_buf());

    let applied = reload(running, a.url.as_deref());
    match &applied {
        Reloaded::Applied => {}
        Reloaded::NotRunning(base_url) => eprintln!(
            "note: no gateway answered at {base_url}; the tenant is applied when it starts (a running gateway with the file watcher picks it up by itself)"
        ),
        Reloaded::Refused(errors) => {
            eprintln!("error: the running gateway refused the reload; the tenant file was taken back:");
            for e in errors {
                eprintln!("  {e}");
            }
            return EXIT_FAILURE;
        }
    }
    created.0.clear();
    if let (Some(ch), Some(chat)) = (channel, a.test_message.as_deref()) {
        let text = format!("This is {name}: this chat is connected.");
        match adapter(ch).map(|ad| ad.send_test(&loaded.config, account, chat, &text)) {
            Some(Ok(())) => eprintln!("ok    test message sent to {ch} chat {chat}"),
            Some(Err(e)) => eprintln!("warn  the test message to {ch} chat {chat} was not sent: {e}"),
            None => {}
        }
    }
    outln!("Tenant {id:?} added ({}), agent {agent:?}.", template.name);
    outln!("  file:      {}", target.display());
    outln!("  API token: {token}");
    outln!("             (shown once; kept in {} for the gateway)", token_path.display());
    outln!("Still to do:");
    match channel {
        Some("telegram") => {
            outln!(
                "  - the client adds the bot to its groups (groups answer only when listed under groups and the bot is @mentioned)"
            );
            outln!(
                "  - people who message the bot get a pairing code: approve it with `bulkhead pairing approve CODE`"
            );
        }
        Some("discord") => {
            outln!("  - a server admin invites the bot with the link `bulkhead doctor` prints");
            outln!(
                "  - in servers it answers @mentions in the guilds given; direct messages get a pairing code: `bulkhead pairing approve CODE`"
            );
        }
        Some("slack") => {
            outln!(
                "  - in the Slack app: Socket Mode on, event subscriptions app_mention and message.im, then add the app to its channels"
            );
            outln!("  - direct messages from strangers get a pairing code: `bulkhead pairing approve CODE`");
        }
        Some(other) => outln!("  - finish the {other} app's own settings (see README)"),
        None => outln!("  - give the API token to the client: POST /v1/chat/completions with model {agent:?}"),
    }
    EXIT_OK
}

enum Reloaded {
    Applied,
    NotRunning(String),
    Refused(Vec<String>),
}

fn reload(config: &Config, url: Option<&str>) -> Reloaded {
    let base = super::pairing::base_url(config, url);
    let Ok(token) = super::pairing::operator_token(config) else { return Reloaded::NotRunning(base) };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return Reloaded::NotRunning(base);
    };
    rt.block_on(async {
        let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(30)).build() else {
            return Reloaded::NotRunning(base.clone());
        };
        let resp = match http.post(format!("{base}/admin/reload")).bearer_auth(&token).send().await {
            Ok(r) => r,
            Err(_) => return Reloaded::NotRunning(base.clone()),
        };
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        match status {
            200 => Reloaded::Applied,
            _ => Reloaded::Refused(
                body["errors"]
                    .as_array()
                    .map(|e| e.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                    .filter(|v: &Vec<String>| !v.is_empty())
                    .unwrap_or_else(|| vec![format!("the gateway answered {status}")]),
            ),
        }
    })
}

/// `tenant remove ID`: moves the tenant's drop-in file aside (`tenants.d/.removed/`) and reloads;
/// its data stays (deleting it is `tenant delete`).
pub fn remove(source: &ConfigSource, id: &str, url: Option<&str>) -> i32 {
    let current = match crate::config::load(&source.path) {
        Ok(l) => l,
        Err(e) => {
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    let file = current.tenants_dir.join(format!("{id}.json5"));
    if !file.is_file() {
        let in_main = current.config.tenants.keys().any(|t| t.as_str() == id);
        eprintln!(
            "error: {}",
            if in_main {
                format!("tenant {id:?} is in the main config file, not a drop-in file: remove it there and reload")
            } else {
                format!("no tenant file {}", file.display())
            }
        );
        return EXIT_INVALID;
    }
    let aside = current.tenants_dir.join(".removed");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let moved = aside.join(format!("{id}.json5.{stamp}"));
    if let Err(e) = std::fs::create_dir_all(&aside).and_then(|()| std::fs::rename(&file, &moved)) {
        eprintln!("error: cannot move {} aside: {e}", file.display());
        return EXIT_FAILURE;
    }
    match reload(&current.config, url) {
        Reloaded::Applied => outln!(
            "Tenant {id:?} no longer served; its file is kept as {}, its data stays (`bulkhead tenant delete {id}` shreds it).",
            moved.display()
        ),
        Reloaded::NotRunning(base) => outln!(
            "Tenant {id:?} removed from the config (file kept as {}); no gateway answered at {base}, so it applies at the next start or reload.",
            moved.display()
        ),
        Reloaded::Refused(errors) => {
            let _ = std::fs::rename(&moved, &file);
            eprintln!("error: the running gateway refused the reload; the tenant file was put back:");
            for e in errors {
                eprintln!("  {e}");
            }
            return EXIT_FAILURE;
        }
    }
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_checks_clean_and_its_policy_tests_pass() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("bulkhead.json5");
        std::fs::write(&main, "{ store: { mode: 'memory' }, models: { providers: { demo: { api: 'scripted' } } }, agents: { defaults: { model: 'demo/scripted' } } }").unwrap();
        std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets/acme.api-token"), "tok-0123456789abcdef0123456789abcdef").unwrap();
        for t in TEMPLATES {
            let policy = dir.path().join(t.policy.0);
            std::fs::create_dir_all(policy.parent().unwrap()).unwrap();
            std::fs::write(&policy, t.policy.1).unwrap();
            let a = AddArgs { token_env: Some("ACME_BOT".into()), ..Default::default() };
            let text = render(
                t,
                "acme",
                "Acme \"Support\"",
                "secrets/acme.api-token",
                &channel_block(&a, "telegram", "acme", &format!("acme-{}", t.agent_suffix)),
            );
            let loaded = crate::config::load_with(&main, Some(("acme.json5", &text)))
                .unwrap_or_else(|e| panic!("{}: {e}\n{text}", t.name));
            let agent =
                loaded.config.agents.iter().find(|x| x.id.as_str() == format!("acme-{}", t.agent_suffix)).unwrap();
            assert_eq!(agent.tenant.as_str(), "acme");
            assert_eq!(
                loaded.config.channels.account("telegram", "acme").unwrap().tenant.as_ref().map(|x| x.as_str()),
                Some("acme")
            );
            // The policy's own tests pass (the engine refuses a policy whose cases fail), and the
            // agent gets exactly the tools the template promises (what `policy explain` lists).
            let engine =
                crate::policy::PolicyEngine::load(&loaded.config).unwrap_or_else(|e| panic!("{}: {e:?}", t.name));
            let mut got: Vec<&str> = engine.agent(&agent.id).unwrap().allowed().iter().map(|x| x.name()).collect();
            let mut want = t.promises.to_vec();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "template {}", t.name);
        }
    }

    #[test]
    fn missing_answers_are_all_named() {
        let p = problems(&AddArgs {
            channel: Some("telegram".into()),
            template: Some("nope".into()),
            ..Default::default()
        });
        assert!(p.iter().any(|x| x.starts_with("--id")), "{p:?}");
        assert!(p.iter().any(|x| x.starts_with("--template")), "{p:?}");
        assert!(p.iter().any(|x| x.starts_with("--token-file or --token-env")), "{p:?}");
        assert!(
            problems(&AddArgs { id: Some("Bad Id".into()), ..Default::default() })
                .iter()
                .any(|x| x.starts_with("--id:"))
        );
    }
}

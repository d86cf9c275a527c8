//! `bulkhead policy ...`: explain, test, diff, sign and verify tool policies, for auditors.
//!
//! Exit codes: 0 ok, 1 a check failed (test case, signature), 2 invalid input (config, policy
//! file, key, arguments).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{Value, json};

use crate::config::{self, Config, SandboxMode};
use crate::ids::AgentId;
use crate::policy::engine::AgentPolicy;
use crate::policy::file::{self, workspace_access_name};
use crate::policy::signature::{self, SignatureError};
use crate::policy::{PolicyEngine, Verdict};
use crate::sandbox::ToolLimits;
use crate::tools::{PolicyName, Tool, parse_policy_name};

use super::{EXIT_FAILURE, EXIT_INVALID, EXIT_OK};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show an agent's effective tools and policy digest; with --tool, the decision for that
    /// exact name and the layer, file and rule that made it.
    Explain {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        tool: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run the test cases embedded in policy files (default: every *.json5 in the policies/
    /// folder next to the config, or in its parent).
    Test { files: Vec<PathBuf> },
    /// Show, per agent, which tools a config change grants or removes.
    Diff { old_config: PathBuf, new_config: PathBuf },
    /// Sign a policy file with an Ed25519 key file; writes FILE.sig next to it.
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Verify FILE.sig against trusted public keys (default: the config's policies.trustedKeys).
    Verify {
        file: PathBuf,
        /// `ed25519:<64 hex digits>`, or a file holding one; repeatable.
        #[arg(long = "pubkey")]
        pubkeys: Vec<String>,
    },
    /// Create a signing key: writes KEYFILE (private, mode 0600) and KEYFILE.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a policy command, printing to stdout/stderr; returns the process exit code.
pub fn run(cmd: PolicyCommand, config_path: &Path) -> i32 {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    run_to(cmd, config_path, &mut out, &mut err)
}

/// `run` with the output streams given (for tests).
pub fn run_to(cmd: PolicyCommand, config_path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let mut o = Out { out, err };
    match cmd {
        PolicyCommand::Explain { agent, tool, json } => explain(&mut o, config_path, &agent, tool.as_deref(), json),
        PolicyCommand::Test { files } => test(&mut o, config_path, files),
        PolicyCommand::Diff { old_config, new_config } => diff(&mut o, &old_config, &new_config),
        PolicyCommand::Sign { file, key } => sign(&mut o, &file, &key),
        PolicyCommand::Verify { file, pubkeys } => verify(&mut o, config_path, &file, &pubkeys),
        PolicyCommand::Keygen { out } => keygen(&mut o, &out),
    }
}

struct Out<'a> {
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
}

impl Out<'_> {
    fn line(&mut self, s: impl AsRef<str>) {
        let _ = writeln!(self.out, "{}", s.as_ref());
    }
    fn error(&mut self, s: impl AsRef<str>) {
        let _ = writeln!(self.err, "error: {}", s.as_ref());
    }
}

fn load_config(o: &mut Out, path: &Path) -> Result<Config, i32> {
    config::load_file(path).map_err(|e| {
        let _ = write!(o.err, "error: invalid config {e}");
        EXIT_INVALID
    })
}

fn load_engine(o: &mut Out, path: &Path) -> Result<(Config, PolicyEngine), i32> {
    let cfg = load_config(o, path)?;
    // The files' own cases are what `policy test` reports, so they do not stop the load here.
    match PolicyEngine::load_files(&cfg) {
        Ok((engine, _)) => Ok((cfg, engine)),
        Err(errors) => {
            o.error(format!("{}: invalid policy ({} error(s))", path.display(), errors.len()));
            for e in errors {
                let _ = writeln!(o.err, "  {e}");
            }
            Err(EXIT_INVALID)
        }
    }
}

fn mode_name(m: SandboxMode) -> &'static str {
    match m {
        SandboxMode::Off => "off",
        SandboxMode::NonMain => "non-main",
        SandboxMode::All => "all",
    }
}

fn limits_text(l: &ToolLimits) -> String {
    format!(
        "timeout {}s, max output {} bytes, workspace {}",
        l.timeout.as_secs_f64(),
        l.max_output_bytes,
        workspace_access_name(l.workspace_access)
    )
}

fn limits_json(l: &ToolLimits) -> Value {
    json!({
        "timeoutMs": l.timeout.as_millis() as u64,
        "maxOutputBytes": l.max_output_bytes,
        "workspaceAccess": workspace_access_name(l.workspace_access),
    })
}

fn verdict_json(name: &str, v: &Verdict) -> Value {
    let mut j = json!({
        "tool": name,
        "decision": if v.allowed() { "allow" } else { "deny" },
        "layer": v.layer.name(),
        "at": v.at,
        "why": v.why,
        "rule": v.rule(),
    });
    if v.allowed() {
        j["limits"] = limits_json(&v.limits);
    }
    j
}

fn explain(o: &mut Out, config_path: &Path, agent: &str, tool: Option<&str>, as_json: bool) -> i32 {
    let Ok(id) = AgentId::parse(agent) else {
        o.error(format!("invalid agent id {agent:?}"));
        return EXIT_INVALID;
    };
    let (_, engine) = match load_engine(o, config_path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some(p) = engine.agent(&id) else {
        o.error(format!("unknown agent {agent:?} in {}", config_path.display()));
        return EXIT_INVALID;
    };
    match tool {
        Some(name) => explain_tool(o, p, name, as_json),
        None => explain_agent(o, p, as_json),
    }
    EXIT_OK
}

/// What a policy list would have made of a name that a call must spell exactly.
fn alias_note(name: &str) -> Option<String> {
    match parse_policy_name(name) {
        Ok(PolicyName::Tool(t)) if t.name() != name => Some(format!(
            "policy lists read {name:?} as {}, but a call must use the exact name {:?}",
            t.name(),
            t.name()
        )),
        Ok(PolicyName::Group(g, _)) => Some(format!("{g:?} is a group: policy lists expand it, calls cannot use it")),
        _ => None,
    }
}

fn explain_tool(o: &mut Out, p: &AgentPolicy, name: &str, as_json: bool) {
    let v = p.decide(name);
    if as_json {
        let mut j = verdict_json(name, &v);
        j["agent"] = json!(p.agent.as_str());
        j["tenant"] = json!(p.tenant.as_str());
        j["digest"] = json!(p.digest);
        if let Some(n) = alias_note(name) {
            j["note"] = json!(n);
        }
        o.line(serde_json::to_string_pretty(&j).unwrap_or_default());
        return;
    }
    let decision = if v.allowed() { "allow" } else { "deny" };
    o.line(format!("agent {} (tenant {}): {:?} → {decision}", p.agent, p.tenant, crate::dispatch::shown_name(name)));
    o.line(format!("rule: {}", v.rule()));
    if v.allowed() {
        o.line(format!("limits: {}", limits_text(&v.limits)));
    }
    if let Some(n) = alias_note(name) {
        o.line(format!("note: {n}"));
    }
    o.line(format!("digest: {}", p.digest));
}

fn explain_agent(o: &mut Out, p: &AgentPolicy, as_json: bool) {
    let c = &p.chain;
    if as_json {
        let layers: Vec<Value> = c
            .layers
            .iter()
            .map(|l| json!({ "layer": l.kind.name(), "source": format!("{}#{}", l.origin, l.key) }))
            .collect();
        let tools: Vec<Value> = p.verdicts.iter().map(|(t, v)| verdict_json(t.name(), v)).collect();
        let j = json!({
            "agent": p.agent.as_str(),
            "tenant": p.tenant.as_str(),
            "digest": p.digest,
            "allowed": p.allowed().iter().map(|t| t.name()).collect::<Vec<_>>(),
            "layers": layers,
            "sandbox": { "mode": mode_name(c.sandbox_mode), "workspaceAccess": workspace_access_name(c.workspace_access), "source": c.sandbox_source },
            "tools": tools,
        });
        o.line(serde_json::to_string_pretty(&j).unwrap_or_default());
        return;
    }
    o.line(format!("agent {} (tenant {})", p.agent, p.tenant));
    o.line(format!("digest: {}", p.digest));
    let allowed: Vec<&str> = p.allowed().iter().map(|t| t.name()).collect();
    o.line(format!("allowed: {}", if allowed.is_empty() { "(none)".to_string() } else { allowed.join(", ") }));
    o.line("layers (top first; each can only narrow):");
    o.line("  builtin          builtin#defaults (default deny: nothing unless an allow list grants it)");
    for l in &c.layers {
        o.line(format!("  {:<16} {}#{}", l.kind.name(), l.origin, l.key));
    }
    o.line(format!(
        "  {:<16} {} (mode {}, workspaceAccess {})",
        "sandbox",
        c.sandbox_source,
        mode_name(c.sandbox_mode),
        workspace_access_name(c.workspace_access)
    ));
    o.line("tools:");
    for (t, v) in &p.verdicts {
        let decision = if v.allowed() { "allow" } else { "deny " };
        o.line(format!("  {decision} {:<17} {}", t.name(), v.rule()));
        if v.allowed() {
            o.line(format!("        {:<17} {}", "", limits_text(&v.limits)));
        }
    }
}

/// The `policies/` folder for a config: next to it, else in its parent (the repository root when
/// the config lives in `config/`).
pub fn policies_dir(config_path: &Path) -> PathBuf {
    let dir = config_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let here = dir.join("policies");
    if here.is_dir() { here } else { dir.join("..").join("policies") }
}

fn test(o: &mut Out, config_path: &Path, files: Vec<PathBuf>) -> i32 {
    let files = if files.is_empty() {
        let dir = policies_dir(config_path);
        let mut found: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json5"))
                .collect(),
            Err(e) => {
                o.error(format!("cannot read policy folder {}: {e}", dir.display()));
                return EXIT_INVALID;
            }
        };
        found.sort();
        if found.is_empty() {
            o.error(format!("no policy files (*.json5) in {}", dir.display()));
            return EXIT_INVALID;
        }
        found
    } else {
        files
    };
    // The config is read only when a case names an agent.
    let mut engine: Option<Result<PolicyEngine, ()>> = None;
    let (mut passed, mut failed, mut invalid) = (0usize, Vec::<String>::new(), false);
    for path in &files {
        let name = path.display().to_string();
        let f = match file::load(&name, path) {
            Ok(f) => f,
            Err(errors) => {
                for e in errors {
                    o.error(e);
                }
                invalid = true;
                continue;
            }
        };
        o.line(format!("running {} case(s) from {name}", f.tests.len()));
        if f.tests.is_empty() {
            o.line(format!("{name} ... FAILED (no test cases: every policy file must carry its own)"));
            failed.push(format!("{name}: no test cases"));
            continue;
        }
        for case in &f.tests {
            let label = format!(
                "{name} tests[{}] {:?} ({})",
                case.index,
                crate::dispatch::shown_name(&case.tool),
                case.agent.as_ref().map_or("file alone".to_string(), |a| format!("agent {a}"))
            );
            let checked = match &case.agent {
                None => PolicyEngine::default().check_case(&f, case),
                Some(_) => {
                    let e = engine.get_or_insert_with(|| match load_engine(o, config_path) {
                        Ok((_, e)) => Ok(e),
                        Err(_) => Err(()),
                    });
                    match e {
                        Ok(e) => e.check_case(&f, case),
                        Err(()) => Err(format!("the config {} does not load", config_path.display())),
                    }
                }
            };
            let expect = if case.expect_allow { "allow" } else { "deny" };
            match checked {
                Ok(_) => {
                    passed += 1;
                    o.line(format!("case {label} expect {expect} ... ok"));
                }
                Err(e) => {
                    o.line(format!("case {label} expect {expect} ... FAILED"));
                    // `check_case` names the case; the report names the file as well.
                    failed.push(format!("{name} {e}"));
                }
            }
        }
    }
    if !failed.is_empty() {
        o.line("\nfailures:");
        for f in &failed {
            o.line(format!("  {f}"));
        }
    }
    let status = if failed.is_empty() && !invalid { "ok" } else { "FAILED" };
    o.line(format!("\ntest result: {status}. {passed} passed; {} failed", failed.len()));
    if invalid {
        EXIT_INVALID
    } else if failed.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILURE
    }
}

fn diff(o: &mut Out, old_path: &Path, new_path: &Path) -> i32 {
    let old = match load_engine(o, old_path) {
        Ok((_, e)) => e,
        Err(code) => return code,
    };
    let new = match load_engine(o, new_path) {
        Ok((_, e)) => e,
        Err(code) => return code,
    };
    o.line(format!("policy diff {} → {}", old_path.display(), new_path.display()));
    let mut ids: Vec<&AgentId> = old.agents().map(|p| &p.agent).chain(new.agents().map(|p| &p.agent)).collect();
    ids.sort();
    ids.dedup();
    let mut changed = 0;
    for id in ids {
        let (a, b) = (old.agent(id), new.agent(id));
        let allowed = |p: Option<&AgentPolicy>| p.map(AgentPolicy::allowed).unwrap_or_default();
        let (before, after) = (allowed(a), allowed(b));
        let head = match (a, b) {
            (None, Some(b)) => format!("agent {id}: added (tenant {}, {})", b.tenant, b.digest),
            (Some(a), None) => format!("agent {id}: removed (was {})", a.digest),
            (Some(a), Some(b)) if a.digest == b.digest => {
                o.line(format!("agent {id}: unchanged ({})", a.digest));
                continue;
            }
            (Some(a), Some(b)) => format!("agent {id}: {} → {}", a.digest, b.digest),
            (None, None) => continue,
        };
        changed += 1;
        o.line(head);
        for t in Tool::ALL {
            let rule =
                |p: Option<&AgentPolicy>| p.and_then(|p| p.verdicts.get(&t)).map(|v| v.rule()).unwrap_or_default();
            match (before.contains(&t), after.contains(&t)) {
                (false, true) => o.line(format!("  + {:<17} granted by {}", t.name(), rule(b))),
                (true, false) if b.is_some() => o.line(format!("  - {:<17} removed by {}", t.name(), rule(b))),
                (true, false) => o.line(format!("  - {}", t.name())),
                (true, true) => {
                    let lim = |p: Option<&AgentPolicy>| p.and_then(|p| p.verdicts.get(&t)).map(|v| v.limits.clone());
                    if let (Some(x), Some(y)) = (lim(a), lim(b))
                        && x != y
                    {
                        o.line(format!("  ~ {:<17} {} → {}", t.name(), limits_text(&x), limits_text(&y)));
                    }
                }
                (false, false) => {}
            }
        }
    }
    o.line(format!("{changed} agent(s) changed"));
    EXIT_OK
}

fn sign(o: &mut Out, path: &Path, key_path: &Path) -> i32 {
    let name = path.display().to_string();
    let key_name = key_path.display().to_string();
    let key_text = match std::fs::read_to_string(key_path) {
        Ok(t) => t,
        Err(e) => {
            o.error(format!("key file {key_name}: cannot read: {e}"));
            return EXIT_INVALID;
        }
    };
    // Only a valid policy is worth signing.
    if let Err(errors) = file::load(&name, path) {
        for e in errors {
            o.error(e);
        }
        return EXIT_INVALID;
    }
    let content = match std::fs::read(path) {
        Ok(c) => c,
        Err(e) => {
            o.error(format!("policy file {name}: cannot read: {e}"));
            return EXIT_INVALID;
        }
    };
    let sig = match signature::sign(&content, &key_name, &key_text) {
        Ok(s) => s,
        Err(e) => {
            o.error(e.to_string());
            return EXIT_INVALID;
        }
    };
    let sig_path = signature::sig_path(path);
    if let Err(e) = std::fs::write(&sig_path, sig) {
        o.error(format!("signature file {}: cannot write: {e}", sig_path.display()));
        return EXIT_FAILURE;
    }
    let public = signature::key_file_public_key(&key_name, &key_text).map(|k| crate::crypto::format_public_key(&k));
    o.line(format!("signed {name} with {} → {}", public.unwrap_or_default(), sig_path.display()));
    EXIT_OK
}

fn verify(o: &mut Out, config_path: &Path, path: &Path, pubkeys: &[String]) -> i32 {
    let mut trusted = Vec::new();
    for k in pubkeys {
        let text = if k.starts_with("ed25519:") { k.clone() } else { std::fs::read_to_string(k).unwrap_or_default() };
        match crate::crypto::parse_public_key(&text) {
            Ok(key) => trusted.push(key),
            Err(e) => {
                o.error(format!("--pubkey {k:?}: {e} (or a file holding one)"));
                return EXIT_INVALID;
            }
        }
    }
    if trusted.is_empty() {
        match load_config(o, config_path) {
            Ok(c) => trusted = c.policies.trusted_keys,
            Err(code) => return code,
        }
    }
    if trusted.is_empty() {
        o.error("no trusted keys: pass --pubkey or set policies.trustedKeys in the config");
        return EXIT_INVALID;
    }
    match signature::verify_file(path, &trusted) {
        Ok(key) => {
            o.line(format!("{}: valid signature by {}", path.display(), crate::crypto::format_public_key(&key)));
            EXIT_OK
        }
        Err(e @ SignatureError::Read(..)) => {
            o.error(e.to_string());
            EXIT_INVALID
        }
        Err(e) => {
            o.error(e.to_string());
            EXIT_FAILURE
        }
    }
}

fn keygen(o: &mut Out, out: &Path) -> i32 {
    if out.exists() {
        o.error(format!("key file {}: already exists; not overwritten", out.display()));
        return EXIT_INVALID;
    }
    let (text, public) = match signature::generate_key() {
        Ok(k) => k,
        Err(e) => {
            o.error(e.to_string());
            return EXIT_FAILURE;
        }
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = opts.open(out).and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        o.error(format!("key file {}: cannot write: {e}", out.display()));
        return EXIT_FAILURE;
    }
    let public = crate::crypto::format_public_key(&public);
    let mut pub_path = out.as_os_str().to_owned();
    pub_path.push(".pub");
    if let Err(e) = std::fs::write(&pub_path, format!("{public}\n")) {
        o.error(format!("public key file {}: cannot write: {e}", PathBuf::from(&pub_path).display()));
        return EXIT_FAILURE;
    }
    o.line(format!("wrote {} (keep it secret) and {}", out.display(), PathBuf::from(pub_path).display()));
    o.line(format!("public key: {public}"));
    o.line("add it to the config: policies: { requireSignature: true, trustedKeys: [\"<public key>\"] }");
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTRUSTED: &str = r#"// test policy
{ tools: { allow: ["read", "list"], deny: ["group:runtime", "group:sessions", "write", "edit"] },
  limits: { "*": { workspaceAccess: "ro", timeoutSec: 10 } },
  tests: [ { tool: "read", expect: "allow" }, { agent: "acme-bot", tool: "exec", expect: "deny" } ] }"#;

    const CONFIG: &str = r#"{ tenants: [ { id: "acme", policy: "policies/untrusted.json5" } ],
  agents: { list: [ { id: "acme-bot", tenant: "acme" }, { id: "dev", tools: { allow: ["group:fs", "exec"] } } ] } }"#;

    /// A repository-like folder: `config/bulkhead.json5` and `policies/untrusted.json5`.
    fn repo(config: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("policies/untrusted.json5"), UNTRUSTED).unwrap();
        let cfg = dir.path().join("config/bulkhead.json5");
        std::fs::write(&cfg, config.replace("policies/", "../policies/")).unwrap();
        (dir, cfg)
    }

    fn run_cli(cmd: PolicyCommand, config: &Path) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_to(cmd, config, &mut out, &mut err);
        (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
    }

    fn explain_cmd(agent: &str, tool: Option<&str>, json: bool) -> PolicyCommand {
        PolicyCommand::Explain { agent: agent.into(), tool: tool.map(String::from), json }
    }

    /// Replaces every `sha256:<hex>` with `sha256:…` so snapshots do not depend on digests.
    fn no_digests(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("sha256:") {
            out.push_str(&rest[..i + 7]);
            out.push('…');
            rest = rest[i + 7..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn shipped_policies_pass_their_own_cases() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/bulkhead.json5");
        let (code, out, err) = run_cli(PolicyCommand::Test { files: vec![] }, &config);
        assert_eq!(code, EXIT_OK, "{out}{err}");
        assert!(out.contains("untrusted.json5") && out.contains("coding.json5"), "{out}");
        assert!(out.contains("test result: ok.") && !out.contains("FAILED"), "{out}");
    }

    #[test]
    fn example_config_pins_tenants_to_the_shipped_policies() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/policy-example.json5");
        let (code, out, err) = run_cli(explain_cmd("acme-support", None, true), &config);
        assert_eq!(code, EXIT_OK, "{err}");
        let j: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(j["allowed"], json!(["read", "list"]));
        let (_, out, _) = run_cli(explain_cmd("devco-coder", None, true), &config);
        let j: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(j["allowed"], json!(["exec", "read", "write", "list"]));
        let exec = j["tools"].as_array().unwrap().iter().find(|t| t["tool"] == "exec").unwrap().clone();
        assert_eq!(exec["at"], "../policies/coding.json5#tools.allow[1]");
        assert_eq!(exec["limits"]["timeoutMs"], 120_000);
        assert_eq!(run_cli(PolicyCommand::Test { files: vec![] }, &config).0, EXIT_OK);
    }

    #[test]
    fn explain_agent_snapshot() {
        let (_dir, cfg) = repo(CONFIG);
        let (code, out, err) = run_cli(explain_cmd("acme-bot", None, false), &cfg);
        assert_eq!(code, EXIT_OK, "{err}");
        let expected = r#"agent acme-bot (tenant acme)
digest: sha256:…
allowed: read, list
layers (top first; each can only narrow):
  builtin          builtin#defaults (default deny: nothing unless an allow list grants it)
  tenant           ../policies/untrusted.json5#tools
  sandbox          config#agents.list[0].sandbox (mode all, workspaceAccess rw)
tools:
  deny  exec              [tenant] ../policies/untrusted.json5#tools.deny[0]: "group:runtime" denies exec
  allow read              [tenant] ../policies/untrusted.json5#tools.allow[0]: "read" allows read
                          timeout 10s, max output 65536 bytes, workspace ro
  deny  write             [tenant] ../policies/untrusted.json5#tools.deny[2]: "write" denies write
  deny  edit              [tenant] ../policies/untrusted.json5#tools.deny[3]: "edit" denies edit
  allow list              [tenant] ../policies/untrusted.json5#tools.allow[1]: "list" allows list
                          timeout 10s, max output 65536 bytes, workspace ro
  deny  sessions_list     [tenant] ../policies/untrusted.json5#tools.deny[1]: "group:sessions" denies sessions_list
  deny  sessions_history  [tenant] ../policies/untrusted.json5#tools.deny[1]: "group:sessions" denies sessions_history
  deny  sessions_send     [tenant] ../policies/untrusted.json5#tools.deny[1]: "group:sessions" denies sessions_send
"#;
        assert_eq!(no_digests(&out), expected);
    }

    #[test]
    fn explain_tool_names_the_rule_and_notes_aliases() {
        let (_dir, cfg) = repo(CONFIG);
        let (code, out, _) = run_cli(explain_cmd("dev", Some("bash"), false), &cfg);
        assert_eq!(code, EXIT_OK);
        assert_eq!(
            no_digests(&out),
            "agent dev (tenant dev): \"bash\" → deny\n\
             rule: [catalog] builtin#tools: \"bash\" is not exactly the name of a tool\n\
             note: policy lists read \"bash\" as exec, but a call must use the exact name \"exec\"\n\
             digest: sha256:…\n"
        );
        let (_, out, _) = run_cli(explain_cmd("dev", Some("exec"), true), &cfg);
        let j: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(j["decision"], "allow");
        assert_eq!(j["layer"], "agent");
        assert_eq!(j["at"], "config#agents.list[1].tools.allow[1]");
        assert_eq!(j["limits"]["timeoutMs"], 30000);
        let (_, out, _) = run_cli(explain_cmd("acme-bot", None, true), &cfg);
        let j: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(j["allowed"], json!(["read", "list"]));
        assert_eq!(j["layers"][0]["source"], "../policies/untrusted.json5#tools");
        assert_eq!(run_cli(explain_cmd("nobody", None, false), &cfg).0, EXIT_INVALID);
        assert_eq!(run_cli(explain_cmd("Bad Id!", None, false), &cfg).0, EXIT_INVALID);
    }

    #[test]
    fn test_reports_failures_like_a_test_runner() {
        let (dir, cfg) = repo(CONFIG);
        // The default folder is found from the config; the agent case runs against the config.
        let (code, out, err) = run_cli(PolicyCommand::Test { files: vec![] }, &cfg);
        assert_eq!(code, EXIT_OK, "{out}{err}");
        assert!(out.contains("tests[1] \"exec\" (agent acme-bot) expect deny ... ok"), "{out}");
        assert!(out.contains("test result: ok. 2 passed; 0 failed"), "{out}");

        let bad = dir.path().join("policies/bad.json5");
        std::fs::write(&bad, r#"{ tools: { allow: ["read"] }, tests: [ { tool: "read", expect: "deny", note: "wrong on purpose" }, { agent: "dev", tool: "read", expect: "allow" } ] }"#).unwrap();
        let (code, out, _) = run_cli(PolicyCommand::Test { files: vec![bad.clone()] }, &cfg);
        assert_eq!(code, EXIT_FAILURE, "{out}");
        assert!(out.contains("expect deny ... FAILED"), "{out}");
        assert!(out.contains("expected deny, got allow by [file]") && out.contains("(wrong on purpose)"), "{out}");
        assert!(out.contains("agent \"dev\" does not use this policy file"), "{out}");
        assert!(out.contains("test result: FAILED. 0 passed; 2 failed"), "{out}");

        std::fs::write(&bad, r#"{ tools: { allow: ["read"] } }"#).unwrap();
        let (code, out, _) = run_cli(PolicyCommand::Test { files: vec![bad.clone()] }, &cfg);
        assert_eq!(code, EXIT_FAILURE, "{out}");
        assert!(out.contains("no test cases"), "{out}");

        std::fs::write(&bad, r#"{ tools: { allow: ["raed"] }, tests: [ { tool: "read", expect: "allow" } ] }"#)
            .unwrap();
        let (code, _, err) = run_cli(PolicyCommand::Test { files: vec![bad] }, &cfg);
        assert_eq!(code, EXIT_INVALID);
        assert!(err.contains("tools.allow[0]") && err.contains("did you mean \"read\""), "{err}");
    }

    #[test]
    fn diff_snapshot() {
        let (dir, old) = repo(CONFIG);
        let new = dir.path().join("config/new.json5");
        std::fs::write(
            &new,
            r#"{ tenants: [ { id: "acme", policy: "../policies/untrusted.json5" } ],
                 agents: { list: [ { id: "acme-bot", tenant: "acme" },
                                   { id: "dev", tools: { allow: ["read", "exec", "group:sessions"] } },
                                   { id: "new", tools: { allow: ["read"] } } ] } }"#,
        )
        .unwrap();
        let (code, out, err) = run_cli(PolicyCommand::Diff { old_config: old.clone(), new_config: new.clone() }, &old);
        assert_eq!(code, EXIT_OK, "{err}");
        let body: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(
            no_digests(&body.join("\n")),
            r#"agent acme-bot: unchanged (sha256:…)
agent dev: sha256:… → sha256:…
  - write             removed by [agent] config#agents.list[1].tools.allow: the allow list does not include write
  - edit              removed by [agent] config#agents.list[1].tools.allow: the allow list does not include edit
  - list              removed by [agent] config#agents.list[1].tools.allow: the allow list does not include list
  + sessions_list     granted by [agent] config#agents.list[1].tools.allow[2]: "group:sessions" allows sessions_list
  + sessions_history  granted by [agent] config#agents.list[1].tools.allow[2]: "group:sessions" allows sessions_history
  + sessions_send     granted by [agent] config#agents.list[1].tools.allow[2]: "group:sessions" allows sessions_send
agent new: added (tenant new, sha256:…)
  + read              granted by [agent] config#agents.list[2].tools.allow[0]: "read" allows read
2 agent(s) changed"#
        );
        std::fs::write(&new, "{ agents: [ }").unwrap();
        assert_eq!(run_cli(PolicyCommand::Diff { old_config: old.clone(), new_config: new }, &old).0, EXIT_INVALID);
    }

    #[test]
    fn keygen_sign_verify_and_tampering() {
        let (dir, cfg) = repo(CONFIG);
        let key = dir.path().join("signing.key");
        let policy = dir.path().join("policies/untrusted.json5");
        let (code, out, _) = run_cli(PolicyCommand::Keygen { out: key.clone() }, &cfg);
        assert_eq!(code, EXIT_OK);
        let public = out.lines().find_map(|l| l.strip_prefix("public key: ")).unwrap().to_string();
        assert_eq!(run_cli(PolicyCommand::Keygen { out: key.clone() }, &cfg).0, EXIT_INVALID, "overwrote a key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let verify = |pubkeys: Vec<String>| run_cli(PolicyCommand::Verify { file: policy.clone(), pubkeys }, &cfg);

        let (code, _, err) = verify(vec![public.clone()]);
        assert_eq!(code, EXIT_FAILURE);
        assert!(err.contains("unsigned"), "{err}");

        let (code, out, err) = run_cli(PolicyCommand::Sign { file: policy.clone(), key: key.clone() }, &cfg);
        assert_eq!(code, EXIT_OK, "{err}");
        assert!(out.contains(&public), "{out}");
        let (code, out, _) = verify(vec![public.clone()]);
        assert_eq!(code, EXIT_OK);
        assert!(out.contains("valid signature"));
        // The public key may also be read from KEYFILE.pub.
        let pub_file = format!("{}.pub", key.display());
        assert_eq!(verify(vec![pub_file]).0, EXIT_OK);

        // Wrong key.
        let other = dir.path().join("other.key");
        let (_, out, _) = run_cli(PolicyCommand::Keygen { out: other }, &cfg);
        let other_public = out.lines().find_map(|l| l.strip_prefix("public key: ")).unwrap().to_string();
        let (code, _, err) = verify(vec![other_public]);
        assert_eq!(code, EXIT_FAILURE);
        assert!(err.contains("not a trusted key"), "{err}");

        // One modified byte.
        let mut bytes = std::fs::read(&policy).unwrap();
        bytes[3] ^= 0x20;
        std::fs::write(&policy, bytes).unwrap();
        let (code, _, err) = verify(vec![public.clone()]);
        assert_eq!(code, EXIT_FAILURE);
        assert!(err.contains("signature does not match"), "{err}");

        // Default trust comes from the config; none there is invalid input.
        assert_eq!(verify(vec![]).0, EXIT_INVALID);
        assert_eq!(verify(vec!["ed25519:nothex".into()]).0, EXIT_INVALID);
        // A broken key file or policy is refused before signing.
        std::fs::write(&key, "garbage").unwrap();
        assert_eq!(run_cli(PolicyCommand::Sign { file: policy, key }, &cfg).0, EXIT_INVALID);
    }
}

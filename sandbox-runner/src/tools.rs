//! The runner's tools: `read`, `write`, `edit`, `list` and `exec`, over a confined workspace.

use std::io::{BufRead, BufReader, Read};

use sandbox_runner::protocol::{Failure, Request, Response};
use sandbox_runner::shell;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::builtins;
use crate::ws::{ToolError, ToolResult, Ws, failed};

/// Largest file `edit` loads.
pub const MAX_EDIT_FILE: u64 = 16 << 20;
/// Default and largest `limit` for `read`.
const READ_DEFAULT_LINES: usize = 2000;

/// How `exec` runs commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecMode {
    /// The built-in utilities, in-process (the wasm sandbox).
    Builtins,
    /// A real `sh -c` in a fresh process group (the Docker sandbox; see `native`).
    Native,
}

/// Runs one request against the workspace at `root` and builds the response (built-in `exec`).
#[cfg(test)]
pub fn handle(req: Request, root: std::path::PathBuf) -> Response {
    handle_with(req, root, ExecMode::Builtins)
}

/// `handle` with a choice of how `exec` runs.
pub fn handle_with(req: Request, root: std::path::PathBuf, mode: ExecMode) -> Response {
    let max_out = usize::try_from(req.limits.max_output_bytes).unwrap_or(usize::MAX);
    let mut ws = Ws::new(root, req.limits.access, req.limits.disk_budget_bytes);
    #[cfg(not(target_os = "wasi"))]
    if mode == ExecMode::Native && req.tool == "exec" {
        return match crate::native::exec(&ws, req.args, max_out) {
            Ok(run) => native_response(run),
            Err(ToolError::Failed(m)) => Response::error(cap(m, max_out).0),
            Err(ToolError::Invalid(m)) => Response::failure(Failure::InvalidArguments, cap(m, max_out).0),
            Err(ToolError::Quota(m)) => Response::failure(Failure::Quota, cap(m, max_out).0),
        };
    }
    let _ = mode;
    let result = match req.tool.as_str() {
        "read" => args(req.args).and_then(|a| read(&ws, a, max_out)).map(|t| (t, None)),
        "write" => args(req.args).and_then(|a| write(&mut ws, a)).map(|t| (t, None)),
        "edit" => args(req.args).and_then(|a| edit(&mut ws, a)).map(|t| (t, None)),
        "list" => args(req.args).and_then(|a| list(&ws, a)).map(|t| (t, None)),
        "exec" => args(req.args).and_then(|a| exec(&mut ws, a)).map(|(t, c)| (t, Some(c))),
        other => Err(ToolError::Invalid(format!("unknown tool {other:?}"))),
    };
    match result {
        Ok((text, code)) => {
            let (output, truncated) = cap(text, max_out);
            let is_error = code.is_some_and(|c| c != 0);
            Response { exit_code: code, truncated, is_error, ..Response::ok(output) }
        }
        Err(ToolError::Failed(m)) => Response::error(cap(m, max_out).0),
        Err(ToolError::Invalid(m)) => Response::failure(Failure::InvalidArguments, cap(m, max_out).0),
        Err(ToolError::Quota(m)) => Response::failure(Failure::Quota, cap(m, max_out).0),
    }
}

/// The response for a native command: its output, exit code, and a failure when it was killed.
#[cfg(not(target_os = "wasi"))]
fn native_response(run: crate::native::NativeRun) -> Response {
    let output = String::from_utf8_lossy(&run.output).into_owned();
    let failure = run.killed.map(|k| match k {
        crate::native::Killed::Timeout => Failure::Timeout,
        crate::native::Killed::Memory => Failure::Memory,
        crate::native::Killed::Quota => Failure::Quota,
    });
    Response {
        exit_code: Some(run.exit_code),
        truncated: run.truncated,
        is_error: run.exit_code != 0 || failure.is_some(),
        failure,
        ..Response::ok(output)
    }
}

/// Cuts text to at most `max` bytes on a character boundary (shared with the host).
pub use sandbox_runner::protocol::cap_text as cap;

fn args<T: DeserializeOwned>(v: serde_json::Value) -> ToolResult<T> {
    serde_json::from_value(v).map_err(|e| ToolError::Invalid(e.to_string()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReadArgs {
    path: String,
    offset: Option<usize>,
    limit: Option<usize>,
}

fn read(ws: &Ws, a: ReadArgs, max_out: usize) -> ToolResult<String> {
    ws.can_read()?;
    let path = ws.resolve(&a.path)?;
    let file = std::fs::File::open(&path).map_err(|e| ws.io(&path, e))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return failed(format!("{}: is a directory (use list)", ws.show(&path)));
    }
    let start = a.offset.unwrap_or(1).max(1);
    let limit = a.limit.unwrap_or(READ_DEFAULT_LINES).max(1);
    let mut r = BufReader::new(file);
    let mut out = String::new();
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        // One line is read at most to the output cap (plus one byte to know it was cut).
        let got = (&mut r).take(max_out as u64 + 1).read_until(b'\n', &mut line).map_err(|e| ws.io(&path, e))?;
        if got == 0 {
            break;
        }
        n += 1;
        if n < start {
            if !line.ends_with(b"\n") {
                // An overlong line: skip the rest of it.
                let mut sink = Vec::new();
                r.read_until(b'\n', &mut sink).map_err(|e| ws.io(&path, e))?;
            }
            continue;
        }
        if n >= start + limit || out.len() > max_out {
            out.push_str(&format!("\n[more lines follow; continue with offset={n}]"));
            break;
        }
        out.push_str(&String::from_utf8_lossy(&line));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct WriteArgs {
    path: String,
    content: String,
}

fn write(ws: &mut Ws, a: WriteArgs) -> ToolResult<String> {
    let path = ws.resolve(&a.path)?;
    ws.write_file(&path, a.content.as_bytes(), false)?;
    Ok(format!("wrote {} bytes to {}", a.content.len(), ws.show(&path)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EditArgs {
    path: String,
    old_text: String,
    new_text: String,
}

fn edit(ws: &mut Ws, a: EditArgs) -> ToolResult<String> {
    ws.can_write()?;
    if a.old_text.is_empty() {
        return Err(ToolError::Invalid("oldText must not be empty".into()));
    }
    let path = ws.resolve(&a.path)?;
    let file = std::fs::File::open(&path).map_err(|e| ws.io(&path, e))?;
    let mut text = String::new();
    file.take(MAX_EDIT_FILE + 1).read_to_string(&mut text).map_err(|e| ws.io(&path, e))?;
    if text.len() as u64 > MAX_EDIT_FILE {
        return failed(format!("{}: larger than {MAX_EDIT_FILE} bytes, too large to edit", ws.show(&path)));
    }
    match text.matches(&a.old_text).count() {
        0 => failed(format!("oldText was not found in {}", ws.show(&path))),
        1 => {
            let new = text.replacen(&a.old_text, &a.new_text, 1);
            ws.write_file(&path, new.as_bytes(), false)?;
            Ok(format!("edited {}", ws.show(&path)))
        }
        n => failed(format!(
            "oldText occurs {n} times in {}; include more surrounding text so that it matches exactly once",
            ws.show(&path)
        )),
    }
}

#[derive(Deserialize)]
struct ListArgs {
    path: Option<String>,
}

fn list(ws: &Ws, a: ListArgs) -> ToolResult<String> {
    ws.can_read()?;
    let path = ws.resolve(a.path.as_deref().unwrap_or("."))?;
    let lines = builtins::dir_lines(ws, &path, true, true)?;
    if lines.is_empty() {
        return Ok(format!("{} is empty", ws.show(&path)));
    }
    Ok(lines.join("\n"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecArgs {
    command: String,
    #[serde(rename = "timeoutSec")]
    _timeout_sec: Option<f64>,
    /// Standard input of the first stage (set by the host when it runs a pipeline stage by stage).
    stdin: Option<String>,
}

fn exec(ws: &mut Ws, a: ExecArgs) -> ToolResult<(String, i32)> {
    let script = shell::parse(&a.command).map_err(|e| ToolError::Invalid(e.to_string()))?;
    let (out, code) = builtins::run_script(ws, &script, a.stdin.unwrap_or_default().into_bytes())?;
    Ok((String::from_utf8_lossy(&out).into_owned(), code))
}

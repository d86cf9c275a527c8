//! The built-in utilities `exec` runs, and the pipeline/list executor over them.
//!
//! They are small, documented re-implementations (no native binaries are ever started): options
//! not listed in `docs/sandbox-wasm.md` are refused, `grep` matches fixed strings.

use std::io::Read;
use std::path::{Path, PathBuf};

use sandbox_runner::shell::{BUILTINS, Connector, Script};

use crate::ws::{ToolError, ToolResult, Ws, failed};

/// Most bytes held between two stages of a pipeline, or read from one file.
pub const MAX_PIPE_BYTES: usize = 32 << 20;
/// Most entries a recursive walk visits.
pub const MAX_WALK: usize = 100_000;

type Out = ToolResult<(Vec<u8>, i32)>;
/// Flags, option values and operands of one command.
type Opts = (Vec<char>, Vec<(char, String)>, Vec<String>);

/// Runs a parsed command line; returns its combined stdout/stderr and the last exit code.
pub fn run_script(ws: &mut Ws, script: &Script, stdin: Vec<u8>) -> ToolResult<(Vec<u8>, i32)> {
    let mut output = Vec::new();
    let mut code = 0;
    let mut first_input = Some(stdin);
    for p in &script.pipelines {
        match p.connector {
            Connector::And if code != 0 => continue,
            Connector::Or if code == 0 => continue,
            _ => {}
        }
        let mut data = first_input.take().unwrap_or_default();
        let mut errs = Vec::new();
        for st in &p.stages {
            let input = match &st.stdin_from {
                Some(f) => match ws.resolve(f).and_then(|p| read_file(ws, &p)) {
                    Ok(d) => d,
                    Err(ToolError::Failed(m)) => {
                        errs.extend_from_slice(format!("{}: {m}\n", st.argv[0]).as_bytes());
                        code = 1;
                        data.clear();
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                None => std::mem::take(&mut data),
            };
            let (mut out, c) = match run(ws, &st.argv, &input) {
                Ok(r) => r,
                Err(ToolError::Failed(m)) => {
                    errs.extend_from_slice(format!("{}: {m}\n", st.argv[0]).as_bytes());
                    (Vec::new(), 1)
                }
                Err(e) => return Err(e),
            };
            code = c;
            if let Some(r) = &st.stdout_to {
                let path = ws.resolve(&r.path)?;
                match ws.write_file(&path, &out, r.append) {
                    Ok(()) => {}
                    Err(ToolError::Failed(m)) => {
                        errs.extend_from_slice(format!("{}: {m}\n", st.argv[0]).as_bytes());
                        code = 1;
                    }
                    Err(e) => return Err(e),
                }
                out.clear();
            }
            if out.len() > MAX_PIPE_BYTES {
                return failed(format!("{}: output larger than {MAX_PIPE_BYTES} bytes", st.argv[0]));
            }
            data = out;
        }
        output.extend_from_slice(&data);
        output.extend_from_slice(&errs);
        if output.len() > MAX_PIPE_BYTES {
            return failed(format!("output larger than {MAX_PIPE_BYTES} bytes"));
        }
    }
    Ok((output, code))
}

fn run(ws: &mut Ws, argv: &[String], input: &[u8]) -> Out {
    let (name, args) = (argv[0].as_str(), &argv[1..]);
    match name {
        "cat" => cat(ws, args, input),
        "cp" => cp(ws, args),
        "echo" => echo(args),
        "false" => Ok((Vec::new(), 1)),
        "true" => Ok((Vec::new(), 0)),
        "find" => find(ws, args),
        "grep" => grep(ws, args, input),
        "head" => head_tail(ws, args, input, true),
        "tail" => head_tail(ws, args, input, false),
        "ln" => ln(ws, args),
        "ls" => ls(ws, args),
        "mkdir" => mkdir(ws, args),
        "mv" => mv(ws, args),
        "pwd" => Ok((b"/workspace\n".to_vec(), 0)),
        "rm" => rm(ws, args),
        "sort" => sort(ws, args, input),
        "touch" => touch(ws, args),
        "uniq" => uniq(ws, args, input),
        "wc" => wc(ws, args, input),
        _ => Ok((
            format!("{name}: command not found (built-ins: {}; no native programs can run here)\n", BUILTINS.join(" "))
                .into_bytes(),
            127,
        )),
    }
}

/// Splits `-x -yz` flags (from `allowed`) from operands; `-n N` style values are returned for `valued`.
fn opts(args: &[String], allowed: &str, valued: &str) -> ToolResult<Opts> {
    let (mut flags, mut vals, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            rest.extend(it.cloned());
            break;
        }
        if a.len() > 1 && a.starts_with('-') && rest.is_empty() {
            let body = &a[1..];
            if body.chars().all(|c| c.is_ascii_digit()) && valued.contains('n') {
                vals.push(('n', body.to_string()));
                continue;
            }
            let mut cs = body.chars();
            while let Some(c) = cs.next() {
                if valued.contains(c) {
                    let v: String = cs.collect();
                    let v = if v.is_empty() { it.next().cloned().unwrap_or_default() } else { v };
                    vals.push((c, v));
                    break;
                } else if allowed.contains(c) {
                    flags.push(c);
                } else {
                    return failed(format!("unsupported option -{c}"));
                }
            }
        } else {
            rest.push(a.clone());
        }
    }
    Ok((flags, vals, rest))
}

fn num(v: &str) -> ToolResult<usize> {
    v.trim_start_matches('+').parse().map_err(|_| ToolError::Failed(format!("invalid number {v:?}")))
}

pub fn read_file(ws: &Ws, p: &Path) -> ToolResult<Vec<u8>> {
    ws.can_read()?;
    let f = std::fs::File::open(p).map_err(|e| ws.io(p, e))?;
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        return failed(format!("{}: is a directory", ws.show(p)));
    }
    let mut buf = Vec::new();
    f.take(MAX_PIPE_BYTES as u64 + 1).read_to_end(&mut buf).map_err(|e| ws.io(p, e))?;
    if buf.len() > MAX_PIPE_BYTES {
        return failed(format!("{}: larger than {MAX_PIPE_BYTES} bytes", ws.show(p)));
    }
    Ok(buf)
}

/// Inputs of a filter: the named files, or standard input when none.
fn inputs(ws: &Ws, files: &[String], input: &[u8]) -> ToolResult<Vec<(String, Vec<u8>)>> {
    if files.is_empty() {
        return Ok(vec![(String::new(), input.to_vec())]);
    }
    files.iter().map(|f| Ok((f.clone(), read_file(ws, &ws.resolve(f)?)?))).collect()
}

fn lines(data: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    if data.ends_with(b"\n") || data.is_empty() {
        v.pop();
    }
    v
}

fn join_lines<'a>(ls: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for l in ls {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

fn cat(ws: &Ws, args: &[String], input: &[u8]) -> Out {
    let (_, _, files) = opts(args, "", "")?;
    Ok((inputs(ws, &files, input)?.into_iter().flat_map(|(_, d)| d).collect(), 0))
}

fn echo(args: &[String]) -> Out {
    let (newline, words) = match args.first().map(String::as_str) {
        Some("-n") => (false, &args[1..]),
        _ => (true, args),
    };
    let mut s = words.join(" ");
    if newline {
        s.push('\n');
    }
    Ok((s.into_bytes(), 0))
}

fn head_tail(ws: &Ws, args: &[String], input: &[u8], head: bool) -> Out {
    let (_, vals, files) = opts(args, "", "n")?;
    let n = vals.last().map(|(_, v)| num(v)).transpose()?.unwrap_or(10);
    let mut out = Vec::new();
    for (_, d) in inputs(ws, &files, input)? {
        let ls = lines(&d);
        let pick: Vec<&[u8]> =
            if head { ls.into_iter().take(n).collect() } else { ls[ls.len().saturating_sub(n)..].to_vec() };
        out.extend(join_lines(pick));
    }
    Ok((out, 0))
}

fn wc(ws: &Ws, args: &[String], input: &[u8]) -> Out {
    let (flags, _, files) = opts(args, "lwc", "")?;
    let all = flags.is_empty();
    let mut out = String::new();
    for (name, d) in inputs(ws, &files, input)? {
        let mut cols = Vec::new();
        if all || flags.contains(&'l') {
            cols.push(d.iter().filter(|b| **b == b'\n').count());
        }
        if all || flags.contains(&'w') {
            cols.push(String::from_utf8_lossy(&d).split_whitespace().count());
        }
        if all || flags.contains(&'c') {
            cols.push(d.len());
        }
        let cols: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
        out.push_str(&cols.join(" "));
        if !name.is_empty() {
            out.push(' ');
            out.push_str(&name);
        }
        out.push('\n');
    }
    Ok((out.into_bytes(), 0))
}

fn grep(ws: &Ws, args: &[String], input: &[u8]) -> Out {
    let (flags, vals, mut rest) = opts(args, "ivncrlF", "e")?;
    let pattern = match vals.into_iter().next() {
        Some((_, p)) => p,
        None if !rest.is_empty() => rest.remove(0),
        None => return failed("usage: grep [-i] [-v] [-n] [-c] [-r] [-l] PATTERN [FILE...]"),
    };
    let has = |c| flags.contains(&c);
    let needle = if has('i') { pattern.to_lowercase() } else { pattern };
    let mut files = Vec::new();
    for f in &rest {
        let p = ws.resolve(f)?;
        if has('r') && p.is_dir() {
            walk(ws, &p, &mut |q, is_dir| {
                if !is_dir {
                    files.push(ws.show(q));
                }
            })?;
        } else {
            files.push(f.clone());
        }
    }
    if has('r') && rest.is_empty() {
        walk(ws, &ws.resolve(".")?, &mut |q, is_dir| {
            if !is_dir {
                files.push(ws.show(q));
            }
        })?;
    }
    let many = files.len() > 1 || has('r');
    let mut out = Vec::new();
    let mut any = false;
    for (name, d) in inputs(ws, &files, input)? {
        let mut count = 0;
        for (i, l) in lines(&d).into_iter().enumerate() {
            let text = String::from_utf8_lossy(l);
            let hit = if has('i') { text.to_lowercase().contains(&needle) } else { text.contains(&needle) };
            if hit == has('v') {
                continue;
            }
            count += 1;
            any = true;
            if has('c') || has('l') {
                continue;
            }
            if many {
                out.extend_from_slice(format!("{name}:").as_bytes());
            }
            if has('n') {
                out.extend_from_slice(format!("{}:", i + 1).as_bytes());
            }
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        if has('l') && count > 0 {
            out.extend_from_slice(format!("{name}\n").as_bytes());
        } else if has('c') {
            let prefix = if many { format!("{name}:") } else { String::new() };
            out.extend_from_slice(format!("{prefix}{count}\n").as_bytes());
        }
    }
    Ok((out, if any { 0 } else { 1 }))
}

fn sort(ws: &Ws, args: &[String], input: &[u8]) -> Out {
    let (flags, _, files) = opts(args, "rnu", "")?;
    let data: Vec<Vec<u8>> = inputs(ws, &files, input)?.into_iter().map(|(_, d)| d).collect();
    let mut ls: Vec<&[u8]> = data.iter().flat_map(|d| lines(d)).collect();
    if flags.contains(&'n') {
        let key = |l: &[u8]| String::from_utf8_lossy(l).trim().parse::<f64>().unwrap_or(0.0);
        ls.sort_by(|a, b| key(a).total_cmp(&key(b)));
    } else {
        ls.sort();
    }
    if flags.contains(&'r') {
        ls.reverse();
    }
    if flags.contains(&'u') {
        ls.dedup();
    }
    Ok((join_lines(ls), 0))
}

fn uniq(ws: &Ws, args: &[String], input: &[u8]) -> Out {
    let (flags, _, files) = opts(args, "c", "")?;
    let data: Vec<u8> = inputs(ws, &files, input)?.into_iter().flat_map(|(_, d)| d).collect();
    let mut out = Vec::new();
    let ls = lines(&data);
    let mut i = 0;
    while i < ls.len() {
        let mut j = i;
        while j < ls.len() && ls[j] == ls[i] {
            j += 1;
        }
        if flags.contains(&'c') {
            out.extend_from_slice(format!("{:>7} ", j - i).as_bytes());
        }
        out.extend_from_slice(ls[i]);
        out.push(b'\n');
        i = j;
    }
    Ok((out, 0))
}

/// `name`, `name/` (directory) or `name@` (symlink) for each entry of a directory, sorted.
pub fn dir_lines(ws: &Ws, dir: &Path, all: bool, long: bool) -> ToolResult<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| ws.io(dir, e))?;
    let mut v = Vec::new();
    for e in rd.take(MAX_WALK) {
        let e = e.map_err(|e| ws.io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !all && name.starts_with('.') {
            continue;
        }
        let ft = e.file_type().map_err(|err| ws.io(&e.path(), err))?;
        let suffix = if ft.is_dir() {
            "/"
        } else if ft.is_symlink() {
            "@"
        } else {
            ""
        };
        let size = if long && ft.is_file() {
            e.metadata().map(|m| format!("\t{}", m.len())).unwrap_or_default()
        } else {
            String::new()
        };
        v.push(format!("{name}{suffix}{size}"));
    }
    v.sort();
    Ok(v)
}

fn ls(ws: &Ws, args: &[String]) -> Out {
    ws.can_read()?;
    let (flags, _, mut paths) = opts(args, "al1", "")?;
    if paths.is_empty() {
        paths.push(".".into());
    }
    let mut out = String::new();
    let many = paths.len() > 1;
    for p in &paths {
        let full = ws.resolve(p)?;
        let meta = std::fs::metadata(&full).map_err(|e| ws.io(&full, e))?;
        if meta.is_dir() {
            if many {
                out.push_str(&format!("{p}:\n"));
            }
            for l in dir_lines(ws, &full, flags.contains(&'a'), flags.contains(&'l'))? {
                out.push_str(&l);
                out.push('\n');
            }
        } else {
            out.push_str(&format!("{p}\n"));
        }
    }
    Ok((out.into_bytes(), 0))
}

/// Visits everything under `dir` without following symlinks, at most `MAX_WALK` entries.
fn walk(ws: &Ws, dir: &Path, f: &mut dyn FnMut(&Path, bool)) -> ToolResult<()> {
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d).map_err(|e| ws.io(&d, e))?.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        for e in entries {
            seen += 1;
            if seen > MAX_WALK {
                return failed(format!("more than {MAX_WALK} entries under {}", ws.show(dir)));
            }
            let p = e.path();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            f(&p, is_dir);
            if is_dir {
                stack.push(p);
            }
        }
    }
    Ok(())
}

fn glob(pat: &[char], s: &[char]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some('*'), _) => glob(&pat[1..], s) || (!s.is_empty() && glob(pat, &s[1..])),
        (Some('?'), Some(_)) => glob(&pat[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&pat[1..], &s[1..]),
        _ => false,
    }
}

fn find(ws: &Ws, args: &[String]) -> Out {
    ws.can_read()?;
    let mut roots = Vec::new();
    let (mut name, mut kind, mut maxdepth) = (None, None, usize::MAX);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| ToolError::Failed(format!("{a} needs a value")));
        match a.as_str() {
            "-name" => name = Some(val()?.chars().collect::<Vec<_>>()),
            "-type" => kind = Some(val()?),
            "-maxdepth" => maxdepth = num(&val()?)?,
            s if s.starts_with('-') => return failed(format!("unsupported expression {s}")),
            s => roots.push(s.to_string()),
        }
    }
    if roots.is_empty() {
        roots.push(".".into());
    }
    if name.as_ref().is_some_and(|n| n.len() > 256) {
        return failed("-name pattern is too long");
    }
    let mut out = String::new();
    for r in &roots {
        let base = ws.resolve(r)?;
        let depth_of = |p: &Path| p.strip_prefix(&base).map(|x| x.components().count()).unwrap_or(0);
        let mut visit = |p: &Path, is_dir: bool| {
            let ok_kind = match kind.as_deref() {
                Some("f") => !is_dir,
                Some("d") => is_dir,
                _ => true,
            };
            let fname: Vec<char> = p.file_name().map(|n| n.to_string_lossy().chars().collect()).unwrap_or_default();
            let ok_name = name.as_ref().is_none_or(|n| glob(n, &fname));
            if ok_kind && ok_name && depth_of(p) <= maxdepth {
                let rel = p.strip_prefix(&base).map(|x| x.display().to_string()).unwrap_or_default();
                out.push_str(&if rel.is_empty() { r.clone() } else { format!("{}/{rel}", r.trim_end_matches('/')) });
                out.push('\n');
            }
        };
        let meta = std::fs::symlink_metadata(&base).map_err(|e| ws.io(&base, e))?;
        visit(&base, meta.is_dir());
        if meta.is_dir() {
            walk(ws, &base, &mut visit)?;
        }
    }
    Ok((out.into_bytes(), 0))
}

fn mkdir(ws: &mut Ws, args: &[String]) -> Out {
    ws.can_write()?;
    let (flags, _, dirs) = opts(args, "p", "")?;
    for d in &dirs {
        let p = ws.resolve(d)?;
        if p.exists() {
            if flags.contains(&'p') {
                continue;
            }
            return failed(format!("{d}: already exists"));
        }
        let missing = p.ancestors().take_while(|a| !a.exists()).count() as u64;
        if missing > 1 && !flags.contains(&'p') {
            return failed(format!("{d}: parent directory does not exist (use -p)"));
        }
        ws.charge(0, missing)?;
        std::fs::create_dir_all(&p).map_err(|e| ws.io(&p, e))?;
    }
    Ok((Vec::new(), 0))
}

fn touch(ws: &mut Ws, args: &[String]) -> Out {
    ws.can_write()?;
    for f in args {
        let p = ws.resolve(f)?;
        if std::fs::symlink_metadata(&p).is_err() {
            ws.write_file(&p, b"", false)?;
        }
    }
    Ok((Vec::new(), 0))
}

fn rm(ws: &mut Ws, args: &[String]) -> Out {
    ws.can_write()?;
    let (flags, _, paths) = opts(args, "rRf", "")?;
    let recursive = flags.contains(&'r') || flags.contains(&'R');
    for f in &paths {
        let p = ws.resolve(f)?;
        if ws.is_root(&p) {
            return failed("refusing to remove the workspace root");
        }
        let res = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() && !recursive => return failed(format!("{f}: is a directory (use -r)")),
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(_) if flags.contains(&'f') => Ok(()),
            Err(e) => Err(e),
        };
        res.map_err(|e| ws.io(&p, e))?;
    }
    Ok((Vec::new(), 0))
}

/// Where `src` lands when copied or moved to `dst` (into `dst` if it is a directory).
fn target(src: &Path, dst: PathBuf) -> PathBuf {
    match src.file_name() {
        Some(n) if dst.is_dir() => dst.join(n),
        _ => dst,
    }
}

fn two(ws: &Ws, rest: &[String], cmd: &str) -> ToolResult<(PathBuf, PathBuf)> {
    let [src, dst] = rest else { return failed(format!("usage: {cmd} SOURCE DEST")) };
    let (s, d) = (ws.resolve(src)?, ws.resolve(dst)?);
    if ws.is_root(&s) {
        return failed(format!("cannot {cmd} the workspace root"));
    }
    Ok((s.clone(), target(&s, d)))
}

fn cp(ws: &mut Ws, args: &[String]) -> Out {
    ws.can_write()?;
    let (flags, _, rest) = opts(args, "rR", "")?;
    let (src, dst) = two(ws, &rest, "cp")?;
    let meta = std::fs::metadata(&src).map_err(|e| ws.io(&src, e))?;
    if !meta.is_dir() {
        let data = read_file(ws, &src)?;
        ws.write_file(&dst, &data, false)?;
        return Ok((Vec::new(), 0));
    }
    if !(flags.contains(&'r') || flags.contains(&'R')) {
        return failed(format!("{}: is a directory (use -r)", ws.show(&src)));
    }
    if dst.starts_with(&src) {
        return failed("cannot copy a directory into itself");
    }
    let mut items = Vec::new();
    walk(ws, &src, &mut |p, is_dir| items.push((p.to_path_buf(), is_dir)))?;
    ws.charge(0, 1)?;
    std::fs::create_dir_all(&dst).map_err(|e| ws.io(&dst, e))?;
    for (p, is_dir) in items {
        let Ok(rel) = p.strip_prefix(&src) else { continue };
        let to = dst.join(rel);
        if is_dir {
            ws.charge(0, 1)?;
            std::fs::create_dir_all(&to).map_err(|e| ws.io(&to, e))?;
        } else {
            let data = read_file(ws, &p)?;
            ws.write_file(&to, &data, false)?;
        }
    }
    Ok((Vec::new(), 0))
}

fn mv(ws: &mut Ws, args: &[String]) -> Out {
    ws.can_write()?;
    let (_, _, rest) = opts(args, "", "")?;
    let (src, dst) = two(ws, &rest, "mv")?;
    std::fs::rename(&src, &dst).map_err(|e| ws.io(&src, e))?;
    Ok((Vec::new(), 0))
}

fn ln(ws: &mut Ws, args: &[String]) -> Out {
    ws.can_write()?;
    let (flags, _, rest) = opts(args, "s", "")?;
    if flags.contains(&'s') {
        return failed("symbolic links cannot be created here");
    }
    let (src, dst) = two(ws, &rest, "ln")?;
    ws.charge(0, 1)?;
    std::fs::hard_link(&src, &dst).map_err(|e| ws.io(&src, e))?;
    Ok((Vec::new(), 0))
}

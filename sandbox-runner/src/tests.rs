//! Native tests of the runner's tools (the wasm build runs the same code; see host tests).

use sandbox_runner::protocol::{Access, Failure, Request, RequestLimits, Response};
use serde_json::{Value, json};

use crate::tools::handle;

fn call_with(dir: &std::path::Path, tool: &str, args: Value, access: Access, budget: Option<u64>) -> Response {
    let limits = RequestLimits { max_output_bytes: 4096, access, disk_budget_bytes: budget };
    handle(Request::new(1, tool, args, limits), dir.to_path_buf())
}

fn call(dir: &std::path::Path, tool: &str, args: Value) -> Response {
    call_with(dir, tool, args, Access::Rw, None)
}

fn sh(dir: &std::path::Path, cmd: &str) -> Response {
    call(dir, "exec", json!({ "command": cmd }))
}

#[test]
fn write_read_edit_list() {
    let d = tempfile::tempdir().unwrap();
    let r = call(d.path(), "write", json!({"path": "a/b.txt", "content": "one\ntwo\nthree\n"}));
    assert!(!r.is_error, "{r:?}");
    assert_eq!(call(d.path(), "read", json!({"path": "a/b.txt"})).output, "one\ntwo\nthree\n");
    let r = call(d.path(), "read", json!({"path": "a/b.txt", "offset": 2, "limit": 1}));
    assert_eq!(r.output, "two\n\n[more lines follow; continue with offset=3]");
    let r = call(d.path(), "edit", json!({"path": "a/b.txt", "oldText": "two", "newText": "2"}));
    assert!(!r.is_error, "{r:?}");
    assert_eq!(std::fs::read_to_string(d.path().join("a/b.txt")).unwrap(), "one\n2\nthree\n");
    let r = call(d.path(), "edit", json!({"path": "a/b.txt", "oldText": "e", "newText": "E"}));
    assert!(r.is_error && r.output.contains("occurs 3 times"), "{r:?}");
    let r = call(d.path(), "edit", json!({"path": "a/b.txt", "oldText": "zzz", "newText": "E"}));
    assert!(r.is_error && r.output.contains("not found"), "{r:?}");
    assert_eq!(call(d.path(), "list", json!({})).output, "a/");
    assert_eq!(call(d.path(), "list", json!({"path": "a"})).output, "b.txt\t12");
}

#[test]
fn bad_arguments_are_invalid_not_panics() {
    let d = tempfile::tempdir().unwrap();
    for (tool, args) in [
        ("read", json!({})),
        ("read", json!({"path": 5})),
        ("write", json!({"path": "x"})),
        ("edit", json!({"path": "x", "oldText": "", "newText": "y"})),
        ("exec", json!({"command": "echo $HOME"})),
        ("frobnicate", json!({})),
        ("read", json!({"path": "a\u{0}b"})),
    ] {
        let r = call(d.path(), tool, args.clone());
        assert_eq!(r.failure, Some(Failure::InvalidArguments), "{tool} {args}: {r:?}");
    }
}

#[test]
fn paths_are_confined_lexically() {
    let d = tempfile::tempdir().unwrap();
    let inner = d.path().join("ws");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(d.path().join("secret"), "s3cret").unwrap();
    for p in ["../secret", "/etc/passwd", "a/../../secret", "/workspace/../secret", "/workspacex/secret"] {
        let r = call(&inner, "read", json!({ "path": p }));
        assert!(r.is_error && r.output.contains("outside the workspace"), "{p}: {r:?}");
        let r = call(&inner, "write", json!({ "path": p, "content": "x" }));
        assert!(r.is_error && r.output.contains("outside the workspace"), "{p}: {r:?}");
    }
    assert!(sh(&inner, "cat ../secret").output.contains("outside the workspace"));
    assert!(sh(&inner, "ln ../secret x").output.contains("outside the workspace"));
    assert!(sh(&inner, "cp ../secret x").output.contains("outside the workspace"));
    assert!(sh(&inner, "echo x > ../y").is_error);
    assert!(!d.path().join("y").exists());
    call(&inner, "write", json!({"path": "/workspace/ok.txt", "content": "fine"}));
    assert_eq!(std::fs::read_to_string(inner.join("ok.txt")).unwrap(), "fine");
}

#[test]
fn read_only_and_no_access_are_enforced() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("f"), "x").unwrap();
    let r = call_with(d.path(), "write", json!({"path": "f", "content": "y"}), Access::Ro, None);
    assert!(r.is_error && r.output.contains("read-only"), "{r:?}");
    let r = call_with(d.path(), "exec", json!({"command": "rm f"}), Access::Ro, None);
    assert!(r.is_error && r.output.contains("read-only"), "{r:?}");
    assert_eq!(call_with(d.path(), "read", json!({"path": "f"}), Access::Ro, None).output, "x");
    let r = call_with(d.path(), "read", json!({"path": "f"}), Access::None, None);
    assert!(r.is_error && r.output.contains("no workspace access"), "{r:?}");
}

#[test]
fn quota_limits_growth() {
    let d = tempfile::tempdir().unwrap();
    let r = call_with(d.path(), "write", json!({"path": "f", "content": "x".repeat(1000)}), Access::Rw, Some(1000));
    assert_eq!(r.failure, Some(Failure::Quota), "{r:?}");
    assert!(!d.path().join("f").exists());
    let r = call_with(d.path(), "write", json!({"path": "f", "content": "x".repeat(500)}), Access::Rw, Some(1000));
    assert!(!r.is_error, "{r:?}");
    let r = call_with(d.path(), "exec", json!({"command": "mkdir a b c d e"}), Access::Rw, Some(1000));
    assert_eq!(r.failure, Some(Failure::Quota), "{r:?}");
    let r = call_with(d.path(), "exec", json!({"command": "cat f f f > g"}), Access::Rw, Some(1000));
    assert_eq!(r.failure, Some(Failure::Quota), "{r:?}");
}

#[test]
fn exec_builtins_and_pipes() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let check = |cmd: &str, want: &str| {
        let r = sh(p, cmd);
        assert_eq!(r.output, want, "{cmd}: {r:?}");
    };
    check("echo hello world", "hello world\n");
    check(
        "printf x",
        "printf: command not found (built-ins: cat cp echo false find grep head ln ls mkdir mv pwd rm sort tail touch true uniq wc; no native programs can run here)\n",
    );
    check("mkdir -p d/e && echo b > d/e/f.txt && echo a >> d/e/f.txt && cat d/e/f.txt", "b\na\n");
    check("cat d/e/f.txt | sort", "a\nb\n");
    check("cat d/e/f.txt | sort -r | head -n 1", "b\n");
    check("echo c; echo b; echo a", "c\nb\na\n");
    check("cat d/e/f.txt | wc -l", "2\n");
    check("find . -name *.txt", "./d/e/f.txt\n");
    check("find d -type d", "d\nd/e\n");
    check("cp d/e/f.txt g.txt && mv g.txt h.txt && ls", "d/\nh.txt\n");
    check("grep -n a h.txt", "2:a\n");
    check("grep zzz h.txt || echo none", "none\n");
    check("tail -n 1 h.txt", "a\n");
    check("echo x > u; echo x >> u; echo y >> u; uniq -c u", "      2 x\n      1 y\n");
    check("rm -r d && ls", "h.txt\nu\n");
    check("ln h.txt k && cat k", "b\na\n");
    check("cat < h.txt | grep -c b", "1\n");
    let r = sh(p, "false");
    assert!(r.is_error && r.exit_code == Some(1));
    let r = sh(p, "cat nope");
    assert!(r.is_error && r.output.contains("no such file"), "{r:?}");
    assert!(sh(p, "rm -r .").output.contains("workspace root"));
}

#[test]
fn output_is_capped() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("big"), "é".repeat(10_000)).unwrap();
    let r = call(d.path(), "read", json!({"path": "big"}));
    assert!(r.truncated && r.output.len() <= 4096, "{}", r.output.len());
}

/// Native `exec` (the Docker sandbox's), run here with the host's `/bin/sh`.
#[cfg(not(target_os = "wasi"))]
mod native_exec {
    use super::*;
    use crate::tools::{ExecMode, handle_with};

    fn native(dir: &std::path::Path, args: Value, max: u64) -> Response {
        native_with(dir, args, max, None)
    }

    fn native_with(dir: &std::path::Path, args: Value, max: u64, budget: Option<u64>) -> Response {
        let limits = RequestLimits { max_output_bytes: max, access: Access::Rw, disk_budget_bytes: budget };
        handle_with(Request::new(1, "exec", args, limits), dir.to_path_buf(), ExecMode::Native)
    }

    #[test]
    fn the_disk_budget_holds_while_a_command_runs() {
        const MB: u64 = 1 << 20;
        let d = tempfile::tempdir().unwrap();
        let used = || sandbox_runner::quota::disk_usage(d.path());
        // One big file: stopped by the file-size limit at the budget, reported as the quota.
        let r =
            native_with(d.path(), json!({"command": "head -c 20000000 /dev/zero > big; echo after"}), 4096, Some(MB));
        assert_eq!(r.failure, Some(Failure::Quota), "{r:?}");
        assert!(used() <= MB + 4096, "{} bytes written", used());
        // It cannot raise the limit again.
        let r = native_with(d.path(), json!({"command": "ulimit -f unlimited && echo raised"}), 4096, Some(MB));
        assert!(!r.output.contains("raised"), "{r:?}");
        // Many files each under the limit: the watchdog kills the command near the budget.
        let many = "i=0; while true; do head -c 100000 /dev/zero > f$i; i=$((i+1)); done";
        let t = std::time::Instant::now();
        let r = native_with(d.path(), json!({"command": many, "timeoutSec": 60}), 4096, Some(2 * MB));
        assert_eq!(r.failure, Some(Failure::Quota), "{r:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "{:?}", t.elapsed());
        // The watchdog polls, so a busy machine can overshoot by what one poll lets through;
        // without it the loop would write for the whole 60 s timeout (gigabytes).
        assert!(used() <= 16 * MB, "{} bytes written", used());
        // Within the budget, a command runs normally; without one, nothing is limited.
        let r = native_with(d.path(), json!({"command": "head -c 1000 /dev/zero > small && echo ok"}), 4096, Some(MB));
        assert_eq!((r.output.as_str(), r.failure), ("ok\n", None), "{r:?}");
        let r = native(d.path(), json!({"command": "head -c 3000000 /dev/zero > free && echo ok"}), 4096);
        assert_eq!((r.output.as_str(), r.failure), ("ok\n", None), "{r:?}");
    }

    #[test]
    fn runs_a_real_shell_in_the_workspace_with_a_scrubbed_environment() {
        let d = tempfile::tempdir().unwrap();
        let r = native(d.path(), json!({"command": "pwd; echo out; echo err >&2; env | sort; exit 3"}), 4096);
        assert_eq!(r.exit_code, Some(3));
        assert!(r.is_error && r.failure.is_none(), "{r:?}");
        let cwd = std::fs::canonicalize(d.path()).unwrap();
        assert!(r.output.starts_with(&format!("{}\nout\nerr\n", cwd.display())), "{r:?}");
        for line in r.output.lines().skip(3) {
            let key = line.split('=').next().unwrap();
            assert!(["HOME", "LANG", "PATH", "PWD", "SHLVL", "TMPDIR", "_", "OLDPWD"].contains(&key), "{line}");
        }
        let r = native(d.path(), json!({"command": "cat", "stdin": "piped in"}), 4096);
        assert_eq!(r.output, "piped in");
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        let d = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        let cmd = "sh -c 'sleep 30' & echo $! > child; (sleep 31 & echo $! > grandchild; wait) & sleep 32";
        let r = native(d.path(), json!({"command": cmd, "timeoutSec": 0.5}), 4096);
        assert_eq!(r.failure, Some(Failure::Timeout), "{r:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "{:?}", t.elapsed());
        for f in ["child", "grandchild"] {
            let pid = std::fs::read_to_string(d.path().join(f)).unwrap();
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
            let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start().chars().next().unwrap_or('?'));
            assert!(stat.is_empty() || state == Some('Z'), "{f} {} survived: {stat}", pid.trim());
        }
    }

    #[test]
    fn output_is_capped_and_bad_arguments_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = native(d.path(), json!({"command": "head -c 100000 /dev/zero | tr '\\0' y"}), 1000);
        assert!(r.truncated && r.output.len() == 1000 && r.exit_code == Some(0), "{}", r.output.len());
        for args in
            [json!({}), json!({"command": "x", "timeoutSec": -1}), json!({"command": "a\u{0}b"}), json!({"command": 1})]
        {
            assert_eq!(native(d.path(), args.clone(), 100).failure, Some(Failure::InvalidArguments), "{args}");
        }
    }
}

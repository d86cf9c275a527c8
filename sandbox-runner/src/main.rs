//! The sandbox runner: reads request frames on stdin, runs the tools, writes response frames.
//!
//! The same program runs under wasmtime (`wasm32-wasip1`, the workspace preopened at
//! `/workspace`, one request per run) and natively as the main process of a Docker sandbox
//! (`--serve --native-exec`: one request after another over the attached stdin/stdout, `exec`
//! through a real shell). It never trusts its input: a bad frame gets a `protocol` failure
//! response, never a panic.

mod builtins;
#[cfg(not(target_os = "wasi"))]
mod native;
mod tools;
mod ws;

use std::io::{Read, Write};
use std::path::PathBuf;

use sandbox_runner::protocol::{self, Failure, MAX_REQUEST_FRAME, Response, WORKSPACE_DIR};

use crate::tools::ExecMode;

fn main() {
    // `--workspace DIR` overrides the root (native runs); under wasm it is always the preopen.
    let args: Vec<String> = std::env::args().collect();
    let root = match args.iter().position(|a| a == "--workspace") {
        Some(i) => args.get(i + 1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(WORKSPACE_DIR)),
        None => PathBuf::from(WORKSPACE_DIR),
    };
    let mode = if args.iter().any(|a| a == "--native-exec") { ExecMode::Native } else { ExecMode::Builtins };
    if args.iter().any(|a| a == "--serve") {
        #[cfg(not(target_os = "wasi"))]
        if mode == ExecMode::Native {
            native::SWEEP.store(true, std::sync::atomic::Ordering::Relaxed);
            // Commands run as this process's uid: not dumpable, its /proc entries (fds, memory,
            // environment) are root's and it cannot be ptraced, so a command can neither read
            // nor forge the protocol stream. (Commands are execve'd and dumpable again.)
            if let Err(e) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
                eprintln!("sandbox-runner: cannot make the runner non-dumpable: {e}");
                std::process::exit(2);
            }
        }
        std::process::exit(serve(root, mode));
    }
    let mut frame = Vec::new();
    let read = std::io::stdin().lock().take(MAX_REQUEST_FRAME as u64 + 5).read_to_end(&mut frame);
    let resp = match read {
        Err(e) => Response::failure(Failure::Protocol, format!("cannot read the request: {e}")),
        Ok(_) => match protocol::decode_request(&frame) {
            Ok(req) => tools::handle_with(req, root, mode),
            Err(e) => Response::failure(Failure::Protocol, e.to_string()),
        },
    };
    let mut out = std::io::stdout().lock();
    // If the host's pipe refuses the frame there is nobody left to tell.
    let _ = out.write_all(&protocol::encode(&resp)).and_then(|()| out.flush());
}

/// Answers frames until stdin closes (exit 0). A frame that cannot be read whole, or that
/// declares more than `MAX_REQUEST_FRAME` bytes, is answered with a `protocol` failure and ends
/// the runner (exit 2): the stream cannot be trusted to be in step after it.
fn serve(root: PathBuf, mode: ExecMode) -> i32 {
    let mut input = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    loop {
        let mut head = [0u8; 4];
        match input.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return 0,
            Err(_) => return 2,
        }
        let len = protocol::frame_len(head);
        let (resp, fatal) = if len > MAX_REQUEST_FRAME {
            let e = protocol::FrameError::TooLarge { len, max: MAX_REQUEST_FRAME };
            (Response::failure(Failure::Protocol, e.to_string()), true)
        } else {
            let mut frame = head.to_vec();
            frame.resize(4 + len, 0);
            match input.read_exact(&mut frame[4..]) {
                Err(e) => (Response::failure(Failure::Protocol, format!("cannot read the request: {e}")), true),
                Ok(()) => match protocol::decode_request(&frame) {
                    Ok(req) => (tools::handle_with(req, root.clone(), mode), false),
                    Err(e) => (Response::failure(Failure::Protocol, e.to_string()), false),
                },
            }
        };
        if out.write_all(&protocol::encode(&resp)).and_then(|()| out.flush()).is_err() {
            return 2;
        }
        if fatal {
            return 2;
        }
    }
}

#[cfg(test)]
mod tests;

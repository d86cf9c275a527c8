//! The sandbox runner: reads request frames on stdin, runs the tools, writes response frames.
//!
//! The same program runs under wasmtime (`wasm32-wasip1`, the workspace preopened at
//! `/workspace`, one request per run) and natively as PID 1 of a Docker sandbox
//! (`--serve --native-exec`: one request after another over the attached stdin/stdout, `exec`
//! through a real shell). Either way the first frame is the host's `Hello` with the channel key,
//! and every response is sealed with it for its request's id. It never trusts its input: a bad
//! frame gets a `protocol` failure response, never a panic.
#![forbid(unsafe_code)]

mod builtins;
#[cfg(not(target_os = "wasi"))]
mod native;
mod tools;
mod ws;

use std::io::{Read, Write};
use std::path::PathBuf;

use sandbox_runner::protocol::{
    self, ChannelKey, Failure, MAX_HELLO_FRAME, MAX_REQUEST_FRAME, Response, WORKSPACE_DIR,
};

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
            // The runner is the container's PID 1 and holds the protocol pipes; commands run as
            // its uid. Not dumpable, its /proc entries (fds, memory, environment) are root's and
            // it cannot be ptraced, so a command can neither read nor write the protocol stream
            // or the channel key. (Commands are execve'd and dumpable again.)
            if let Err(e) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
                eprintln!("sandbox-runner: cannot make the runner non-dumpable: {e}");
                std::process::exit(2);
            }
        }
        std::process::exit(serve(root, mode));
    }
    let mut input = Vec::new();
    let max = MAX_HELLO_FRAME + MAX_REQUEST_FRAME + 8;
    if let Err(e) = std::io::stdin().lock().take(max as u64 + 1).read_to_end(&mut input) {
        eprintln!("sandbox-runner: cannot read the input: {e}");
        std::process::exit(2);
    }
    let (key, frame) = match split_hello(&input) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("sandbox-runner: {e}");
            std::process::exit(2);
        }
    };
    let (id, resp) = match protocol::decode_request(frame) {
        Ok(req) => (req.id, tools::handle_with(req, root, mode)),
        Err(e) => (0, Response::failure(Failure::Protocol, e.to_string())),
    };
    let mut out = std::io::stdout().lock();
    // If the host's pipe refuses the frame there is nobody left to tell.
    let _ = out.write_all(&key.seal(id, &resp)).and_then(|()| out.flush());
}

/// Splits one-shot input into the channel key (the hello frame) and the request frame after it.
fn split_hello(input: &[u8]) -> Result<(ChannelKey, &[u8]), String> {
    let head: [u8; 4] = input.get(..4).and_then(|h| h.try_into().ok()).ok_or("no hello frame")?;
    let len = protocol::frame_len(head);
    if len > MAX_HELLO_FRAME || input.len() < 4 + len {
        return Err("the hello frame is truncated or too large".into());
    }
    let (hello, rest) = input.split_at(4 + len);
    let key = ChannelKey::from_hello(hello).map_err(|e| format!("bad hello frame: {e}"))?;
    Ok((key, rest))
}

/// Reads one frame's bytes (header included) of at most `max` body bytes.
fn read_frame(input: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, String> {
    let mut head = [0u8; 4];
    match input.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("cannot read a frame: {e}")),
    }
    let len = protocol::frame_len(head);
    if len > max {
        return Err(protocol::FrameError::TooLarge { len, max }.to_string());
    }
    let mut frame = head.to_vec();
    frame.resize(4 + len, 0);
    input.read_exact(&mut frame[4..]).map_err(|e| format!("cannot read the request: {e}"))?;
    Ok(Some(frame))
}

/// Reads the hello, then answers request frames until stdin closes (exit 0). Without a valid
/// hello there is no key to answer with (exit 2). A frame that cannot be read whole, or that
/// declares more than `MAX_REQUEST_FRAME` bytes, is answered with a `protocol` failure and ends
/// the runner (exit 2): the stream cannot be trusted to be in step after it.
fn serve(root: PathBuf, mode: ExecMode) -> i32 {
    let mut input = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let key = match read_frame(&mut input, MAX_HELLO_FRAME).map(|f| f.map(|f| ChannelKey::from_hello(&f))) {
        Ok(Some(Ok(key))) => key,
        Ok(None) => return 0,
        Ok(Some(Err(e))) => {
            eprintln!("sandbox-runner: bad hello frame: {e}");
            return 2;
        }
        Err(e) => {
            eprintln!("sandbox-runner: {e}");
            return 2;
        }
    };
    loop {
        let (id, resp, fatal) = match read_frame(&mut input, MAX_REQUEST_FRAME) {
            Ok(None) => return 0,
            Err(e) => (0, Response::failure(Failure::Protocol, e), true),
            Ok(Some(frame)) => match protocol::decode_request(&frame) {
                Ok(req) => (req.id, tools::handle_with(req, root.clone(), mode), false),
                Err(e) => (0, Response::failure(Failure::Protocol, e.to_string()), false),
            },
        };
        if out.write_all(&key.seal(id, &resp)).and_then(|()| out.flush()).is_err() {
            return 2;
        }
        if fatal {
            return 2;
        }
    }
}

#[cfg(test)]
mod tests;

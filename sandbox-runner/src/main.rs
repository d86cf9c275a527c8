//! The sandbox runner: reads one request frame on stdin, runs the tool, writes one response frame.
//!
//! The same program runs under wasmtime (`wasm32-wasip1`, the workspace preopened at
//! `/workspace`) and natively in the Docker image. It never trusts its input: a bad frame gets a
//! `protocol` failure response, never a panic.

mod builtins;
mod tools;
mod ws;

use std::io::{Read, Write};
use std::path::PathBuf;

use sandbox_runner::protocol::{self, Failure, MAX_REQUEST_FRAME, Response, WORKSPACE_DIR};

fn main() {
    // `--workspace DIR` overrides the root (native runs); under wasm it is always the preopen.
    let args: Vec<String> = std::env::args().collect();
    let root = match args.iter().position(|a| a == "--workspace") {
        Some(i) => args.get(i + 1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(WORKSPACE_DIR)),
        None => PathBuf::from(WORKSPACE_DIR),
    };
    let mut frame = Vec::new();
    let read = std::io::stdin().lock().take(MAX_REQUEST_FRAME as u64 + 5).read_to_end(&mut frame);
    let resp = match read {
        Err(e) => Response::failure(Failure::Protocol, format!("cannot read the request: {e}")),
        Ok(_) => match protocol::decode_request(&frame) {
            Ok(req) => tools::handle(req, root),
            Err(e) => Response::failure(Failure::Protocol, e.to_string()),
        },
    };
    let mut out = std::io::stdout().lock();
    // If the host's pipe refuses the frame there is nobody left to tell.
    let _ = out.write_all(&protocol::encode(&resp)).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests;

//! The sandbox runner's shared half: the host↔runner protocol, the disk-quota rule and the `exec`
//! command-line parser.
//!
//! Both the host and the runner program (inside a wasm or Docker sandbox) link this crate, so the
//! two sides can never disagree about frames or about how a command line splits into stages. The
//! tools themselves live in the runner binary (`src/main.rs`), never in the host.
#![forbid(unsafe_code)]

pub mod protocol;
pub mod quota;
pub mod shell;

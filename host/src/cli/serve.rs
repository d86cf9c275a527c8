//! `bulkhead serve`: runs the gateway until SIGINT/SIGTERM.

use std::sync::Arc;

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::config::LogFormat;
use crate::gateway::{self, Gateway, Parts};

pub fn run(source: &ConfigSource, log_format: Option<LogFormat>) -> i32 {
    let config = match source.load(true) {
        Ok(c) => c,
        Err(e) => {
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    crate::logging::init(log_format.unwrap_or(config.logging.format), &config.logging.level);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    runtime.block_on(async move {
        let bind = config.gateway.bind;
        let (tenants, agents) = (config.tenants.len(), config.agents.len());
        let gw = match Gateway::start(config, Parts::fail_closed()) {
            Ok(g) => Arc::new(g),
            Err(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return EXIT_INVALID;
            }
        };
        let listener = match tokio::net::TcpListener::bind(bind).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {bind}: {e}");
                return EXIT_FAILURE;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, tenants, agents, "Gateway listening.");
        // A stable line on stdout so scripts and tests can find an ephemeral port.
        println!("listening on http://{addr}");
        match gateway::run(gw, listener, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("Gateway stopped.");
                EXIT_OK
            }
            Err(e) => {
                tracing::error!(error = %e, "Gateway failed.");
                EXIT_FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("Shutdown requested: no longer accepting requests.");
}

//! `bulkhead serve`: runs the application (`crate::app`) until SIGINT/SIGTERM; SIGHUP reloads.

use std::io::Write;

use super::{ConfigSource, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use crate::app::{App, StartError};
use crate::config::LogFormat;

/// The documented exit code of a start-up error: 2 for what the operator must fix in the config
/// or its keys, 1 for run-time failures.
pub fn exit_code(e: &StartError) -> i32 {
    use crate::audit::AuditOpenError;
    use crate::store::StoreOpenError;
    match e {
        StartError::Invalid(_) => EXIT_INVALID,
        StartError::Store(StoreOpenError::Locked { .. } | StoreOpenError::Io { .. }) => EXIT_FAILURE,
        StartError::Store(_) => EXIT_INVALID,
        StartError::Audit(AuditOpenError::Locked { .. }) => EXIT_FAILURE,
        StartError::Audit(_) => EXIT_INVALID,
        StartError::Failed(_) => EXIT_FAILURE,
    }
}

/// Prints a start-up error, one line per problem, on stderr.
pub fn report(e: &StartError) {
    match e {
        StartError::Invalid(errors) => errors.iter().for_each(|e| eprintln!("error: {e}")),
        other => eprintln!("error: {other}"),
    }
}

/// `watch`: reload when the config file or its drop-in folder changes.
pub fn run(source: &ConfigSource, log_format: Option<LogFormat>, watch: bool) -> i32 {
    let (config, app_source) = match source.load_for_app(true) {
        Ok((c, s)) => (c, crate::app::Source { watch: watch && s.file.is_some(), ..s }),
        Err(e) => {
            super::report_load_error(&e);
            return EXIT_INVALID;
        }
    };
    crate::logging::init(log_format.unwrap_or(config.logging.format), &config.logging.level);
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
        let app = match App::build(config, app_source).await {
            Ok(a) => a,
            Err(e) => {
                report(&e);
                return exit_code(&e);
            }
        };
        let listener = match tokio::net::TcpListener::bind(bind).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {bind}: {e}");
                return EXIT_FAILURE;
            }
        };
        let shutdown = shutdown_signal();
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, tenants, agents, tls = app.tls(), "Gateway listening.");
        // A stable line on stdout so scripts and tests can find an ephemeral port. The gateway
        // keeps serving if nobody reads it.
        let scheme = if app.tls() { "https" } else { "http" };
        let _ = writeln!(std::io::stdout(), "listening on {scheme}://{addr}");
        match app.run(listener, shutdown).await {
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

/// Resolves on SIGINT or SIGTERM. The SIGTERM handler is installed when this is called (before
/// the "listening" line), so a SIGTERM right after start still drains instead of killing.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term_signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async move {
            match term_signal {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {},
            () = term => {},
        }
    }
}

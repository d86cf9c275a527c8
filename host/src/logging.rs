//! Log set-up: `tracing` to stderr, human-readable or JSON. Content and secrets are never logged
//! at info or above (see SECURITY.md).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// `RUST_LOG` wins over the configured level.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

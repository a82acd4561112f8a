//! Logging set-up: human-readable on a terminal, JSON otherwise (or with `TASKORCH_LOG_FORMAT=json`); level from
//! `TASKORCH_LOG` or `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Logs go to stderr; stdout carries only the bound URL.
pub fn init(json: Option<bool>) {
    let filter = EnvFilter::try_from_env("TASKORCH_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sea_orm=warn,sqlx=warn"));
    let json = json.unwrap_or_else(|| !std::io::stderr().is_terminal());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
}

//! Telemetry of the server binary: logs and traces, set up by the shared `taskorch_worker::observe`.

use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::config::Config;

/// Installs logging and, with `TASKORCH_OTLP_ENDPOINT`, trace export. Shut the provider down before exiting.
pub fn init(config: &Config) -> anyhow::Result<Option<SdkTracerProvider>> {
    taskorch_worker::observe::init_tracing("taskorch", config.worker.log_json, config.worker.otlp_endpoint.as_deref())
}

//! `taskorch-worker`: a separate worker process.

use std::sync::Arc;

use clap::Parser;
use taskorch_worker::config::Config;
use taskorch_worker::{Registry, setup};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter(env_filter()).with_writer(std::io::stderr).init();
    let config = Config::parse();
    if let Err(err) = run(config).await {
        eprintln!("taskorch-worker: {err}");
        std::process::exit(1);
    }
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("TASKORCH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let registry = Arc::new(Registry::with_builtins(config.registry_options()));
    let backends = setup::connect(&config, config.engine_options(), registry.kinds()).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    println!("taskorch-worker running (concurrency {})", config.concurrency);
    setup::run(backends, registry, config.worker_options(), true, shutdown).await;
    Ok(())
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping: no new claims, finishing in-flight attempts");
    shutdown.cancel();
}

//! `taskorch-worker`: a separate worker process.

use std::sync::Arc;

use clap::Parser;
use taskorch_engine::db::{Database, redact};
use taskorch_engine::store::Store;
use taskorch_engine::{Engine, InProcessEventBus};
use taskorch_worker::config::Config;
use taskorch_worker::{Registry, run_embedded};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr)
        .init();
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
    let db = Database::connect(&config.database_url, config.pools())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "TASKORCH_DATABASE_URL ({}) is unusable: {e}",
                redact(&config.database_url)
            )
        })?;
    db.migrate()
        .await
        .map_err(|e| anyhow::anyhow!("migrations failed: {e}"))?;
    let engine = Engine::new(
        Store::new(db),
        Arc::new(InProcessEventBus::default()),
        config.engine_options(),
    );
    let registry = Arc::new(Registry::with_builtins(config.registry_options()));
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    println!(
        "taskorch-worker running (concurrency {})",
        config.concurrency
    );
    run_embedded(engine, registry, config.worker_options(), shutdown).await;
    Ok(())
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping: no new claims, finishing in-flight attempts");
    shutdown.cancel();
}

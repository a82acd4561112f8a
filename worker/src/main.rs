//! `taskorch-worker`: a separate worker process.

use std::sync::Arc;

use clap::Parser;
use taskorch_worker::config::Config;
use taskorch_worker::{Registry, observe, setup};
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
    let metrics = observe::install_metrics();
    let registry = Arc::new(Registry::with_builtins(config.registry_options()));
    let backends = setup::connect(&config, config.engine_options(), registry.kinds()).await?;
    if let Some(listen) = &config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("TASKORCH_METRICS_LISTEN ({listen}) cannot be bound: {e}"))?;
        println!("taskorch-worker metrics on http://{}/metrics", listener.local_addr()?);
        let app = observe::router(metrics, backends.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
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

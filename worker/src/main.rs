//! `taskorch-worker`: a separate worker process.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::Arc;

use clap::Parser;
use taskorch_worker::config::Config;
use taskorch_worker::{Registry, observe, setup};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    let traces = match observe::init_tracing("taskorch-worker", config.log_json, config.otlp_endpoint.as_deref()) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("taskorch-worker: {err}");
            std::process::exit(1);
        }
    };
    let result = run(config).await;
    observe::shutdown_tracing(traces).await;
    if let Err(err) = result {
        eprintln!("taskorch-worker: {err}");
        std::process::exit(1);
    }
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
    let shutdown = setup::stop_on_signal();
    println!("taskorch-worker running (concurrency {})", config.concurrency);
    setup::run(backends, registry, config.worker_options(), true, shutdown).await;
    Ok(())
}

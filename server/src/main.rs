//! `taskorch`: the server binary. With no configuration it runs everything in one process on a SQLite file.

use std::sync::Arc;

use axum::serve::ListenerExt;
use clap::Parser;
use taskorch_server::app::{AppOptions, router};
use taskorch_server::config::{Command, Config};
use taskorch_server::{graphql, telemetry};
use taskorch_worker::{Registry, observe, setup};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    let traces = match telemetry::init(&config) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("taskorch: {err}");
            std::process::exit(1);
        }
    };
    let result = run(config).await;
    observe::shutdown_tracing(traces).await;
    if let Err(err) = result {
        eprintln!("taskorch: {err}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(Command::PrintSchema) = config.command {
        print!("{}", graphql::sdl());
        return Ok(());
    }
    let metrics = taskorch_worker::observe::install_metrics();
    let registry = Arc::new(Registry::with_builtins(config.worker.registry_options()));
    let backends = setup::connect(&config.worker, config.engine_options(), registry.kinds()).await?;
    if let Some(Command::Migrate) = config.command {
        println!("migrations applied");
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("TASKORCH_LISTEN ({}) cannot be bound: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    println!("taskorch listening on http://{addr}/graphql (playground: http://{addr}/playground)");

    let shutdown = setup::stop_on_signal();
    let work = tokio::spawn(setup::run(
        backends.clone(),
        registry,
        config.worker.worker_options(),
        !config.no_worker,
        shutdown.clone(),
    ));
    let app = router(
        backends,
        AppOptions { max_body_bytes: config.max_body_bytes, cors_origins: config.cors_origins.clone(), metrics },
    );
    // Without TCP_NODELAY small responses wait for delayed ACKs (tens of milliseconds per request).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let stop = shutdown.clone();
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
    let _ = work.await;
    Ok(())
}

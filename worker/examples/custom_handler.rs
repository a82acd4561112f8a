//! A worker with a custom handler: `cargo run -p taskorch-worker --example custom_handler`.
//! Tasks of kind `greet` with payload `{"name": "Ada"}` complete with `{"greeting": "hello Ada"}`.

use std::sync::Arc;

use serde_json::json;
use taskorch_engine::db::{DEFAULT_URL, Database, PoolOptions};
use taskorch_engine::store::Store;
use taskorch_engine::{Engine, EngineOptions, InProcessEventBus};
use taskorch_worker::{HandlerError, Registry, RegistryOptions, TaskContext, WorkerOptions, run_embedded};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = Database::connect(DEFAULT_URL, PoolOptions::default()).await?;
    db.migrate().await?;
    let engine = Engine::new(Store::new(db), Arc::new(InProcessEventBus::default()), EngineOptions::default());
    let mut registry = Registry::with_builtins(RegistryOptions::default());
    registry.register_fn("greet", |ctx: TaskContext| async move {
        let name =
            ctx.payload.get("name").and_then(|n| n.as_str()).ok_or_else(|| HandlerError::new("greet needs a name"))?;
        Ok(json!({ "greeting": format!("hello {name}") }))
    });
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    run_embedded(engine, Arc::new(registry), WorkerOptions::default(), shutdown).await;
    Ok(())
}

//! Wiring shared by the server and the worker binaries: the database, the event bus (in-process or Redis) and the
//! queue (in-process or RabbitMQ) chosen from the configuration, and the loops each process runs.

use std::sync::Arc;

use taskorch_engine::cache::{NoCache, ReadCache, RedisCache};
use taskorch_engine::db::{Database, redact};
use taskorch_engine::dispatcher::{DispatcherOptions, run_dispatcher, run_reaper};
use taskorch_engine::queue::{RabbitMqOptions, RabbitMqQueue};
use taskorch_engine::snapshot::SnapshotCache;
use taskorch_engine::store::Store;
use taskorch_engine::{Engine, EngineOptions, EventBus, InProcessEventBus, RedisEventBus, TaskQueue};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::{Registry, WorkerOptions, run_embedded, run_worker};

/// The connected backends of one process.
#[derive(Clone)]
pub struct Backends {
    pub engine: Engine,
    /// The broker queue, when `TASKORCH_AMQP_URL` is set.
    pub broker: Option<Arc<dyn TaskQueue>>,
}

/// Connects to the configured services; an unusable URL is a one-line error naming its variable.
pub async fn connect(
    config: &Config,
    engine_options: EngineOptions,
    known_kinds: Vec<String>,
) -> anyhow::Result<Backends> {
    let url = &config.database_url;
    let db = Database::connect(url, config.pools())
        .await
        .map_err(|e| anyhow::anyhow!("TASKORCH_DATABASE_URL ({}) is unusable: {e}", redact(url)))?;
    db.migrate().await.map_err(|e| anyhow::anyhow!("migrations failed: {e}"))?;
    let (bus, cache): (Arc<dyn EventBus>, Arc<dyn ReadCache>) = match &config.redis_url {
        None => (Arc::new(InProcessEventBus::default()), Arc::new(NoCache)),
        Some(url) => {
            let unreachable =
                |e: redis::RedisError| anyhow::anyhow!("TASKORCH_REDIS_URL ({}) is unreachable: {e}", redact(url));
            let bus = RedisEventBus::connect(url, &config.namespace).await.map_err(unreachable)?;
            let ttl = std::time::Duration::from_millis(config.cache_ttl_ms);
            let cache = RedisCache::connect(url, &config.namespace, ttl).await.map_err(unreachable)?;
            (Arc::new(bus), Arc::new(cache))
        }
    };
    let broker: Option<Arc<dyn TaskQueue>> = match &config.amqp_url {
        None => None,
        Some(url) => Some(Arc::new(
            RabbitMqQueue::connect(RabbitMqOptions {
                url: url.clone(),
                namespace: config.namespace.clone(),
                kinds: config.kinds.clone(),
                known_kinds,
                prefetch: u16::try_from(config.concurrency).unwrap_or(u16::MAX),
            })
            .await
            .map_err(|e| anyhow::anyhow!("TASKORCH_AMQP_URL ({}) is unreachable: {e}", redact(url)))?,
        )),
    };
    // Without a shared bus (embedded default), hot reads are kept while the SQLite file is unchanged.
    let snapshot = if config.redis_url.is_none() { SnapshotCache::for_url(url) } else { None };
    Ok(Backends { engine: Engine::with_caches(Store::new(db), bus, cache, snapshot, engine_options), broker })
}

/// Runs this process's share of the work until `shutdown`: with a broker, a dispatcher and a reaper (every process
/// runs them; they are safe side by side) plus, when `worker` is on, a worker consuming the broker; without one,
/// the embedded mode (dispatcher, reaper and worker over an in-process queue) when `worker` is on.
pub async fn run(
    backends: Backends,
    registry: Arc<Registry>,
    opts: WorkerOptions,
    worker: bool,
    shutdown: CancellationToken,
) {
    let engine = backends.engine;
    match backends.broker {
        None if worker => run_embedded(engine, registry, opts, shutdown).await,
        None => shutdown.cancelled().await,
        Some(queue) => {
            // Dispatching stops as soon as the stop begins; what is in the broker stays there for other workers.
            let dispatcher = tokio::spawn(run_dispatcher(
                engine.clone(),
                queue.clone(),
                DispatcherOptions { kinds: None, max_backlog: usize::MAX },
                shutdown.clone(),
            ));
            let reaper = tokio::spawn(run_reaper(engine.clone(), engine.options().reaper_period, shutdown.clone()));
            if worker {
                run_worker(engine, queue, registry, opts, shutdown).await;
            } else {
                shutdown.cancelled().await;
            }
            let _ = dispatcher.await;
            let _ = reaper.await;
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT: the graceful stop of either binary.
pub fn stop_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: no new claims, finishing in-flight attempts");
        stop.cancel();
    });
    token
}

//! `taskorch`: the server binary. With no configuration it runs everything in one process on a SQLite file.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::Arc;

use axum::serve::ListenerExt;
use clap::Parser;
use taskorch_engine::auth::{Auth, Bootstrap};
use taskorch_engine::ratelimit::{InProcessRateLimiter, RateLimiter, RedisRateLimiter};
use taskorch_server::app::{AppOptions, router};
use taskorch_server::config::{Command, Config};
use taskorch_server::graphql::SchemaOptions;
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
    let (auth, bootstrap) = Auth::init(
        backends.engine.store().clone(),
        backends.engine.snapshot(),
        backends.engine.shared_cache(),
        config.security.auth_options()?,
    )
    .await
    .map_err(|e| anyhow::anyhow!("authentication setup failed: {e}"))?;
    let quotas = config.security.quotas()?;
    let limiter: Arc<dyn RateLimiter> = match &config.worker.redis_url {
        None => Arc::new(InProcessRateLimiter::new()),
        Some(url) => Arc::new(RedisRateLimiter::connect(url, &config.worker.namespace).await.map_err(|e| {
            anyhow::anyhow!("TASKORCH_REDIS_URL ({}) is unreachable: {e}", taskorch_engine::db::redact(url))
        })?),
    };
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("TASKORCH_LISTEN ({}) cannot be bound: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    // stdout may be a pipe its reader closed after the first line: writing must not bring the server down.
    let say = |line: String| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    };
    say(format!("taskorch listening on http://{addr}/graphql (playground: http://{addr}/playground)"));
    match bootstrap {
        Bootstrap::Generated { email, password } => say(format!(
            "created the admin user {email} with the generated password {password} (shown once; set \
             TASKORCH_ADMIN_PASSWORD to choose it)"
        )),
        Bootstrap::Created { email } => say(format!("created the admin user {email}")),
        Bootstrap::Existing => {}
    }

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
        AppOptions {
            max_body_bytes: config.max_body_bytes,
            cors_origins: config.cors_origins.clone(),
            metrics,
            schema: SchemaOptions {
                auth,
                limiter,
                quotas,
                limits: config.security.document_limits(),
                introspection: config.security.introspection,
            },
        },
    );
    // Without TCP_NODELAY small responses wait for delayed ACKs (tens of milliseconds per request).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let stop = shutdown.clone();
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await?;
    let _ = work.await;
    Ok(())
}

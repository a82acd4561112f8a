//! Metrics shared by the server and the worker: one Prometheus recorder per process, rendered with the gauges that
//! are read at scrape time (tasks by status, dispatch backlog, database pools).

use std::fmt::Write;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use taskorch_engine::Engine;

const SECONDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Installs the process-wide recorder (histograms with fixed buckets). Returns `None` if one is installed already.
/// Counters whose series are known in advance are there from the start, at 0: an alert on their rate, or a scrape
/// after a clean run, finds them before the first occurrence.
pub fn install_metrics() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new().set_buckets(SECONDS).ok()?.install_recorder().ok()?;
    metrics::counter!("taskorch_lease_expiries_total").increment(0);
    metrics::counter!("taskorch_task_retries_total").increment(0);
    for outcome in ["compensated", "failed"] {
        metrics::counter!("taskorch_compensations_total", "outcome" => outcome).increment(0);
    }
    Some(handle)
}

/// The Prometheus text of this process: recorded metrics plus gauges read now.
pub async fn render(handle: Option<&PrometheusHandle>, engine: &Engine) -> String {
    let mut out = String::new();
    if let Some(h) = handle {
        h.run_upkeep();
        out.push_str(&h.render());
    }
    let db = engine.store().database();
    let (write, read) = db.statements_executed();
    let _ = writeln!(out, "# HELP taskorch_db_statements_total SQL statements executed by this process, by pool.");
    let _ = writeln!(out, "# TYPE taskorch_db_statements_total counter");
    let _ = writeln!(out, "taskorch_db_statements_total{{pool=\"write\"}} {write}");
    let _ = writeln!(out, "taskorch_db_statements_total{{pool=\"read\"}} {read}");
    let _ = writeln!(out, "# HELP taskorch_db_pool_connections Database connections by pool and state.");
    let _ = writeln!(out, "# TYPE taskorch_db_pool_connections gauge");
    for (pool, (size, idle)) in [("write", db.pool_state(false)), ("read", db.pool_state(true))] {
        let _ = writeln!(out, "taskorch_db_pool_connections{{pool=\"{pool}\",state=\"idle\"}} {idle}");
        let _ = writeln!(
            out,
            "taskorch_db_pool_connections{{pool=\"{pool}\",state=\"in_use\"}} {}",
            size.saturating_sub(idle)
        );
    }
    if let Ok(stats) = engine.store().task_stats().await {
        let _ = writeln!(out, "# HELP taskorch_tasks Tasks by status.");
        let _ = writeln!(out, "# TYPE taskorch_tasks gauge");
        for (status, n) in &stats.by_status {
            let _ = writeln!(out, "taskorch_tasks{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP taskorch_dispatch_backlog Tasks due and not yet handed to the queue.");
        let _ = writeln!(out, "# TYPE taskorch_dispatch_backlog gauge");
        let _ = writeln!(out, "taskorch_dispatch_backlog {}", stats.backlog);
    }
    out
}

/// `/metrics`, `/healthz` and `/readyz` of a worker process.
pub fn router(handle: Option<PrometheusHandle>, backends: crate::setup::Backends) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    let metrics = {
        let engine = backends.engine.clone();
        move || {
            let (engine, handle) = (engine.clone(), handle.clone());
            async move {
                let text = render(handle.as_ref(), &engine).await;
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }
        }
    };
    let ready = move || {
        let backends = backends.clone();
        async move {
            let (ok, body) = readiness(&backends.engine, backends.broker.as_ref()).await;
            let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (code, axum::Json(body)).into_response()
        }
    };
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
}

/// Installs logging (JSON or human-readable on stderr, level from `TASKORCH_LOG`/`RUST_LOG`) and, when an OTLP
/// endpoint is given, trace export over OTLP/HTTP with W3C trace-context propagation. Keep the returned provider
/// and call `shutdown` on it before exiting, so the last spans are flushed.
pub fn init_tracing(
    service: &'static str,
    json: Option<bool>,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use std::io::IsTerminal;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    let filter = EnvFilter::try_from_env("TASKORCH_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sea_orm=warn,sqlx=warn"));
    let json = json.unwrap_or_else(|| !std::io::stderr().is_terminal());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json { fmt.json().flatten_event(true).boxed() } else { fmt.boxed() };
    // The log level filters log lines only: spans for traces are kept at info whatever the log level.
    let fmt = fmt.with_filter(filter);
    let (otel, provider) = match otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()
                .map_err(|e| anyhow::anyhow!("TASKORCH_OTLP_ENDPOINT ({endpoint}) is unusable: {e}"))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
                .build();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                .with_filter(EnvFilter::new("info,sea_orm=warn,sqlx=warn,hyper=warn,reqwest=warn,h2=warn,lapin=warn"));
            (Some(layer), Some(provider))
        }
    };
    let _ = tracing_subscriber::registry().with(fmt).with(otel).try_init();
    Ok(provider)
}

/// Flushes and stops trace export (call before the process exits).
pub async fn shutdown_tracing(provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>) {
    if let Some(p) = provider {
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    }
}

/// Readiness of a process: the database answers with no migration pending, and the broker and the Redis bus (when
/// configured) are reachable. Returns the verdict and a JSON body naming each part.
pub async fn readiness(
    engine: &Engine,
    broker: Option<&std::sync::Arc<dyn taskorch_engine::TaskQueue>>,
) -> (bool, serde_json::Value) {
    let db = engine.store().ping().await.is_ok();
    let migrated = engine.store().database().pending_migrations().await.map(|n| n == 0).unwrap_or(false);
    let bus = engine.bus().healthy();
    let broker = match broker {
        Some(q) => tokio::time::timeout(std::time::Duration::from_secs(3), q.healthy()).await.unwrap_or(false),
        None => true,
    };
    let body = serde_json::json!({ "database": db, "migrations": migrated, "broker": broker, "eventBus": bus });
    (db && migrated && bus && broker, body)
}

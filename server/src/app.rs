//! The axum router: GraphQL over HTTP (POST, and GET for queries) and graphql-transport-ws, the playground and
//! health endpoints.

use async_graphql::dataloader::{DataLoader, HashMapCache};
use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

use axum::http::{HeaderValue, Method, header};
use metrics_exporter_prometheus::PrometheusHandle;
use taskorch_engine::{Engine, TaskQueue};
use taskorch_worker::setup::Backends;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

use crate::graphql::loaders::TaskLoader;
use crate::graphql::subscription::ActiveSubscriptions;
use crate::graphql::{AppSchema, build_schema};
use crate::playground;

#[derive(Clone)]
pub struct AppState {
    pub schema: AppSchema,
    pub engine: Engine,
    pub subscriptions: ActiveSubscriptions,
    /// The broker queue, when configured (for readiness).
    pub broker: Option<Arc<dyn TaskQueue>>,
    pub metrics: Option<PrometheusHandle>,
}

/// Options of the HTTP layer.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub max_body_bytes: usize,
    /// Origins allowed by CORS (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// The process's metrics recorder.
    pub metrics: Option<PrometheusHandle>,
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(AllowOrigin::any()));
    }
    let list: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o.trim()).ok()).collect();
    Some(layer.allow_origin(AllowOrigin::list(list)))
}

pub fn router(backends: Backends, opts: AppOptions) -> Router {
    let Backends { engine, broker } = backends;
    let subscriptions = ActiveSubscriptions::default();
    let state = AppState {
        schema: build_schema(engine.clone(), subscriptions.clone()),
        engine,
        subscriptions,
        broker,
        metrics: opts.metrics.clone(),
    };
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphql/ws", get(graphql_ws))
        .route("/", get(|| async { Redirect::temporary("/playground") }))
        .route("/playground", get(playground::index))
        .route("/playground/", get(playground::index))
        .route("/playground/playground.js", get(playground::script))
        .route("/playground/playground.css", get(playground::style))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(RequestBodyLimitLayer::new(opts.max_body_bytes))
        .layer(tower::util::option_layer(cors(&opts.cors_origins)))
        .with_state(state)
}

async fn graphql_post(State(state): State<AppState>, req: GraphQLRequest) -> GraphQLResponse {
    state.schema.execute(with_loaders(&state, req.into_inner())).await.into()
}

/// Per-request dataloaders with a cache, so a resolver can prefetch a whole page's tasks in one statement.
fn with_loaders(state: &AppState, req: async_graphql::Request) -> async_graphql::Request {
    req.data(DataLoader::with_cache(TaskLoader::new(state.engine.clone()), tokio::spawn, HashMapCache::default()))
}

async fn graphql_get(State(state): State<AppState>, req: GraphQLRequest) -> Response {
    let req = req.into_inner();
    // GET carries queries only: a mutation over GET is refused.
    if req.query.trim_start().starts_with("mutation") {
        let body = serde_json::json!({ "errors": [{
            "message": "mutations must be sent with POST",
            "extensions": { "code": crate::error::code::VALIDATION_FAILED }
        }]});
        return (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response();
    }
    GraphQLResponse::from(state.schema.execute(with_loaders(&state, req)).await).into_response()
}

async fn graphql_ws(State(state): State<AppState>, protocol: GraphQLProtocol, upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| GraphQLWebSocket::new(socket, state.schema.clone(), protocol).serve())
}

async fn readyz(State(state): State<AppState>) -> Response {
    let (ok, body) = taskorch_worker::observe::readiness(&state.engine, state.broker.as_ref()).await;
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = crate::metrics::render(state.metrics.as_ref(), &state.engine, &state.subscriptions).await;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

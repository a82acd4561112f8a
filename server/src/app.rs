//! The axum router: GraphQL over HTTP (POST, and GET for queries) and graphql-transport-ws, the playground and
//! health endpoints.

use async_graphql::dataloader::{DataLoader, HashMapCache};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;

use async_graphql::BatchRequest;
use async_graphql_axum::GraphQLBatchRequest;
use async_graphql_axum::rejection::GraphQLRejection;
use axum::extract::{ConnectInfo, FromRequestParts, RawQuery, State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

use axum::http::{HeaderValue, Method, header};
use metrics_exporter_prometheus::PrometheusHandle;
use taskorch_engine::auth::Auth;
use taskorch_engine::{Engine, TaskQueue};
use taskorch_worker::setup::Backends;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::{self, Caller};
use crate::error::code;
use crate::graphql::loaders::TaskLoader;
use crate::graphql::persisted::PersistedQueries;
use crate::graphql::subscription::ActiveSubscriptions;
use crate::graphql::{AppSchema, SchemaOptions, build_schema};
use crate::hot::{Key, Lookup, ResponseCache};
use crate::http::{self, GetRefusal, Media};
use crate::playground;

#[derive(Clone)]
pub struct AppState {
    pub schema: AppSchema,
    /// The schema for WebSockets: identical subscriptions share one execution.
    pub streams: crate::fanout::Shared<AppSchema>,
    pub engine: Engine,
    pub auth: Auth,
    pub subscriptions: ActiveSubscriptions,
    /// The broker queue, when configured (for readiness).
    pub broker: Option<Arc<dyn TaskQueue>>,
    pub metrics: Option<PrometheusHandle>,
    pub max_batch: usize,
    /// Kept answers of hot reads (see `crate::hot`).
    pub hot: Option<Arc<ResponseCache>>,
    /// Largest WebSocket message (the body limit).
    pub max_message: usize,
    /// Documents named by hash (Apollo's persisted queries).
    pub persisted: PersistedQueries,
}

/// Options of the HTTP layer.
#[derive(Clone)]
pub struct AppOptions {
    pub max_body_bytes: usize,
    /// Origins allowed by CORS (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// The process's metrics recorder.
    pub metrics: Option<PrometheusHandle>,
    pub schema: SchemaOptions,
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new().allow_methods([Method::GET, Method::POST, Method::OPTIONS]).allow_headers([
        header::CONTENT_TYPE,
        header::AUTHORIZATION,
        HeaderName::from_static("x-api-key"),
    ]);
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(AllowOrigin::any()));
    }
    let list: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o.trim()).ok()).collect();
    Some(layer.allow_origin(AllowOrigin::list(list)))
}

/// Headers on every response: no sniffing, no framing, no referrer, and a CSP that allows only this origin
/// (the playground's script and styles are served from it).
const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("strict-transport-security", "max-age=31536000"),
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
         font-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
];

pub fn router(backends: Backends, opts: AppOptions) -> Router {
    let Backends { engine, broker } = backends;
    let subscriptions = ActiveSubscriptions::default();
    let persisted = PersistedQueries::default();
    let schema = build_schema(engine.clone(), subscriptions.clone(), opts.schema.clone(), &persisted);
    let hot = ResponseCache::for_engine(&engine, opts.schema.limiter.clone(), opts.schema.quotas.clone()).map(Arc::new);
    let state = AppState {
        streams: crate::fanout::Shared::new(schema.clone(), subscriptions.clone()),
        schema,
        engine,
        auth: opts.schema.auth.clone(),
        subscriptions,
        broker,
        metrics: opts.metrics.clone(),
        max_batch: opts.schema.limits.max_batch,
        hot,
        max_message: opts.max_body_bytes,
        persisted,
    };
    let max_body = opts.max_body_bytes;
    let mut router = Router::new()
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
        .layer(axum::middleware::map_response(move |r: Response| async move { body_limit_error(r, max_body) }))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(axum::middleware::from_fn(move |req, next| refuse_declared_oversize(max_body, req, next)));
    for (name, value) in SECURITY_HEADERS {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
    router.layer(tower::util::option_layer(cors(&opts.cors_origins))).with_state(state)
}

/// Most of an oversized body read (and dropped) before answering, and for how long.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// A request declaring a body over the limit is answered 413 without being parsed. What the client sends is read
/// and dropped first (within bounds), so it sees the answer rather than a connection reset mid-upload.
async fn refuse_declared_oversize(max: usize, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_none_or(|n| n <= max as u64) {
        return next.run(req).await;
    }
    let mut stream = req.into_body().into_data_stream();
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
    body_limit_error(StatusCode::PAYLOAD_TOO_LARGE.into_response(), max)
}

/// A body over the limit gets a GraphQL error naming the limit instead of a bare 413.
fn body_limit_error(resp: Response, max: usize) -> Response {
    if resp.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return resp;
    }
    let body = serde_json::json!({ "errors": [{
        "message": format!("the request body exceeds the max body size limit of {max} bytes (set by TASKORCH_MAX_BODY_BYTES)"),
        "extensions": { "code": code::LIMIT_EXCEEDED, "limit": "max body size", "max": max }
    }]});
    (StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response()
}

/// Whether reading the body stopped at the body size limit (`RequestBodyLimitLayer` reads through
/// `http_body_util::Limited`). Its `LengthLimitError` reaches here boxed inside axum's and `io::Error`s that hide it
/// from `downcast` (tried: `is::<LengthLimitError>` over the chain, looking into `io::Error::get_ref`, finds
/// nothing), so the chain is matched on that error's message.
fn over_body_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| e.to_string().contains("length limit exceeded"))
}

/// The client's address, when the server was started with connection info.
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())))
    }
}

async fn caller(state: &AppState, headers: &HeaderMap, ip: Option<IpAddr>) -> Caller {
    auth::caller(&state.auth, auth::credential_from_headers(headers), ip).await
}

/// Per-request data: the caller and dataloaders with a cache, so a resolver can prefetch a whole page's tasks
/// in one statement.
fn with_request_data(state: &AppState, req: async_graphql::Request, caller: Caller) -> async_graphql::Request {
    // No batching delay: pages prefetch their tasks with one `load_many`, and loads registered while the same
    // request is being resolved still share the next batch; a 1 ms timer per request cost more than it saved.
    req.data(caller).data(
        DataLoader::with_cache(TaskLoader::new(state.engine.clone()), tokio::spawn, HashMapCache::default())
            .delay(std::time::Duration::ZERO),
    )
}

async fn graphql_post(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    req: Result<GraphQLBatchRequest, GraphQLRejection>,
) -> Response {
    let media = Media::accepted(&headers);
    let req = match req {
        Ok(req) => req.into_inner(),
        // A body without a declared length (chunked) runs into the limit while it is read.
        Err(rejection) if over_body_limit(&rejection.0) => {
            return StatusCode::PAYLOAD_TOO_LARGE.into_response(); // given its body by `body_limit_error`
        }
        Err(rejection) => {
            return http::bad_request(
                format!("the body is not a GraphQL request ({{\"query\": …}} or a list of them): {}", rejection.0),
                media,
            );
        }
    };
    let caller = caller(&state, &headers, ip).await;
    match req {
        BatchRequest::Single(req) if req.query.trim().is_empty() && !PersistedQueries::names_hash(&req) => {
            http::bad_request("the request has no `query` (the GraphQL document)".into(), media)
        }
        BatchRequest::Single(req) => execute_single(&state, req, caller, media).await,
        BatchRequest::Batch(reqs) if reqs.is_empty() => http::bad_request("the batch is empty".into(), media),
        BatchRequest::Batch(reqs) if reqs.len() > state.max_batch => http::limit_error(
            ("max batch size", state.max_batch, reqs.len()),
            format!(
                "the batch has {} operations, over the max batch size limit of {} (set by TASKORCH_MAX_BATCH)",
                reqs.len(),
                state.max_batch
            ),
            media,
        ),
        BatchRequest::Batch(reqs) => {
            let reqs = reqs.into_iter().map(|r| with_request_data(&state, r, caller.clone())).collect();
            http::respond_batch(state.schema.execute_batch(BatchRequest::Batch(reqs)).await, media)
        }
    }
}

/// GET carries queries: a WebSocket upgrade of `/graphql` is served as `/graphql/ws` (clients often default to
/// the one path).
async fn graphql_get(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    request: axum::extract::Request,
) -> Response {
    if headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")) {
        let (mut parts, _) = request.into_parts();
        let protocol = match crate::ws::Protocol::from_request_parts(&mut parts, &state).await {
            Ok(protocol) => protocol,
            Err(status) => return status.into_response(),
        };
        return match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(upgrade) => graphql_ws(State(state), ClientIp(ip), headers, protocol, upgrade).await,
            Err(rejection) => rejection.into_response(),
        };
    }
    let media = Media::accepted(&headers);
    let req = match http::get_request(query.as_deref(), &state.persisted) {
        Ok(req) => req,
        Err(GetRefusal::Bad(message)) => return http::bad_request(message, media),
        Err(GetRefusal::Persisted(e)) => return http::respond(async_graphql::Response::from_errors(vec![e]), media),
        Err(GetRefusal::Mutation) => return http::mutation_over_get(media),
    };
    let caller = caller(&state, &headers, ip).await;
    execute_single(&state, req, caller, media).await
}

/// One operation: from the response cache when it holds the answer, else executed (and kept when it may be).
async fn execute_single(state: &AppState, req: async_graphql::Request, caller: Caller, media: Media) -> Response {
    let key = state.hot.as_ref().and_then(|hot| Some((hot, Key::of(&caller, &req)?)));
    let Some((hot, key)) = key else {
        return http::respond(state.schema.execute(with_request_data(state, req, caller)).await, media);
    };
    match hot.lookup(key, &caller, media).await {
        Lookup::Hit(resp) => resp,
        Lookup::Miss(pending) => {
            let req = with_request_data(state, req, caller).data(pending.slot.clone());
            let resp = state.schema.execute(req).await;
            hot.keep(pending, resp, media)
        }
    }
}

/// graphql-transport-ws (and the legacy graphql-ws). The credential comes from the `connection_init` payload
/// (`Authorization`, `X-API-Key`, `token`…), else from the upgrade request's headers.
async fn graphql_ws(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    protocol: crate::ws::Protocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let from_headers = auth::credential_from_headers(&headers);
    let max_message = state.max_message;
    let upgrade = upgrade.protocols([protocol.0.sec_websocket_protocol()]).max_message_size(max_message);
    // tungstenite zero-fills its whole read buffer before every read of the socket (128 KiB by default): that
    // memset was 16 % of the server's CPU while streaming to 10,000 subscriptions. Client messages are small;
    // a larger one is read in more than one `read`.
    upgrade.read_buffer_size(crate::ws::READ_BUFFER).on_upgrade(move |socket| {
        let auth = state.auth.clone();
        crate::ws::serve(socket, state.streams.clone(), protocol, move |payload| async move {
            let credential = auth::credential_from_payload(&payload).or(from_headers);
            let mut data = async_graphql::Data::default();
            data.insert(auth::caller(&auth, credential, ip).await);
            Ok(data)
        })
    })
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

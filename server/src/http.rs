//! GraphQL over HTTP: reading requests and writing responses as the GraphQL-over-HTTP specification says.
//!
//! - The response's media type follows `Accept`: `application/graphql-response+json` when the client lists it,
//!   else `application/json` (what older clients and `Accept: */*` get).
//! - A request refused before anything ran (syntax, validation, operation or variables; see
//!   [`crate::graphql::request`]) has no `data` entry; with `application/graphql-response+json` it is a 400, with
//!   `application/json` a 200, as the specification says for each.
//! - A body or query string that is not a GraphQL request at all (not JSON, `variables` not an object, no
//!   `query`) is a 400 with a GraphQL error `BAD_REQUEST`, never a bare text.
//! - A call refused by the rate limits is a 429 with `Retry-After`; in a batch only when every operation was.
//! - `GET` reads `query`, `operationName`, `variables` and `extensions` from the query string and runs queries
//!   only: a mutation chosen by it is a 405 with `Allow: POST`.

use async_graphql::{BatchResponse, Request, Variables};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::error::code;
use crate::graphql::persisted::PersistedQueries;
use crate::graphql::request::{is_request_error, operation};

/// The media type of a GraphQL response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    GraphqlResponseJson,
    Json,
}

impl Media {
    /// What the client's `Accept` asks for.
    pub fn accepted(headers: &HeaderMap) -> Self {
        let listed = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|m| m.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(GRAPHQL_RESPONSE_JSON)));
        if listed { Self::GraphqlResponseJson } else { Self::Json }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::GraphqlResponseJson => GRAPHQL_RESPONSE_JSON,
            Self::Json => "application/json",
        })
    }

    /// Sets the content type of an answer written elsewhere (a kept answer).
    pub fn label(self, mut resp: Response) -> Response {
        resp.headers_mut().insert(header::CONTENT_TYPE, self.content_type());
        resp
    }
}

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// An answer that is not a GraphQL execution: one error with its code.
pub fn error_body(status: StatusCode, code: &str, message: String, media: Media) -> Response {
    let body = serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    media.label((status, axum::Json(body)).into_response())
}

/// A request over one of the limits (400 `LIMIT_EXCEEDED`), naming it like the document limits do: `(limit, max,
/// actual)`.
pub fn limit_error((limit, max, actual): (&str, usize, usize), message: String, media: Media) -> Response {
    let extensions = serde_json::json!({ "code": code::LIMIT_EXCEEDED, "limit": limit, "max": max, "actual": actual });
    let body = serde_json::json!({ "errors": [{ "message": message, "extensions": extensions }] });
    media.label((StatusCode::BAD_REQUEST, axum::Json(body)).into_response())
}

/// A request that is not a GraphQL request (400 `BAD_REQUEST`).
pub fn bad_request(message: String, media: Media) -> Response {
    error_body(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message, media)
}

/// The longest retry-after (seconds) of a response's rate-limited calls, if it has any.
fn retry_after(resp: &async_graphql::Response) -> Option<u64> {
    resp.errors
        .iter()
        .filter_map(|e| e.extensions.as_ref())
        .filter(|ext| matches!(ext.get("code"), Some(async_graphql::Value::String(c)) if c == code::RATE_LIMITED))
        .filter_map(|ext| match ext.get("retryAfter") {
            Some(async_graphql::Value::Number(n)) => n.as_u64(),
            _ => None,
        })
        .max()
}

fn with_retry_after(mut http: Response, secs: Option<u64>) -> Response {
    if let Some(secs) = secs {
        *http.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            http.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    http
}

/// The JSON of one response: a request error without `data`.
fn body_of(resp: &async_graphql::Response) -> serde_json::Value {
    if is_request_error(resp) {
        return serde_json::json!({ "errors": resp.errors });
    }
    serde_json::to_value(resp).unwrap_or_else(|e| {
        serde_json::json!({ "errors": [{ "message": format!("response not serialisable: {e}"),
            "extensions": { "code": code::INTERNAL } }] })
    })
}

fn with_headers(mut http: Response, resp: &async_graphql::Response) -> Response {
    if resp.is_ok()
        && let Some(value) = resp.cache_control.value()
        && let Ok(value) = HeaderValue::from_str(&value)
    {
        http.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    http.headers_mut().extend(resp.http_headers.clone());
    http
}

/// The HTTP answer to one operation.
pub fn respond(resp: async_graphql::Response, media: Media) -> Response {
    let status = if is_request_error(&resp) && media == Media::GraphqlResponseJson {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let http = media.label((status, axum::Json(body_of(&resp))).into_response());
    let wait = retry_after(&resp);
    with_retry_after(with_headers(http, &resp), wait)
}

/// The HTTP answer to a batch: 200 with one answer per operation (429 only when every one was rate-limited).
pub fn respond_batch(resp: BatchResponse, media: Media) -> Response {
    let responses = match resp {
        BatchResponse::Single(r) => return respond(r, media),
        BatchResponse::Batch(v) => v,
    };
    let waits: Vec<Option<u64>> = responses.iter().map(retry_after).collect();
    let wait = if waits.iter().all(Option::is_some) { waits.into_iter().flatten().max() } else { None };
    let body: Vec<serde_json::Value> = responses.iter().map(body_of).collect();
    with_retry_after(media.label(axum::Json(body).into_response()), wait)
}

/// The parameters of a GET request.
#[derive(Deserialize)]
struct QueryString {
    query: Option<String>,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    variables: Option<String>,
    extensions: Option<String>,
}

/// Why a GET request is not run.
pub enum GetRefusal {
    /// Not a GraphQL request (400).
    Bad(String),
    /// It chose a mutation (405).
    Mutation,
    /// It names a document by hash that is unknown or does not match (a request error).
    Persisted(async_graphql::ServerError),
}

/// A GET request's GraphQL request: parameters as the specification names them, queries only.
pub fn get_request(query_string: Option<&str>, persisted: &PersistedQueries) -> Result<Request, GetRefusal> {
    let params: QueryString = serde_urlencoded::from_str(query_string.unwrap_or(""))
        .map_err(|e| GetRefusal::Bad(format!("the query string is not a GraphQL request: {e}")))?;
    let query = params.query.unwrap_or_default();
    let object = |name: &str, text: Option<String>| -> Result<Option<serde_json::Value>, GetRefusal> {
        let Some(text) = text.filter(|t| !t.trim().is_empty()) else { return Ok(None) };
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v @ serde_json::Value::Object(_)) => Ok(Some(v)),
            Ok(serde_json::Value::Null) => Ok(None),
            Ok(_) => Err(GetRefusal::Bad(format!("the `{name}` parameter must be a JSON object"))),
            Err(e) => Err(GetRefusal::Bad(format!("the `{name}` parameter is not JSON: {e}"))),
        }
    };
    let variables = object("variables", params.variables)?;
    let extensions = object("extensions", params.extensions)?;
    let mut req = Request::new(query);
    if let Some(name) = params.operation_name.filter(|n| !n.is_empty()) {
        req = req.operation_name(name);
    }
    if let Some(v) = variables {
        req = req.variables(Variables::from_json(v));
    }
    if let Some(extensions) = extensions {
        req.extensions = serde_json::from_value(extensions)
            .map_err(|e| GetRefusal::Bad(format!("the `extensions` parameter is not usable: {e}")))?;
    }
    if req.query.trim().is_empty() && !PersistedQueries::names_hash(&req) {
        return Err(GetRefusal::Bad("a GET request needs a `query` parameter (the GraphQL document)".to_owned()));
    }
    let mut req = persisted.resolve(req).map_err(GetRefusal::Persisted)?;
    // The operation GET would run must be a query. A document that does not parse, or names no runnable operation,
    // goes on and fails as a request error like any other.
    if let Ok(doc) = async_graphql::parser::parse_query(&req.query) {
        let is_mutation = operation(&doc, req.operation_name.as_deref())
            .is_ok_and(|op| op.node.ty == async_graphql::parser::types::OperationType::Mutation);
        if is_mutation {
            return Err(GetRefusal::Mutation);
        }
        req.set_parsed_query(doc);
    }
    Ok(req)
}

/// The 405 for a mutation sent with GET.
pub fn mutation_over_get(media: Media) -> Response {
    let mut resp = error_body(
        StatusCode::METHOD_NOT_ALLOWED,
        code::VALIDATION_FAILED,
        "mutations must be sent with POST".into(),
        media,
    );
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Media {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).expect("header"));
        Media::accepted(&h)
    }

    #[test]
    fn the_media_type_follows_accept() {
        assert_eq!(accept("application/graphql-response+json"), Media::GraphqlResponseJson);
        assert_eq!(accept("application/json;q=0.9, application/graphql-response+json"), Media::GraphqlResponseJson);
        assert_eq!(accept("application/json"), Media::Json);
        assert_eq!(accept("*/*"), Media::Json);
        assert_eq!(Media::accepted(&HeaderMap::new()), Media::Json);
    }

    fn get(query_string: Option<&str>) -> Result<Request, GetRefusal> {
        get_request(query_string, &PersistedQueries::default())
    }

    #[test]
    fn get_reads_the_specified_parameters() {
        let req = get(Some("query=query%20A%7B__typename%7D%20query%20B%7B__typename%7D&operationName=B"))
            .ok()
            .expect("a request");
        assert_eq!(req.operation_name.as_deref(), Some("B"));
        let req =
            get(Some("query=query(%24a%3AInt)%7B__typename%7D&variables=%7B%22a%22%3A1%7D")).ok().expect("a request");
        assert_eq!(req.variables.get("a"), Some(&async_graphql::Value::from(1)));
    }

    #[test]
    fn get_refuses_what_is_not_a_query() {
        assert!(matches!(get(None), Err(GetRefusal::Bad(m)) if m.contains("`query`")));
        assert!(matches!(get(Some("query={a}&variables=%7Bbad")), Err(GetRefusal::Bad(m)) if m.contains("not JSON")));
        assert!(matches!(get(Some("query={a}&variables=%5B1%5D")), Err(GetRefusal::Bad(m)) if m.contains("object")));
        assert!(matches!(get(Some("query=mutation%20M%7Bx%7D")), Err(GetRefusal::Mutation)));
        let two = "query=query%20Q%7Bx%7D%20mutation%20M%7Bx%7D&operationName=M";
        assert!(matches!(get(Some(two)), Err(GetRefusal::Mutation)));
    }

    #[test]
    fn get_runs_a_query_named_by_hash_and_refuses_a_mutation_named_so() {
        use sha2::{Digest, Sha256};
        let persisted = PersistedQueries::default();
        let by_hash = |doc: &str| {
            let hash = format!("{:x}", Sha256::digest(doc.as_bytes()));
            format!("extensions=%7B%22persistedQuery%22%3A%7B%22version%22%3A1%2C%22sha256Hash%22%3A%22{hash}%22%7D%7D")
        };
        let (query, mutation) = ("{ __typename }", "mutation { x }");
        // Unknown until its document came with it (as POST or GET).
        assert!(matches!(get_request(Some(&by_hash(query)), &persisted), Err(GetRefusal::Persisted(_))));
        let with_doc = format!("query=%7B%20__typename%20%7D&{}", by_hash(query));
        assert_eq!(get_request(Some(&with_doc), &persisted).ok().expect("kept").query, query);
        assert_eq!(get_request(Some(&by_hash(query)), &persisted).ok().expect("found").query, query);
        let mut req = Request::new(mutation);
        req.extensions = serde_json::from_value(serde_json::json!({ "persistedQuery": { "version": 1,
            "sha256Hash": format!("{:x}", Sha256::digest(mutation.as_bytes())) } }))
        .expect("extensions");
        persisted.resolve(req).expect("kept by a POST");
        assert!(matches!(get_request(Some(&by_hash(mutation)), &persisted), Err(GetRefusal::Mutation)));
    }
}

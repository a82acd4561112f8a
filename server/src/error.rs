//! The one mapping from use-case errors to GraphQL errors with a stable `extensions.code`.
//!
//! Codes: `VALIDATION_FAILED`, `CYCLE_DETECTED`, `NOT_FOUND`, `CONFLICT`, `INVALID_STATE`, `UNAUTHENTICATED`,
//! `FORBIDDEN`, `RATE_LIMITED`, `LIMIT_EXCEEDED`, `INTERNAL`; for requests refused before anything runs,
//! `GRAPHQL_PARSE_FAILED` and `GRAPHQL_VALIDATION_FAILED` (see `graphql::request`).
//! `INTERNAL` never says more than that; its cause is logged.

use async_graphql::ErrorExtensions;
use taskorch_domain::dag;
use taskorch_engine::Error;

/// Error codes of the API.
pub mod code {
    pub const VALIDATION_FAILED: &str = "VALIDATION_FAILED";
    pub const CYCLE_DETECTED: &str = "CYCLE_DETECTED";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const CONFLICT: &str = "CONFLICT";
    pub const INVALID_STATE: &str = "INVALID_STATE";
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    pub const FORBIDDEN: &str = "FORBIDDEN";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const LIMIT_EXCEEDED: &str = "LIMIT_EXCEEDED";
    pub const INTERNAL: &str = "INTERNAL";
    pub const GRAPHQL_PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
    pub const GRAPHQL_VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
    /// A request that is not a GraphQL request at all (unreadable body or query string).
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
}

/// A GraphQL error with `extensions.code`.
pub fn api_error(code: &'static str, message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message.into()).extend_with(|_, e| e.set("code", code))
}

/// The same error for a refusal before execution (parsing, limits): no location, no path.
pub fn request_error(err: async_graphql::Error) -> async_graphql::ServerError {
    let mut e = async_graphql::ServerError::new(err.message, None);
    e.extensions = err.extensions;
    e
}

/// `e` with `code` unless it already carries a code.
pub fn with_code(mut e: async_graphql::ServerError, code: &'static str) -> async_graphql::ServerError {
    let ext = e.extensions.get_or_insert_with(Default::default);
    if ext.get("code").is_none() {
        ext.set("code", code);
    }
    e
}

/// Bad input from the client.
pub fn invalid(message: impl Into<String>) -> async_graphql::Error {
    api_error(code::VALIDATION_FAILED, message)
}

/// Converts a use-case error; internal causes are logged, not returned.
pub fn from_engine(err: Error) -> async_graphql::Error {
    match err {
        Error::Invalid(dag::Error::Cycle { path }) => {
            let e = dag::Error::Cycle { path: path.clone() };
            api_error(code::CYCLE_DETECTED, e.to_string()).extend_with(|_, ext| ext.set("cycle", path.clone()))
        }
        Error::Invalid(e) => invalid(e.to_string()),
        e @ Error::NotFound { .. } => api_error(code::NOT_FOUND, e.to_string()),
        Error::Conflict(m) => api_error(code::CONFLICT, m),
        Error::BadInput(m) => invalid(m),
        Error::Unauthenticated(m) => api_error(code::UNAUTHENTICATED, m),
        Error::Forbidden(m) => api_error(code::FORBIDDEN, m),
        e @ Error::InvalidState { .. } => {
            let current = match &e {
                Error::InvalidState { current, .. } => current.as_str(),
                _ => "",
            };
            api_error(code::INVALID_STATE, e.to_string()).extend_with(|_, ext| ext.set("currentStatus", current))
        }
        Error::Database(e) => internal(&e),
        Error::Corrupt(e) => internal(&e),
        Error::Unavailable(m) => {
            tracing::error!(error = %m, "a committed change could not be propagated");
            api_error(code::INTERNAL, m)
        }
    }
}

fn internal(cause: &dyn std::fmt::Display) -> async_graphql::Error {
    tracing::error!(error = %cause, "internal error");
    api_error(code::INTERNAL, "internal error; it has been logged")
}

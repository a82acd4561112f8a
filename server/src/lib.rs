//! taskorch server: the GraphQL API (queries, mutations, subscriptions over graphql-transport-ws) on axum, the
//! offline GraphiQL playground, health endpoints, and — on the embedded default — the in-process worker.

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod fanout;
pub mod graphql;
pub mod hot;
pub mod http;
pub mod metrics;
pub mod playground;
pub mod security;
pub mod telemetry;
pub mod ws;

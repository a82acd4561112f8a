//! `/metrics`: the shared recorder and scrape-time gauges, plus the server's own (active subscriptions), and the
//! GraphQL extension that times requests by operation type and name.

use std::fmt::Write;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::{Response, ServerResult, Variables};
use metrics_exporter_prometheus::PrometheusHandle;
use taskorch_engine::Engine;

use crate::graphql::subscription::ActiveSubscriptions;

/// Renders the metrics in the Prometheus text format.
pub async fn render(handle: Option<&PrometheusHandle>, engine: &Engine, subscriptions: &ActiveSubscriptions) -> String {
    let mut out = taskorch_worker::observe::render(handle, engine).await;
    let _ = writeln!(out, "# HELP taskorch_active_subscriptions GraphQL subscriptions streaming now.");
    let _ = writeln!(out, "# TYPE taskorch_active_subscriptions gauge");
    let _ = writeln!(out, "taskorch_active_subscriptions {}", subscriptions.get());
    out
}

/// Records `taskorch_graphql_request_duration_seconds{type, name}` for every query and mutation.
pub struct RequestMetrics;

impl ExtensionFactory for RequestMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestMetricsExtension { operation: OnceLock::new() })
    }
}

struct RequestMetricsExtension {
    /// The operation's type and name label, set once the document is parsed.
    operation: OnceLock<(&'static str, String)>,
}

/// Operation names come from clients: only short identifiers become label values.
pub(crate) fn label(name: Option<&str>) -> String {
    match name {
        Some(n) if n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => n.to_owned(),
        Some(_) => "other".to_owned(),
        None => "anonymous".to_owned(),
    }
}

#[async_trait::async_trait]
impl Extension for RequestMetricsExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        if let Some((name, op)) = doc.operations.iter().next() {
            let ty = match op.node.ty {
                OperationType::Query => "query",
                OperationType::Mutation => "mutation",
                OperationType::Subscription => "subscription",
            };
            let _ = self.operation.set((ty, label(name.map(|n| n.as_str()))));
        }
        Ok(doc)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        // Runs once per query or mutation, and once per item of a subscription (not measured).
        if self.operation.get().is_some_and(|(ty, _)| *ty == "subscription") {
            return next.run(ctx, operation_name).await;
        }
        let start = Instant::now();
        let response = next.run(ctx, operation_name).await;
        let (ty, name) = self.operation.get().cloned().unwrap_or(("query", "anonymous".to_owned()));
        metrics::histogram!("taskorch_graphql_request_duration_seconds", "type" => ty, "name" => name)
            .record(start.elapsed().as_secs_f64());
        response
    }
}

//! Prometheus text exposition of the server's counters.

use std::fmt::Write;

use taskorch_engine::Engine;

use crate::graphql::subscription::ActiveSubscriptions;

/// Renders the metrics in the Prometheus text format.
pub fn render(engine: &Engine, subscriptions: &ActiveSubscriptions) -> String {
    let mut out = String::new();
    let (write, read) = engine.store().database().statements_executed();
    let _ = writeln!(out, "# HELP taskorch_db_statements_total SQL statements executed by this process, by pool.");
    let _ = writeln!(out, "# TYPE taskorch_db_statements_total counter");
    let _ = writeln!(out, "taskorch_db_statements_total{{pool=\"write\"}} {write}");
    let _ = writeln!(out, "taskorch_db_statements_total{{pool=\"read\"}} {read}");
    let _ = writeln!(out, "# HELP taskorch_active_subscriptions GraphQL subscriptions streaming now.");
    let _ = writeln!(out, "# TYPE taskorch_active_subscriptions gauge");
    let _ = writeln!(out, "taskorch_active_subscriptions {}", subscriptions.get());
    out
}

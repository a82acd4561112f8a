//! The GraphQL schema: query, mutation and subscription roots merged from per-domain objects.

pub mod loaders;
pub mod mutation;
pub mod query;
pub mod subscription;
pub mod types;

use async_graphql::{MergedObject, MergedSubscription, Schema};
use taskorch_engine::Engine;

#[derive(MergedObject, Default)]
pub struct QueryRoot(query::WorkflowQuery);

#[derive(MergedObject, Default)]
pub struct MutationRoot(mutation::WorkflowMutation);

#[derive(MergedSubscription, Default)]
pub struct SubscriptionRoot(subscription::EventSubscription);

pub type AppSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// Builds the schema over an engine.
pub fn build_schema(engine: Engine, subscriptions: subscription::ActiveSubscriptions) -> AppSchema {
    Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .data(engine)
        .data(subscriptions)
        .extension(crate::metrics::RequestMetrics)
        .limit_depth(16)
        .limit_complexity(100_000)
        .finish()
}

/// The SDL without an engine (for `print-schema` and the drift test).
pub fn sdl() -> String {
    Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default()).finish().sdl()
}

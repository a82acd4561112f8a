//! The GraphQL schema: query, mutation and subscription roots merged from per-domain objects, with the abuse
//! limits and rate limits applied to every document.

mod field_errors;
pub mod limits;
pub mod loaders;
pub mod mutation;
pub mod persisted;
pub mod query;
pub mod ratelimit;
pub mod request;
pub mod subscription;
pub mod types;

use std::sync::Arc;

use async_graphql::{MergedObject, MergedSubscription, Schema};
use taskorch_domain::ratelimit::Quotas;
use taskorch_engine::Engine;
use taskorch_engine::auth::Auth;
use taskorch_engine::ratelimit::RateLimiter;

use crate::security::DocumentLimits;

#[derive(MergedObject, Default)]
pub struct QueryRoot(query::WorkflowQuery, query::AuthQuery);

#[derive(MergedObject, Default)]
pub struct MutationRoot(mutation::WorkflowMutation, mutation::AuthMutation);

#[derive(MergedSubscription, Default)]
pub struct SubscriptionRoot(subscription::EventSubscription);

pub type AppSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// What the schema needs besides the engine.
#[derive(Clone)]
pub struct SchemaOptions {
    pub auth: Auth,
    pub limiter: Arc<dyn RateLimiter>,
    pub quotas: Quotas,
    pub limits: DocumentLimits,
    pub introspection: bool,
}

/// Builds the schema over an engine.
pub fn build_schema(
    engine: Engine,
    subscriptions: subscription::ActiveSubscriptions,
    opts: SchemaOptions,
    persisted: &persisted::PersistedQueries,
) -> AppSchema {
    let builder = Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .data(subscription::EventHub::start(engine.clone()))
        .data(subscription::LogFollower::new(engine.clone()))
        .data(engine)
        .data(subscriptions)
        .data(opts.auth)
        .extension(persisted.clone())
        // First after the document is known, so it codes the parse errors the other extensions leave (the limits turn some into refusals).
        .extension(request::RequestChecks)
        .extension(field_errors::FieldErrors)
        .extension(crate::metrics::RequestMetrics)
        .extension(crate::hot::PlanExtension)
        // The last extension sees the parsed document first: limits are checked before the call is counted.
        .extension(ratelimit::RateLimits { limiter: opts.limiter, quotas: opts.quotas })
        .extension(limits::DocumentLimitsExtension(opts.limits))
        // Backstops behind the named checks of `limits`.
        .limit_depth(opts.limits.max_depth)
        .limit_complexity(opts.limits.max_complexity.max(1) * 2);
    if opts.introspection { builder.finish() } else { builder.disable_introspection().finish() }
}

/// The SDL without an engine (for `print-schema` and the drift test).
pub fn sdl() -> String {
    // With `@specifiedBy` on the scalars that have it, as introspection reports them.
    let options = async_graphql::SDLExportOptions::new().include_specified_by();
    Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .finish()
        .sdl_with_options(options)
}

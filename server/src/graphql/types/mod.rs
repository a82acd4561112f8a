//! GraphQL types: their own structs built from the engine's records, so the schema is a contract of its own.

mod auth;
mod enums;
mod event;
mod input;
mod task;
mod workflow;

pub use auth::{ApiKey, AuthPayload, CreatedApiKey, Identity, Tenant, User};
pub use enums::{EventType, Role, TaskStatus, WorkflowStatus};
pub use event::WorkflowEvent;
pub use input::{SubmitWorkflowInput, WorkflowFilter};
pub use task::Task;
pub use workflow::Workflow;

/// Parses a workflow id argument.
pub fn parse_workflow_id(id: &async_graphql::ID) -> async_graphql::Result<taskorch_domain::WorkflowId> {
    id.parse().map_err(|_| crate::error::invalid(format!("`{}` is not a workflow id", id.as_str())))
}

/// Parses an optional `tenantId` argument.
pub fn parse_tenant_arg(id: Option<async_graphql::ID>) -> async_graphql::Result<Option<taskorch_domain::TenantId>> {
    id.map(|t| parse_id(&t, "tenant")).transpose()
}

/// Parses an id argument of a typed id.
pub fn parse_id<T: std::str::FromStr>(id: &async_graphql::ID, what: &str) -> async_graphql::Result<T> {
    id.parse().map_err(|_| crate::error::invalid(format!("`{}` is not a {what} id", id.as_str())))
}

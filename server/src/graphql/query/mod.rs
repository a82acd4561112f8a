//! Query roots.

mod auth;
mod workflow;

pub use auth::AuthQuery;
pub use workflow::WorkflowQuery;

//! Mutation roots.

mod auth;
mod workflow;

pub use auth::AuthMutation;
pub use workflow::WorkflowMutation;

//! Mutation roots.

mod workflow;

pub use workflow::WorkflowMutation;

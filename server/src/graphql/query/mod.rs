//! Query roots.

mod workflow;

pub use workflow::WorkflowQuery;

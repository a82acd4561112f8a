//! Pure domain rules of taskorch: workflow DAG validation, task and workflow status machines, retry policy,
//! task configuration and domain events. No IO, no async runtime, no database: everything here is unit-tested.

pub mod dag;
pub mod event;
pub mod ids;
pub mod lifecycle;
pub mod retry;
pub mod saga;
pub mod status;

pub use dag::{CompensationSpec, Limits, TaskConfig, TaskSpec, WorkflowSpec};
pub use event::{EventType, NewEvent};
pub use ids::{TaskId, WorkflowId};
pub use retry::RetryPolicy;
pub use status::{TaskStatus, WorkflowStatus};

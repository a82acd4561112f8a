//! Pure domain rules of taskorch: workflow DAG validation, task and workflow status machines, retry policy,
//! task configuration and domain events. No IO, no async runtime, no database: everything here is unit-tested.

pub mod auth;
pub mod dag;
pub mod event;
pub mod ids;
pub mod json;
pub mod lifecycle;
pub mod ratelimit;
pub mod retry;
pub mod saga;
pub mod status;

pub use auth::{Permission, Role};
pub use dag::{CompensationSpec, Limits, TaskConfig, TaskSpec, WorkflowSpec};
pub use event::{EventType, NewEvent};
pub use ids::{ApiKeyId, TaskId, TenantId, UserId, WorkflowId};
pub use retry::RetryPolicy;
pub use status::{TaskStatus, WorkflowStatus};

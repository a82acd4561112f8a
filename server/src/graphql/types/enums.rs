//! Status and event enums as they appear in the schema.

use async_graphql::Enum;

/// Status of a workflow.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "taskorch_domain::WorkflowStatus")]
pub enum WorkflowStatus {
    /// Accepted, not started.
    Pending,
    /// Tasks are being dispatched and run.
    Running,
    /// Running tasks finish; nothing new is dispatched.
    Paused,
    /// Every task completed.
    Completed,
    /// A task failed for good and there was nothing to compensate.
    Failed,
    /// A task failed for good; compensations are running.
    Compensating,
    /// Every compensation ran.
    Compensated,
    /// A compensation failed for good; `retryWorkflow` resumes it.
    CompensationFailed,
    /// Cancelled by an operator.
    Cancelled,
}

/// Status of a task.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "taskorch_domain::TaskStatus")]
pub enum TaskStatus {
    /// Waiting on dependencies.
    Pending,
    /// Ready, waiting for a worker.
    Queued,
    /// An attempt is running.
    Running,
    /// An attempt failed; the next one waits for its backoff delay.
    Retrying,
    /// Finished with a result.
    Completed,
    /// Every attempt failed.
    Failed,
    /// Will not run (workflow failed or cancelled).
    Cancelled,
    /// Its compensation is waiting or running.
    Compensating,
    /// Its compensation ran.
    Compensated,
    /// Its compensation failed for good.
    CompensationFailed,
}

/// Type of a domain event.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "taskorch_domain::EventType")]
pub enum EventType {
    /// The workflow was accepted and started.
    WorkflowStarted,
    /// A task became ready for a worker.
    TaskQueued,
    /// A worker started an attempt.
    TaskStarted,
    /// A task finished with a result.
    TaskCompleted,
    /// An attempt failed.
    TaskFailed,
    /// Another attempt will follow after a delay.
    TaskRetrying,
    /// A task will not run.
    TaskCancelled,
    /// Every task completed.
    WorkflowCompleted,
    /// The workflow failed.
    WorkflowFailed,
    /// A task failed for good; compensations begin.
    CompensationStarted,
    /// A task's compensation was queued.
    TaskCompensating,
    /// A task's compensation ran.
    TaskCompensated,
    /// A task's compensation failed for good.
    TaskCompensationFailed,
    /// Every compensation ran.
    WorkflowCompensated,
    /// The workflow was cancelled.
    WorkflowCancelled,
    /// The workflow was paused.
    WorkflowPaused,
    /// The workflow was resumed. After `retryWorkflow` its data is `{reason: "retry", tasks: [keys]}`: the tasks
    /// put back (each queued again, with its TASK_QUEUED, or waiting for its dependencies).
    WorkflowResumed,
}

/// A role of a user or an API key; each includes the permissions of those below it.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(remote = "taskorch_domain::Role")]
pub enum Role {
    /// Reads workflows, tasks and events, and subscribes to them.
    Viewer,
    /// Also submits, cancels, retries, pauses and resumes workflows.
    Operator,
    /// Also manages users, API keys and (in the system tenant) tenants.
    Admin,
}

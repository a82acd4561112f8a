use async_graphql::{InputObject, Json};
use taskorch_domain::RetryPolicy;
use taskorch_domain::dag::{self, CompensationSpec, TaskConfig, TaskSpec, WorkflowSpec};

use super::WorkflowStatus;

/// A workflow to submit.
#[derive(InputObject, Debug)]
pub struct SubmitWorkflowInput {
    /// Name of the workflow (1–200 characters).
    pub name: String,
    /// Resubmitting the same content with the same key returns the first workflow; other content is a CONFLICT.
    pub idempotency_key: Option<String>,
    /// The tasks, a DAG through `dependsOn`.
    pub tasks: Vec<TaskInput>,
}

/// A task of a submitted workflow.
#[derive(InputObject, Debug)]
pub struct TaskInput {
    /// Unique within the workflow: 1–128 characters of A-Z a-z 0-9 _ . -
    pub key: String,
    /// Handler kind (noop, echo, sleep, fail, http, shell, or a custom one).
    pub kind: String,
    /// Input of the handler.
    pub payload: Option<Json<serde_json::Value>>,
    /// Keys of the tasks that must complete first, each once.
    pub depends_on: Option<Vec<String>>,
    /// Retry policy (defaults: 3 attempts, 1 s initial delay, ×2, capped at 60 s, jitter on).
    pub retry: Option<RetryPolicyInput>,
    /// An attempt running longer is cancelled and fails.
    pub timeout_ms: Option<i64>,
    /// 0–9, higher first (default 5).
    pub priority: Option<i64>,
    /// Handed to the handler to de-duplicate side effects (1–256 characters).
    pub idempotency_key: Option<String>,
    /// Run when a later task fails for good (saga).
    pub compensation: Option<CompensationInput>,
}

/// The compensating action of a task.
#[derive(InputObject, Debug)]
pub struct CompensationInput {
    /// Handler kind.
    pub kind: String,
    /// Input of the handler (it also receives the task's payload and result).
    pub payload: Option<Json<serde_json::Value>>,
    /// Retry policy of the compensation.
    pub retry: Option<RetryPolicyInput>,
}

/// Retry policy; omitted fields take their defaults.
#[derive(InputObject, Debug)]
pub struct RetryPolicyInput {
    /// Attempts in all, 1–100 (default 3).
    pub max_attempts: Option<i64>,
    /// Delay before the second attempt (default 1000).
    pub initial_delay_ms: Option<i64>,
    /// Growth of the delay per attempt (default 2.0).
    pub multiplier: Option<f64>,
    /// Cap of the delay (default 60000).
    pub max_delay_ms: Option<i64>,
    /// Spread delays by ±20 % (default true).
    pub jitter: Option<bool>,
}

/// Filter of the workflow list.
#[derive(InputObject, Debug, Default)]
pub struct WorkflowFilter {
    /// Only workflows in this status.
    pub status: Option<WorkflowStatus>,
    /// Only workflows with exactly this name.
    pub name: Option<String>,
}

fn retry(key: &str, input: Option<RetryPolicyInput>) -> Result<RetryPolicy, dag::Error> {
    let Some(r) = input else {
        return Ok(RetryPolicy::default());
    };
    RetryPolicy::from_parts(r.max_attempts, r.initial_delay_ms, r.multiplier, r.max_delay_ms, r.jitter)
        .map_err(|source| dag::Error::InvalidRetry { key: key.to_owned(), source })
}

impl SubmitWorkflowInput {
    /// The domain definition, with per-field checks that belong to the input's shape.
    pub fn into_spec(self) -> Result<WorkflowSpec, dag::Error> {
        let tasks = self
            .tasks
            .into_iter()
            .map(|t| {
                let compensation = match t.compensation {
                    None => None,
                    Some(c) => Some(CompensationSpec {
                        kind: c.kind,
                        payload: c.payload.map(|j| j.0).unwrap_or_default(),
                        retry: retry(&t.key, c.retry)?,
                    }),
                };
                Ok(TaskSpec {
                    retry: retry(&t.key, t.retry)?,
                    config: TaskConfig {
                        timeout_ms: dag::timeout(&t.key, t.timeout_ms)?,
                        priority: dag::priority(&t.key, t.priority)?,
                        idempotency_key: t.idempotency_key,
                    },
                    payload: t.payload.map(|j| j.0).unwrap_or_default(),
                    depends_on: t.depends_on.unwrap_or_default(),
                    key: t.key,
                    kind: t.kind,
                    compensation,
                })
            })
            .collect::<Result<Vec<_>, dag::Error>>()?;
        Ok(WorkflowSpec { name: self.name, idempotency_key: self.idempotency_key, tasks })
    }
}

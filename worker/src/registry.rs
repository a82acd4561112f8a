//! Handlers by task kind.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value as Json;
use taskorch_domain::{TaskId, WorkflowId};
use taskorch_engine::Phase;
use tokio_util::sync::CancellationToken;

use crate::handlers;

/// What a handler receives.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub workflow_id: WorkflowId,
    pub task_id: TaskId,
    pub key: String,
    pub kind: String,
    /// `Run`, or `Compensate` when this runs a task's compensation.
    pub phase: Phase,
    pub payload: Json,
    /// Results of the dependencies by task key; for a compensation, `{payload, result}` of the original task.
    pub inputs: Json,
    /// 1-based attempt number.
    pub attempt: u32,
    pub idempotency_key: Option<String>,
    /// Cancelled when the attempt must stop (workflow cancelled, lease lost, worker stopping).
    pub cancel: CancellationToken,
}

/// A failed attempt, with a message for the task's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl HandlerError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Runs tasks of one kind.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn run(&self, ctx: TaskContext) -> Result<Json, HandlerError>;
}

struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Json, HandlerError>> + Send + 'static,
{
    async fn run(&self, ctx: TaskContext) -> Result<Json, HandlerError> {
        (self.0)(ctx).await
    }
}

/// Settings of the built-in handlers.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Register `shell` (runs programs on the worker's machine).
    pub allow_shell: bool,
    /// `http`: consecutive failures that open a host's circuit.
    pub breaker_threshold: u32,
    /// `http`: how long an open circuit stays open before one trial request.
    pub breaker_reset: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self { allow_shell: false, breaker_threshold: 5, breaker_reset: Duration::from_secs(60) }
    }
}

/// Handlers by kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in handlers.
    pub fn with_builtins(opts: RegistryOptions) -> Self {
        let mut r = Self::new();
        r.register("noop", handlers::Noop);
        r.register("echo", handlers::Echo);
        r.register("sleep", handlers::Sleep);
        r.register("fail", handlers::Fail);
        r.register("http", handlers::Http::new(opts.breaker_threshold, opts.breaker_reset));
        if opts.allow_shell {
            r.register("shell", handlers::Shell);
        } else {
            r.register("shell", handlers::ShellDisabled);
        }
        r
    }

    /// Registers (or replaces) the handler of `kind`.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// Registers an async function as the handler of `kind`.
    pub fn register_fn<F, Fut>(&mut self, kind: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Json, HandlerError>> + Send + 'static,
    {
        self.register(kind, FnHandler(f))
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }

    /// Registered kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self.handlers.keys().cloned().collect();
        k.sort();
        k
    }
}

//! taskorch worker: runs queued tasks with handlers chosen by task `kind`.
//!
//! A [`Registry`] maps kinds to [`Handler`]s (built-ins: `noop`, `echo`, `sleep`, `fail`, `http`, and `shell`
//! when allowed). [`run_worker`] consumes a queue, claims tasks through fenced updates, runs them with their
//! timeout and a cancellation signal, heartbeats their leases and reports outcomes in batches.
//!
//! Registering a custom handler:
//! ```no_run
//! use taskorch_worker::{Registry, RegistryOptions, TaskContext, HandlerError};
//! let mut registry = Registry::with_builtins(RegistryOptions::default());
//! registry.register_fn("greet", |ctx: TaskContext| async move {
//!     let name = ctx.payload["name"].as_str().unwrap_or("world").to_owned();
//!     Ok::<_, HandlerError>(serde_json::json!({ "greeting": format!("hello {name}") }))
//! });
//! ```

pub mod config;
pub mod handlers;
pub mod observe;
mod registry;
mod runner;
pub mod setup;

pub use registry::{Handler, HandlerError, Registry, RegistryOptions, TaskContext};
pub use runner::{WorkerOptions, run_embedded, run_worker};

//! Application layer of taskorch: the use cases (submit, read, dispatch, claim, complete, fail, reap) over the
//! ports, and their adapters: the SeaORM store, the in-process queue and the in-process event bus. Shared by the
//! server and the worker.

pub mod auth;
pub mod bus;
pub mod cache;
pub mod db;
pub mod dispatcher;
pub mod error;
pub mod model;
mod publisher;
pub mod queue;
pub mod ratelimit;
mod redis_client;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod time;
pub mod trace;

pub use bus::{EventBus, InProcessEventBus, RedisEventBus};
pub use error::Error;
pub use queue::{Dispatch, InProcessQueue, Phase, TaskQueue};
pub use service::{Engine, EngineOptions};

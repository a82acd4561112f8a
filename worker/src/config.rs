//! Configuration of the worker binary: defaults, then `TASKORCH_*` environment, then flags.

use std::time::Duration;

use clap::Parser;
use taskorch_engine::EngineOptions;
use taskorch_engine::db::{DEFAULT_URL, PoolOptions};

use crate::{RegistryOptions, WorkerOptions};

/// taskorch worker: runs queued tasks.
#[derive(Debug, Clone, Parser)]
#[command(name = "taskorch-worker", version)]
#[group(id = "worker")]
pub struct Config {
    /// Database URL (sqlite://… or postgres://…).
    #[arg(long, env = "TASKORCH_DATABASE_URL", default_value = DEFAULT_URL)]
    pub database_url: String,
    /// Attempts run at once.
    #[arg(long, env = "TASKORCH_WORKER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Serve only these task kinds (comma-separated).
    #[arg(long, env = "TASKORCH_WORKER_KINDS", value_delimiter = ',')]
    pub kinds: Option<Vec<String>>,
    /// Enable the `shell` handler.
    #[arg(long, env = "TASKORCH_ALLOW_SHELL", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_shell: bool,
    /// Lease of a running attempt, extended by heartbeats.
    #[arg(long, env = "TASKORCH_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Heartbeat period (defaults to a third of the lease).
    #[arg(long, env = "TASKORCH_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// How often the reaper looks for expired leases.
    #[arg(long, env = "TASKORCH_REAPER_PERIOD_MS", default_value_t = 5_000)]
    pub reaper_period_ms: u64,
    /// A dispatched task not claimed within this time is dispatched again.
    #[arg(long, env = "TASKORCH_REDELIVER_AFTER_MS", default_value_t = 30_000)]
    pub redeliver_after_ms: u64,
    /// On SIGTERM, how long in-flight attempts may take before they are released.
    #[arg(long, env = "TASKORCH_GRACE_MS", default_value_t = 10_000)]
    pub grace_ms: u64,
    /// Consecutive failures that open an http host's circuit.
    #[arg(long, env = "TASKORCH_BREAKER_THRESHOLD", default_value_t = 5)]
    pub breaker_threshold: u32,
    /// How long an open circuit stays open.
    #[arg(long, env = "TASKORCH_BREAKER_RESET_MS", default_value_t = 60_000)]
    pub breaker_reset_ms: u64,
}

impl Config {
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            lease: Duration::from_millis(self.lease_ms),
            reaper_period: Duration::from_millis(self.reaper_period_ms),
            redeliver_after: Duration::from_millis(self.redeliver_after_ms),
            ..EngineOptions::default()
        }
    }

    pub fn worker_options(&self) -> WorkerOptions {
        WorkerOptions {
            concurrency: self.concurrency,
            kinds: self.kinds.clone(),
            grace: Duration::from_millis(self.grace_ms),
            heartbeat: Duration::from_millis(
                self.heartbeat_ms.unwrap_or(self.lease_ms / 3).max(10),
            ),
        }
    }

    pub fn registry_options(&self) -> RegistryOptions {
        RegistryOptions {
            allow_shell: self.allow_shell,
            breaker_threshold: self.breaker_threshold,
            breaker_reset: Duration::from_millis(self.breaker_reset_ms),
        }
    }

    pub fn pools(&self) -> PoolOptions {
        PoolOptions::default()
    }
}

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
    /// Read replica for reads that tolerate staleness (optional).
    #[arg(long, env = "TASKORCH_DATABASE_READ_URL")]
    pub database_read_url: Option<String>,
    /// Database connections per process.
    #[arg(long, env = "TASKORCH_DB_POOL_SIZE", default_value_t = 20)]
    pub db_pool_size: u32,
    /// Extra connections the write pool may open under load, beyond the pool size.
    #[arg(long, env = "TASKORCH_DB_POOL_OVERFLOW", default_value_t = 10)]
    pub db_pool_overflow: u32,
    /// Connections of the separate read pool (bulkhead).
    #[arg(long, env = "TASKORCH_DB_READ_POOL_SIZE", default_value_t = 8)]
    pub db_read_pool_size: u32,
    /// RabbitMQ URL: when set, tasks go through RabbitMQ instead of the in-process queue.
    #[arg(long, env = "TASKORCH_AMQP_URL")]
    pub amqp_url: Option<String>,
    /// Redis URL: when set, events go through Redis pub/sub so every server sees every event.
    #[arg(long, env = "TASKORCH_REDIS_URL")]
    pub redis_url: Option<String>,
    /// How long a workflow read stays in the Redis cache (events invalidate it sooner).
    #[arg(long, env = "TASKORCH_CACHE_TTL_MS", default_value_t = 2_000)]
    pub cache_ttl_ms: u64,
    /// Prefix of broker queues and Redis channels, so several deployments can share them.
    #[arg(long, env = "TASKORCH_NAMESPACE", default_value = "taskorch")]
    pub namespace: String,
    /// Log as JSON (default: JSON unless stderr is a terminal).
    #[arg(long, env = "TASKORCH_LOG_JSON")]
    pub log_json: Option<bool>,
    /// OTLP/HTTP collector (e.g. `http://127.0.0.1:4318`): traces are exported there when set.
    #[arg(long, env = "TASKORCH_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Address of the worker's `/metrics`, `/healthz` and `/readyz` (worker binary only; off when unset).
    #[arg(long, env = "TASKORCH_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
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
    /// A dispatched task not claimed within this time is dispatched again (a duplicate is refused by the claim's
    /// fence). Defaults to the lease: a claim within it leaves the row's indexed columns as they are.
    #[arg(long, env = "TASKORCH_REDELIVER_AFTER_MS")]
    pub redeliver_after_ms: Option<u64>,
    /// An attempt still running after this long has its claim written (RUNNING, TASK_STARTED); one that ends
    /// sooner is recorded with its claim and outcome in one write. 0 claims every attempt before it runs. At most a
    /// quarter of the redelivery delay (until its claim, the dispatch's visibility holds the task).
    #[arg(long, env = "TASKORCH_CLAIM_AFTER_MS", default_value_t = 50)]
    pub claim_after_ms: u64,
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
            redeliver_after: Duration::from_millis(self.redeliver_after_ms.unwrap_or(self.lease_ms)),
            trace: self.otlp_endpoint.is_some(),
            ..EngineOptions::default()
        }
    }

    pub fn worker_options(&self) -> WorkerOptions {
        WorkerOptions {
            concurrency: self.concurrency,
            kinds: self.kinds.clone(),
            grace: Duration::from_millis(self.grace_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms.unwrap_or(self.lease_ms / 3).max(10)),
            claim_after: Duration::from_millis(
                self.claim_after_ms.min(self.redeliver_after_ms.unwrap_or(self.lease_ms) / 4),
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
        PoolOptions {
            max_connections: self.db_pool_size + self.db_pool_overflow,
            read_connections: self.db_read_pool_size,
            read_url: self.database_read_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        let mut argv = vec!["taskorch-worker"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).expect("valid arguments")
    }

    fn options(args: &[&str]) -> EngineOptions {
        config(args).engine_options()
    }

    fn worker(args: &[&str]) -> WorkerOptions {
        config(args).worker_options()
    }

    #[test]
    fn the_redelivery_defaults_to_the_lease_with_or_without_a_broker() {
        // A claim within the redelivery keeps the row's indexed columns (a HOT update): it must not outlast the lease.
        let embedded = options(&[]);
        assert_eq!(embedded.redeliver_after, embedded.lease);
        assert_eq!(embedded.lease, Duration::from_secs(30));
        let broker = options(&["--amqp-url", "amqp://127.0.0.1:5672/%2f", "--lease-ms", "5000"]);
        assert_eq!(broker.redeliver_after, Duration::from_millis(5000));
        let set = options(&["--lease-ms", "5000", "--redeliver-after-ms", "1000"]);
        assert_eq!(set.redeliver_after, Duration::from_millis(1000));
    }

    #[test]
    fn a_deferred_claim_is_written_well_before_the_dispatch_could_be_delivered_again() {
        assert_eq!(worker(&[]).claim_after, Duration::from_millis(50));
        assert_eq!(worker(&["--claim-after-ms", "0"]).claim_after, Duration::ZERO);
        assert_eq!(worker(&["--lease-ms", "100"]).claim_after, Duration::from_millis(25));
        assert_eq!(
            worker(&["--redeliver-after-ms", "120", "--claim-after-ms", "500"]).claim_after,
            Duration::from_millis(30)
        );
    }
}

//! Configuration of the server binary, read in this one place: defaults, then `TASKORCH_*` environment, then
//! flags. The worker settings are the worker crate's own (flattened), so both binaries read them alike.

use clap::{Parser, Subcommand};
use taskorch_domain::Limits;
use taskorch_engine::EngineOptions;

/// taskorch: GraphQL-first workflow orchestration.
#[derive(Debug, Clone, Parser)]
#[command(name = "taskorch", version)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address to listen on; port 0 picks a free port. The bound URL is printed on stdout.
    #[arg(long, env = "TASKORCH_LISTEN", default_value = "127.0.0.1:8080", global = true)]
    pub listen: String,
    /// Do not run worker loops in this process (run `taskorch-worker` instead).
    #[arg(long, env = "TASKORCH_NO_WORKER", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_worker: bool,
    /// Most tasks in one workflow.
    #[arg(long, env = "TASKORCH_MAX_TASKS", default_value_t = 10_000, global = true)]
    pub max_tasks: usize,
    /// Largest task payload, in bytes of JSON.
    #[arg(long, env = "TASKORCH_MAX_PAYLOAD_BYTES", default_value_t = 256 * 1024, global = true)]
    pub max_payload_bytes: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "TASKORCH_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024, global = true)]
    pub max_body_bytes: usize,
    /// Browser origins allowed to call the API (comma-separated, `*` for any); none by default (same origin only).
    #[arg(long, env = "TASKORCH_CORS_ORIGINS", value_delimiter = ',', global = true)]
    pub cors_origins: Vec<String>,
    #[command(flatten)]
    pub security: crate::security::SecurityConfig,
    #[command(flatten)]
    pub worker: taskorch_worker::config::Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the GraphQL schema (SDL) and exit.
    PrintSchema,
}

impl Config {
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            limits: Limits { max_tasks: self.max_tasks, max_payload_bytes: self.max_payload_bytes },
            ..self.worker.engine_options()
        }
    }
}

//! Security settings of the server: credentials, token lifetimes, password hashing cost, rate limits and GraphQL
//! abuse limits. Secrets come from the environment or from files and are never printed (`Debug` redacts them).

use std::time::Duration;

use clap::Args;
use taskorch_domain::ratelimit::Quotas;
use taskorch_engine::auth::{AuthOptions, HashParams};

#[derive(Clone, Args)]
pub struct SecurityConfig {
    /// Key signing access tokens (at least 32 bytes). Without it (or `TASKORCH_JWT_SECRET_FILE`), a random key is
    /// generated once and kept in the database, shared by every server on it.
    #[arg(long, env = "TASKORCH_JWT_SECRET", hide_env_values = true, global = true)]
    pub jwt_secret: Option<String>,
    /// File holding the token-signing key.
    #[arg(long, env = "TASKORCH_JWT_SECRET_FILE", global = true)]
    pub jwt_secret_file: Option<String>,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "TASKORCH_JWT_TTL_SECS", default_value_t = 900, global = true)]
    pub jwt_ttl_secs: u64,
    /// Lifetime of refresh tokens, in seconds.
    #[arg(long, env = "TASKORCH_REFRESH_TTL_SECS", default_value_t = 7 * 24 * 3600, global = true)]
    pub refresh_ttl_secs: u64,
    /// Email of the admin created on an empty database.
    #[arg(long, env = "TASKORCH_ADMIN_EMAIL", global = true)]
    pub admin_email: Option<String>,
    /// Password of that admin; generated and printed once when neither this nor the file is set.
    #[arg(long, env = "TASKORCH_ADMIN_PASSWORD", hide_env_values = true, global = true)]
    pub admin_password: Option<String>,
    /// File holding the admin password.
    #[arg(long, env = "TASKORCH_ADMIN_PASSWORD_FILE", global = true)]
    pub admin_password_file: Option<String>,
    /// argon2id memory cost, in KiB.
    #[arg(long, env = "TASKORCH_ARGON2_MEMORY_KIB", default_value_t = 19 * 1024, global = true)]
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    #[arg(long, env = "TASKORCH_ARGON2_ITERATIONS", default_value_t = 2, global = true)]
    pub argon2_iterations: u32,
    /// argon2id lanes.
    #[arg(long, env = "TASKORCH_ARGON2_PARALLELISM", default_value_t = 1, global = true)]
    pub argon2_parallelism: u32,
    /// Calls per minute per credential (per client address for login), by class: `list=100,read=60000,
    /// write=30000,subscribe=6000,login=120`; 0 is unlimited. Shared through Redis when TASKORCH_REDIS_URL is set.
    #[arg(long, env = "TASKORCH_RATE_LIMITS", value_delimiter = ',', global = true)]
    pub rate_limits: Vec<String>,
    /// Deepest selection nesting accepted.
    #[arg(long, env = "TASKORCH_MAX_DEPTH", default_value_t = 16, global = true)]
    pub max_depth: usize,
    /// Most fields in one operation (fragments expanded).
    #[arg(long, env = "TASKORCH_MAX_COMPLEXITY", default_value_t = 5000, global = true)]
    pub max_complexity: usize,
    /// Most field values one operation may resolve, estimated: every field counts once per item of the lists
    /// around it whose size the query sets (`workflows(first:)`, 20 by default).
    #[arg(long, env = "TASKORCH_MAX_COST", default_value_t = 100_000, global = true)]
    pub max_cost: usize,
    /// Most aliases in one operation.
    #[arg(long, env = "TASKORCH_MAX_ALIASES", default_value_t = 200, global = true)]
    pub max_aliases: usize,
    /// Most operations in one batched request.
    #[arg(long, env = "TASKORCH_MAX_BATCH", default_value_t = 10, global = true)]
    pub max_batch: usize,
    /// Answer introspection queries (turn off in production if the schema is private).
    #[arg(long, env = "TASKORCH_INTROSPECTION", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    pub introspection: bool,
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("SecurityConfig")
            .field("jwt_secret", &redacted(&self.jwt_secret))
            .field("jwt_secret_file", &self.jwt_secret_file)
            .field("jwt_ttl_secs", &self.jwt_ttl_secs)
            .field("admin_email", &self.admin_email)
            .field("admin_password", &redacted(&self.admin_password))
            .field("admin_password_file", &self.admin_password_file)
            .field("rate_limits", &self.rate_limits)
            .finish_non_exhaustive()
    }
}

fn read_secret(var: &str, path: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{var} ({path}) cannot be read: {e}"))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// Limits of GraphQL documents.
#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    pub max_depth: usize,
    pub max_complexity: usize,
    pub max_cost: usize,
    pub max_aliases: usize,
    pub max_batch: usize,
    /// Whether `__schema` and `__type` are answered.
    pub introspection: bool,
}

impl SecurityConfig {
    pub fn auth_options(&self) -> anyhow::Result<AuthOptions> {
        let jwt_secret = match (self.jwt_secret.as_ref().filter(|s| !s.is_empty()), &self.jwt_secret_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(path)) => Some(read_secret("TASKORCH_JWT_SECRET_FILE", path)?),
            (None, None) => None,
        };
        if jwt_secret.as_ref().is_some_and(|s| s.len() < 32) {
            anyhow::bail!("TASKORCH_JWT_SECRET must have at least 32 bytes");
        }
        let admin_password = match (self.admin_password.as_ref().filter(|p| !p.is_empty()), &self.admin_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => Some(read_secret("TASKORCH_ADMIN_PASSWORD_FILE", path)?),
            (None, None) => None,
        };
        Ok(AuthOptions {
            jwt_secret: jwt_secret.map(String::into_bytes),
            access_ttl: Some(Duration::from_secs(self.jwt_ttl_secs.max(1))),
            refresh_ttl: Some(Duration::from_secs(self.refresh_ttl_secs.max(1))),
            hash_params: HashParams {
                memory_kib: self.argon2_memory_kib,
                iterations: self.argon2_iterations,
                parallelism: self.argon2_parallelism,
            },
            admin_email: self.admin_email.clone(),
            admin_password,
        })
    }

    pub fn quotas(&self) -> anyhow::Result<Quotas> {
        Quotas::default()
            .parse_overrides(self.rate_limits.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("TASKORCH_RATE_LIMITS: {e}"))
    }

    pub fn document_limits(&self) -> DocumentLimits {
        DocumentLimits {
            max_depth: self.max_depth,
            max_complexity: self.max_complexity,
            max_cost: self.max_cost,
            max_aliases: self.max_aliases,
            max_batch: self.max_batch,
            introspection: self.introspection,
        }
    }
}

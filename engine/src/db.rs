//! Database connections: a single-writer pool plus a read pool on SQLite (it allows one writer at a time), one
//! pool on PostgreSQL. Migrations run here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database as SeaDatabase, DatabaseConnection, DbBackend, DbErr, Statement, Value,
};
use taskorch_migration::{Migrator, MigratorTrait};

/// Pool sizes.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_connections: u32,
    pub read_connections: u32,
    /// A read replica for reads that tolerate staleness (PostgreSQL).
    pub read_url: Option<String>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self { max_connections: 20, read_connections: 4, read_url: None }
    }
}

/// The connections of one process.
#[derive(Clone, Debug)]
pub struct Database {
    pub write: DatabaseConnection,
    pub read: DatabaseConnection,
    pub backend: DbBackend,
    /// Reads go to a replica that may lag behind the primary.
    replica_reads: bool,
    statements: Arc<[AtomicU64; 2]>,
}

const WRITE: usize = 0;
const READ: usize = 1;

/// The default database: a SQLite file in the working directory.
pub const DEFAULT_URL: &str = "sqlite://taskorch.db?mode=rwc";

impl Database {
    /// Connects to `url` (`sqlite://…` or `postgres://…`).
    pub async fn connect(url: &str, pools: PoolOptions) -> Result<Self, DbErr> {
        if url.starts_with("sqlite:") {
            let write = SeaDatabase::connect(sqlite_options(url, 1)).await?;
            // WAL is a property of the file: set once, before readers open it.
            write.execute_unprepared("PRAGMA journal_mode=WAL").await?;
            let read = SeaDatabase::connect(sqlite_options(url, pools.read_connections.max(1))).await?;
            Ok(Self::counted(write, read, DbBackend::Sqlite))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let mut opts = ConnectOptions::new(url.to_owned());
            opts.max_connections(pools.max_connections)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(5))
                .test_before_acquire_if_idle_for(PING_IF_IDLE)
                .sqlx_logging(false);
            let pool = SeaDatabase::connect(opts).await?;
            // A separate, smaller read pool (bulkhead), on the replica when one is configured.
            let mut read_opts = ConnectOptions::new(pools.read_url.clone().unwrap_or_else(|| url.to_owned()));
            read_opts
                .max_connections(pools.read_connections.max(1))
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(5))
                .test_before_acquire_if_idle_for(PING_IF_IDLE)
                .sqlx_logging(false);
            let read = SeaDatabase::connect(read_opts).await?;
            Ok(Self { replica_reads: pools.read_url.is_some(), ..Self::counted(pool, read, DbBackend::Postgres) })
        } else {
            Err(DbErr::Custom(format!(
                "unsupported database URL scheme in `{}`: use sqlite:// or postgres://",
                redact(url)
            )))
        }
    }

    /// Connection for reads that must see the latest commit (credentials: a revoked key is refused at once). On
    /// SQLite every pool reads the same file; on PostgreSQL the read pool may be a lagging replica.
    pub fn fresh(&self) -> &DatabaseConnection {
        if self.backend == DbBackend::Sqlite { &self.read } else { &self.write }
    }

    fn counted(mut write: DatabaseConnection, mut read: DatabaseConnection, backend: DbBackend) -> Self {
        let statements: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        for (pool, conn) in [(WRITE, &mut write), (READ, &mut read)] {
            let counter = statements.clone();
            conn.set_metric_callback(move |i| {
                tracing::trace!(target: "taskorch::sql", elapsed_us = i.elapsed.as_micros() as u64, sql = %i.statement.sql);
                counter[pool].fetch_add(1, Ordering::Relaxed);
            });
        }
        Self { write, read, backend, replica_reads: false, statements }
    }

    /// Whether the read pool is a replica that may lag behind the primary.
    pub fn replica_reads(&self) -> bool {
        self.replica_reads
    }

    /// SQL statements executed by this process so far on the write pool and on the read pool.
    pub fn statements_executed(&self) -> (u64, u64) {
        (self.statements[WRITE].load(Ordering::Relaxed), self.statements[READ].load(Ordering::Relaxed))
    }

    /// Connections open and idle in the write pool (`read == false`) or the read pool.
    pub fn pool_state(&self, read: bool) -> (u32, u32) {
        let conn = if read { &self.read } else { &self.write };
        match self.backend {
            DbBackend::Postgres => {
                let p = conn.get_postgres_connection_pool();
                (p.size(), p.num_idle() as u32)
            }
            _ => {
                let p = conn.get_sqlite_connection_pool();
                (p.size(), p.num_idle() as u32)
            }
        }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        Migrator::up(&self.write, None).await
    }

    /// Number of migrations not yet applied.
    pub async fn pending_migrations(&self) -> Result<usize, DbErr> {
        Ok(Migrator::get_pending_migrations(&self.write).await?.len())
    }

    /// A statement written with `?` placeholders, rewritten to `$n` for PostgreSQL.
    pub fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        stmt(self.backend, sql, values)
    }
}

/// A pooled connection is checked (one round trip) before it is handed out only once it has been idle this long:
/// the pool's default checks every one, a round trip more per transaction. A busy connection the server dropped
/// fails its next statement instead, and callers retry.
const PING_IF_IDLE: Duration = Duration::from_secs(1);

fn sqlite_options(url: &str, connections: u32) -> ConnectOptions {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(connections)
        .min_connections(1)
        .idle_timeout(None::<Duration>)
        .max_lifetime(None::<Duration>)
        .test_before_acquire_if_idle_for(PING_IF_IDLE)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
                .statement_cache_capacity(256)
        })
        .map_sqlx_sqlite_pool_opts(|pool| pool.after_connect(|conn, _| Box::pin(stable_plans(conn))));
    opts
}

/// Turns on SQLite's query planner stability guarantee for a connection. Without it SQLite (3.47+) re-plans a
/// statement whenever a new value is bound to a parameter its plan looked at — a bound `LIMIT ?`, which every
/// `.one()` and every page has — so each execution of a cached statement was a full re-prepare. With it a statement
/// keeps the plan it was prepared with; plans do not depend on bound values here (partial-index conditions are
/// literals in the SQL).
async fn stable_plans(conn: &mut sea_orm::sqlx::SqliteConnection) -> Result<(), sea_orm::sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is a live connection that no other thread uses while the handle is locked; this option takes an
    // int (1: on) and an int pointer for the new setting, which may be null.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_db_config(
            db,
            libsqlite3_sys::SQLITE_DBCONFIG_ENABLE_QPSG,
            1 as std::ffi::c_int,
            std::ptr::null_mut::<std::ffi::c_int>(),
        )
    };
    if rc != libsqlite3_sys::SQLITE_OK {
        return Err(sea_orm::sqlx::Error::Configuration(
            format!("could not enable SQLite's query planner stability guarantee (code {rc})").into(),
        ));
    }
    Ok(())
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Builds a statement from SQL with `?` placeholders for either backend.
pub fn stmt(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    if backend == DbBackend::Postgres {
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        for ch in sql.chars() {
            if ch == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(ch);
            }
        }
        Statement::from_sql_and_values(backend, out, values)
    } else {
        Statement::from_sql_and_values(backend, sql, values)
    }
}

/// `?, ?, ?` for `n` values.
pub fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        let s = stmt(DbBackend::Postgres, "SELECT ? WHERE a IN (?, ?)", vec![1.into(), 2.into(), 3.into()]);
        assert_eq!(s.sql, "SELECT $1 WHERE a IN ($2, $3)");
        let s = stmt(DbBackend::Sqlite, "SELECT ?", vec![1.into()]);
        assert_eq!(s.sql, "SELECT ?");
    }

    /// How often the statements prepared on a pooled SQLite connection were re-prepared.
    async fn reprepares(pool: &sea_orm::sqlx::SqlitePool) -> i64 {
        let mut conn = pool.acquire().await.expect("connection");
        let mut handle = conn.lock_handle().await.expect("handle");
        let db = handle.as_raw_handle().as_ptr();
        let mut total = 0;
        // SAFETY: the handle is locked (no other thread uses the connection); statements are only inspected.
        unsafe {
            let mut stmt = libsqlite3_sys::sqlite3_next_stmt(db, std::ptr::null_mut());
            while !stmt.is_null() {
                total +=
                    libsqlite3_sys::sqlite3_stmt_status(stmt, libsqlite3_sys::SQLITE_STMTSTATUS_REPREPARE, 0) as i64;
                stmt = libsqlite3_sys::sqlite3_next_stmt(db, stmt);
            }
        }
        total
    }

    #[tokio::test]
    async fn a_cached_sqlite_statement_with_a_bound_limit_is_not_prepared_again() {
        let dir = std::env::temp_dir().join(format!("taskorch-qpsg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
        let db = Database::connect(&url, PoolOptions::default()).await.expect("connect");
        db.migrate().await.expect("migrate");
        // Schema changes (the migrations) do expire statements: count only what the loop adds.
        let before = reprepares(db.write.get_sqlite_connection_pool()).await;
        for limit in 1..=20i64 {
            let rows = db
                .write
                .query_all_raw(stmt(
                    DbBackend::Sqlite,
                    "SELECT version FROM seaql_migrations LIMIT ?",
                    vec![limit.into()],
                ))
                .await
                .expect("query");
            assert!(!rows.is_empty());
        }
        assert_eq!(reprepares(db.write.get_sqlite_connection_pool()).await - before, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}

//! Task and event rows no longer carry a foreign key to their workflow on PostgreSQL.
//!
//! The store already guarantees what the key checked: a workflow's tasks are inserted in the transaction that
//! inserts the workflow, its events in transactions that first update (and so lock) the workflow's row for their
//! sequence numbers, and no workflow is ever deleted. The check itself was a query per inserted row (a trigger that
//! looks the workflow up and locks it `FOR KEY SHARE`): about a quarter of the time PostgreSQL took to insert a
//! 10,000-task workflow, and a lookup for each of the three events a task writes. SQLite checks its keys in the
//! same B-tree walk as the insert and keeps them.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const KEYS: [(&str, &str); 2] = [("task", "task_workflow"), ("event", "event_workflow")];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for (table, key) in KEYS {
            db.execute_unprepared(&format!("ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {key}")).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for (table, key) in KEYS {
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} ADD CONSTRAINT {key} FOREIGN KEY (workflow_id) REFERENCES workflow (id) \
                 ON DELETE CASCADE"
            ))
            .await?;
        }
        Ok(())
    }
}

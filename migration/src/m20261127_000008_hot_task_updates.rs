//! A claim changes no indexed column of its task row, so PostgreSQL can write it as a HOT update (no index entry,
//! a smaller WAL record) when the row's page has room.
//!
//! The queue scans' partial indexes used to name `status` and `lease_until` in their conditions, which every claim
//! changes. They now look at `dispatched_until` alone, which says where a task stands in the queue:
//! `0` due (when `available_at` comes), `> 0` handed to a queue or leased (the reaper looks at the row again then),
//! `-1` in no queue (waiting for dependencies, or finished). The lease is no longer indexed: a leased row keeps a
//! `dispatched_until` no later than its lease, so the reaper finds expired leases through `task_dispatched`.
//! Task pages keep half their space free for the claim's new row version (fillfactor 50, PostgreSQL).

use sea_orm_migration::prelude::*;

use crate::m20261126_000006_split_dispatch_index::{DISPATCHABLE, create_indexes};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        // Rows in no queue leave the scans; leased rows are seen again by the time their lease runs out.
        db.execute_unprepared(&format!(
            "UPDATE task SET dispatched_until = -1 WHERE lease_until IS NULL AND NOT ({DISPATCHABLE})"
        ))
        .await?;
        db.execute_unprepared("UPDATE task SET dispatched_until = lease_until WHERE lease_until IS NOT NULL").await?;
        for index in ["task_due", "task_dispatched", "task_leased"] {
            db.execute_unprepared(&format!("DROP INDEX IF EXISTS {index}")).await?;
        }
        db.execute_unprepared("CREATE INDEX task_due ON task (priority DESC, available_at) WHERE dispatched_until = 0")
            .await?;
        db.execute_unprepared("CREATE INDEX task_dispatched ON task (dispatched_until) WHERE dispatched_until > 0")
            .await?;
        if manager.get_database_backend() == sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
            db.execute_unprepared("ALTER TABLE task SET (fillfactor = 50)").await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for index in ["task_due", "task_dispatched"] {
            db.execute_unprepared(&format!("DROP INDEX IF EXISTS {index}")).await?;
        }
        db.execute_unprepared("UPDATE task SET dispatched_until = 0 WHERE dispatched_until < 0").await?;
        create_indexes(db).await?;
        db.execute_unprepared("CREATE INDEX task_leased ON task (lease_until) WHERE lease_until IS NOT NULL").await?;
        if manager.get_database_backend() == sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
            db.execute_unprepared("ALTER TABLE task RESET (fillfactor)").await?;
        }
        Ok(())
    }
}

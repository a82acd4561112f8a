//! Task lists of a workflow are read through `task_workflow_key` (its `workflow_id` prefix) and sorted by position
//! afterwards; the separate `(workflow_id, position)` index only cost every task row version one more index entry
//! (no update of a task row is HOT: each changes a column of a partial index's condition).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP INDEX IF EXISTS task_workflow_position").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("CREATE INDEX task_workflow_position ON task (workflow_id, position)")
            .await?;
        Ok(())
    }
}

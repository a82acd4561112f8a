//! The dispatcher's scan only sees tasks not handed to a queue (`dispatched_until = 0`): tasks that sit in a broker
//! waiting for a worker no longer crowd the index it walks. Dispatches whose visibility ran out are found through
//! their own index and made due again (`dispatched_until` back to 0).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

pub(crate) const DISPATCHABLE: &str = "status IN ('QUEUED', 'RETRYING', 'COMPENSATING')";

/// Creates this migration's `task_due` and `task_dispatched` (also what migration 8 restores when it is undone).
pub(crate) async fn create_indexes(db: &SchemaManagerConnection<'_>) -> Result<(), DbErr> {
    db.execute_unprepared(&format!(
        "CREATE INDEX task_due ON task (priority DESC, available_at) \
         WHERE {DISPATCHABLE} AND dispatched_until = 0 AND lease_until IS NULL"
    ))
    .await?;
    db.execute_unprepared(&format!(
        "CREATE INDEX task_dispatched ON task (dispatched_until) WHERE {DISPATCHABLE} AND dispatched_until > 0"
    ))
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS task_dispatchable").await?;
        create_indexes(db).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS task_due").await?;
        db.execute_unprepared("DROP INDEX IF EXISTS task_dispatched").await?;
        db.execute_unprepared(&format!(
            "CREATE INDEX task_dispatchable ON task (priority DESC, available_at) WHERE {DISPATCHABLE}"
        ))
        .await?;
        Ok(())
    }
}

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("task")
                    .col(pk_uuid("id"))
                    .col(uuid("workflow_id"))
                    .col(string("key"))
                    .col(string("kind"))
                    .col(integer("position"))
                    .col(string("status"))
                    .col(json_null("payload"))
                    .col(json_null("result"))
                    .col(text_null("error"))
                    .col(json("depends_on"))
                    .col(json("dependents"))
                    .col(integer("pending_deps"))
                    .col(small_integer("priority"))
                    .col(integer("attempts"))
                    .col(integer("attempt_base"))
                    .col(json("retry"))
                    .col(big_integer_null("timeout_ms"))
                    .col(string_null("idempotency_key"))
                    .col(json_null("compensation"))
                    .col(string_null("comp_kind"))
                    .col(integer("comp_attempts"))
                    .col(integer("comp_attempt_base"))
                    .col(big_integer("available_at"))
                    .col(big_integer("dispatched_until"))
                    .col(big_integer_null("lease_until"))
                    .col(big_integer_null("queued_at"))
                    .col(big_integer_null("started_at"))
                    .col(big_integer_null("finished_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("task_workflow")
                            .from("task", "workflow_id")
                            .to("workflow", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("task_workflow_key")
                    .table("task")
                    .col("workflow_id")
                    .col("key")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("task_workflow_position")
                    .table("task")
                    .col("workflow_id")
                    .col("position")
                    .to_owned(),
            )
            .await?;
        // The dispatcher's and the reaper's scans only ever look at tasks that can move on their own.
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE INDEX task_dispatchable ON task (priority DESC, available_at) \
             WHERE status IN ('QUEUED', 'RETRYING', 'COMPENSATING')",
        )
        .await?;
        db.execute_unprepared("CREATE INDEX task_leased ON task (lease_until) WHERE lease_until IS NOT NULL").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("task").to_owned()).await
    }
}

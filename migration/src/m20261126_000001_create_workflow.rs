use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("workflow")
                    .col(pk_uuid("id"))
                    .col(string("name"))
                    .col(string("status"))
                    .col(string_null("idempotency_key"))
                    .col(string("content_hash"))
                    .col(integer("task_count"))
                    .col(integer("completed_count"))
                    .col(boolean("has_compensation"))
                    .col(big_integer("last_sequence"))
                    .col(big_integer("created_at"))
                    .col(big_integer_null("started_at"))
                    .col(big_integer_null("finished_at"))
                    .col(big_integer("updated_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("workflow_idempotency_key")
                    .table("workflow")
                    .col("idempotency_key")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("workflow_status_id").table("workflow").col("status").col("id").to_owned(),
            )
            .await?;
        manager
            .create_index(Index::create().name("workflow_name_id").table("workflow").col("name").col("id").to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("workflow").to_owned()).await
    }
}

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("event")
                    .col(uuid("workflow_id"))
                    .col(big_integer("sequence"))
                    .col(string("event_type"))
                    .col(string_null("task_key"))
                    .col(big_integer("at"))
                    .col(json_null("data"))
                    .primary_key(Index::create().col("workflow_id").col("sequence"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("event_workflow")
                            .from("event", "workflow_id")
                            .to("workflow", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("event").to_owned()).await
    }
}

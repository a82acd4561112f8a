//! Events are stored as chunks: one row per workflow and transaction, holding that transaction's consecutive events
//! of the workflow as a JSON array (`[type, task key or null, data or null]` each), instead of one row per event.
//!
//! A task writes three events (queued, started, completed); as rows they were about a third of the rows PostgreSQL
//! wrote and a quarter of its write-ahead log. A batch of a hundred completions now writes one or two chunk rows.
//! Existing events become one chunk each; `down` expands the chunks back into rows.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("event_chunk")
                    .col(uuid("workflow_id"))
                    .col(big_integer("last_sequence"))
                    .col(big_integer("first_sequence"))
                    .col(big_integer("at"))
                    .col(text("events"))
                    .primary_key(Index::create().col("workflow_id").col("last_sequence"))
                    .to_owned(),
            )
            .await?;
        let chunk = match manager.get_database_backend() {
            DatabaseBackend::Postgres => "json_build_array(json_build_array(event_type, task_key, data))::text",
            _ => "json_array(json_array(event_type, task_key, json(data)))",
        };
        let db = manager.get_connection();
        db.execute_unprepared(&format!(
            "INSERT INTO event_chunk (workflow_id, last_sequence, first_sequence, at, events) \
             SELECT workflow_id, sequence, sequence, at, {chunk} FROM event"
        ))
        .await?;
        manager.drop_table(Table::drop().table("event").to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let postgres = manager.get_database_backend() == DatabaseBackend::Postgres;
        let mut table = Table::create()
            .table("event")
            .col(uuid("workflow_id"))
            .col(big_integer("sequence"))
            .col(string("event_type"))
            .col(string_null("task_key"))
            .col(big_integer("at"))
            .col(json_null("data"))
            .primary_key(Index::create().col("workflow_id").col("sequence"))
            .to_owned();
        if !postgres {
            // PostgreSQL dropped this key in migration 9.
            table.foreign_key(
                ForeignKey::create()
                    .name("event_workflow")
                    .from("event", "workflow_id")
                    .to("workflow", "id")
                    .on_delete(ForeignKeyAction::Cascade),
            );
        }
        manager.create_table(table).await?;
        let expand = if postgres {
            "SELECT c.workflow_id, c.first_sequence + e.n - 1, e.v ->> 0, e.v ->> 1, c.at, \
             CASE WHEN json_typeof(e.v -> 2) = 'null' THEN NULL ELSE e.v -> 2 END \
             FROM event_chunk c, json_array_elements(c.events::json) WITH ORDINALITY AS e(v, n)"
        } else {
            "SELECT c.workflow_id, c.first_sequence + e.key, e.value ->> 0, e.value ->> 1, c.at, \
             CASE WHEN json_type(e.value, '$[2]') = 'null' THEN NULL ELSE e.value -> 2 END \
             FROM event_chunk c, json_each(c.events) e"
        };
        let db = manager.get_connection();
        db.execute_unprepared(&format!(
            "INSERT INTO event (workflow_id, sequence, event_type, task_key, at, data) {expand}"
        ))
        .await?;
        manager.drop_table(Table::drop().table("event_chunk").to_owned()).await
    }
}

//! Database migrations of taskorch, the same steps for SQLite and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_create_workflow;
mod m20261126_000002_create_task;
mod m20261126_000003_create_event;
mod m20261126_000004_add_trace_to_workflow;
mod m20261126_000005_create_auth;
mod m20261126_000006_split_dispatch_index;
mod m20261126_000007_drop_task_position_index;
mod m20261127_000008_hot_task_updates;
mod m20261127_000009_drop_child_foreign_keys;
mod m20261127_000010_event_chunks;

/// All migrations, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_workflow::Migration),
            Box::new(m20261126_000002_create_task::Migration),
            Box::new(m20261126_000003_create_event::Migration),
            Box::new(m20261126_000004_add_trace_to_workflow::Migration),
            Box::new(m20261126_000005_create_auth::Migration),
            Box::new(m20261126_000006_split_dispatch_index::Migration),
            Box::new(m20261126_000007_drop_task_position_index::Migration),
            Box::new(m20261127_000008_hot_task_updates::Migration),
            Box::new(m20261127_000009_drop_child_foreign_keys::Migration),
            Box::new(m20261127_000010_event_chunks::Migration),
        ]
    }
}

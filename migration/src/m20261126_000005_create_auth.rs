//! Tenants, users, API keys, refresh tokens and settings; workflows belong to a tenant (existing ones to the
//! system tenant), and idempotency keys are unique per tenant.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Same value as `TenantId::SYSTEM` in the domain crate.
const SYSTEM_TENANT: uuid::Uuid = uuid::Uuid::from_u128(1);

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("tenant")
                    .col(pk_uuid("id"))
                    .col(string_uniq("name"))
                    .col(big_integer("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("app_user")
                    .col(pk_uuid("id"))
                    .col(uuid("tenant_id"))
                    .col(string_uniq("email"))
                    .col(string("password_hash"))
                    .col(string("role"))
                    .col(big_integer("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("api_key")
                    .col(pk_uuid("id"))
                    .col(uuid("tenant_id"))
                    .col(string("name"))
                    .col(string("role"))
                    .col(string_uniq("prefix"))
                    .col(string("secret_hash"))
                    .col(big_integer("created_at"))
                    .col(big_integer_null("expires_at"))
                    .col(big_integer_null("revoked_at"))
                    .col(big_integer_null("last_used_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(Index::create().name("api_key_tenant").table("api_key").col("tenant_id").to_owned())
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("refresh_token")
                    .col(string("secret_hash").primary_key())
                    .col(uuid("user_id"))
                    .col(big_integer("created_at"))
                    .col(big_integer("expires_at"))
                    .col(big_integer_null("used_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create().table("setting").col(string("name").primary_key()).col(string("value")).to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table("tenant")
                    .columns(["id", "name", "created_at"])
                    .values_panic([
                        SYSTEM_TENANT.into(),
                        "default".into(),
                        chrono::Utc::now().timestamp_micros().into(),
                    ])
                    .to_owned(),
            )
            .await?;

        manager.alter_table(Table::alter().table("workflow").add_column(uuid_null("tenant_id")).to_owned()).await?;
        manager
            .exec_stmt(
                Query::update()
                    .table("workflow")
                    .value("tenant_id", SYSTEM_TENANT)
                    .and_where(Expr::col("tenant_id").is_null())
                    .to_owned(),
            )
            .await?;
        manager.drop_index(Index::drop().name("workflow_idempotency_key").table("workflow").to_owned()).await?;
        manager
            .create_index(
                Index::create()
                    .name("workflow_tenant_idempotency_key")
                    .table("workflow")
                    .col("tenant_id")
                    .col("idempotency_key")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("workflow_tenant_id").table("workflow").col("tenant_id").col("id").to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("workflow_tenant_id").table("workflow").to_owned()).await?;
        manager.drop_index(Index::drop().name("workflow_tenant_idempotency_key").table("workflow").to_owned()).await?;
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
        manager.alter_table(Table::alter().table("workflow").drop_column("tenant_id").to_owned()).await?;
        for table in ["setting", "refresh_token", "api_key", "app_user", "tenant"] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

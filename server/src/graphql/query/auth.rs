use async_graphql::{Context, ID, Object, Result};
use taskorch_domain::Permission;
use taskorch_engine::auth::Auth;

use crate::auth::{Need, principal};
use crate::error::from_engine;
use crate::graphql::types::{ApiKey, Identity, Tenant, User, parse_tenant_arg};

#[derive(Default)]
pub struct AuthQuery;

#[Object]
impl AuthQuery {
    /// The caller: role, tenant and whether it is a user or an API key.
    #[graphql(guard = "Need(Permission::Read)")]
    async fn me(&self, ctx: &Context<'_>) -> Result<Identity> {
        Ok(Identity(principal(ctx)?.clone()))
    }

    /// Users of the caller's tenant (or of `tenantId`, for admins of the system tenant). Admins only.
    #[graphql(guard = "Need(Permission::Administer)")]
    async fn users(&self, ctx: &Context<'_>, tenant_id: Option<ID>) -> Result<Vec<User>> {
        let users =
            ctx.data::<Auth>()?.users(principal(ctx)?, parse_tenant_arg(tenant_id)?).await.map_err(from_engine)?;
        Ok(users.into_iter().map(User).collect())
    }

    /// API keys of the caller's tenant (or of `tenantId`, for admins of the system tenant), without secrets.
    /// Admins only.
    #[graphql(guard = "Need(Permission::Administer)")]
    async fn api_keys(&self, ctx: &Context<'_>, tenant_id: Option<ID>) -> Result<Vec<ApiKey>> {
        let keys =
            ctx.data::<Auth>()?.api_keys(principal(ctx)?, parse_tenant_arg(tenant_id)?).await.map_err(from_engine)?;
        Ok(keys.into_iter().map(ApiKey).collect())
    }

    /// Tenants: every one for admins of the system tenant, else the caller's own. Admins only.
    #[graphql(guard = "Need(Permission::Administer)")]
    async fn tenants(&self, ctx: &Context<'_>) -> Result<Vec<Tenant>> {
        let tenants = ctx.data::<Auth>()?.tenants(principal(ctx)?).await.map_err(from_engine)?;
        Ok(tenants.into_iter().map(Into::into).collect())
    }
}

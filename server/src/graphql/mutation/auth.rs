use async_graphql::{Context, ID, Object, Result};
use chrono::{DateTime, Utc};
use taskorch_domain::{ApiKeyId, Permission};
use taskorch_engine::auth::Auth;

use crate::auth::{Need, principal};
use crate::error::from_engine;
use crate::graphql::types::{ApiKey, AuthPayload, CreatedApiKey, Role, Tenant, User, parse_id, parse_tenant_arg};

#[derive(Default)]
pub struct AuthMutation;

#[Object]
impl AuthMutation {
    /// Logs in with an email and a password: an access token (a JWT, 15 minutes by default) and a refresh token.
    /// Unknown email and wrong password give the same `UNAUTHENTICATED` error. Open to anyone; rate-limited per
    /// client address.
    async fn login(&self, ctx: &Context<'_>, email: String, password: String) -> Result<AuthPayload> {
        Ok(AuthPayload(ctx.data::<Auth>()?.login(&email, &password).await.map_err(from_engine)?))
    }

    /// Trades a refresh token for a new session; each refresh token works once.
    async fn refresh_token(&self, ctx: &Context<'_>, refresh_token: String) -> Result<AuthPayload> {
        Ok(AuthPayload(ctx.data::<Auth>()?.refresh(&refresh_token).await.map_err(from_engine)?))
    }

    /// Creates a user in the caller's tenant (or in `tenantId`, for admins of the system tenant). Admins only.
    #[graphql(guard = "Need(Permission::Administer)")]
    async fn create_user(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
        role: Role,
        tenant_id: Option<ID>,
    ) -> Result<User> {
        let auth = ctx.data::<Auth>()?;
        let user = auth
            .create_user(principal(ctx)?, &email, &password, role.into(), parse_tenant_arg(tenant_id)?)
            .await
            .map_err(from_engine)?;
        Ok(User(user))
    }

    /// Creates an API key; the answer holds its secret, shown this once (only a hash is stored). Admins only.
    #[graphql(guard = "Need(Permission::Administer)")]
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        name: String,
        role: Role,
        expires_at: Option<DateTime<Utc>>,
        tenant_id: Option<ID>,
    ) -> Result<CreatedApiKey> {
        let auth = ctx.data::<Auth>()?;
        let created = auth
            .create_api_key(principal(ctx)?, &name, role.into(), expires_at, parse_tenant_arg(tenant_id)?)
            .await
            .map_err(from_engine)?;
        Ok(CreatedApiKey(created))
    }

    /// Revokes an API key: refused from the next request on, on every server. Admins only.
    #[graphql(guard = "Need(Permission::Administer)")]
    async fn revoke_api_key(&self, ctx: &Context<'_>, id: ID) -> Result<ApiKey> {
        let id: ApiKeyId = parse_id(&id, "API key")?;
        Ok(ApiKey(ctx.data::<Auth>()?.revoke_api_key(principal(ctx)?, id).await.map_err(from_engine)?))
    }

    /// Creates a tenant (project). Admins of the system tenant only.
    #[graphql(guard = "Need(Permission::Administer)")]
    async fn create_tenant(&self, ctx: &Context<'_>, name: String) -> Result<Tenant> {
        Ok(ctx.data::<Auth>()?.create_tenant(principal(ctx)?, &name).await.map_err(from_engine)?.into())
    }
}

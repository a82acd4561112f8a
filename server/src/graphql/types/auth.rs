//! Users, API keys, tenants and sessions as they appear in the schema. Secrets and hashes never do, except the
//! token of a new API key, returned once by `createApiKey`.

use async_graphql::{ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use taskorch_engine::auth::{NewApiKey, Principal, Session, Subject, datetime};
use taskorch_engine::model::{ApiKeyRecord, TenantRecord, UserRecord};

use super::Role;

/// A user who logs in with an email and a password.
pub struct User(pub UserRecord);

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Lower-cased email.
    async fn email(&self) -> &str {
        &self.0.email
    }
    async fn role(&self) -> Role {
        self.0.role.into()
    }
    /// The tenant (project) the user belongs to.
    async fn tenant_id(&self) -> ID {
        ID(self.0.tenant_id.to_string())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// An API key for a service. Its secret is never shown again after creation.
pub struct ApiKey(pub ApiKeyRecord);

#[Object]
impl ApiKey {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn role(&self) -> Role {
        self.0.role.into()
    }
    /// The visible part of the token (`tok_<prefix>_…`), to tell keys apart.
    async fn prefix(&self) -> &str {
        &self.0.prefix
    }
    async fn tenant_id(&self) -> ID {
        ID(self.0.tenant_id.to_string())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        datetime(self.0.created_at)
    }
    /// After this the key is refused; never when null.
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at.map(datetime)
    }
    /// When it was revoked; revoked keys are refused on every server at once.
    async fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at.map(datetime)
    }
    async fn revoked(&self) -> bool {
        self.0.revoked_at.is_some()
    }
    /// When it last authenticated a request (updated at most once a second).
    async fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_used_at.map(datetime)
    }
}

/// A new API key and its secret token, shown this once: send it as `Authorization: Bearer <secret>` or
/// `X-API-Key: <secret>`.
pub struct CreatedApiKey(pub NewApiKey);

#[Object]
impl CreatedApiKey {
    async fn api_key(&self) -> ApiKey {
        ApiKey(self.0.key.clone())
    }
    /// The whole token (`tok_<prefix>_<secret>`); only its hash is stored.
    async fn secret(&self) -> &str {
        &self.0.token
    }
    /// The same as `secret`.
    async fn token(&self) -> &str {
        &self.0.token
    }
    /// The same as `secret`.
    async fn key(&self) -> &str {
        &self.0.token
    }
    /// Id of the key (as `apiKey.id`).
    async fn id(&self) -> ID {
        ID(self.0.key.id.to_string())
    }
    /// Visible prefix of the key (as `apiKey.prefix`).
    async fn prefix(&self) -> &str {
        &self.0.key.prefix
    }
}

/// A tenant (project): workflows, users and keys belong to one.
#[derive(SimpleObject)]
pub struct Tenant {
    pub id: ID,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<TenantRecord> for Tenant {
    fn from(t: TenantRecord) -> Self {
        Self { id: ID(t.id.to_string()), name: t.name, created_at: t.created_at }
    }
}

/// A logged-in session.
pub struct AuthPayload(pub Session);

#[Object]
impl AuthPayload {
    /// Send as `Authorization: Bearer <accessToken>`; valid until `expiresAt`.
    async fn access_token(&self) -> &str {
        &self.0.access_token
    }
    /// The same as `accessToken`.
    async fn token(&self) -> &str {
        &self.0.access_token
    }
    /// Trade for a new session with `refreshToken` (once).
    async fn refresh_token(&self) -> &str {
        &self.0.refresh_token
    }
    /// Always `Bearer`.
    async fn token_type(&self) -> &str {
        "Bearer"
    }
    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.expires_at
    }
    /// Seconds until `expiresAt`.
    async fn expires_in(&self) -> i64 {
        (self.0.expires_at - Utc::now()).num_seconds().max(0)
    }
    async fn user(&self) -> User {
        User(self.0.user.clone())
    }
}

/// The caller, as its credential says.
pub struct Identity(pub Principal);

#[Object]
impl Identity {
    async fn role(&self) -> Role {
        self.0.role.into()
    }
    async fn tenant_id(&self) -> ID {
        ID(self.0.tenant.to_string())
    }
    /// `USER` or `API_KEY`.
    async fn kind(&self) -> &str {
        match self.0.subject {
            Subject::User(_) => "USER",
            Subject::ApiKey { .. } => "API_KEY",
        }
    }
    /// Id of the user or of the API key.
    async fn id(&self) -> ID {
        match &self.0.subject {
            Subject::User(id) => ID(id.to_string()),
            Subject::ApiKey { id, .. } => ID(id.to_string()),
        }
    }
}

//! Credentials: tenants, users, API keys, refresh tokens and settings. Secrets arrive here already hashed.

use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set};
use taskorch_domain::{ApiKeyId, Role, TenantId, UserId};
use taskorch_entity::{api_key, refresh_token, setting, tenant, user};

use super::{Store, is_unique_violation};
use crate::error::Error;
use crate::model::{ApiKeyRecord, TenantRecord, UserRecord};
use crate::time::now_us;

/// A user row with its password hash (never leaves the engine).
pub(crate) struct UserWithHash {
    pub user: UserRecord,
    pub password_hash: String,
}

/// An API key row with its secret hash (never leaves the engine).
#[derive(Clone)]
pub(crate) struct KeyWithHash {
    pub key: ApiKeyRecord,
    pub secret_hash: String,
}

impl Store {
    /// The value of a setting, inserting `default` first when there is none (the first process wins).
    pub(crate) async fn setting_or_insert(&self, name: &str, default: String) -> Result<String, Error> {
        let row = setting::ActiveModel { name: Set(name.to_owned()), value: Set(default) };
        setting::Entity::insert(row)
            .on_conflict(OnConflict::column(setting::Column::Name).do_nothing().to_owned())
            .exec_without_returning(&self.db.write)
            .await?;
        setting::Entity::find_by_id(name.to_owned())
            .one(&self.db.write)
            .await?
            .map(|s| s.value)
            .ok_or_else(|| Error::corrupt(format!("setting {name} vanished")))
    }

    pub(crate) async fn user_count(&self) -> Result<u64, Error> {
        Ok(user::Entity::find().count(&self.db.write).await?)
    }

    pub(crate) async fn insert_tenant(&self, name: &str) -> Result<TenantRecord, Error> {
        let row =
            tenant::ActiveModel { id: Set(TenantId::new().0), name: Set(name.to_owned()), created_at: Set(now_us()) };
        match row.insert(&self.db.write).await {
            Ok(m) => Ok(m.into()),
            Err(e) if is_unique_violation(&e) => Err(Error::Conflict(format!("a tenant named `{name}` exists"))),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn tenant(&self, id: TenantId) -> Result<Option<TenantRecord>, Error> {
        Ok(tenant::Entity::find_by_id(id.0).one(&self.db.read).await?.map(Into::into))
    }

    pub(crate) async fn tenants(&self) -> Result<Vec<TenantRecord>, Error> {
        let rows = tenant::Entity::find().order_by_asc(tenant::Column::CreatedAt).all(&self.db.read).await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub(crate) async fn insert_user(
        &self,
        tenant: TenantId,
        email: &str,
        password_hash: String,
        role: Role,
    ) -> Result<UserRecord, Error> {
        let row = user::ActiveModel {
            id: Set(UserId::new().0),
            tenant_id: Set(tenant.0),
            email: Set(email.to_owned()),
            password_hash: Set(password_hash),
            role: Set(role.as_str().to_owned()),
            created_at: Set(now_us()),
        };
        match row.insert(&self.db.write).await {
            Ok(m) => m.try_into(),
            Err(e) if is_unique_violation(&e) => Err(Error::Conflict(format!("a user with email `{email}` exists"))),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn user_by_email(&self, email: &str) -> Result<Option<UserWithHash>, Error> {
        let row = user::Entity::find().filter(user::Column::Email.eq(email)).one(self.db.fresh()).await?;
        row.map(|m| {
            let password_hash = m.password_hash.clone();
            Ok(UserWithHash { user: m.try_into()?, password_hash })
        })
        .transpose()
    }

    pub(crate) async fn user(&self, id: UserId) -> Result<Option<UserRecord>, Error> {
        user::Entity::find_by_id(id.0).one(self.db.fresh()).await?.map(TryInto::try_into).transpose()
    }

    pub(crate) async fn users(&self, tenant: TenantId) -> Result<Vec<UserRecord>, Error> {
        let rows = user::Entity::find()
            .filter(user::Column::TenantId.eq(tenant.0))
            .order_by_asc(user::Column::CreatedAt)
            .all(&self.db.read)
            .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    pub(crate) async fn insert_api_key(&self, key: &ApiKeyRecord, secret_hash: String) -> Result<(), Error> {
        let row = api_key::ActiveModel {
            id: Set(key.id.0),
            tenant_id: Set(key.tenant_id.0),
            name: Set(key.name.clone()),
            role: Set(key.role.as_str().to_owned()),
            prefix: Set(key.prefix.clone()),
            secret_hash: Set(secret_hash),
            created_at: Set(key.created_at),
            expires_at: Set(key.expires_at),
            revoked_at: Set(None),
            last_used_at: Set(None),
        };
        api_key::Entity::insert(row).exec_without_returning(&self.db.write).await?;
        Ok(())
    }

    /// The key with this prefix, read from the primary so a revocation is seen at once.
    pub(crate) async fn api_key_by_prefix(&self, prefix: &str) -> Result<Option<KeyWithHash>, Error> {
        let row = api_key::Entity::find().filter(api_key::Column::Prefix.eq(prefix)).one(self.db.fresh()).await?;
        row.map(|m| {
            let secret_hash = m.secret_hash.clone();
            Ok(KeyWithHash { key: m.try_into()?, secret_hash })
        })
        .transpose()
    }

    pub(crate) async fn api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyRecord>, Error> {
        let rows = api_key::Entity::find()
            .filter(api_key::Column::TenantId.eq(tenant.0))
            .order_by_asc(api_key::Column::CreatedAt)
            .all(self.db.fresh())
            .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    pub(crate) async fn api_key(&self, id: ApiKeyId) -> Result<Option<ApiKeyRecord>, Error> {
        api_key::Entity::find_by_id(id.0).one(self.db.fresh()).await?.map(TryInto::try_into).transpose()
    }

    /// Revokes a key (idempotent: the first revocation time stays).
    pub(crate) async fn revoke_api_key(&self, id: ApiKeyId) -> Result<(), Error> {
        api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, sea_orm::sea_query::Expr::value(now_us()))
            .filter(api_key::Column::Id.eq(id.0))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&self.db.write)
            .await?;
        Ok(())
    }

    pub(crate) async fn touch_api_key(&self, id: ApiKeyId, at: i64) -> Result<(), Error> {
        api_key::Entity::update_many()
            .col_expr(api_key::Column::LastUsedAt, sea_orm::sea_query::Expr::value(at))
            .filter(api_key::Column::Id.eq(id.0))
            .exec(&self.db.write)
            .await?;
        Ok(())
    }

    pub(crate) async fn insert_refresh_token(&self, user: UserId, hash: String, expires_at: i64) -> Result<(), Error> {
        let row = refresh_token::ActiveModel {
            secret_hash: Set(hash),
            user_id: Set(user.0),
            created_at: Set(now_us()),
            expires_at: Set(expires_at),
            used_at: Set(None),
        };
        refresh_token::Entity::insert(row).exec_without_returning(&self.db.write).await?;
        Ok(())
    }

    /// Marks an unused, unexpired refresh token used and returns its user; `None` if there is no such token (or
    /// another request used it first).
    pub(crate) async fn use_refresh_token(&self, hash: &str) -> Result<Option<UserId>, Error> {
        let now = now_us();
        let Some(row) = refresh_token::Entity::find_by_id(hash.to_owned()).one(&self.db.write).await? else {
            return Ok(None);
        };
        let used = refresh_token::Entity::update_many()
            .col_expr(refresh_token::Column::UsedAt, sea_orm::sea_query::Expr::value(now))
            .filter(refresh_token::Column::SecretHash.eq(hash))
            .filter(refresh_token::Column::UsedAt.is_null())
            .filter(refresh_token::Column::ExpiresAt.gt(now))
            .exec(&self.db.write)
            .await?;
        Ok((used.rows_affected == 1).then_some(UserId(row.user_id)))
    }
}

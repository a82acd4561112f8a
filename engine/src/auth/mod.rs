//! Authentication and credential management: login with argon2id passwords, HS256 access tokens with rotating
//! refresh tokens, API keys stored as hashes, tenants, and the bootstrap admin of an empty database.

mod jwt;
mod password;
mod secret;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use taskorch_domain::auth::{self as rules, api_key};
use taskorch_domain::{ApiKeyId, Permission, Role, TenantId, UserId};

pub use password::HashParams;

use crate::cache::ReadCache;
use crate::error::Error;
use crate::model::{ApiKeyRecord, TenantRecord, UserRecord};
use crate::snapshot::SnapshotCache;
use crate::store::{KeyWithHash, Store};
use crate::time::{now_us, to_datetime};
use jwt::{AccessClaims, JwtKeys};
use password::PasswordHashing;

/// Settings of authentication.
#[derive(Clone, Default)]
pub struct AuthOptions {
    /// Key for signing access tokens; generated once and kept in the database when not given.
    pub jwt_secret: Option<Vec<u8>>,
    /// Lifetime of access tokens (default 15 min).
    pub access_ttl: Option<Duration>,
    /// Lifetime of refresh tokens (default 7 days).
    pub refresh_ttl: Option<Duration>,
    pub hash_params: HashParams,
    /// The admin created on an empty database.
    pub admin_email: Option<String>,
    pub admin_password: Option<String>,
}

impl std::fmt::Debug for AuthOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthOptions")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("hash_params", &self.hash_params)
            .field("admin_email", &self.admin_email)
            .field("admin_password", &self.admin_password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const REFRESH_TOKEN_LEN: usize = 48;
/// `lastUsedAt` of a key is written at most this often per process.
const TOUCH_EVERY_US: i64 = 1_000_000;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub tenant: TenantId,
    pub role: Role,
    pub subject: Subject,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    User(UserId),
    ApiKey { id: ApiKeyId, prefix: String },
}

impl Principal {
    /// Stable key of the credential for rate limits.
    pub fn rate_key(&self) -> String {
        match &self.subject {
            Subject::User(id) => format!("user:{id}"),
            Subject::ApiKey { id, .. } => format!("key:{id}"),
        }
    }

    pub fn require(&self, permission: Permission) -> Result<(), Error> {
        if self.role.can(permission) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!("the {} role may not do this", self.role)))
        }
    }

    /// The tenant a management call acts on: its own, or any for admins of the system tenant.
    pub fn target_tenant(&self, requested: Option<TenantId>) -> Result<TenantId, Error> {
        match requested {
            None => Ok(self.tenant),
            Some(t) if t == self.tenant || self.tenant == TenantId::SYSTEM => Ok(t),
            Some(_) => Err(Error::Forbidden("only admins of the system tenant act on other tenants".to_owned())),
        }
    }
}

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: DateTime<Utc>,
    pub user: UserRecord,
}

/// A new API key with its token, shown once.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub key: ApiKeyRecord,
    pub token: String,
}

/// What the first start did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Users exist already.
    Existing,
    /// The admin was created with the configured password.
    Created { email: String },
    /// The admin was created with a generated password, to be shown once.
    Generated { email: String, password: String },
}

#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Password hashing runs on blocking threads, a few at a time: each takes its memory cost (19 MiB by default).
    hashing_slots: tokio::sync::Semaphore,
    jwt: JwtKeys,
    hashing: PasswordHashing,
    access_ttl: Duration,
    refresh_ttl: Duration,
    touched: Mutex<HashMap<ApiKeyId, i64>>,
    /// On the embedded default: key rows kept while the database is unchanged (see `crate::snapshot`).
    snapshot: Option<Arc<SnapshotCache>>,
    /// With a shared cache (Redis): key rows kept while the key generation is unchanged.
    shared: Option<SharedKeys>,
    /// Counts the revocations made by this process: open subscriptions check their credential again at once.
    revocations: tokio::sync::watch::Sender<u64>,
}

/// Key rows kept under the shared cache's key generation.
struct SharedKeys {
    cache: Arc<dyn ReadCache>,
    kept: Mutex<HashMap<String, KeptKey>>,
}

/// A key row kept under a key generation, and when it was read.
struct KeptKey {
    generation: String,
    read: Instant,
    key: KeyWithHash,
}

/// Key rows kept under a shared generation are read again after this long even when it is unchanged (a bound for
/// the case where a revocation could not replace the generation and Redis came back without losing it).
const KEPT_KEY_AGE: Duration = Duration::from_secs(5);
/// Most key rows kept; the map is emptied when it is full.
const KEPT_KEYS: usize = 10_000;

pub const DEFAULT_ADMIN_EMAIL: &str = "admin@taskorch.local";

impl Auth {
    /// Loads (or creates) the signing key and creates the admin on an empty database.
    pub async fn init(
        store: Store,
        snapshot: Option<Arc<SnapshotCache>>,
        shared: Option<Arc<dyn ReadCache>>,
        opts: AuthOptions,
    ) -> Result<(Self, Bootstrap), Error> {
        let secret = match opts.jwt_secret {
            Some(s) if s.len() >= 32 => s,
            Some(_) => return Err(Error::BadInput("the JWT secret must have at least 32 bytes".to_owned())),
            None => {
                tracing::warn!(
                    "TASKORCH_JWT_SECRET is not set: access tokens are signed with a key generated once and kept in \
                     the database; set TASKORCH_JWT_SECRET (or TASKORCH_JWT_SECRET_FILE) in production"
                );
                store.setting_or_insert("jwt_secret", secret::random_alnum(64)).await?.into_bytes()
            }
        };
        let hashing = PasswordHashing::new(opts.hash_params).map_err(Error::BadInput)?;
        let auth = Self {
            inner: Arc::new(Inner {
                store,
                hashing_slots: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
                ),
                jwt: JwtKeys::new(&secret),
                hashing,
                access_ttl: opts.access_ttl.unwrap_or(DEFAULT_ACCESS_TTL),
                refresh_ttl: opts.refresh_ttl.unwrap_or(DEFAULT_REFRESH_TTL),
                touched: Mutex::new(HashMap::new()),
                snapshot,
                shared: shared.filter(|c| c.is_shared()).map(|cache| SharedKeys { cache, kept: Mutex::default() }),
                revocations: tokio::sync::watch::Sender::new(0),
            }),
        };
        let boot = auth.bootstrap(opts.admin_email, opts.admin_password).await?;
        Ok((auth, boot))
    }

    async fn bootstrap(&self, email: Option<String>, password: Option<String>) -> Result<Bootstrap, Error> {
        if self.inner.store.user_count().await? > 0 {
            return Ok(Bootstrap::Existing);
        }
        let email = rules::normalize_email(email.as_deref().unwrap_or(DEFAULT_ADMIN_EMAIL))
            .map_err(|e| Error::BadInput(format!("TASKORCH_ADMIN_EMAIL: {e}")))?;
        let (password, generated) = match password {
            Some(p) => (p, false),
            None => (secret::random_alnum(24), true),
        };
        if password.is_empty() {
            return Err(Error::BadInput("TASKORCH_ADMIN_PASSWORD is empty".to_owned()));
        }
        if rules::check_password(&password).is_err() {
            tracing::warn!("TASKORCH_ADMIN_PASSWORD is shorter than {} characters", rules::MIN_PASSWORD_LEN);
        }
        let hash = self.hash(password.clone()).await?;
        match self.inner.store.insert_user(TenantId::SYSTEM, &email, hash, Role::Admin).await {
            Ok(_) => {}
            // Another process bootstrapped the same database at the same moment.
            Err(Error::Conflict(_)) => return Ok(Bootstrap::Existing),
            Err(e) => return Err(e),
        }
        Ok(if generated { Bootstrap::Generated { email, password } } else { Bootstrap::Created { email } })
    }

    async fn hash(&self, password: String) -> Result<String, Error> {
        let _slot = self.inner.hashing_slots.acquire().await.map_err(Error::corrupt)?;
        let hashing = self.inner.hashing.clone();
        tokio::task::spawn_blocking(move || hashing.hash(&password))
            .await
            .map_err(|e| Error::corrupt(format!("hashing task failed: {e}")))?
            .map_err(Error::corrupt)
    }

    /// Email and password to a session. Unknown email and wrong password give the same error after the same work.
    pub async fn login(&self, email: &str, password: &str) -> Result<Session, Error> {
        const REFUSED: &str = "invalid email or password";
        let email = rules::normalize_email(email).unwrap_or_default();
        let found = if email.is_empty() { None } else { self.inner.store.user_by_email(&email).await? };
        let _slot = self.inner.hashing_slots.acquire().await.map_err(Error::corrupt)?;
        let hashing = self.inner.hashing.clone();
        let (password, stored) = (password.to_owned(), found.as_ref().map(|u| u.password_hash.clone()));
        let ok = tokio::task::spawn_blocking(move || {
            password.chars().count() <= rules::MAX_PASSWORD_LEN && hashing.verify(&password, stored.as_deref())
        })
        .await
        .unwrap_or(false);
        match found {
            Some(u) if ok => self.session(u.user).await,
            _ => Err(Error::Unauthenticated(REFUSED)),
        }
    }

    /// A refresh token to a new session; the token is used up (rotation).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, Error> {
        const REFUSED: &str = "the refresh token is not valid (unknown, used or expired)";
        let user_id = self
            .inner
            .store
            .use_refresh_token(&secret::sha256_hex(refresh_token))
            .await?
            .ok_or(Error::Unauthenticated(REFUSED))?;
        let user = self.inner.store.user(user_id).await?.ok_or(Error::Unauthenticated(REFUSED))?;
        self.session(user).await
    }

    async fn session(&self, user: UserRecord) -> Result<Session, Error> {
        let now = Utc::now().timestamp().max(0) as u64;
        let expires_at = now + self.inner.access_ttl.as_secs().max(1);
        let claims = AccessClaims { user: user.id, tenant: user.tenant_id, role: user.role, expires_at };
        let access_token = self.inner.jwt.issue(&claims, now).map_err(Error::corrupt)?;
        let refresh_token = secret::random_alnum(REFRESH_TOKEN_LEN);
        let refresh_expiry = now_us() + self.inner.refresh_ttl.as_micros() as i64;
        self.inner.store.insert_refresh_token(user.id, secret::sha256_hex(&refresh_token), refresh_expiry).await?;
        Ok(Session {
            access_token,
            refresh_token,
            expires_at: DateTime::from_timestamp(expires_at as i64, 0).unwrap_or_default(),
            user,
        })
    }

    /// A bearer credential (an access token or an API key) to the caller it identifies.
    pub async fn authenticate(&self, credential: &str) -> Result<Principal, Error> {
        if api_key::looks_like(credential) {
            return self.authenticate_key(credential).await;
        }
        let c = self
            .inner
            .jwt
            .verify(credential)
            .ok_or(Error::Unauthenticated("the access token is not valid (bad signature, malformed or expired)"))?;
        Ok(Principal { tenant: c.tenant, role: c.role, subject: Subject::User(c.user) })
    }

    async fn authenticate_key(&self, token: &str) -> Result<Principal, Error> {
        const REFUSED: &str = "the API key is not valid (unknown, revoked or expired)";
        let (prefix, secret_part) = api_key::parse(token).ok_or(Error::Unauthenticated(REFUSED))?;
        let found = self.key_by_prefix(prefix).await?.ok_or(Error::Unauthenticated(REFUSED))?;
        let hash = secret::sha256_hex(secret_part);
        let now = now_us();
        let key = found.key;
        let valid = secret::constant_time_eq(hash.as_bytes(), found.secret_hash.as_bytes())
            && key.revoked_at.is_none()
            && key.expires_at.is_none_or(|e| e > now);
        if !valid {
            return Err(Error::Unauthenticated(REFUSED));
        }
        let touch = {
            let mut touched = self.inner.touched.lock().unwrap_or_else(|e| e.into_inner());
            let last = touched.get(&key.id).copied().unwrap_or(i64::MIN);
            let due = now.saturating_sub(last) >= TOUCH_EVERY_US;
            if due {
                touched.insert(key.id, now);
            }
            due
        };
        if touch {
            self.inner.store.touch_api_key(key.id, now).await?;
        }
        Ok(Principal {
            tenant: key.tenant_id,
            role: key.role,
            subject: Subject::ApiKey { id: key.id, prefix: key.prefix },
        })
    }

    /// The key row of `prefix` as of the last commit: from the snapshot cache while the database is unchanged,
    /// else from the primary (so a revocation holds at once everywhere).
    async fn key_by_prefix(&self, prefix: &str) -> Result<Option<KeyWithHash>, Error> {
        if let Some(shared) = &self.inner.shared {
            return self.key_by_prefix_shared(shared, prefix).await;
        }
        let Some(snapshot) = &self.inner.snapshot else { return self.inner.store.api_key_by_prefix(prefix).await };
        if let Some(hit) = snapshot.api_key(prefix) {
            return Ok(Some(hit));
        }
        let stamp = snapshot.stamp();
        let found = self.inner.store.api_key_by_prefix(prefix).await?;
        if let (Some(stamp), Some(key)) = (stamp, &found) {
            snapshot.put_api_key(stamp, prefix, key);
        }
        Ok(found)
    }

    /// The key row of `prefix`, kept while the shared key generation is the one read before the row (every
    /// revocation replaces it before it returns); from the primary when the generation cannot be read.
    async fn key_by_prefix_shared(&self, shared: &SharedKeys, prefix: &str) -> Result<Option<KeyWithHash>, Error> {
        let Some(generation) = shared.cache.key_generation().await else {
            return self.inner.store.api_key_by_prefix(prefix).await;
        };
        if let Ok(map) = shared.kept.lock()
            && let Some(hit) = map.get(prefix)
            && hit.generation == generation
            && hit.read.elapsed() < KEPT_KEY_AGE
        {
            return Ok(Some(hit.key.clone()));
        }
        let read = Instant::now();
        let found = self.inner.store.api_key_by_prefix(prefix).await?;
        if let (Some(key), Ok(mut map)) = (&found, shared.kept.lock()) {
            if map.len() >= KEPT_KEYS {
                map.clear();
            }
            map.insert(prefix.to_owned(), KeptKey { generation, read, key: key.clone() });
        }
        Ok(found)
    }

    /// Creates a tenant (admins of the system tenant only).
    pub async fn create_tenant(&self, actor: &Principal, name: &str) -> Result<TenantRecord, Error> {
        actor.require(Permission::Administer)?;
        if actor.tenant != TenantId::SYSTEM {
            return Err(Error::Forbidden("only admins of the system tenant create tenants".to_owned()));
        }
        let name = rules::check_name(name).map_err(|e| Error::BadInput(e.to_string()))?;
        self.inner.store.insert_tenant(&name).await
    }

    /// Tenants visible to the actor: all for system admins, else its own.
    pub async fn tenants(&self, actor: &Principal) -> Result<Vec<TenantRecord>, Error> {
        if actor.tenant == TenantId::SYSTEM && actor.role == Role::Admin {
            return self.inner.store.tenants().await;
        }
        Ok(self.inner.store.tenant(actor.tenant).await?.into_iter().collect())
    }

    async fn existing_tenant(&self, actor: &Principal, requested: Option<TenantId>) -> Result<TenantId, Error> {
        let tenant = actor.target_tenant(requested)?;
        if self.inner.store.tenant(tenant).await?.is_none() {
            return Err(Error::NotFound { what: "tenant", id: tenant.to_string() });
        }
        Ok(tenant)
    }

    pub async fn create_user(
        &self,
        actor: &Principal,
        email: &str,
        password: &str,
        role: Role,
        tenant: Option<TenantId>,
    ) -> Result<UserRecord, Error> {
        actor.require(Permission::Administer)?;
        let email = rules::normalize_email(email).map_err(|e| Error::BadInput(e.to_string()))?;
        rules::check_password(password).map_err(|e| Error::BadInput(e.to_string()))?;
        let tenant = self.existing_tenant(actor, tenant).await?;
        let hash = self.hash(password.to_owned()).await?;
        self.inner.store.insert_user(tenant, &email, hash, role).await
    }

    pub async fn users(&self, actor: &Principal, tenant: Option<TenantId>) -> Result<Vec<UserRecord>, Error> {
        actor.require(Permission::Administer)?;
        self.inner.store.users(actor.target_tenant(tenant)?).await
    }

    /// Creates an API key; its token is returned once and only its hash is stored.
    pub async fn create_api_key(
        &self,
        actor: &Principal,
        name: &str,
        role: Role,
        expires_at: Option<DateTime<Utc>>,
        tenant: Option<TenantId>,
    ) -> Result<NewApiKey, Error> {
        actor.require(Permission::Administer)?;
        let name = rules::check_name(name).map_err(|e| Error::BadInput(e.to_string()))?;
        let now = now_us();
        let expires_at = expires_at.map(|t| t.timestamp_micros());
        if expires_at.is_some_and(|e| e <= now) {
            return Err(Error::BadInput("`expiresAt` must be in the future".to_owned()));
        }
        let tenant = self.existing_tenant(actor, tenant).await?;
        let prefix = secret::random_alnum(api_key::PREFIX_LEN);
        let secret_part = secret::random_alnum(api_key::SECRET_LEN);
        let key = ApiKeyRecord {
            id: ApiKeyId::new(),
            tenant_id: tenant,
            name,
            role,
            prefix: prefix.clone(),
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        self.inner.store.insert_api_key(&key, secret::sha256_hex(&secret_part)).await?;
        Ok(NewApiKey { token: api_key::format(&prefix, &secret_part), key })
    }

    pub async fn api_keys(&self, actor: &Principal, tenant: Option<TenantId>) -> Result<Vec<ApiKeyRecord>, Error> {
        actor.require(Permission::Administer)?;
        self.inner.store.api_keys(actor.target_tenant(tenant)?).await
    }

    /// Changes with every revocation made by this process (other servers' revocations reach their own streams).
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.revocations.subscribe()
    }

    /// Revokes a key of the actor's tenant (any tenant for system admins); refused at once on every server: keys
    /// are checked against the primary database, or against rows kept under a key generation this replaces before
    /// it returns.
    pub async fn revoke_api_key(&self, actor: &Principal, id: ApiKeyId) -> Result<ApiKeyRecord, Error> {
        actor.require(Permission::Administer)?;
        let not_found = || Error::NotFound { what: "API key", id: id.to_string() };
        let key = self.inner.store.api_key(id).await?.ok_or_else(not_found)?;
        if actor.target_tenant(Some(key.tenant_id)).is_err() {
            return Err(not_found());
        }
        self.inner.store.revoke_api_key(id).await?;
        // Streams of this process check their credential again when told, so they are told only once no cache
        // here can still answer with the row as it was.
        let told = self.forget_key(&key.prefix).await;
        self.inner.revocations.send_modify(|n| *n += 1);
        told?;
        self.inner.store.api_key(id).await?.ok_or_else(not_found)
    }

    /// Drops a revoked key from the caches of every server (through the shared key generation); `Unavailable` when
    /// Redis could not be told.
    async fn forget_key(&self, prefix: &str) -> Result<(), Error> {
        if let Some(shared) = &self.inner.shared {
            // This process refuses the key at once, whatever Redis says.
            if let Ok(mut kept) = shared.kept.lock() {
                kept.remove(prefix);
            }
            let mut told = false;
            for _ in 0..3 {
                told = shared.cache.bump_key_generation().await;
                if told {
                    break;
                }
            }
            if !told {
                // Servers that cannot read Redis either go to the database; one that kept the row and still reads
                // the old generation reads the row again within `KEPT_KEY_AGE`.
                return Err(Error::Unavailable(format!(
                    "the API key is revoked, but Redis could not be told: servers that kept it may accept it for up \
                     to {} s more",
                    KEPT_KEY_AGE.as_secs()
                )));
            }
        }
        Ok(())
    }
}

/// A stored microsecond timestamp as a date-time.
pub fn datetime(us: i64) -> DateTime<Utc> {
    to_datetime(us)
}

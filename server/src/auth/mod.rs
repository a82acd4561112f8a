//! Who is calling: the credential of an HTTP request (`Authorization: Bearer …` or `X-API-Key`) or of a WebSocket
//! (`connection_init` payload, else the upgrade request's headers), resolved once per request or connection into a
//! [`Caller`] that guards and resolvers read.

mod guard;
pub mod live;

use std::net::IpAddr;

use axum::http::HeaderMap;
use serde_json::Value;
use taskorch_engine::auth::{Auth, Principal};

pub use guard::{Need, principal};
pub use live::LiveCredential;

/// The credential of a request.
#[derive(Debug, Clone)]
pub enum Credential {
    /// None was sent.
    Missing,
    /// One was sent and is valid.
    Valid(Principal),
    /// One was sent and refused; the reason is safe to show.
    Invalid(&'static str),
    /// One was sent and could not be checked (the database did not answer): not the client's fault, try again.
    Unchecked,
}

/// Request (or connection) data: the credential and the client's address.
#[derive(Clone)]
pub struct Caller {
    pub credential: Credential,
    pub ip: Option<IpAddr>,
    /// The credential as sent, so subscriptions can check it again; never logged.
    pub secret: Option<String>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller").field("credential", &self.credential).field("ip", &self.ip).finish_non_exhaustive()
    }
}

impl Caller {
    pub fn principal(&self) -> Option<&Principal> {
        match &self.credential {
            Credential::Valid(p) => Some(p),
            _ => None,
        }
    }
}

/// The bearer credential in HTTP headers.
pub fn credential_from_headers(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(auth) = header("authorization") {
        return Some(strip_bearer(auth).to_owned());
    }
    header("x-api-key").map(str::to_owned)
}

fn strip_bearer(value: &str) -> &str {
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => value,
    }
}

/// The credential in a `connection_init` payload: `Authorization` (any case), `X-API-Key`, `token`, `apiKey`, or
/// the same inside `headers`.
pub fn credential_from_payload(payload: &Value) -> Option<String> {
    let obj = payload.as_object()?;
    for (k, v) in obj {
        let Some(s) = v.as_str() else { continue };
        match k.to_ascii_lowercase().as_str() {
            "authorization" => return Some(strip_bearer(s.trim()).to_owned()),
            "x-api-key" | "apikey" | "api_key" | "token" | "accesstoken" => return Some(s.trim().to_owned()),
            _ => {}
        }
    }
    obj.get("headers").and_then(credential_from_payload)
}

/// The caller of a request or connection sending `credential` from `ip`.
pub async fn caller(auth: &Auth, credential: Option<String>, ip: Option<IpAddr>) -> Caller {
    let secret = credential.filter(|c| !c.is_empty());
    Caller { credential: resolve(auth, secret.clone()).await, ip, secret }
}

/// Resolves a credential (a missing or empty one is `Missing`).
pub async fn resolve(auth: &Auth, credential: Option<String>) -> Credential {
    match credential.filter(|c| !c.is_empty()) {
        None => Credential::Missing,
        Some(c) => match auth.authenticate(&c).await {
            Ok(p) => Credential::Valid(p),
            Err(taskorch_engine::Error::Unauthenticated(why)) => Credential::Invalid(why),
            Err(e) => {
                tracing::error!(error = %e, "checking a credential failed");
                Credential::Unchecked
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_are_found_in_headers_and_init_payloads() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(credential_from_headers(&h).as_deref(), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "tok_x".parse().unwrap());
        assert_eq!(credential_from_headers(&h).as_deref(), Some("tok_x"));
        assert_eq!(credential_from_payload(&json!({ "Authorization": "Bearer t1" })).as_deref(), Some("t1"));
        assert_eq!(credential_from_payload(&json!({ "headers": { "authorization": "t2" } })).as_deref(), Some("t2"));
        assert_eq!(credential_from_payload(&json!({ "apiKey": "t3" })).as_deref(), Some("t3"));
        assert_eq!(credential_from_payload(&json!({})), None);
    }

    /// A credential the database could not check is not reported as a bad one.
    #[tokio::test]
    async fn a_credential_that_cannot_be_checked_is_not_called_invalid() {
        use sea_orm::ConnectionTrait;
        use taskorch_engine::auth::{AuthOptions, HashParams};
        use taskorch_engine::db::{Database, PoolOptions};
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Database::connect(&url, PoolOptions::default()).await.expect("connect");
        db.migrate().await.expect("migrate");
        let opts = AuthOptions {
            jwt_secret: Some(vec![7; 32]),
            access_ttl: None,
            refresh_ttl: None,
            hash_params: HashParams { memory_kib: 256, iterations: 1, parallelism: 1 },
            admin_email: None,
            admin_password: Some("an-admin-password".to_owned()),
        };
        let (auth, _) =
            Auth::init(taskorch_engine::store::Store::new(db.clone()), None, None, opts).await.expect("auth");
        let key = taskorch_domain::auth::api_key::format(&"a".repeat(10), &"b".repeat(40));
        assert!(matches!(resolve(&auth, Some(key.clone())).await, Credential::Invalid(_)), "an unknown key");
        db.write.execute_unprepared("DROP TABLE api_key").await.expect("drop");
        assert!(matches!(resolve(&auth, Some(key)).await, Credential::Unchecked));
    }
}

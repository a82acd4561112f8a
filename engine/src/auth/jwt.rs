//! Access tokens: HS256 JWTs with an expiry and no leeway. Only HS256 is accepted, so `alg: none` and tokens
//! signed with another key are refused.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use taskorch_domain::{Role, TenantId, UserId};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims {
    sub: String,
    tid: String,
    role: String,
    iat: u64,
    exp: u64,
    typ: String,
}

const ACCESS: &str = "access";

/// What a valid access token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub user: UserId,
    pub tenant: TenantId,
    pub role: Role,
    pub expires_at: u64,
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// A signed token for `claims` issued at `now` (seconds since the epoch).
    pub fn issue(&self, claims: &AccessClaims, now: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let c = Claims {
            sub: claims.user.to_string(),
            tid: claims.tenant.to_string(),
            role: claims.role.as_str().to_owned(),
            iat: now,
            exp: claims.expires_at,
            typ: ACCESS.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &self.encoding)
    }

    /// The claims of a valid, unexpired access token.
    pub fn verify(&self, token: &str) -> Option<AccessClaims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let c = data.claims;
        (c.typ == ACCESS).then_some(())?;
        Some(AccessClaims {
            user: c.sub.parse().ok()?,
            tenant: c.tid.parse().ok()?,
            role: c.role.parse().ok()?,
            expires_at: c.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn claims(exp: u64) -> AccessClaims {
        AccessClaims { user: UserId::new(), tenant: TenantId::new(), role: Role::Operator, expires_at: exp }
    }

    #[test]
    fn a_token_verifies_with_its_key_only() {
        let keys = JwtKeys::new(b"one key of enough length for hs256");
        let c = claims(now() + 60);
        let token = keys.issue(&c, now()).unwrap();
        assert_eq!(keys.verify(&token), Some(c));
        assert_eq!(JwtKeys::new(b"another key of enough length here").verify(&token), None);
        let mut tampered = token.clone();
        tampered.pop();
        assert_eq!(keys.verify(&tampered), None);
    }

    #[test]
    fn expired_and_unsigned_tokens_are_refused() {
        let keys = JwtKeys::new(b"one key of enough length for hs256");
        let expired = keys.issue(&claims(now() - 1), now() - 60).unwrap();
        assert_eq!(keys.verify(&expired), None);
        // alg: none, with the same claims and an empty signature.
        let body = expired.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}.");
        assert_eq!(keys.verify(&none), None);
    }
}

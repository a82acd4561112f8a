//! Who may do what: roles and their permissions, the shape of API key tokens, and the rules for emails and
//! passwords. Hashing, signing and storage live in the engine; these are the rules they follow.

use std::fmt;
use std::str::FromStr;

/// A role given to a user or an API key. Each role includes the permissions of the roles below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Reads workflows, tasks and events, and subscribes to them.
    Viewer,
    /// A viewer who may also submit, cancel, retry, pause and resume workflows.
    Operator,
    /// An operator who may also manage users and API keys.
    Admin,
}

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Read and subscribe.
    Read,
    /// Submit and act on workflows.
    Operate,
    /// Manage users, API keys and tenants.
    Administer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Viewer];

    /// Whether this role grants `permission`.
    pub fn can(self, permission: Permission) -> bool {
        let needed = match permission {
            Permission::Read => Role::Viewer,
            Permission::Operate => Role::Operator,
            Permission::Administer => Role::Admin,
        };
        self >= needed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "ADMIN",
            Role::Operator => "OPERATOR",
            Role::Viewer => "VIEWER",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a role (ADMIN, OPERATOR or VIEWER)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// API key tokens look like `tok_<prefix>_<secret>`: the prefix identifies the key (it is shown in listings and
/// is safe to log), the secret is known only to its holder and stored only as a hash.
pub mod api_key {
    pub const SCHEME: &str = "tok_";
    pub const PREFIX_LEN: usize = 10;
    pub const SECRET_LEN: usize = 40;

    /// The prefix and secret of a well-formed token; `None` for anything else.
    pub fn parse(token: &str) -> Option<(&str, &str)> {
        let rest = token.strip_prefix(SCHEME)?;
        let (prefix, secret) = rest.split_once('_')?;
        let alnum = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
        (prefix.len() == PREFIX_LEN && secret.len() == SECRET_LEN && alnum(prefix) && alnum(secret))
            .then_some((prefix, secret))
    }

    /// The token of a prefix and a secret.
    pub fn format(prefix: &str, secret: &str) -> String {
        format!("{SCHEME}{prefix}_{secret}")
    }

    /// Whether a bearer credential is an API key rather than a JWT.
    pub fn looks_like(token: &str) -> bool {
        token.starts_with(SCHEME)
    }
}

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted (hashing cost is bounded).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Why a credential field is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCredential {
    #[error("`{0}` is not an email address")]
    Email(String),
    #[error("the password must have between {MIN_PASSWORD_LEN} and {MAX_PASSWORD_LEN} characters")]
    PasswordLength,
    #[error("a name must have between 1 and 200 characters")]
    Name,
}

/// Normalises an email (trimmed, lower case) and checks its shape.
pub fn normalize_email(email: &str) -> Result<String, InvalidCredential> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 320
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@') && !e.contains(char::is_whitespace)
        });
    if ok { Ok(e) } else { Err(InvalidCredential::Email(email.to_owned())) }
}

pub fn check_password(password: &str) -> Result<(), InvalidCredential> {
    let n = password.chars().count();
    if (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) { Ok(()) } else { Err(InvalidCredential::PasswordLength) }
}

/// Trims and checks a display name (of a key or a tenant).
pub fn check_name(name: &str) -> Result<String, InvalidCredential> {
    let n = name.trim();
    if (1..=200).contains(&n.chars().count()) { Ok(n.to_owned()) } else { Err(InvalidCredential::Name) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_permissions_below_them() {
        assert!(Role::Admin.can(Permission::Administer));
        assert!(Role::Admin.can(Permission::Operate));
        assert!(Role::Operator.can(Permission::Operate));
        assert!(Role::Operator.can(Permission::Read));
        assert!(!Role::Operator.can(Permission::Administer));
        assert!(Role::Viewer.can(Permission::Read));
        assert!(!Role::Viewer.can(Permission::Operate));
    }

    #[test]
    fn roles_parse_case_insensitively_and_name_the_choices_otherwise() {
        assert_eq!("operator".parse::<Role>(), Ok(Role::Operator));
        assert_eq!(Role::Viewer.to_string().parse::<Role>(), Ok(Role::Viewer));
        let err = "root".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("ADMIN, OPERATOR or VIEWER"), "{err}");
    }

    #[test]
    fn api_key_tokens_round_trip_and_malformed_ones_are_refused() {
        let prefix = "a".repeat(api_key::PREFIX_LEN);
        let secret = "B1".repeat(api_key::SECRET_LEN / 2);
        let token = api_key::format(&prefix, &secret);
        assert!(api_key::looks_like(&token));
        assert_eq!(api_key::parse(&token), Some((prefix.as_str(), secret.as_str())));
        assert_eq!(api_key::parse(&token[..token.len() - 1]), None);
        assert_eq!(api_key::parse(&format!("tok_{prefix}_{}!", &secret[1..])), None);
        assert_eq!(api_key::parse("eyJhbGciOiJIUzI1NiJ9.e30.sig"), None);
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalize_email("  Ada@Example.COM ").as_deref(), Ok("ada@example.com"));
        assert!(normalize_email("no-at-sign").is_err());
        assert!(normalize_email("a@b@c").is_err());
        assert!(normalize_email("@example.com").is_err());
        assert!(normalize_email("a b@example.com").is_err());
    }

    #[test]
    fn passwords_and_names_have_bounds() {
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_LEN + 1)).is_err());
        assert_eq!(check_name("  ci  ").as_deref(), Ok("ci"));
        assert!(check_name("   ").is_err());
    }
}

//! The field guard every root field carries: a valid credential whose role grants the permission.

use async_graphql::{Context, Guard, Result};
use taskorch_domain::Permission;
use taskorch_engine::auth::Principal;

use super::{Caller, Credential};
use crate::error::{api_error, code};

/// Needs a valid credential with `permission`: otherwise `UNAUTHENTICATED` (none or invalid) or `FORBIDDEN`.
pub struct Need(pub Permission);

impl Guard for Need {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        let p = principal(ctx)?;
        if p.role.can(self.0) {
            Ok(())
        } else {
            Err(api_error(
                code::FORBIDDEN,
                format!("the {} role may not do this ({:?} permission needed)", p.role, self.0),
            ))
        }
    }
}

/// The authenticated caller, or `UNAUTHENTICATED`.
pub fn principal<'a>(ctx: &Context<'a>) -> Result<&'a Principal> {
    match ctx.data_opt::<Caller>().map(|c| &c.credential) {
        Some(Credential::Valid(p)) => Ok(p),
        Some(Credential::Invalid(why)) => Err(api_error(code::UNAUTHENTICATED, *why)),
        // A valid credential must not read as a bad one (clients would log their user out): a server error.
        Some(Credential::Unchecked) => Err(api_error(
            code::INTERNAL,
            "the credential could not be checked right now (the server is overloaded); try again",
        )),
        _ => Err(api_error(
            code::UNAUTHENTICATED,
            "authentication required: send `Authorization: Bearer <token or API key>` (log in with the `login` mutation)",
        )),
    }
}

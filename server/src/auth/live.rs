//! Credentials of long-lived subscriptions: checked again when a subscription starts (not only at
//! `connection_init`), every few seconds while it streams and at once after a revocation on this server, so a
//! revoked or expired credential stops it.

use std::time::{Duration, Instant};

use async_graphql::{Context, Result};
use taskorch_engine::auth::{Auth, Principal};

use super::{Caller, principal};
use crate::error::{api_error, code};

/// How often a streaming subscription's credential is checked again.
pub const RECHECK: Duration = Duration::from_secs(5);

pub struct LiveCredential {
    auth: Auth,
    credential: Option<String>,
    checked: Instant,
    /// Revocations made by this server: each one has the credential checked again at once.
    revocations: tokio::sync::watch::Receiver<u64>,
    forced: bool,
}

impl LiveCredential {
    /// Checks the caller's credential now; the principal it identifies and the handle to check it again.
    pub async fn begin(ctx: &Context<'_>) -> Result<(Principal, Self)> {
        let auth = ctx.data::<Auth>()?.clone();
        let credential = ctx.data_opt::<Caller>().and_then(|c| c.secret.clone());
        let principal = match &credential {
            Some(c) => auth.authenticate(c).await.map_err(crate::error::from_engine)?,
            None => principal(ctx)?.clone(),
        };
        let revocations = auth.revocations();
        Ok((principal, Self { auth, credential, checked: Instant::now(), revocations, forced: false }))
    }

    /// Resolves when this server revokes a credential (any one): the next [`Self::still_valid`] checks again.
    pub async fn revoked(&mut self) {
        if self.revocations.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.forced = true;
    }

    /// Whether the credential is still valid (checked at most every [`RECHECK`], and after a revocation here).
    pub async fn still_valid(&mut self) -> bool {
        let Some(credential) = &self.credential else { return true };
        if !self.forced && self.checked.elapsed() < RECHECK {
            return true;
        }
        self.forced = false;
        self.checked = Instant::now();
        match self.auth.authenticate(credential).await {
            Ok(_) => true,
            Err(taskorch_engine::Error::Unauthenticated(_)) => false,
            // A database hiccup does not end a stream; the next check decides.
            Err(_) => true,
        }
    }

    /// The error that ends a stream whose credential stopped being valid.
    pub fn expired() -> async_graphql::Error {
        api_error(code::UNAUTHENTICATED, "the credential of this subscription expired or was revoked")
    }
}

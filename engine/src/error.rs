//! Errors of the use cases. The API layer maps each to a stable `extensions.code`.

use taskorch_domain::{WorkflowStatus, dag};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The workflow definition was refused by the domain rules.
    #[error(transparent)]
    Invalid(#[from] dag::Error),
    #[error("{what} `{id}` was not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    /// Input refused outside the workflow rules (an email, a password, a name, a date).
    #[error("{0}")]
    BadInput(String),
    /// No credential, or one that is not valid (unknown, expired, revoked, badly signed).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A valid credential without the permission the call needs.
    #[error("{0}")]
    Forbidden(String),
    #[error("the workflow is {current}, so it cannot be {action}")]
    InvalidState { current: WorkflowStatus, action: &'static str },
    /// A database failure; its cause is logged, never shown to clients.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// Stored data that cannot be read back (a bug or a manual edit).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A change was committed but a service that must hear of it could not be reached (the message says what
    /// holds meanwhile).
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        Error::Corrupt(what.to_string())
    }
}

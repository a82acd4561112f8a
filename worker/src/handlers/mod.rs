//! Built-in handlers.

mod basic;
mod http;
mod shell;

pub use basic::{Echo, Fail, Noop, Sleep};
pub use http::{CircuitBreaker, Http};
pub use shell::{Shell, ShellDisabled};

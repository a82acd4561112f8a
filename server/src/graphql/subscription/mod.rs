//! Subscription roots.

mod events;
mod guard;

pub use events::EventSubscription;
pub use guard::ActiveSubscriptions;

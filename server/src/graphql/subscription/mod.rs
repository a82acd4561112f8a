//! Subscription roots.

mod events;
mod guard;
mod hub;

pub use events::EventSubscription;
pub use guard::ActiveSubscriptions;
pub use hub::EventHub;

//! Subscription roots.

mod events;
mod guard;
mod hub;

pub use events::EventSubscription;
pub use guard::{ActiveSubscriptions, Guard};
pub use hub::EventHub;

//! Subscription roots.

mod events;
mod follow;
mod guard;
mod hub;

pub use events::EventSubscription;
pub use follow::LogFollower;
pub use guard::{ActiveSubscriptions, Guard};
pub use hub::EventHub;

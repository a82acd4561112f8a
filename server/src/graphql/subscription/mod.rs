//! Subscription roots.

mod events;

pub use events::EventSubscription;

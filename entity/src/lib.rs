//! SeaORM entities of taskorch: rows only. Timestamps are microseconds since the Unix epoch (`i64`), so the same
//! comparisons work on SQLite and PostgreSQL; statuses are stored by their upper-case names.

pub mod api_key;
pub mod event_chunk;
pub mod refresh_token;
pub mod setting;
pub mod task;
pub mod tenant;
pub mod user;
pub mod workflow;

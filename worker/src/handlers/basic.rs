//! `noop`, `echo`, `sleep` and `fail`.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value as Json, json};

use crate::registry::{Handler, HandlerError, TaskContext};

/// Result `null`.
pub struct Noop;

#[async_trait]
impl Handler for Noop {
    async fn run(&self, _ctx: TaskContext) -> Result<Json, HandlerError> {
        Ok(Json::Null)
    }
}

/// Result `{"payload": <payload>, "inputs": {<dep key>: <dep result>, …}}`.
pub struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn run(&self, ctx: TaskContext) -> Result<Json, HandlerError> {
        Ok(json!({ "payload": ctx.payload, "inputs": ctx.inputs }))
    }
}

/// Sleeps `{"ms": N}` milliseconds (stops early when cancelled).
pub struct Sleep;

#[async_trait]
impl Handler for Sleep {
    async fn run(&self, ctx: TaskContext) -> Result<Json, HandlerError> {
        let ms = ctx
            .payload
            .get("ms")
            .and_then(Json::as_u64)
            .ok_or_else(|| HandlerError::new("sleep expects a payload {\"ms\": <non-negative integer>}"))?;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({ "sleptMs": ms })),
            _ = ctx.cancel.cancelled() => Err(HandlerError::new("cancelled")),
        }
    }
}

/// Fails with `{"message": s}`; with `"failTimes": n` it fails the first n attempts, then succeeds.
pub struct Fail;

#[async_trait]
impl Handler for Fail {
    async fn run(&self, ctx: TaskContext) -> Result<Json, HandlerError> {
        let message = ctx.payload.get("message").and_then(Json::as_str).unwrap_or("failed on purpose").to_owned();
        match ctx.payload.get("failTimes") {
            None | Some(Json::Null) => Err(HandlerError(message)),
            Some(v) => {
                let times = v
                    .as_u64()
                    .ok_or_else(|| HandlerError::new("fail expects failTimes to be a non-negative integer"))?;
                if u64::from(ctx.attempt) > times {
                    Ok(json!({ "attempt": ctx.attempt }))
                } else {
                    Err(HandlerError(message))
                }
            }
        }
    }
}

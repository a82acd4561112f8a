//! `shell` `{program, args}`: only when the worker runs with `--allow-shell`.

use async_trait::async_trait;
use serde_json::{Value as Json, json};

use crate::registry::{Handler, HandlerError, TaskContext};

/// Runs a program (no shell interpretation) and returns its exit code and output.
pub struct Shell;

#[async_trait]
impl Handler for Shell {
    async fn run(&self, ctx: TaskContext) -> Result<Json, HandlerError> {
        let program =
            ctx.payload.get("program").and_then(Json::as_str).ok_or_else(|| {
                HandlerError::new("shell expects a payload {\"program\": string, \"args\": [string]}")
            })?;
        let args: Vec<String> = match ctx.payload.get("args") {
            None | Some(Json::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| HandlerError::new("shell expects args to be an array of strings"))?,
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&args).kill_on_drop(true);
        let output = tokio::select! {
            out = cmd.output() => out.map_err(|e| HandlerError(format!("could not run `{program}`: {e}")))?,
            _ = ctx.cancel.cancelled() => return Err(HandlerError::new("cancelled")),
        };
        let code = output.status.code();
        let result = json!({
            "exitCode": code,
            "stdout": String::from_utf8_lossy(&output.stdout),
            "stderr": String::from_utf8_lossy(&output.stderr),
        });
        if output.status.success() {
            Ok(result)
        } else {
            Err(HandlerError(format!("`{program}` exited with {code:?}")))
        }
    }
}

/// Stands in for `shell` when it is not allowed, so the task fails with a clear error.
pub struct ShellDisabled;

#[async_trait]
impl Handler for ShellDisabled {
    async fn run(&self, _ctx: TaskContext) -> Result<Json, HandlerError> {
        Err(HandlerError::new("the shell handler is disabled: start the worker with --allow-shell to enable it"))
    }
}

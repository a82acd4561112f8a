use async_graphql::{Context, Object, Result};
use taskorch_engine::Engine;

use crate::error::{from_engine, invalid};
use crate::graphql::types::{SubmitWorkflowInput, Workflow};

#[derive(Default)]
pub struct WorkflowMutation;

#[Object]
impl WorkflowMutation {
    /// Validates, stores and starts a workflow. Nothing is written when the input is refused.
    async fn submit_workflow(
        &self,
        ctx: &Context<'_>,
        input: SubmitWorkflowInput,
    ) -> Result<Workflow> {
        let spec = input.into_spec().map_err(|e| invalid(e.to_string()))?;
        let record = ctx
            .data::<Engine>()?
            .submit(spec)
            .await
            .map_err(from_engine)?;
        Ok(Workflow(record))
    }
}

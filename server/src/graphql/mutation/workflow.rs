use async_graphql::{Context, ID, Object, Result};
use taskorch_domain::Permission;
use taskorch_domain::lifecycle::Action;
use taskorch_engine::Engine;
use taskorch_engine::model::WorkflowFilter as Filter;

use crate::auth::{Need, principal};
use crate::error::{from_engine, invalid};
use crate::graphql::types::{SubmitWorkflowInput, Workflow, WorkflowFilter, parse_workflow_id};

#[derive(Default)]
pub struct WorkflowMutation;

async fn act(ctx: &Context<'_>, id: ID, action: Action) -> Result<Workflow> {
    let id = parse_workflow_id(&id)?;
    let tenant = principal(ctx)?.tenant;
    Ok(Workflow(ctx.data::<Engine>()?.act(tenant, id, action).await.map_err(from_engine)?))
}

async fn act_many(ctx: &Context<'_>, filter: Option<WorkflowFilter>, action: Action) -> Result<i32> {
    let f = filter.unwrap_or_default();
    let filter = Filter { tenant: None, status: f.status.map(Into::into), name: f.name };
    let tenant = principal(ctx)?.tenant;
    let n = ctx.data::<Engine>()?.act_many(tenant, &filter, action).await.map_err(from_engine)?;
    Ok(i32::try_from(n).unwrap_or(i32::MAX))
}

#[Object]
impl WorkflowMutation {
    /// Validates, stores and starts a workflow. Nothing is written when the input is refused.
    #[graphql(guard = "Need(Permission::Operate)")]
    async fn submit_workflow(&self, ctx: &Context<'_>, input: SubmitWorkflowInput) -> Result<Workflow> {
        let spec = input.into_spec().map_err(|e| invalid(e.to_string()))?;
        let tenant = principal(ctx)?.tenant;
        let record = ctx.data::<Engine>()?.submit(tenant, spec).await.map_err(from_engine)?;
        Ok(Workflow(record))
    }

    /// Cancels a workflow: running tasks are signalled, nothing new starts, unfinished tasks become CANCELLED.
    /// `INVALID_STATE` unless it is PENDING, RUNNING or PAUSED.
    #[graphql(guard = "Need(Permission::Operate)")]
    async fn cancel_workflow(&self, ctx: &Context<'_>, id: ID) -> Result<Workflow> {
        act(ctx, id, Action::Cancel).await
    }

    /// Re-runs the FAILED and CANCELLED tasks of a FAILED or CANCELLED workflow and their downstream, keeping
    /// COMPLETED results; resumes the compensation of a COMPENSATION_FAILED workflow.
    #[graphql(guard = "Need(Permission::Operate)")]
    async fn retry_workflow(&self, ctx: &Context<'_>, id: ID) -> Result<Workflow> {
        act(ctx, id, Action::Retry).await
    }

    /// Pauses a RUNNING workflow: running tasks finish, nothing new is dispatched.
    #[graphql(guard = "Need(Permission::Operate)")]
    async fn pause_workflow(&self, ctx: &Context<'_>, id: ID) -> Result<Workflow> {
        act(ctx, id, Action::Pause).await
    }

    /// Resumes a PAUSED workflow.
    #[graphql(guard = "Need(Permission::Operate)")]
    async fn resume_workflow(&self, ctx: &Context<'_>, id: ID) -> Result<Workflow> {
        act(ctx, id, Action::Resume).await
    }

    /// Cancels every matching workflow that can be cancelled; returns how many were.
    #[graphql(guard = "Need(Permission::Operate)")]
    async fn cancel_workflows(&self, ctx: &Context<'_>, filter: Option<WorkflowFilter>) -> Result<i32> {
        act_many(ctx, filter, Action::Cancel).await
    }

    /// Pauses every matching RUNNING workflow; returns how many were.
    #[graphql(guard = "Need(Permission::Operate)")]
    async fn pause_workflows(&self, ctx: &Context<'_>, filter: Option<WorkflowFilter>) -> Result<i32> {
        act_many(ctx, filter, Action::Pause).await
    }

    /// Resumes every matching PAUSED workflow; returns how many were.
    #[graphql(guard = "Need(Permission::Operate)")]
    async fn resume_workflows(&self, ctx: &Context<'_>, filter: Option<WorkflowFilter>) -> Result<i32> {
        act_many(ctx, filter, Action::Resume).await
    }

    /// Retries every matching workflow that can be retried; returns how many were.
    #[graphql(guard = "Need(Permission::Operate)")]
    async fn retry_workflows(&self, ctx: &Context<'_>, filter: Option<WorkflowFilter>) -> Result<i32> {
        act_many(ctx, filter, Action::Retry).await
    }
}

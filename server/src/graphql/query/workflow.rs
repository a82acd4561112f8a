use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, ID, Object, Result};
use taskorch_domain::Permission;
use taskorch_engine::Engine;
use taskorch_engine::model::WorkflowFilter as Filter;

use crate::auth::{Need, principal};
use crate::error::{from_engine, invalid};
use crate::graphql::loaders::TaskLoaderCached;
use crate::graphql::types::{Workflow, WorkflowFilter, parse_workflow_id};

/// Largest page of `workflows`.
pub const MAX_PAGE: i32 = 1000;

#[derive(Default)]
pub struct WorkflowQuery;

#[Object]
impl WorkflowQuery {
    /// One workflow of the caller's tenant by id. When there is none — or it belongs to another tenant, which
    /// reads exactly the same — the answer is null with a `NOT_FOUND` error.
    #[graphql(guard = "Need(Permission::Read)")]
    async fn workflow(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Workflow>> {
        let id = parse_workflow_id(&id)?;
        let tenant = principal(ctx)?.tenant;
        match ctx.data::<Engine>()?.workflow_of(tenant, id).await.map_err(from_engine)? {
            Some(w) => {
                // The version of a kept answer (`crate::hot`), when the request may keep one.
                if let Some(slot) = ctx.data_opt::<crate::hot::PlanSlot>() {
                    slot.read(w.id, w.last_sequence);
                }
                Ok(Some(Workflow(w)))
            }
            None => Err(from_engine(taskorch_engine::Error::NotFound { what: "workflow", id: id.to_string() })),
        }
    }

    /// The caller's tenant's workflows, newest first, as a Relay cursor connection (`first` defaults to 20, at
    /// most 1000).
    #[graphql(guard = "Need(Permission::Read)")]
    async fn workflows(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<WorkflowFilter>,
    ) -> Result<Connection<String, Workflow, EmptyFields, EmptyFields>> {
        let first = first.unwrap_or(20);
        if !(0..=MAX_PAGE).contains(&first) {
            return Err(invalid(format!("`first` must be between 0 and {MAX_PAGE}, got {first}")));
        }
        let after = match after {
            None => None,
            Some(c) => Some(c.parse().map_err(|_| invalid(format!("`{c}` is not a valid cursor")))?),
        };
        let filter = filter.unwrap_or_default();
        let tenant = Some(principal(ctx)?.tenant);
        let filter = Filter { tenant, status: filter.status.map(Into::into), name: filter.name };
        let page = ctx.data::<Engine>()?.workflows(&filter, after, first as u64).await.map_err(from_engine)?;
        let node = ctx.look_ahead().field("edges").field("node");
        if node.field("tasks").exists() || node.field("task").exists() {
            // One statement for the tasks of the whole page; the per-workflow resolvers then read the cache.
            let ids: Vec<_> = page.items.iter().map(|w| w.id).collect();
            ctx.data::<TaskLoaderCached>()?.load_many(ids).await.map_err(|e| (*e).clone())?;
        }
        let mut conn = Connection::new(after.is_some(), page.has_next_page);
        conn.edges.extend(page.items.into_iter().map(|w| Edge::new(w.id.to_string(), Workflow(w))));
        Ok(conn)
    }
}

//! Live events: replay from the database, then the bus, deduplicated by sequence and re-read on any gap.

use std::collections::HashSet;

use async_graphql::{Context, ID, InputObject, Result, Subscription};
use futures::Stream;
use taskorch_domain::Permission;
use taskorch_engine::Engine;
use taskorch_engine::model::EventRecord;
use tokio::sync::broadcast::error::RecvError;

use super::{ActiveSubscriptions, EventHub};
use crate::auth::live::RECHECK;
use crate::auth::{LiveCredential, Need};
use crate::error::from_engine;
use crate::graphql::types::{EventType, WorkflowEvent, parse_workflow_id};

/// Filter of the event firehose.
#[derive(InputObject, Default, Debug)]
pub struct EventFilter {
    /// Only events of workflows with this name.
    pub workflow_name: Option<String>,
    /// Only these event types.
    pub types: Option<Vec<EventType>>,
}

#[derive(Default)]
pub struct EventSubscription;

const REPLAY_PAGE: u64 = 1000;
/// Without any event for this long, a subscriber compares what it has seen with what the hub knows of its workflow
/// (the hub polls the log for everyone) and re-reads the log if it missed something: the safety net.
const LOG_POLL: std::time::Duration = std::time::Duration::from_secs(2);

#[Subscription]
impl EventSubscription {
    /// Events of one workflow: first those after `afterSequence` (default 0) from the log, then live ones; in order,
    /// without gap or duplicate. Completes after the workflow's final event. `NOT_FOUND` for an unknown id or
    /// another tenant's workflow.
    #[graphql(guard = "Need(Permission::Read)")]
    async fn workflow_events(
        &self,
        ctx: &Context<'_>,
        workflow_id: ID,
        after_sequence: Option<i64>,
    ) -> Result<impl Stream<Item = Result<WorkflowEvent>> + use<>> {
        let id = parse_workflow_id(&workflow_id)?;
        let (principal, mut credential) = LiveCredential::begin(ctx).await?;
        let tenant = principal.tenant;
        let engine = ctx.data::<Engine>()?.clone();
        // Subscribe before reading the log so nothing falls between the two.
        let hub = ctx.data::<EventHub>()?.clone();
        let mut live = hub.subscribe(id);
        let Some(current) = engine.workflow_of(tenant, id).await.map_err(from_engine)? else {
            return Err(crate::error::api_error(
                crate::error::code::NOT_FOUND,
                format!("workflow `{id}` was not found"),
            ));
        };
        hub.observed(id, current.last_sequence);
        let mut last = after_sequence.unwrap_or(0).max(0);
        let guard = ctx.data::<ActiveSubscriptions>()?.enter();
        Ok(async_stream::stream! {
            let _guard = guard;
            let mut last_type = None;
            'outer: loop {
                // Catch up from the log.
                loop {
                    let Ok(page) = engine.events(id, last, REPLAY_PAGE).await else { break 'outer };
                    let n = page.len() as u64;
                    let mut completed = false;
                    for e in page {
                        last = e.sequence;
                        last_type = Some(e.event_type);
                        completed |= e.event_type == taskorch_domain::EventType::WorkflowCompleted;
                        yield Ok(WorkflowEvent::from(e));
                    }
                    if completed {
                        break 'outer; // final for good, and the last event of its commit
                    }
                    if n < REPLAY_PAGE {
                        break;
                    }
                }
                if is_finished(&engine, id, last).await {
                    // Drain what committed between the read above and the status check.
                    for e in rest_of_log(&engine, id, last).await {
                        yield Ok(WorkflowEvent::from(e));
                    }
                    break;
                }
                // Live.
                // One timer for the quiet period, re-armed only when it fires (not one per event).
                let quiet = tokio::time::sleep(LOG_POLL);
                tokio::pin!(quiet);
                let mut heard = tokio::time::Instant::now();
                // The last event read may have been the final one (the status check said the workflow goes on).
                let mut maybe_final = last_type.is_some_and(taskorch_domain::EventType::may_end_workflow);
                loop {
                    // Events committed by another process reach this one only through a shared bus; without
                    // one, a quiet period falls back to reading the log.
                    let received = tokio::select! {
                        biased;
                        r = live.recv() => Some(r),
                        _ = credential.revoked() => None,
                        _ = &mut quiet => None,
                    };
                    if !credential.still_valid().await {
                        yield Err(LiveCredential::expired());
                        break 'outer;
                    }
                    let Some(received) = received else {
                        // Quiet: only if the hub (which polls the log for every watched workflow) knows of a later
                        // event than this stream has seen, something was missed; then the log is read again.
                        if heard.elapsed() >= LOG_POLL {
                            if hub.newest(id).is_none_or(|n| n > last) {
                                continue 'outer;
                            }
                            // Quiet after what may have been the final event: the database has the last word.
                            if maybe_final && is_finished(&engine, id, i64::MAX).await {
                                for e in rest_of_log(&engine, id, last).await {
                                    yield Ok(WorkflowEvent::from(e));
                                }
                                break 'outer;
                            }
                            maybe_final = false;
                            heard = tokio::time::Instant::now();
                        }
                        quiet.as_mut().reset(heard + LOG_POLL);
                        continue;
                    };
                    heard = tokio::time::Instant::now();
                    match received {
                        Ok(e) if e.workflow_id == id => {
                            if e.sequence <= last {
                                // Not for this stream (it started after it), but the workflow may end with it.
                                if e.event_type.may_end_workflow() && is_finished(&engine, id, e.sequence).await {
                                    for e in rest_of_log(&engine, id, last).await {
                                        yield Ok(WorkflowEvent::from(e));
                                    }
                                    break 'outer;
                                }
                                continue;
                            }
                            if e.sequence > last + 1 {
                                continue 'outer; // a gap: re-read from the log
                            }
                            last = e.sequence;
                            let event_type = e.event_type;
                            last_type = Some(event_type);
                            let terminal = event_type.may_end_workflow();
                            yield Ok(WorkflowEvent::from(e));
                            if event_type == taskorch_domain::EventType::WorkflowCompleted {
                                // Final for good, and always the last event of its commit: nothing to read.
                                break 'outer;
                            }
                            maybe_final = terminal;
                            if terminal && is_finished(&engine, id, last).await {
                                // Events of the same commit may follow the terminal one in the log.
                                for e in rest_of_log(&engine, id, last).await {
                                    yield Ok(WorkflowEvent::from(e));
                                }
                                break 'outer;
                            }
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => continue 'outer,
                        Err(RecvError::Closed) => break 'outer,
                    }
                }
            }
        })
    }

    /// Every event of the caller's tenant's workflows, optionally filtered by workflow name and event types (for
    /// dashboards).
    #[graphql(guard = "Need(Permission::Read)")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        filter: Option<EventFilter>,
    ) -> Result<impl Stream<Item = Result<WorkflowEvent>> + use<>> {
        let (principal, mut credential) = LiveCredential::begin(ctx).await?;
        let tenant = principal.tenant;
        let engine = ctx.data::<Engine>()?.clone();
        let filter = filter.unwrap_or_default();
        let types: Option<HashSet<taskorch_domain::EventType>> =
            filter.types.map(|t| t.into_iter().map(Into::into).collect());
        let name = filter.workflow_name;
        let mut live = engine.bus().subscribe();
        let guard = ctx.data::<ActiveSubscriptions>()?.enter();
        // Without a shared bus, other processes' events come from following the log.
        let watch = ctx.data::<super::LogFollower>()?.watch();
        Ok(async_stream::stream! {
            let _guard = guard;
            let _watch = watch;
            loop {
                let received = tokio::select! {
                    r = live.recv() => Some(r),
                    _ = credential.revoked() => None,
                    _ = tokio::time::sleep(RECHECK) => None,
                };
                if !credential.still_valid().await {
                    yield Err(LiveCredential::expired());
                    break;
                }
                let Some(received) = received else { continue };
                match received {
                    Ok(e) => {
                        if e.tenant_id != tenant {
                            continue;
                        }
                        if name.as_ref().is_some_and(|n| *n != e.workflow_name) {
                            continue;
                        }
                        if types.as_ref().is_some_and(|t| !t.contains(&e.event_type)) {
                            continue;
                        }
                        yield Ok(WorkflowEvent::from(e));
                    }
                    Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "firehose subscriber lagged"),
                    Err(RecvError::Closed) => break,
                }
            }
        })
    }
}

/// Whether the workflow has ended, judged on a state no older than event `seen` (the stream has already read it from
/// the log: a cached state from before it would keep the stream open after the final event). `i64::MAX` asks the
/// database whatever is cached.
/// The events after `last` of a workflow that has ended (what committed with or after the event that ended it).
async fn rest_of_log(engine: &Engine, id: taskorch_domain::WorkflowId, last: i64) -> Vec<EventRecord> {
    engine.events(id, last, u64::MAX >> 1).await.unwrap_or_default()
}

async fn is_finished(engine: &Engine, id: taskorch_domain::WorkflowId, seen: i64) -> bool {
    match engine.workflow_since(id, seen).await {
        Ok(Some(w)) => w.status.is_terminal(),
        _ => true,
    }
}

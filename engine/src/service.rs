//! The use cases, over the store, the event bus and the dispatcher's wake-up signal.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use taskorch_domain::lifecycle::Action;
use taskorch_domain::{Limits, TenantId, WorkflowId, WorkflowSpec, dag};
use tokio::sync::Notify;

use crate::bus::EventBus;
use crate::cache::{NoCache, ReadCache};
use crate::error::Error;
use crate::model::{EventRecord, TaskRecord, WorkflowFilter, WorkflowPage, WorkflowRecord};
use crate::publisher::Publisher;
use crate::queue::{Dispatch, Phase, TaskQueue};
use crate::snapshot::SnapshotCache;
use crate::store::{Claimed, Continuation, DispatchAtSubmit, NewWorkflow, Outcome, Report, Store, SubmitOutcome};
use tokio_util::sync::CancellationToken;

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub limits: Limits,
    /// How long a claimed attempt holds its task without a heartbeat.
    pub lease: Duration,
    /// How long a dispatched but unclaimed task waits before it is dispatched again.
    pub redeliver_after: Duration,
    /// How often the reaper looks for expired leases.
    pub reaper_period: Duration,
    /// Tasks fetched per dispatcher round.
    pub dispatch_batch: usize,
    /// Traces are exported: dispatches carry trace context.
    pub trace: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            lease: Duration::from_secs(30),
            redeliver_after: Duration::from_secs(30),
            reaper_period: Duration::from_secs(5),
            dispatch_batch: 512,
            trace: false,
        }
    }
}

struct Inner {
    store: Store,
    bus: Arc<dyn EventBus>,
    cache: Arc<dyn ReadCache>,
    /// The embedded default's hot-read cache (SQLite without a shared bus).
    snapshot: Option<Arc<SnapshotCache>>,
    opts: EngineOptions,
    wake: Notify,
    publisher: OnceLock<Publisher>,
    /// The queue this process dispatches to, when it runs a dispatcher (see [`Engine::dispatch_roots_to`]).
    roots_to: std::sync::Mutex<Option<Arc<RootsTo>>>,
}

/// Where a submission's root tasks go right after its commit.
struct RootsTo {
    queue: Arc<dyn TaskQueue>,
    kinds: Option<Vec<String>>,
    max_backlog: usize,
    stop: CancellationToken,
}

/// The application service shared by the API and the workers.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    pub fn new(store: Store, bus: Arc<dyn EventBus>, opts: EngineOptions) -> Self {
        Self::with_cache(store, bus, Arc::new(NoCache), opts)
    }

    /// An engine whose workflow reads go through a cache.
    pub fn with_cache(store: Store, bus: Arc<dyn EventBus>, cache: Arc<dyn ReadCache>, opts: EngineOptions) -> Self {
        Self::with_caches(store, bus, cache, None, opts)
    }

    /// An engine with a shared read cache and, on SQLite, the snapshot cache of hot reads.
    pub fn with_caches(
        store: Store,
        bus: Arc<dyn EventBus>,
        cache: Arc<dyn ReadCache>,
        snapshot: Option<SnapshotCache>,
        opts: EngineOptions,
    ) -> Self {
        let snapshot = snapshot.map(Arc::new);
        Self {
            inner: Arc::new(Inner {
                store,
                bus,
                cache,
                snapshot,
                opts,
                wake: Notify::new(),
                publisher: OnceLock::new(),
                roots_to: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The embedded default's snapshot cache, shared with authentication (API keys).
    pub fn snapshot(&self) -> Option<Arc<SnapshotCache>> {
        self.inner.snapshot.clone()
    }

    /// The ordered publisher, started on first use (inside the runtime).
    fn publisher(&self) -> &Publisher {
        self.inner.publisher.get_or_init(|| Publisher::start(self.inner.bus.clone(), self.inner.cache.clone()))
    }

    /// Publishes committed events (cached reads of their workflows marked stale first) after every batch queued
    /// before them; returns once they are on the bus.
    async fn publish(&self, events: Vec<EventRecord>) {
        if !events.is_empty() {
            self.publisher().publish(events).await;
        }
    }

    /// Waits until every event queued so far is on the bus (before a worker stops).
    pub async fn flush_events(&self) {
        self.publisher().publish(Vec::new()).await;
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.inner.bus
    }

    pub fn options(&self) -> &EngineOptions {
        &self.inner.opts
    }

    /// Validates, stores and starts a workflow. A resubmission with the same idempotency key and content returns
    /// the original; the same key with other content is a conflict.
    #[tracing::instrument(name = "workflow.submit", skip_all, fields(workflow.name = %spec.name, tasks = spec.tasks.len()))]
    pub async fn submit(&self, tenant: TenantId, spec: WorkflowSpec) -> Result<WorkflowRecord, Error> {
        let trace_parent = crate::trace::traceparent(&tracing::Span::current());
        let content_hash = spec.content_hash();
        let validated = dag::validate(spec, &self.inner.opts.limits)?;
        let roots = validated.spec.tasks.iter().filter(|t| t.depends_on.is_empty()).count();
        let roots_to = self.roots_to(roots);
        let dispatch = roots_to.as_ref().map(|to| DispatchAtSubmit {
            until: crate::time::now_us() + self.inner.opts.redeliver_after.as_micros() as i64,
            kinds: to.kinds.clone(),
        });
        let new = NewWorkflow { tenant, validated, content_hash, trace_parent: trace_parent.clone(), dispatch };
        match self.inner.store.insert_workflow(new).await? {
            SubmitOutcome::Existing(record) => Ok(record),
            SubmitOutcome::Created(record, events, mut dispatches) => {
                self.publish(events).await;
                let handed_over = dispatches.len();
                if let Some(to) = roots_to
                    && !dispatches.is_empty()
                {
                    if self.inner.opts.trace {
                        dispatch_spans(&mut dispatches, |_| trace_parent.as_deref());
                    }
                    tokio::spawn(crate::dispatcher::hand_over(self.clone(), to.queue.clone(), dispatches));
                }
                // Roots of kinds this process does not dispatch (or all, when its queue is full) are the
                // dispatchers' (here or elsewhere). Waking it for nothing cost a scan per submission.
                if handed_over < roots {
                    self.wake_dispatcher();
                }
                Ok(record)
            }
        }
    }

    /// Hands the root tasks of every later submission straight to `queue` (of `kinds`, or all), while it holds
    /// fewer than `max_backlog` messages and until `stop`: one write per task less than going through the
    /// dispatcher, and no wait for its next round. [`crate::dispatcher::run_dispatcher`] registers its queue here.
    pub fn dispatch_roots_to(
        &self,
        queue: Arc<dyn TaskQueue>,
        kinds: Option<Vec<String>>,
        max_backlog: usize,
        stop: CancellationToken,
    ) {
        if let Ok(mut slot) = self.inner.roots_to.lock() {
            *slot = Some(Arc::new(RootsTo { queue, kinds, max_backlog, stop }));
        }
    }

    /// The queue for `roots` new root tasks, if this process dispatches and the queue has room.
    fn roots_to(&self, roots: usize) -> Option<Arc<RootsTo>> {
        let to = self.inner.roots_to.lock().ok()?.clone()?;
        (!to.stop.is_cancelled() && to.queue.backlog().saturating_add(roots) <= to.max_backlog).then_some(to)
    }

    pub async fn workflow(&self, id: WorkflowId) -> Result<Option<WorkflowRecord>, Error> {
        let stamp = match &self.inner.snapshot {
            Some(snapshot) => match snapshot.workflow(id) {
                Some(hit) => return Ok(Some(hit)),
                None => snapshot.stamp(),
            },
            None => None,
        };
        if let Some(hit) = self.inner.cache.get(id).await {
            return Ok(Some(hit));
        }
        let record = self.inner.store.workflow(id).await?;
        if let Some(r) = &record {
            self.inner.cache.put(r).await;
            if let (Some(snapshot), Some(stamp)) = (&self.inner.snapshot, stamp) {
                snapshot.put_workflow(stamp, r);
            }
        }
        Ok(record)
    }

    /// The workflow as of its event `sequence` or later: the cached copy when it is that new, else the database's.
    /// A cached copy trails the log between a commit and the publication of its events (which marks it stale), so
    /// whoever has read an event from the log asks for at least that event's state.
    pub async fn workflow_since(&self, id: WorkflowId, sequence: i64) -> Result<Option<WorkflowRecord>, Error> {
        match self.workflow(id).await? {
            Some(cached) if cached.last_sequence < sequence => self.inner.store.workflow(id).await,
            other => Ok(other),
        }
    }

    /// The shared read cache, when there is one (authentication keeps API key rows under its key generation).
    pub fn shared_cache(&self) -> Option<Arc<dyn ReadCache>> {
        self.inner.cache.is_shared().then(|| self.inner.cache.clone())
    }

    /// The newest sequence of `id` as the shared read cache (Redis) knows it: the sequence of its cached copy while
    /// no newer event has marked that copy stale; `None` without a shared cache or a fresh copy. Equal answers at
    /// two moments mean no event of the workflow was published in between.
    pub async fn cached_sequence(&self, id: WorkflowId) -> Option<i64> {
        self.inner.cache.get(id).await.map(|r| r.last_sequence)
    }

    /// One workflow of `tenant`; another tenant's workflow is reported as missing, like an unknown id.
    pub async fn workflow_of(&self, tenant: TenantId, id: WorkflowId) -> Result<Option<WorkflowRecord>, Error> {
        Ok(self.workflow(id).await?.filter(|w| w.tenant_id == tenant))
    }

    pub async fn workflows(
        &self,
        filter: &WorkflowFilter,
        after: Option<WorkflowId>,
        first: u64,
    ) -> Result<WorkflowPage, Error> {
        self.inner.store.list_workflows(filter, after, first).await
    }

    pub async fn tasks_of(
        &self,
        ids: &[WorkflowId],
    ) -> Result<std::collections::HashMap<WorkflowId, Vec<TaskRecord>>, Error> {
        let Some(snapshot) = &self.inner.snapshot else { return self.inner.store.tasks_of(ids).await };
        let (mut hits, missed) = snapshot.tasks(ids);
        if missed.is_empty() {
            return Ok(hits);
        }
        let stamp = snapshot.stamp();
        let read = self.inner.store.tasks_of(&missed).await?;
        if let Some(stamp) = stamp {
            snapshot.put_tasks(stamp, &missed, &read);
        }
        hits.extend(read);
        Ok(hits)
    }

    pub async fn task(&self, id: WorkflowId, key: &str) -> Result<Option<TaskRecord>, Error> {
        self.inner.store.task_by_key(id, key).await
    }

    /// The newest event sequence of each workflow (subscription hubs poll it for events of other processes).
    /// See [`Store::chunks_written_after`].
    pub async fn chunks_written_after(
        &self,
        cursor: Option<i64>,
        limit: u64,
    ) -> Result<Option<Vec<crate::store::ChunkHead>>, Error> {
        self.inner.store.chunks_written_after(cursor, limit).await
    }

    pub async fn last_sequences(
        &self,
        ids: &[WorkflowId],
    ) -> Result<std::collections::HashMap<WorkflowId, i64>, Error> {
        self.inner.store.last_sequences(ids).await
    }

    pub async fn events(&self, id: WorkflowId, after_sequence: i64, limit: u64) -> Result<Vec<EventRecord>, Error> {
        self.inner.store.events(id, after_sequence, limit).await
    }

    /// Applies an operator action (cancel, pause, resume, retry) to a workflow of `tenant` and returns the
    /// workflow as it is now.
    pub async fn act(&self, tenant: TenantId, id: WorkflowId, action: Action) -> Result<WorkflowRecord, Error> {
        if self.workflow_of(tenant, id).await?.is_none() {
            return Err(Error::NotFound { what: "workflow", id: id.to_string() });
        }
        self.apply(id, action).await
    }

    /// Applies an action to a workflow whose tenant was already checked.
    async fn apply(&self, id: WorkflowId, action: Action) -> Result<WorkflowRecord, Error> {
        let (record, events) = self.inner.store.apply_action(id, action).await?;
        self.publish(events).await;
        if matches!(action, Action::Resume | Action::Retry) {
            self.wake_dispatcher();
        }
        Ok(record)
    }

    /// Applies an action to every workflow of `tenant` matching `filter` for which it is allowed; returns how many
    /// changed.
    pub async fn act_many(&self, tenant: TenantId, filter: &WorkflowFilter, action: Action) -> Result<usize, Error> {
        let mut changed = 0;
        // The list is the tenant's own: no per-workflow tenant check.
        let filter = WorkflowFilter { tenant: Some(tenant), ..filter.clone() };
        for id in self.inner.store.workflow_ids(&filter).await? {
            match self.apply(id, action).await {
                Ok(_) => changed += 1,
                Err(Error::InvalidState { .. } | Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(changed)
    }

    /// Due tasks for the queue.
    pub async fn fetch_due(&self, limit: usize, kinds: Option<&[String]>) -> Result<Vec<Dispatch>, Error> {
        let visibility = self.inner.opts.redeliver_after.as_micros() as i64;
        let mut due = self.inner.store.fetch_due(limit, kinds, visibility).await?;
        if self.inner.opts.trace && !due.is_empty() {
            let mut ids: Vec<WorkflowId> = due.iter().map(|d| d.workflow_id).collect();
            ids.sort();
            ids.dedup();
            let parents = self.inner.store.trace_parents(&ids).await?;
            dispatch_spans(&mut due, |wf| parents.get(&wf).map(String::as_str));
        }
        Ok(due)
    }

    /// Makes dispatched tasks due again at once (their publish failed).
    pub async fn undispatch(&self, ids: &[taskorch_domain::TaskId]) -> Result<(), Error> {
        self.inner.store.undispatch(ids).await
    }

    /// Reads delivered run-phase tasks for a worker to run before their claim is written (see [`Store::peek`]):
    /// the claim goes with the outcome, or through [`Engine::claim`] if the attempt runs long.
    pub async fn peek(&self, batch: &[Dispatch]) -> Result<Vec<Claimed>, Error> {
        self.inner.store.peek(batch).await
    }

    /// Claims peeked attempts that run long (`(task, attempt, started_at)`); returns the tasks claimed (the others
    /// moved on) and publishes their TASK_STARTED.
    pub async fn claim_started(
        &self,
        attempts: &[(taskorch_domain::TaskId, i32, i64)],
    ) -> Result<Vec<taskorch_domain::TaskId>, Error> {
        let lease_us = self.inner.opts.lease.as_micros() as i64;
        let (claimed, events) = self.inner.store.claim_started(attempts, lease_us).await?;
        self.publish(events).await;
        Ok(claimed)
    }

    /// Claims delivered tasks (fenced); publishes TASK_STARTED.
    pub async fn claim(&self, batch: &[Dispatch]) -> Result<Vec<Claimed>, Error> {
        let (claimed, events) = self.inner.store.claim(batch, self.inner.opts.lease.as_micros() as i64).await?;
        self.publish(events).await;
        Ok(claimed)
    }

    /// Records attempt outcomes; publishes their events and wakes the dispatcher when tasks became ready.
    pub async fn report(&self, outcomes: Vec<Outcome>) -> Result<Report, Error> {
        self.report_and_continue(outcomes, &Continuation::default(), |_| {}).await
    }

    /// Records attempt outcomes and, in the same transaction, claims for the reporting worker dependents they
    /// made ready, which `start` receives right after the commit (before the events are published: the next hop
    /// does not wait for the bus).
    pub async fn report_and_continue(
        &self,
        outcomes: Vec<Outcome>,
        cont: &Continuation,
        start: impl FnOnce(Vec<Claimed>) + Send,
    ) -> Result<Report, Error> {
        let mut jitter = || rand::random::<f64>();
        let lease_us = self.inner.opts.lease.as_micros() as i64;
        let mut report = self.inner.store.report(outcomes, &mut jitter, cont, lease_us).await?;
        start(std::mem::take(&mut report.continued));
        // The reporter's next commit does not wait for the bus (nor the Redis round trip before it).
        self.publisher().publish_detached(std::mem::take(&mut report.events)).await;
        if report.made_ready > 0 {
            self.wake_dispatcher();
        }
        Ok(report)
    }

    /// Extends held leases; returns the attempts that were lost.
    pub async fn heartbeat(
        &self,
        held: &[(taskorch_domain::TaskId, Phase, i32)],
    ) -> Result<Vec<taskorch_domain::TaskId>, Error> {
        self.inner.store.heartbeat(held, self.inner.opts.lease.as_micros() as i64).await
    }

    /// Makes expired dispatches due again, and turns expired leases into failed attempts ("worker lost"); returns
    /// how many leases.
    pub async fn reap_once(&self) -> Result<usize, Error> {
        if self.inner.store.expire_dispatches().await? > 0 {
            self.wake_dispatcher();
        }
        let expired = self.inner.store.expired_leases(1000).await?;
        if expired.is_empty() {
            return Ok(0);
        }
        let report = self.report(expired.clone()).await?;
        // Another reaper may have recorded some of them first (the report is fenced): count only ours.
        let reaped = expired.len() - report.stale;
        metrics::counter!("taskorch_lease_expiries_total").increment(reaped as u64);
        Ok(reaped)
    }

    /// Tells the dispatcher that tasks may have become ready.
    pub fn wake_dispatcher(&self) {
        self.inner.wake.notify_one();
    }

    /// Waits until woken or `timeout` passes.
    pub async fn wait_for_work(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.inner.wake.notified()).await;
    }
}

/// Gives each dispatch its `task.dispatch` span, a child of its workflow's submission (`parent_of`), and carries
/// the span's context in the message.
fn dispatch_spans<'a>(due: &mut [Dispatch], parent_of: impl Fn(WorkflowId) -> Option<&'a str>) {
    for d in due {
        let span = tracing::info_span!("task.dispatch", workflow.id = %d.workflow_id, task.id = %d.task_id, task.kind = %d.kind);
        crate::trace::set_parent(&span, parent_of(d.workflow_id));
        d.trace = crate::trace::traceparent(&span);
    }
}

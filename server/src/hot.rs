//! Response cache of hot reads. A query whose root fields only read workflows is answered with the bytes of an
//! earlier identical answer (same caller — tenant, role, credential —, document, operation name and variables) while
//! nothing it read can have changed:
//! - embedded default (`workflow`, `workflows`): the SQLite file is unchanged, i.e. the WAL-index header is the one
//!   read *before* the earlier execution started (`taskorch_engine::snapshot`), so a hit is never older than the file;
//! - with the shared Redis read cache (`workflow(id)` alone, and no read replica): the workflow's cached copy still
//!   has the sequence of the record the earlier execution read first (its resolver reports it: [`PlanSlot::read`];
//!   the tasks are read from the primary after it). Every event marks that copy stale before it is published
//!   (mutations return only after), so a hit is as fresh as a read of that copy.
//!
//! A hit skips parsing, validation and execution, but not what a caller would notice: it is rate-limited like the
//! call it repeats (the operation classes are kept with the answer) and timed in
//! `taskorch_graphql_request_duration_seconds`. Only answers without errors are kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Field, OperationType};
use async_graphql::{ServerResult, Value, Variables};
use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use taskorch_domain::WorkflowId;
use taskorch_domain::ratelimit::{OperationClass, Quotas};
use taskorch_engine::Engine;
use taskorch_engine::auth::Principal;
use taskorch_engine::ratelimit::RateLimiter;
use taskorch_engine::snapshot::{SnapshotCache, Stamp};

use crate::auth::Caller;
use crate::graphql::ratelimit::{self, classify, root_fields};
use crate::http::{Media, respond};

/// Root fields whose answer is a function of the database and the caller alone.
const CACHEABLE_ROOTS: [&str; 3] = ["workflow", "workflows", "__typename"];
/// Most answers kept; the map is emptied when it reaches either bound.
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: usize = 32 * 1024 * 1024;
/// Larger answers are not kept.
const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// Requests whose document and variables are larger are not kept (their key would be kept too).
const MAX_KEY_BYTES: usize = 4 * 1024;

/// What identifies an answer besides the database state.
#[derive(Hash, PartialEq, Eq)]
pub struct Key {
    caller: Principal,
    query: String,
    operation: Option<String>,
    variables: String,
}

impl Key {
    /// Bytes held by the key besides its fixed size.
    fn bytes(&self) -> usize {
        self.query.len() + self.variables.len() + self.operation.as_ref().map_or(0, String::len)
    }

    /// The key of a plain request (no uploads or request extensions) by an authenticated caller.
    pub fn of(caller: &Caller, req: &async_graphql::Request) -> Option<Self> {
        let principal = caller.principal()?;
        // Mutations are never kept: no need to build their key (the plan decides for anything else).
        if req.query.len() > MAX_KEY_BYTES
            || req.query.trim_start().starts_with("mutation")
            || !req.uploads.is_empty()
            || !req.extensions.is_empty()
        {
            return None;
        }
        let variables = serde_json::to_string(&req.variables).ok()?;
        if req.query.len() + variables.len() > MAX_KEY_BYTES {
            return None;
        }
        Some(Self {
            caller: principal.clone(),
            query: req.query.clone(),
            operation: req.operation_name.clone(),
            variables,
        })
    }
}

/// What the parsed document says about an answer (see [`PlanExtension`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Every operation is a query over [`CACHEABLE_ROOTS`].
    cacheable: bool,
    /// The workflow of a document whose one data field is `workflow(id)`.
    workflow: Option<WorkflowId>,
    classes: Vec<OperationClass>,
    /// The operation's name label for the request-duration metric.
    name: String,
}

impl Plan {
    fn of(doc: &ExecutableDocument, variables: &Variables) -> Self {
        let mut cacheable = true;
        let mut fields = Vec::new();
        for (_, op) in doc.operations.iter() {
            let start = fields.len();
            root_fields(doc, &op.node.selection_set.node, &mut Vec::new(), &mut fields);
            cacheable &= op.node.ty == OperationType::Query
                && fields[start..].iter().all(|f| CACHEABLE_ROOTS.contains(&f.name.node.as_str()));
        }
        let data: Vec<_> = fields.iter().filter(|f| f.name.node != "__typename").collect();
        let workflow = match (cacheable, doc.operations.iter().count(), data.as_slice()) {
            (true, 1, [f]) if f.name.node == "workflow" => workflow_arg(f, variables),
            _ => None,
        };
        let name = crate::metrics::label(doc.operations.iter().next().and_then(|(n, _)| n.map(|n| n.as_str())));
        Self { cacheable, workflow, classes: classify(doc), name }
    }
}

/// The `id` argument of a `workflow` field, literal or variable.
fn workflow_arg(field: &Field, variables: &Variables) -> Option<WorkflowId> {
    let value = field.get_argument("id")?.node.clone().into_const_with(|name| variables.get(&name).cloned().ok_or(()));
    match value.ok()? {
        Value::String(id) => id.parse().ok(),
        _ => None,
    }
}

/// What a kept answer's freshness is checked against.
#[derive(Clone)]
pub enum Freshness {
    /// The SQLite file's WAL-index header (embedded default).
    File(Arc<SnapshotCache>),
    /// The workflow's copy in the shared read cache (production stack with Redis, no read replica).
    Workflow(Engine),
}

/// The state an answer was computed from: the file's header read before its execution, or the sequence of the
/// workflow record its execution read first.
#[derive(Clone, Debug, PartialEq)]
enum Version {
    File(Stamp),
    Workflow(WorkflowId, i64),
}

impl Freshness {
    /// The version of what `plan`'s answer will read, read before any resolver runs; `None` when it is not to be
    /// kept or (shared cache) when the resolver reports it.
    fn version_before(&self, plan: &Plan) -> Option<Version> {
        match self {
            Self::File(snapshot) if plan.cacheable => snapshot.stamp().map(Version::File),
            _ => None,
        }
    }

    /// The version of an executed answer: the one read before, or (shared cache) the single workflow record its
    /// resolver read, when that is the workflow the plan names.
    fn version_after(&self, plan: &Plan, before: Option<&Version>, read: &[(WorkflowId, i64)]) -> Option<Version> {
        match (self, read) {
            (Self::File(_), _) => before.cloned(),
            (Self::Workflow(_), [(id, seq)]) if plan.workflow == Some(*id) => Some(Version::Workflow(*id, *seq)),
            (Self::Workflow(_), _) => None,
        }
    }

    /// Whether the state is still `version`.
    async fn unchanged(&self, version: &Version) -> bool {
        match (self, version) {
            (Self::File(snapshot), Version::File(stamp)) => snapshot.stamp().as_ref() == Some(stamp),
            (Self::Workflow(engine), Version::Workflow(id, seq)) => engine.cached_sequence(*id).await == Some(*seq),
            _ => false,
        }
    }
}

/// The slot a request's plan and version are written to (request data).
#[derive(Clone)]
pub struct PlanSlot {
    freshness: Freshness,
    out: Arc<OnceLock<(Plan, Option<Version>)>>,
    /// Workflow records the resolvers read, with their sequence.
    reads: Arc<Mutex<Vec<(WorkflowId, i64)>>>,
}

impl PlanSlot {
    /// Reports a workflow record a resolver read (its first read of the workflow's state; anything it reads for
    /// the answer afterwards is no older).
    pub fn read(&self, id: WorkflowId, last_sequence: i64) {
        if let Ok(mut reads) = self.reads.lock()
            && !reads.contains(&(id, last_sequence))
        {
            reads.push((id, last_sequence));
        }
    }
}

/// Writes the plan of a request carrying a [`PlanSlot`] once its document is parsed, with the SQLite file's version
/// (read here, before any resolver runs).
pub struct PlanExtension;

impl ExtensionFactory for PlanExtension {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PlanExtension)
    }
}

#[async_trait::async_trait]
impl Extension for PlanExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        if let Some(slot) = ctx.data_opt::<PlanSlot>() {
            let plan = Plan::of(&doc, variables);
            let version = slot.freshness.version_before(&plan);
            let _ = slot.out.set((plan, version));
        }
        Ok(doc)
    }
}

struct Entry {
    version: Version,
    classes: Vec<OperationClass>,
    name: String,
    body: Bytes,
    /// Bytes counted against `MAX_BYTES` (body and key).
    size: usize,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, Arc<Entry>>,
    bytes: usize,
}

/// See the module documentation.
pub struct ResponseCache {
    freshness: Freshness,
    limiter: Arc<dyn RateLimiter>,
    quotas: Quotas,
    entries: Mutex<Entries>,
}

/// A request on its way through the cache.
pub enum Lookup {
    /// The answer, ready to send.
    Hit(Response),
    /// Execute it with the slot in its data, then hand the answer to [`ResponseCache::keep`].
    Miss(Pending),
}

/// A missed request: its key and the slot its plan is written to.
pub struct Pending {
    key: Key,
    pub slot: PlanSlot,
}

impl ResponseCache {
    /// The cache of an engine: on the embedded default's file, or over the shared read cache when there is one.
    pub fn for_engine(engine: &Engine, limiter: Arc<dyn RateLimiter>, quotas: Quotas) -> Option<Self> {
        let freshness = match engine.snapshot() {
            Some(snapshot) => Freshness::File(snapshot),
            // Task lists are read from the read pool: a lagging replica could pair a fresh workflow copy with old
            // tasks, and such an answer would be kept until the workflow changes again.
            None if engine.shared_cache().is_some() && !engine.store().database().replica_reads() => {
                Freshness::Workflow(engine.clone())
            }
            None => return None,
        };
        Some(Self { freshness, limiter, quotas, entries: Mutex::default() })
    }

    /// The kept answer to `key` if what it read is unchanged; a hit is charged to the caller's rate limits like
    /// the call it repeats.
    pub async fn lookup(&self, key: Key, caller: &Caller, media: Media) -> Lookup {
        let started = Instant::now();
        let kept = self.entries.lock().ok().and_then(|entries| entries.map.get(&key).cloned());
        let fresh = match &kept {
            Some(entry) => self.freshness.unchanged(&entry.version).await,
            None => false,
        };
        let (Some(entry), true) = (kept, fresh) else {
            let slot = PlanSlot { freshness: self.freshness.clone(), out: Arc::default(), reads: Arc::default() };
            return Lookup::Miss(Pending { key, slot });
        };
        if let Err(refused) = ratelimit::charge(self.limiter.as_ref(), &self.quotas, &entry.classes, caller).await {
            return Lookup::Hit(respond(async_graphql::Response::from_errors(vec![refused]), media));
        }
        metrics::histogram!("taskorch_graphql_request_duration_seconds", "type" => "query", "name" => entry.name.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("taskorch_graphql_cached_answers_total").increment(1);
        Lookup::Hit(media.label(entry.body.clone().into_response()))
    }

    /// Keeps the answer of a missed request when its plan allows and it has no errors, and returns the HTTP
    /// response either way.
    pub fn keep(&self, pending: Pending, resp: async_graphql::Response, media: Media) -> Response {
        let keepable = resp.is_ok() && resp.http_headers.is_empty() && resp.cache_control.value().is_none();
        let Some((plan, before)) = pending.slot.out.get().filter(|_| keepable) else {
            return respond(resp, media);
        };
        let reads = pending.slot.reads.lock().map(|r| r.clone()).unwrap_or_default();
        let Some(version) = pending.slot.freshness.version_after(plan, before.as_ref(), &reads) else {
            return respond(resp, media);
        };
        let Ok(body) = serde_json::to_vec(&resp) else { return respond(resp, media) };
        let body = Bytes::from(body);
        if body.len() <= MAX_ENTRY_BYTES
            && let Ok(mut entries) = self.entries.lock()
        {
            if entries.map.len() >= MAX_ENTRIES || entries.bytes + body.len() + pending.key.bytes() > MAX_BYTES {
                entries.map.clear();
                entries.bytes = 0;
            }
            let size = body.len() + pending.key.bytes();
            entries.bytes += size;
            let entry =
                Entry { version, classes: plan.classes.clone(), name: plan.name.clone(), body: body.clone(), size };
            if let Some(old) = entries.map.insert(pending.key, Arc::new(entry)) {
                entries.bytes -= old.size;
            }
        }
        media.label(body.into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0192f0c4-8a3e-7000-8000-000000000001";

    fn plan(q: &str) -> Plan {
        let vars = Variables::from_json(serde_json::json!({ "id": ID }));
        Plan::of(&async_graphql::parser::parse_query(q).expect("parses"), &vars)
    }

    #[test]
    fn only_documents_that_read_workflows_are_kept() {
        assert!(plan("query Hot($id: ID!) { workflow(id: $id) { status tasks { key status } } }").cacheable);
        assert!(plan("{ workflows { edges { node { id } } } __typename }").cacheable);
        assert!(plan("{ ... on Query { workflow(id: \"x\") { id } } }").cacheable);
        assert!(!plan("{ me { email } }").cacheable, "identity reads are not kept");
        assert!(!plan("{ workflow(id: \"x\") { id } ...F } fragment F on Query { apiKeys { id } }").cacheable);
        assert!(!plan("mutation { cancelWorkflow(id: \"x\") { id } }").cacheable);
        assert!(!plan("subscription { workflowEvents(workflowId: \"x\") { sequence } }").cacheable);
        assert!(!plan("query A { workflow(id: \"x\") { id } } query B { users { id } }").cacheable);
    }

    #[test]
    fn the_workflow_of_a_single_workflow_read_is_known_from_a_literal_or_a_variable() {
        let id: WorkflowId = ID.parse().expect("id");
        assert_eq!(plan("query($id: ID!) { workflow(id: $id) { status } }").workflow, Some(id));
        assert_eq!(plan(&format!("{{ __typename workflow(id: \"{ID}\") {{ status }} }}")).workflow, Some(id));
        assert_eq!(
            plan("query Q($id: ID!) { ...F } fragment F on Query { workflow(id: $id) { id } }").workflow,
            Some(id)
        );
        assert_eq!(plan("{ workflow(id: \"not-an-id\") { status } }").workflow, None);
        let two = format!("query($id: ID!) {{ a: workflow(id: $id) {{ id }} b: workflow(id: \"{ID}\") {{ id }} }}");
        assert_eq!(plan(&two).workflow, None, "two workflows read: no single version");
        assert_eq!(plan("query($id: ID!) { workflow(id: $id) { id } workflows { edges { cursor } } }").workflow, None);
        assert_eq!(plan("query($id: ID!) { workflow(id: $id) { id } me { email } }").workflow, None);
    }

    #[test]
    fn only_small_reads_by_an_authenticated_caller_get_a_key() {
        use crate::auth::Credential;
        use taskorch_domain::{Role, TenantId, UserId};
        use taskorch_engine::auth::Subject;
        let principal = Principal {
            tenant: TenantId::SYSTEM,
            role: Role::Viewer,
            subject: Subject::User(UserId(uuid::Uuid::nil())),
        };
        let caller = |credential| Caller { credential, ip: None, secret: None };
        let valid = caller(Credential::Valid(principal));
        let read = async_graphql::Request::new("{ workflows { edges { cursor } } }");
        assert!(Key::of(&valid, &read).is_some());
        assert!(Key::of(&caller(Credential::Missing), &read).is_none(), "anonymous calls are never kept");
        assert!(Key::of(&valid, &async_graphql::Request::new("mutation { x }")).is_none());
        let padded = format!("{{ workflows {{ edges {{ cursor }} }} }} #{}", "x".repeat(MAX_KEY_BYTES));
        assert!(Key::of(&valid, &async_graphql::Request::new(padded)).is_none(), "a padded document is not kept");
        let big = Variables::from_json(serde_json::json!({ "pad": "x".repeat(MAX_KEY_BYTES) }));
        assert!(Key::of(&valid, &read.variables(big)).is_none(), "nor are large variables");
    }

    #[test]
    fn a_plan_keeps_the_classes_and_name_a_hit_is_charged_and_timed_with() {
        let p = plan("query Hot { workflows { edges { cursor } } }");
        assert_eq!(p.classes, vec![OperationClass::List]);
        assert_eq!(p.name, "Hot");
        assert_eq!(plan("{ workflow(id: \"x\") { id } }").classes, vec![OperationClass::Read]);
    }
}

//! Response cache of hot reads on the embedded default. A query whose root fields only read workflows (`workflow`,
//! `workflows`) is answered with the bytes of an earlier identical answer while the SQLite file has not changed at
//! all: same caller (tenant, role, credential), same document, operation name and variables, and the same
//! WAL-index header as was read *before* the earlier execution started (`taskorch_engine::snapshot`), so a hit
//! never returns a state older than the file. A hit skips parsing, validation and execution, but not what a caller
//! would notice: it is rate-limited like the call it repeats (the operation classes are kept with the answer) and
//! timed in `taskorch_graphql_request_duration_seconds`. Only answers without errors are kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::{ServerResult, Variables};
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use taskorch_domain::ratelimit::{OperationClass, Quotas};
use taskorch_engine::auth::Principal;
use taskorch_engine::ratelimit::RateLimiter;
use taskorch_engine::snapshot::{SnapshotCache, Stamp};

use crate::auth::Caller;
use crate::graphql::ratelimit::{self, classify, root_fields};

/// Root fields whose answer is a function of the database and the caller alone.
const CACHEABLE_ROOTS: [&str; 3] = ["workflow", "workflows", "__typename"];
/// Most answers kept; the map is emptied when it reaches either bound.
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: usize = 32 * 1024 * 1024;
/// Larger answers are not kept.
const MAX_ENTRY_BYTES: usize = 256 * 1024;

/// What identifies an answer besides the database state.
#[derive(Hash, PartialEq, Eq)]
pub struct Key {
    caller: Principal,
    query: String,
    operation: Option<String>,
    variables: String,
}

impl Key {
    /// The key of a plain request (no uploads or request extensions) by an authenticated caller.
    pub fn of(caller: &Caller, req: &async_graphql::Request) -> Option<Self> {
        let principal = caller.principal()?;
        // Mutations are never kept: no need to build their key (the plan decides for anything else).
        if req.query.trim_start().starts_with("mutation") || !req.uploads.is_empty() || !req.extensions.is_empty() {
            return None;
        }
        Some(Self {
            caller: principal.clone(),
            query: req.query.clone(),
            operation: req.operation_name.clone(),
            variables: serde_json::to_string(&req.variables).ok()?,
        })
    }
}

/// What the parsed document says about an answer, filled in during execution (see [`PlanExtension`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    cacheable: bool,
    classes: Vec<OperationClass>,
    /// The operation's name label for the request-duration metric.
    name: String,
}

impl Plan {
    fn of(doc: &ExecutableDocument) -> Self {
        let cacheable = doc.operations.iter().all(|(_, op)| {
            let mut roots = Vec::new();
            root_fields(doc, &op.node.selection_set.node, &mut Vec::new(), &mut roots);
            op.node.ty == OperationType::Query && roots.iter().all(|r| CACHEABLE_ROOTS.contains(r))
        });
        let name = crate::metrics::label(doc.operations.iter().next().and_then(|(n, _)| n.map(|n| n.as_str())));
        Self { cacheable, classes: classify(doc), name }
    }
}

/// The slot a request's [`Plan`] is written to (request data).
#[derive(Clone, Default)]
pub struct PlanSlot(Arc<OnceLock<Plan>>);

/// Writes the [`Plan`] of a request carrying a [`PlanSlot`] once its document is parsed.
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
            let _ = slot.0.set(Plan::of(&doc));
        }
        Ok(doc)
    }
}

struct Entry {
    stamp: Stamp,
    classes: Vec<OperationClass>,
    name: String,
    body: Bytes,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, Arc<Entry>>,
    bytes: usize,
}

/// See the module documentation.
pub struct ResponseCache {
    snapshot: Arc<SnapshotCache>,
    limiter: Arc<dyn RateLimiter>,
    quotas: Quotas,
    entries: Mutex<Entries>,
}

/// A request on its way through the cache.
pub enum Lookup {
    /// The answer, ready to send.
    Hit(Response),
    /// Execute it, then hand the answer to [`ResponseCache::keep`].
    Miss(Pending),
}

/// A missed request: its key, the header read before execution and the slot its plan is written to.
pub struct Pending {
    key: Key,
    stamp: Option<Stamp>,
    pub slot: PlanSlot,
}

impl ResponseCache {
    pub fn new(snapshot: Arc<SnapshotCache>, limiter: Arc<dyn RateLimiter>, quotas: Quotas) -> Self {
        Self { snapshot, limiter, quotas, entries: Mutex::default() }
    }

    /// The kept answer to `key` if the database is unchanged since it was computed; a hit is charged to the
    /// caller's rate limits like the call it repeats.
    pub async fn lookup(&self, key: Key, caller: &Caller) -> Lookup {
        let started = Instant::now();
        let stamp = self.snapshot.stamp();
        let hit = stamp.and_then(|now| {
            let entries = self.entries.lock().ok()?;
            entries.map.get(&key).filter(|e| e.stamp == now).cloned()
        });
        let Some(entry) = hit else { return Lookup::Miss(Pending { key, stamp, slot: PlanSlot::default() }) };
        if let Err(refused) = ratelimit::charge(self.limiter.as_ref(), &self.quotas, &entry.classes, caller).await {
            return Lookup::Hit(crate::app::respond_single(async_graphql::Response::from_errors(vec![refused])));
        }
        metrics::histogram!("taskorch_graphql_request_duration_seconds", "type" => "query", "name" => entry.name.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("taskorch_graphql_cached_answers_total").increment(1);
        Lookup::Hit(json(entry.body.clone()))
    }

    /// Keeps the answer of a missed request when its document only reads and it has no errors, and returns the
    /// HTTP response either way.
    pub fn keep(&self, pending: Pending, resp: async_graphql::Response) -> Response {
        let plan = pending.slot.0.get();
        let keepable = resp.is_ok() && resp.http_headers.is_empty() && resp.cache_control.value().is_none();
        let (Some(stamp), Some(plan), true) = (pending.stamp, plan, keepable) else {
            return crate::app::respond_single(resp);
        };
        if !plan.cacheable {
            return crate::app::respond_single(resp);
        }
        let Ok(body) = serde_json::to_vec(&resp) else { return crate::app::respond_single(resp) };
        let body = Bytes::from(body);
        if body.len() <= MAX_ENTRY_BYTES
            && let Ok(mut entries) = self.entries.lock()
        {
            if entries.map.len() >= MAX_ENTRIES || entries.bytes + body.len() > MAX_BYTES {
                entries.map.clear();
                entries.bytes = 0;
            }
            entries.bytes += body.len();
            let entry = Entry { stamp, classes: plan.classes.clone(), name: plan.name.clone(), body: body.clone() };
            if let Some(old) = entries.map.insert(pending.key, Arc::new(entry)) {
                entries.bytes -= old.body.len();
            }
        }
        json(body)
    }
}

/// A GraphQL answer as async-graphql's axum integration sends it.
fn json(body: Bytes) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/graphql-response+json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(q: &str) -> Plan {
        Plan::of(&async_graphql::parser::parse_query(q).expect("parses"))
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
    fn a_plan_keeps_the_classes_and_name_a_hit_is_charged_and_timed_with() {
        let p = plan("query Hot { workflows { edges { cursor } } }");
        assert_eq!(p.classes, vec![OperationClass::List]);
        assert_eq!(p.name, "Hot");
        assert_eq!(plan("{ workflow(id: \"x\") { id } }").classes, vec![OperationClass::Read]);
    }
}

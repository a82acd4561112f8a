//! Field errors where the GraphQL spec puts them, each with an `extensions.code`.
//!
//! async-graphql leaves a field that failed out of its parent object altogether: `{ workflow(id: …) { id } }` for
//! an unknown id answered `{"data": null, …}`, and beside another root field the key was simply missing. The spec
//! (and every client cache) wants the field present: a nullable field that failed is `null`, and a non-null field
//! that failed makes its nearest nullable ancestor `null` — or `data` itself when there is none.
//!
//! Errors that reach a resolver without a code get one: a value that does not parse as its scalar (a `DateTime`
//! that is not RFC 3339) is `VALIDATION_FAILED`, like any other bad input; anything else is `INTERNAL`. A
//! subscription sent over HTTP is `BAD_REQUEST`, naming the WebSocket endpoint.

use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute, NextResolve, ResolveInfo};
use async_graphql::{PathSegment, QueryPathNode, QueryPathSegment, Response, ServerError, ServerResult, Value};

use crate::error::{code, with_code};

/// The extension (see the module documentation).
pub struct FieldErrors;

impl ExtensionFactory for FieldErrors {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Placed::default())
    }
}

#[derive(Default)]
struct Placed {
    /// Whether an execution (query or mutation) is running: a subscription's items are left as they are.
    executing: std::sync::atomic::AtomicBool,
    /// Errors of nullable fields answered `null`, added to the response when the execution ends.
    errors: Mutex<Vec<ServerError>>,
    /// Whether a non-null field failed in this execution (then `pending` is looked at).
    failed: std::sync::atomic::AtomicBool,
    /// Paths of failed non-null fields whose nearest nullable ancestor has not finished yet.
    pending: Mutex<Vec<Vec<PathSegment>>>,
}

/// The code an error without one gets, from what async-graphql says.
fn coded(mut e: ServerError) -> ServerError {
    if e.extensions.as_ref().is_some_and(|ext| ext.get("code").is_some()) {
        return e;
    }
    let code = if e.message.starts_with("Failed to parse") || e.message.starts_with("Invalid value") {
        code::VALIDATION_FAILED
    } else if e.message.starts_with("Subscriptions are not supported") {
        e.message = "A subscription runs over WebSocket (graphql-transport-ws at /graphql/ws), not HTTP.".into();
        code::BAD_REQUEST
    } else {
        code::INTERNAL
    };
    with_code(e, code)
}

/// Whether `node` (a field's path) is a strict prefix of `path`.
fn is_ancestor(node: &QueryPathNode<'_>, path: &[PathSegment]) -> bool {
    let mut segments = Vec::new();
    let mut at = Some(node);
    while let Some(n) = at {
        segments.push(n.segment);
        at = n.parent;
    }
    segments.len() < path.len()
        && segments.iter().rev().zip(path).all(|(s, p)| match (s, p) {
            (QueryPathSegment::Name(a), PathSegment::Field(b)) => *a == b,
            (QueryPathSegment::Index(a), PathSegment::Index(b)) => a == b,
            _ => false,
        })
}

impl Placed {
    /// Takes the pending failures below `node`, if there are any.
    fn absorb(&self, node: &QueryPathNode<'_>) -> bool {
        if !self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            return false; // no non-null field failed: nothing to look up
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let before = pending.len();
        pending.retain(|path| !is_ancestor(node, path));
        pending.len() != before
    }
}

#[async_trait::async_trait]
impl Extension for Placed {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        self.executing.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut resp = next.run(ctx, operation_name).await;
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if !pending.is_empty() {
            // A non-null root field failed: the spec's answer is `data: null`.
            resp.data = Value::Null;
        }
        resp.errors.extend(self.errors.lock().unwrap_or_else(PoisonError::into_inner).drain(..));
        resp.errors = std::mem::take(&mut resp.errors).into_iter().map(coded).collect();
        resp
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if !self.executing.load(std::sync::atomic::Ordering::Relaxed) {
            return next.run(ctx, info).await;
        }
        let node = info.path_node;
        let nullable = !info.return_type.ends_with('!');
        match next.run(ctx, info).await {
            Err(e) if nullable => {
                self.errors.lock().unwrap_or_else(PoisonError::into_inner).push(coded(e));
                Ok(None)
            }
            Err(e) => {
                self.failed.store(true, std::sync::atomic::Ordering::Relaxed);
                self.pending.lock().unwrap_or_else(PoisonError::into_inner).push(e.path.clone());
                Err(coded(e))
            }
            Ok(_) if nullable && self.absorb(node) => Ok(None),
            Ok(value) => Ok(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::{EmptyMutation, EmptySubscription, Error, Object, Result, Schema, SimpleObject};
    use serde_json::{Value, json};

    use super::FieldErrors;

    struct Query;

    #[derive(SimpleObject)]
    #[graphql(complex)]
    struct Item {
        n: i32,
    }

    #[async_graphql::ComplexObject]
    impl Item {
        async fn bad(&self) -> Result<i32> {
            Err(Error::new("no"))
        }
        async fn maybe(&self) -> Result<Option<i32>> {
            Err(Error::new("no"))
        }
    }

    #[Object]
    impl Query {
        async fn ok(&self) -> i32 {
            1
        }
        async fn nullable(&self) -> Result<Option<i32>> {
            Err(Error::new("gone"))
        }
        async fn required(&self) -> Result<i32> {
            Err(Error::new("broken"))
        }
        async fn item(&self) -> Option<Item> {
            Some(Item { n: 1 })
        }
        async fn items(&self) -> Option<Vec<Item>> {
            Some(vec![Item { n: 1 }, Item { n: 2 }])
        }
        async fn stamp(&self, at: chrono::DateTime<chrono::Utc>) -> String {
            at.to_rfc3339()
        }
    }

    async fn run(query: &str) -> (Value, Vec<(Value, String)>) {
        let schema = Schema::build(Query, EmptyMutation, EmptySubscription).extension(FieldErrors).finish();
        let resp = serde_json::to_value(schema.execute(query).await).expect("json");
        let errors = resp["errors"].as_array().cloned().unwrap_or_default();
        let errors = errors
            .into_iter()
            .map(|e| (e["path"].clone(), e["extensions"]["code"].as_str().unwrap_or_default().to_owned()))
            .collect();
        (resp["data"].clone(), errors)
    }

    #[tokio::test]
    async fn a_failed_nullable_field_is_null_beside_the_others_with_a_coded_error() {
        let (data, errors) = run("{ ok a: nullable }").await;
        assert_eq!(data, json!({ "ok": 1, "a": null }));
        assert_eq!(errors, [(json!(["a"]), "INTERNAL".to_owned())]);
        let (data, errors) = run("{ item { n maybe } }").await;
        assert_eq!(data, json!({ "item": { "n": 1, "maybe": null } }));
        assert_eq!(errors, [(json!(["item", "maybe"]), "INTERNAL".to_owned())]);
    }

    #[tokio::test]
    async fn a_failed_non_null_field_nulls_its_nearest_nullable_ancestor_or_data() {
        let (data, errors) = run("{ ok item { n bad } }").await;
        assert_eq!(data, json!({ "ok": 1, "item": null }));
        assert_eq!(errors.len(), 1);
        // An item of a list of non-null items takes the whole (nullable) list with it.
        let (data, errors) = run("{ ok items { n bad } }").await;
        assert_eq!(data, json!({ "ok": 1, "items": null }));
        assert_eq!(errors.len(), 2, "both items failed");
        let (data, errors) = run("{ ok required }").await;
        assert_eq!(data, Value::Null);
        assert_eq!(errors, [(json!(["required"]), "INTERNAL".to_owned())]);
    }

    #[tokio::test]
    async fn a_value_that_does_not_parse_as_its_scalar_is_validation_failed() {
        let (data, errors) = run("{ ok stamp(at: \"not a date\") }").await;
        assert_eq!(data, Value::Null);
        assert_eq!(errors, [(json!(["stamp"]), "VALIDATION_FAILED".to_owned())]);
        let (data, _) = run("{ stamp(at: \"2026-11-28T00:00:00Z\") }").await;
        assert_eq!(data, json!({ "stamp": "2026-11-28T00:00:00+00:00" }));
    }
}

//! Rate limits per operation class, applied after parsing (the class comes from the document): per credential,
//! and per client address for login, token refresh and anonymous calls. A refusal is `RATE_LIMITED` with
//! `retryAfter` (seconds) in its extensions; over HTTP the answer is 429 with a `Retry-After` header.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection};
use async_graphql::{ServerError, ServerResult, Variables};
use taskorch_domain::ratelimit::{Decision, OperationClass};
use taskorch_engine::ratelimit::RateLimiter;

use crate::auth::Caller;
use crate::error::code;

/// Root fields that list (the seed's "listing" class).
const LIST_FIELDS: [&str; 4] = ["workflows", "users", "apiKeys", "tenants"];
/// Root fields open to anyone, limited per client address.
const LOGIN_FIELDS: [&str; 2] = ["login", "refreshToken"];

/// The class of a document's operations (the strictest wins when a document holds several).
pub fn classify(doc: &ExecutableDocument) -> OperationClass {
    let mut class = OperationClass::Read;
    for (_, op) in doc.operations.iter() {
        let roots: Vec<&str> = op
            .node
            .selection_set
            .node
            .items
            .iter()
            .filter_map(|s| match &s.node {
                Selection::Field(f) => Some(f.node.name.node.as_str()),
                _ => None,
            })
            .collect();
        let this = match op.node.ty {
            OperationType::Subscription => OperationClass::Subscribe,
            OperationType::Mutation if !roots.is_empty() && roots.iter().all(|r| LOGIN_FIELDS.contains(r)) => {
                OperationClass::Login
            }
            OperationType::Mutation => OperationClass::Write,
            OperationType::Query if roots.iter().any(|r| LIST_FIELDS.contains(r)) => OperationClass::List,
            OperationType::Query => OperationClass::Read,
        };
        if this == OperationClass::Login || class == OperationClass::Read {
            class = this;
        }
    }
    class
}

/// The error of a refused call.
pub fn limited(class: OperationClass, retry_after_ms: u64) -> ServerError {
    let secs = retry_after_ms.div_ceil(1000).max(1);
    let mut err = ServerError::new(
        format!("rate limit exceeded for {class} operations; retry after {secs} s (TASKORCH_RATE_LIMITS)"),
        None,
    );
    let mut ext = async_graphql::ErrorExtensionValues::default();
    ext.set("code", code::RATE_LIMITED);
    ext.set("class", class.as_str());
    ext.set("retryAfter", secs);
    ext.set("retryAfterMs", retry_after_ms);
    err.extensions = Some(ext);
    err
}

pub struct RateLimits(pub Arc<dyn RateLimiter>);

impl ExtensionFactory for RateLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Limiter(self.0.clone()))
    }
}

struct Limiter(Arc<dyn RateLimiter>);

#[async_trait::async_trait]
impl Extension for Limiter {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        let class = classify(&doc);
        let caller = ctx.data_opt::<Caller>();
        let subject = match (class, caller) {
            (OperationClass::Login, Some(c)) => {
                c.ip.map(|ip| format!("ip:{ip}")).unwrap_or_else(|| "ip:unknown".into())
            }
            (_, Some(c)) => c.rate_subject(),
            (_, None) => return Ok(doc), // in-process callers (tests of the schema) carry no caller
        };
        if let Decision::Limited { retry_after_ms } = self.0.check(class, &subject).await {
            metrics::counter!("taskorch_rate_limited_total", "class" => class.as_str()).increment(1);
            return Err(limited(class, retry_after_ms));
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(q: &str) -> OperationClass {
        classify(&async_graphql::parser::parse_query(q).unwrap())
    }

    #[test]
    fn operations_are_classified_by_type_and_root_fields() {
        assert_eq!(class("{ workflows { edges { node { id } } } }"), OperationClass::List);
        assert_eq!(class("query { workflow(id: \"x\") { id } }"), OperationClass::Read);
        assert_eq!(class("mutation { cancelWorkflow(id: \"x\") { id } }"), OperationClass::Write);
        assert_eq!(class("mutation { login(email: \"a\", password: \"b\") { accessToken } }"), OperationClass::Login);
        assert_eq!(
            class("mutation { login(email: \"a\", password: \"b\") { accessToken } x: submitWorkflow }"),
            OperationClass::Write
        );
        assert_eq!(class("subscription { events { sequence } }"), OperationClass::Subscribe);
    }
}

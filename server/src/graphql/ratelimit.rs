//! Rate limits per operation class, applied after parsing (the class comes from the document): per credential,
//! and per client address for login, token refresh and anonymous calls. A refusal is `RATE_LIMITED` with
//! `retryAfter` (seconds) in its extensions; over HTTP the answer is 429 with a `Retry-After` header.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Field, OperationType, Selection, SelectionSet};
use async_graphql::{ServerError, ServerResult, Variables};
use taskorch_domain::ratelimit::{Decision, OperationClass, Quota, Quotas};
use taskorch_engine::ratelimit::RateLimiter;

use crate::auth::Caller;
use async_graphql::ErrorExtensions;

use crate::error::{api_error, code, request_error};

/// Root fields that list (the seed's "listing" class).
const LIST_FIELDS: [&str; 4] = ["workflows", "users", "apiKeys", "tenants"];
/// Root fields open to anyone, limited per client address.
const LOGIN_FIELDS: [&str; 2] = ["login", "refreshToken"];

/// Root fields of a selection set, through inline fragments and fragment spreads.
pub fn root_fields<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    seen: &mut Vec<&'a str>,
    out: &mut Vec<&'a Field>,
) {
    for item in &set.items {
        match &item.node {
            Selection::Field(f) => out.push(&f.node),
            Selection::InlineFragment(f) => root_fields(doc, &f.node.selection_set.node, seen, out),
            Selection::FragmentSpread(s) => {
                let name = s.node.fragment_name.node.as_str();
                if seen.contains(&name) {
                    continue;
                }
                seen.push(name);
                if let Some(def) = doc.fragments.get(&s.node.fragment_name.node) {
                    root_fields(doc, &def.node.selection_set.node, seen, out);
                }
            }
        }
    }
}

/// The names of an operation's root fields.
pub fn root_names<'a>(doc: &'a ExecutableDocument, set: &'a SelectionSet) -> Vec<&'a str> {
    let mut fields = Vec::new();
    root_fields(doc, set, &mut Vec::new(), &mut fields);
    fields.into_iter().map(|f| f.name.node.as_str()).collect()
}

/// How many listings an operation makes: its distinct listing root fields (each alias is one more listing).
fn listings(doc: &ExecutableDocument, set: &SelectionSet) -> usize {
    let mut fields = Vec::new();
    root_fields(doc, set, &mut Vec::new(), &mut fields);
    let mut keys: Vec<&str> = fields
        .into_iter()
        .filter(|f| LIST_FIELDS.contains(&f.name.node.as_str()))
        .map(|f| f.alias.as_ref().unwrap_or(&f.name).node.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len()
}

/// The classes of a document's operations, one entry per call charged: a document holding several operations is
/// charged for each class, and a query listing several times (aliases) is charged one listing call for each.
pub fn classify(doc: &ExecutableDocument) -> Vec<OperationClass> {
    let mut classes = Vec::new();
    let mut most_listings = 0;
    for (_, op) in doc.operations.iter() {
        let roots = root_names(doc, &op.node.selection_set.node);
        if op.node.ty == OperationType::Query {
            most_listings = most_listings.max(listings(doc, &op.node.selection_set.node));
        }
        let class = match op.node.ty {
            OperationType::Subscription => OperationClass::Subscribe,
            OperationType::Mutation if !roots.is_empty() && roots.iter().all(|r| LOGIN_FIELDS.contains(r)) => {
                OperationClass::Login
            }
            OperationType::Mutation => OperationClass::Write,
            OperationType::Query if roots.iter().any(|r| LIST_FIELDS.contains(r)) => OperationClass::List,
            OperationType::Query => OperationClass::Read,
        };
        if !classes.contains(&class) {
            classes.push(class);
        }
    }
    classes.extend(std::iter::repeat_n(OperationClass::List, most_listings.saturating_sub(1)));
    classes
}

/// The error of a refused call.
pub fn limited(class: OperationClass, retry_after_ms: u64) -> ServerError {
    let secs = retry_after_ms.div_ceil(1000).max(1);
    let message = format!("rate limit exceeded for {class} operations; retry after {secs} s (TASKORCH_RATE_LIMITS)");
    request_error(api_error(code::RATE_LIMITED, message).extend_with(|_, e| {
        e.set("class", class.as_str());
        e.set("retryAfter", secs);
        e.set("retryAfterMs", retry_after_ms);
    }))
}

/// Authenticated calls are also charged to their client address, at this many times the per-credential quota
/// (so several keys on one host share a ceiling, while one key's limit does not touch the others).
const PER_ADDRESS_FACTOR: u32 = 10;

pub struct RateLimits {
    pub limiter: Arc<dyn RateLimiter>,
    pub quotas: Quotas,
}

impl ExtensionFactory for RateLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Limiter(self.limiter.clone(), self.quotas.clone()))
    }
}

struct Limiter(Arc<dyn RateLimiter>, Quotas);

/// The charges of one call of `class`: (subject, quota).
fn charges(quotas: &Quotas, class: OperationClass, caller: &Caller) -> Vec<(String, Quota)> {
    let quota = quotas.get(class);
    let address = format!("ip:{}", caller.ip.map(|ip| ip.to_string()).unwrap_or_else(|| "unknown".into()));
    match caller.principal() {
        Some(p) if class != OperationClass::Login => {
            vec![(p.rate_key(), quota), (address, quota.times(PER_ADDRESS_FACTOR))]
        }
        _ => vec![(address, quota)],
    }
}

/// Charges `caller` for one call of each of `classes`; the first refusal is the error. A call answered from the
/// response cache (`crate::hot`) is charged here exactly as a parsed one.
pub async fn charge(
    limiter: &dyn RateLimiter,
    quotas: &Quotas,
    classes: &[OperationClass],
    caller: &Caller,
) -> Result<(), ServerError> {
    for &class in classes {
        for (subject, quota) in charges(quotas, class, caller) {
            if let Decision::Limited { retry_after_ms } = limiter.check(class, &subject, quota).await {
                metrics::counter!("taskorch_rate_limited_total", "class" => class.as_str()).increment(1);
                return Err(limited(class, retry_after_ms));
            }
        }
    }
    Ok(())
}

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
        // In-process callers (tests of the schema) carry no caller.
        let Some(caller) = ctx.data_opt::<Caller>() else { return Ok(doc) };
        charge(self.0.as_ref(), &self.1, &classify(&doc), caller).await?;
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(q: &str) -> OperationClass {
        let classes = classify(&async_graphql::parser::parse_query(q).unwrap());
        assert_eq!(classes.len(), 1, "{classes:?}");
        classes[0]
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

    #[test]
    fn every_aliased_listing_is_charged_as_one_call() {
        let doc = async_graphql::parser::parse_query(
            "{ a: workflows { nodes { id } } b: workflows(first: 5) { nodes { id } } workflows { nodes { id } } \
               workflows { pageInfo { hasNextPage } } me { role } }",
        )
        .unwrap();
        assert_eq!(classify(&doc), vec![OperationClass::List; 3]);
    }

    #[test]
    fn fragments_and_several_operations_do_not_dodge_the_listing_class() {
        assert_eq!(class("{ ... on Query { workflows { edges { cursor } } } }"), OperationClass::List);
        assert_eq!(
            class("query { ...F } fragment F on Query { workflows { edges { cursor } } }"),
            OperationClass::List
        );
        let doc = async_graphql::parser::parse_query(
            "mutation A { login(email: \"a\", password: \"b\") { accessToken } } query B { workflows { edges { cursor } } }",
        )
        .unwrap();
        let classes = classify(&doc);
        assert!(
            classes.len() == 2 && classes.contains(&OperationClass::Login) && classes.contains(&OperationClass::List)
        );
    }
}

//! Request errors: what makes a request fail before any resolver runs gets an `extensions.code`, and a request
//! that names its operation or variables wrongly fails as a whole.
//!
//! - A syntax error is `GRAPHQL_PARSE_FAILED`; a document that does not validate against the schema (unknown
//!   field, wrong argument or variable type…) is `GRAPHQL_VALIDATION_FAILED`.
//! - The operation is chosen before anything runs: an unknown `operationName`, or several operations and none
//!   named, is `GRAPHQL_VALIDATION_FAILED`.
//! - Variables are coerced before anything runs, as the GraphQL spec says: a required (`!`) variable without a
//!   default that is missing or null fails the request (`GRAPHQL_VALIDATION_FAILED`). async-graphql looked them
//!   up field by field, so `mutation($id: ID!) { submitWorkflow(…) { id } cancelWorkflow(id: $id) { id } }`
//!   without `id` submitted the workflow and only then failed.
//! - A subscription selects exactly one root field (the spec's "single root field" rule).
//!
//! Such a response has `data: null` and errors without a `path`; [`is_request_error`] tells it apart, so HTTP can
//! answer it as a request error and graphql-transport-ws with an `error` message.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest, NextValidation,
};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationDefinition, OperationType};
use async_graphql::{Positioned, Request, ServerError, ServerResult, ValidationResult, Value, Variables};

use crate::error::{code, with_code};

/// The `operationName` of the request, kept for the check after parsing (the parse hook does not receive it).
struct OperationName(Option<String>);

/// The extension (see the module documentation).
pub struct RequestChecks;

impl ExtensionFactory for RequestChecks {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestChecks)
    }
}

fn failed(message: String, pos: Option<async_graphql::Pos>) -> ServerError {
    with_code(ServerError::new(message, pos), code::GRAPHQL_VALIDATION_FAILED)
}

/// A parser message (`--> 1:14 | … = expected selection`) as one line: `Syntax Error: expected selection`.
fn syntax_message(message: &str) -> String {
    match message.rsplit_once("= ") {
        Some((_, what)) if message.contains("-->") => format!("Syntax Error: {}", what.trim()),
        _ => message.to_owned(),
    }
}

/// The operation a request runs, or why none can be chosen.
pub fn operation<'d>(
    doc: &'d ExecutableDocument,
    name: Option<&str>,
) -> Result<&'d Positioned<OperationDefinition>, ServerError> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(op), None) => Ok(op),
        (DocumentOperations::Single(_), Some(name)) => {
            Err(failed(format!("Unknown operation named \"{name}\": the document's only operation has no name."), None))
        }
        (DocumentOperations::Multiple(ops), Some(name)) => {
            ops.get(name).ok_or_else(|| failed(format!("Unknown operation named \"{name}\"."), None))
        }
        (DocumentOperations::Multiple(ops), None) => {
            let mut all = ops.values();
            match (all.next(), all.next()) {
                (Some(op), None) => Ok(op),
                _ => Err(failed(
                    "The document has several operations: name the one to run (operationName).".into(),
                    None,
                )),
            }
        }
    }
}

/// The request errors of running `op` with `variables`: required variables missing or null, a subscription with
/// other than one root field.
pub fn check_operation(op: &Positioned<OperationDefinition>, variables: &Variables) -> Vec<ServerError> {
    let mut errors = Vec::new();
    for def in &op.node.variable_definitions {
        let def = &def.node;
        if let Some(value) = variables.get(&def.name.node)
            && let Some(problem) = scalar_problem(&def.var_type.node, value)
        {
            let name = &def.name.node;
            errors.push(failed(format!("Variable \"${name}\" got an invalid value: {problem}."), Some(def.name.pos)));
            continue;
        }
        if def.var_type.node.nullable || def.default_value.is_some() {
            continue;
        }
        let (name, ty) = (&def.name.node, &def.var_type.node);
        match variables.get(name) {
            None => errors.push(failed(
                format!("Variable \"${name}\" of required type \"{ty}\" was not provided."),
                Some(def.name.pos),
            )),
            Some(Value::Null) => errors.push(failed(
                format!("Variable \"${name}\" of non-null type \"{ty}\" must not be null."),
                Some(def.name.pos),
            )),
            Some(_) => {}
        }
    }
    if op.node.ty == OperationType::Subscription && op.node.selection_set.node.items.len() != 1 {
        errors.push(failed("A subscription must select exactly one top level field.".into(), Some(op.pos)));
    }
    errors
}

/// The first invalid directive on a `__typename` field: async-graphql's validation does not look at them, and
/// `{ __typename @include(if: "x") }` answered `data: null` without an error. Only `@include` and `@skip` with a
/// Boolean (or variable) `if` apply to a field.
pub fn check_typename_directives(doc: &ExecutableDocument) -> Option<ServerError> {
    use async_graphql::parser::types::{Directive, Selection, SelectionSet};
    fn check(d: &Positioned<Directive>) -> Option<ServerError> {
        let name = d.node.name.node.as_str();
        if name != "include" && name != "skip" {
            return Some(failed(format!("Unknown directive \"@{name}\" on field \"__typename\"."), Some(d.pos)));
        }
        match d.node.arguments.as_slice() {
            [(arg, value)]
                // A value with a variable has no constant form; the variable's own type is checked elsewhere.
                if arg.node == "if"
                    && matches!(value.node.clone().into_const(), None | Some(async_graphql::Value::Boolean(_))) =>
            {
                None
            }
            _ => Some(failed(format!("Directive \"@{name}\" takes one argument \"if\" of type \"Boolean!\"."), Some(d.pos))),
        }
    }
    fn walk(set: &SelectionSet) -> Option<ServerError> {
        set.items.iter().find_map(|item| match &item.node {
            Selection::Field(f) if f.node.name.node == "__typename" => f.node.directives.iter().find_map(check),
            Selection::Field(f) => walk(&f.node.selection_set.node),
            Selection::InlineFragment(i) => walk(&i.node.selection_set.node),
            Selection::FragmentSpread(_) => None,
        })
    }
    let operations = doc.operations.iter().map(|(_, op)| &op.node.selection_set.node);
    let fragments = doc.fragments.values().map(|f| &f.node.selection_set.node);
    operations.chain(fragments).find_map(walk)
}

/// Why a variable's value is not a value of its type, for the scalars whose check async-graphql leaves to the
/// resolver (which made it a field error after other fields had run): `Int` is a 32-bit signed integer, `DateTime`
/// an RFC 3339 date and time. Lists are checked item by item.
fn scalar_problem(ty: &async_graphql::parser::types::Type, value: &Value) -> Option<String> {
    use async_graphql::parser::types::BaseType;
    match (&ty.base, value) {
        (_, Value::Null) => None,
        (BaseType::List(item), Value::List(items)) => items.iter().find_map(|v| scalar_problem(item, v)),
        (BaseType::List(item), single) => scalar_problem(item, single),
        (BaseType::Named(name), Value::Number(n)) if name.as_str() == "Int" => {
            let fits = n.as_i64().is_some_and(|i| i32::try_from(i).is_ok());
            (!fits).then(|| format!("Int is a 32-bit signed integer (-2147483648 to 2147483647), not {n}"))
        }
        (BaseType::Named(name), Value::String(text)) if name.as_str() == "DateTime" => {
            chrono::DateTime::parse_from_rfc3339(text)
                .err()
                .map(|_| format!("DateTime is an RFC 3339 date and time (2026-01-31T12:00:00Z), not \"{text}\""))
        }
        _ => None,
    }
}

/// Whether a response is a request error: nothing was executed (`data` null, no error has a path).
pub fn is_request_error(resp: &async_graphql::Response) -> bool {
    resp.data == Value::Null && !resp.errors.is_empty() && resp.errors.iter().all(|e| e.path.is_empty())
}

#[async_trait::async_trait]
impl Extension for RequestChecks {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // `"operationName": ""` names no operation (some clients send it for an anonymous one).
        request.operation_name = request.operation_name.filter(|n| !n.is_empty());
        let name = OperationName(request.operation_name.clone());
        next.run(ctx, request.data(name)).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await.map_err(|mut e| {
            if e.extensions.as_ref().is_none_or(|x| x.get("code").is_none()) {
                e.message = syntax_message(&e.message);
            }
            with_code(e, code::GRAPHQL_PARSE_FAILED)
        })?;
        let name = ctx.data_opt::<OperationName>().and_then(|n| n.0.as_deref());
        let op = operation(&doc, name)?;
        // One error per request here (async-graphql's hook returns one); the first is what the client fixes first.
        if let Some(first) = check_operation(op, variables).into_iter().next() {
            return Err(first);
        }
        if let Some(error) = check_typename_directives(&doc) {
            return Err(error);
        }
        Ok(doc)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx)
            .await
            .map_err(|errors| errors.into_iter().map(|e| with_code(e, code::GRAPHQL_VALIDATION_FAILED)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(query: &str, name: Option<&str>, vars: serde_json::Value) -> Vec<String> {
        let doc = async_graphql::parser::parse_query(query).expect("parses");
        match operation(&doc, name) {
            Err(e) => vec![e.message],
            Ok(op) => check_operation(op, &Variables::from_json(vars)).into_iter().map(|e| e.message).collect(),
        }
    }

    #[test]
    fn required_variables_must_be_given_and_not_null_unless_they_have_a_default() {
        let q = "query($a: ID!, $b: Int! = 3, $c: String) { __typename }";
        assert_eq!(errors(q, None, serde_json::json!({ "a": "x" })), Vec::<String>::new());
        assert_eq!(
            errors(q, None, serde_json::json!({})),
            ["Variable \"$a\" of required type \"ID!\" was not provided."]
        );
        assert_eq!(
            errors(q, None, serde_json::json!({ "a": null })),
            ["Variable \"$a\" of non-null type \"ID!\" must not be null."]
        );
    }

    #[test]
    fn int_and_datetime_variables_are_checked_before_anything_runs() {
        let q = "query($n: Int, $l: [Int!], $t: DateTime) { __typename }";
        assert!(
            errors(q, None, serde_json::json!({ "n": 2147483647, "l": [1, -2147483648], "t": "2026-11-28T00:00:00Z" }))
                .is_empty()
        );
        assert!(errors(q, None, serde_json::json!({ "n": 2147483648i64 }))[0].contains("32-bit"));
        assert!(errors(q, None, serde_json::json!({ "l": [1, 2.5] }))[0].contains("not 2.5"));
        assert!(errors(q, None, serde_json::json!({ "t": "yesterday" }))[0].contains("RFC 3339"));
        assert!(errors(q, None, serde_json::json!({ "n": null, "t": null })).is_empty());
    }

    #[test]
    fn directives_on_typename_are_checked_like_on_any_field() {
        let check = |q: &str| {
            let doc = async_graphql::parser::parse_query(q).expect("parses");
            check_typename_directives(&doc).map(|e| e.message)
        };
        assert_eq!(check("query($v: Boolean!) { __typename @include(if: $v) a: __typename @skip(if: false) }"), None);
        assert!(check("{ __typename @nope }").is_some_and(|m| m.contains("@nope")));
        assert!(check("{ __typename @include }").is_some_and(|m| m.contains("\"if\"")));
        assert!(check("{ me { __typename @include(if: \"x\") } }").is_some_and(|m| m.contains("Boolean")));
        assert!(check("query { ...F } fragment F on QueryRoot { __typename @skip(if: 1) }").is_some());
    }

    #[test]
    fn the_operation_is_chosen_by_name_or_is_the_only_one() {
        let two = "query A { __typename } query B { __typename }";
        assert!(errors(two, Some("B"), serde_json::json!({})).is_empty());
        assert_eq!(errors(two, Some("C"), serde_json::json!({})), ["Unknown operation named \"C\"."]);
        assert!(errors(two, None, serde_json::json!({}))[0].contains("several operations"));
        assert!(errors("query A { __typename }", None, serde_json::json!({})).is_empty());
        assert!(errors("{ __typename }", Some("A"), serde_json::json!({}))[0].starts_with("Unknown operation"));
    }

    #[test]
    fn a_subscription_selects_one_root_field() {
        let one = "subscription { events { sequence } }";
        assert!(errors(one, None, serde_json::json!({})).is_empty());
        let two = "subscription { a: events { sequence } b: events { sequence } }";
        assert_eq!(
            errors(two, None, serde_json::json!({})),
            ["A subscription must select exactly one top level field."]
        );
    }

    #[test]
    fn parser_messages_become_one_line() {
        let err = async_graphql::parser::parse_query("{ me { role }").expect_err("unbalanced");
        let message = syntax_message(&err.to_string());
        assert!(message.starts_with("Syntax Error: ") && !message.contains('\n'), "{message}");
    }
}

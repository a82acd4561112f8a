//! Abuse limits checked right after parsing, before validation or any resolver: selection depth, number of
//! fields (complexity, with fragments expanded), the field values they may resolve (cost: a field inside a list
//! whose size the query sets counts once per item) and number of aliases. Each refusal is `LIMIT_EXCEEDED` and
//! names the limit, its value and the setting that changes it.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, FragmentDefinition, Selection, SelectionSet};
use async_graphql::{Name, Positioned, ServerError, ServerResult, Value, Variables};

use async_graphql::ErrorExtensions;

use crate::error::{api_error, code, request_error};
use crate::security::DocumentLimits;

/// What a document asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shape {
    pub depth: usize,
    pub fields: usize,
    /// Field values the operation may resolve (see the module documentation).
    pub cost: usize,
    pub aliases: usize,
}

/// Fields returning a list whose size the query sets with `first`, and the size when it does not.
const SIZED_LISTS: [(&str, usize); 1] = [("workflows", 20)];
/// The largest `first` counted (larger ones are refused by the field itself).
const MAX_FIRST: usize = 1000;

struct Walk<'a> {
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
    variables: &'a Variables,
    limits: DocumentLimits,
    shape: Shape,
    stack: Vec<&'a Name>,
}

impl<'a> Walk<'a> {
    fn over(&self) -> bool {
        self.shape.depth > self.limits.max_depth
            || self.shape.fields > self.limits.max_complexity
            || self.shape.cost > self.limits.max_cost
            || self.shape.aliases > self.limits.max_aliases
    }

    /// How many items a field's list may hold (1 for a field that is not a sized list).
    fn items(&self, field: &async_graphql::parser::types::Field) -> usize {
        let Some(&(_, default)) = SIZED_LISTS.iter().find(|(name, _)| *name == field.name.node.as_str()) else {
            return 1;
        };
        let value = field
            .get_argument("first")
            .and_then(|v| v.node.clone().into_const_with(|name| self.variables.get(&name).cloned().ok_or(())).ok());
        match value {
            Some(Value::Number(n)) => n.as_u64().map_or(default, |n| n as usize).min(MAX_FIRST),
            _ => default,
        }
    }

    fn selection_set(&mut self, set: &'a SelectionSet, depth: usize, each: usize) {
        for item in &set.items {
            if self.over() {
                return; // enough to refuse; stop before a fragment bomb costs anything
            }
            match &item.node {
                Selection::Field(f) => {
                    self.shape.fields += 1;
                    self.shape.cost = self.shape.cost.saturating_add(each);
                    self.shape.aliases += usize::from(f.node.alias.is_some());
                    let d = depth + 1;
                    self.shape.depth = self.shape.depth.max(d);
                    let inner = each.saturating_mul(self.items(&f.node));
                    self.selection_set(&f.node.selection_set.node, d, inner);
                }
                Selection::InlineFragment(f) => self.selection_set(&f.node.selection_set.node, depth, each),
                Selection::FragmentSpread(s) => {
                    let name = &s.node.fragment_name.node;
                    if self.stack.contains(&name) {
                        continue; // a cycle: validation refuses it later
                    }
                    if let Some(def) = self.fragments.get(name) {
                        self.stack.push(name);
                        self.selection_set(&def.node.selection_set.node, depth, each);
                        self.stack.pop();
                    }
                }
            }
        }
    }
}

/// Measures a document with its variables (stopping early once a limit is passed).
pub fn measure(doc: &ExecutableDocument, variables: &Variables, limits: DocumentLimits) -> Shape {
    let fragments = &doc.fragments;
    let mut walk = Walk { fragments, variables, limits, shape: Shape::default(), stack: Vec::new() };
    for (_, op) in doc.operations.iter() {
        walk.selection_set(&op.node.selection_set.node, 0, 1);
    }
    walk.shape
}

/// Nesting of brackets of any kind (selections, lists, input objects) above which a document is refused unparsed.
const RAW_NESTING_LIMIT: usize = 64;

/// The deepest bracket nesting in a GraphQL text, outside strings and comments.
pub fn nesting(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' || c == '\r' {
                        break;
                    }
                }
            }
            '"' => {
                // A string (escapes skipped) or a block string; either ends at the next unescaped quote, which is
                // enough here: a block string's inner quotes only end the scan of nesting early, never miss depth.
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '{' | '[' | '(' => {
                depth += 1;
                max = max.max(depth);
            }
            '}' | ']' | ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Whether an operation asks for `__schema` or `__type` at its root.
fn introspects(doc: &ExecutableDocument) -> bool {
    doc.operations.iter().any(|(_, op)| {
        op.node.selection_set.node.items.iter().any(
            |s| matches!(&s.node, Selection::Field(f) if matches!(f.node.name.node.as_str(), "__schema" | "__type")),
        )
    })
}

fn refusal(code: &'static str, message: String) -> ServerError {
    request_error(api_error(code, message))
}

/// The refusal for a shape over the limits, if any.
pub fn check(shape: &Shape, limits: DocumentLimits) -> Result<(), ServerError> {
    let refuse = |what: &str, limit: &str, setting: &str, max: usize, actual: usize| {
        let message = format!("{what} exceeds the {limit} limit of {max} (set by {setting}); refused before execution");
        Err(request_error(api_error(code::LIMIT_EXCEEDED, message).extend_with(|_, e| {
            e.set("limit", limit);
            e.set("max", max as u64);
            e.set("actual", actual as u64);
        })))
    };
    if shape.depth > limits.max_depth {
        return refuse("the query depth", "max depth", "TASKORCH_MAX_DEPTH", limits.max_depth, shape.depth);
    }
    if shape.aliases > limits.max_aliases {
        return refuse(
            "the number of aliases",
            "max aliases",
            "TASKORCH_MAX_ALIASES",
            limits.max_aliases,
            shape.aliases,
        );
    }
    if shape.fields > limits.max_complexity {
        let (max, n) = (limits.max_complexity, shape.fields);
        return refuse("the query complexity (fields selected)", "max complexity", "TASKORCH_MAX_COMPLEXITY", max, n);
    }
    if shape.cost > limits.max_cost {
        let (max, n) = (limits.max_cost, shape.cost);
        return refuse("the field values the query may resolve", "max cost", "TASKORCH_MAX_COST", max, n);
    }
    Ok(())
}

/// The extension applying [`check`] to every parsed document.
pub struct DocumentLimitsExtension(pub DocumentLimits);

impl ExtensionFactory for DocumentLimitsExtension {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Checker(self.0))
    }
}

struct Checker(DocumentLimits);

#[async_trait::async_trait]
impl Extension for Checker {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // Bound the nesting before the recursive parser sees the text (the precise depth is checked after).
        if nesting(query) > RAW_NESTING_LIMIT.max(self.0.max_depth) {
            let over = self.0.max_depth + 1;
            return Err(check(&Shape { depth: over, ..Shape::default() }, self.0).err().unwrap_or_else(|| {
                refusal(code::LIMIT_EXCEEDED, "the query is nested too deeply (max depth)".to_owned())
            }));
        }
        let doc = next.run(ctx, query, variables).await.map_err(|e| {
            // The parser stops nesting itself (at 32 levels): the same limit, by name.
            if e.message.contains("recursion") {
                let over = self.0.max_depth.max(32) + 1;
                check(&Shape { depth: over, ..Shape::default() }, self.0).err().unwrap_or(e)
            } else {
                e
            }
        })?;
        check(&measure(&doc, variables, self.0), self.0)?;
        if !self.0.introspection && introspects(&doc) {
            return Err(refusal(
                code::FORBIDDEN,
                "introspection is turned off on this server (TASKORCH_INTROSPECTION=false)".to_owned(),
            ));
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DocumentLimits = DocumentLimits {
        max_depth: 5,
        max_complexity: 50,
        max_cost: 1000,
        max_aliases: 3,
        max_batch: 2,
        introspection: true,
    };

    fn shape(q: &str) -> Shape {
        measure(&async_graphql::parser::parse_query(q).unwrap(), &Variables::default(), LIMITS)
    }

    #[test]
    fn depth_fields_and_aliases_are_counted_through_fragments() {
        let s = shape("query { a: workflow(id: 1) { ...F tasks { key } } } fragment F on Workflow { id b: name }");
        assert_eq!(s, Shape { depth: 3, fields: 5, cost: 5, aliases: 2 });
        assert!(check(&s, LIMITS).is_ok());
    }

    #[test]
    fn a_listing_counts_its_fields_once_per_item_of_first() {
        // workflows (1) + 20 × (nodes + id + tasks + key), `first` defaulting to 20.
        assert_eq!(shape("{ workflows { nodes { id tasks { key } } } }").cost, 1 + 20 * 4);
        assert_eq!(shape("{ workflows(first: 5) { nodes { id } } }").cost, 1 + 5 * 2);
        let doc =
            async_graphql::parser::parse_query("query($n: Int) { workflows(first: $n) { nodes { id } } }").unwrap();
        let vars = Variables::from_json(serde_json::json!({ "n": 100 }));
        assert_eq!(measure(&doc, &vars, LIMITS).cost, 1 + 100 * 2);
        let many: String = (0..3).map(|i| format!("a{i}: workflows(first: 1000) {{ nodes {{ id }} }} ")).collect();
        let err = check(&shape(&format!("{{ {many} }}")), LIMITS).unwrap_err();
        assert!(err.message.contains("max cost limit of 1000"), "{}", err.message);
    }

    #[test]
    fn each_limit_is_named_in_its_refusal() {
        let deep = format!("{{ {}x{} }}", "a { ".repeat(9), " }".repeat(9));
        let err = check(&shape(&deep), LIMITS).unwrap_err();
        assert!(err.message.contains("max depth limit of 5"), "{}", err.message);
        let aliases: String = (0..10).map(|i| format!("a{i}: __typename ")).collect();
        let err = check(&shape(&format!("{{ {aliases} }}")), LIMITS).unwrap_err();
        assert!(err.message.contains("max aliases"), "{}", err.message);
        let wide: String = (0..60).map(|i| format!("f{i} ")).collect();
        let err = check(&shape(&format!("{{ {wide} }}")), LIMITS).unwrap_err();
        assert!(err.message.contains("max complexity"), "{}", err.message);
    }

    #[test]
    fn raw_nesting_skips_strings_and_comments() {
        assert_eq!(nesting("{ a { b(x: [1, {y: 2}]) } }"), 5);
        assert_eq!(nesting("{ a(s: \"{{{{\\\"{{\") # {{{{\n }"), 2);
        assert_eq!(nesting(&"{".repeat(10_000)), 10_000);
    }

    #[test]
    fn fragment_bombs_stop_early_and_cycles_end() {
        let mut q = String::from("{ ...F0 } fragment F0 on Query { ...F1 ...F1 } ");
        for i in 1..30 {
            q.push_str(&format!("fragment F{i} on Query {{ ...F{} ...F{} }} ", i + 1, i + 1));
        }
        q.push_str("fragment F30 on Query { x }");
        assert!(shape(&q).fields <= LIMITS.max_complexity + 1);
        let cyclic = shape("{ ...A } fragment A on Query { x ...B } fragment B on Query { y ...A }");
        assert_eq!(cyclic.fields, 2);
    }
}

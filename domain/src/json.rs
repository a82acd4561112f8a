//! Rules for the JSON values users and handlers give taskorch (payloads, results).

/// The deepest nesting of arrays and objects a stored value may have. Every reader of a stored value — the
/// database drivers, the GraphQL response, the JSON bodies of clients — has to parse it again, and common parsers
/// stop at 128 levels (serde_json among them); a task's input wraps its dependencies' results two levels deeper.
pub const MAX_JSON_DEPTH: usize = 100;

/// How deeply arrays and objects nest in `value` (`0` for a scalar).
pub fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Why a handler's result cannot be stored, if it cannot: the attempt fails with this message.
pub fn result_refusal(value: &serde_json::Value) -> Option<String> {
    let depth = depth(value);
    (depth > MAX_JSON_DEPTH).then(|| {
        format!("the result nests arrays and objects {depth} levels deep, more than the limit of {MAX_JSON_DEPTH}")
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(levels: usize) -> serde_json::Value {
        (0..levels).fold(json!(1), |inner, i| if i % 2 == 0 { json!([inner]) } else { json!({ "k": inner }) })
    }

    #[test]
    fn depth_counts_arrays_and_objects_on_the_deepest_path() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({ "a": [1, { "b": [] }], "c": 2 })), 4);
        assert_eq!(depth(&nested(37)), 37);
    }

    #[test]
    fn a_result_deeper_than_the_limit_is_refused_with_its_depth() {
        assert_eq!(result_refusal(&nested(MAX_JSON_DEPTH)), None);
        let refusal = result_refusal(&nested(MAX_JSON_DEPTH + 1)).expect("refused");
        assert!(refusal.contains("101 levels") && refusal.contains("limit of 100"), "{refusal}");
    }
}

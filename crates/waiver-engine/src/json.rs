//! JSON values to Cedar restricted expressions, for request-supplied properties.

use cedar_policy::RestrictedExpression;
use serde_json::Value;

/// Converts a JSON value; `None` for what Cedar cannot hold (null, decimals, deep nesting).
pub(crate) fn to_cedar(value: &Value, depth: usize) -> Option<RestrictedExpression> {
    if depth > 16 {
        return None;
    }
    match value {
        Value::Null => None,
        Value::Bool(b) => Some(RestrictedExpression::new_bool(*b)),
        Value::Number(n) => n.as_i64().map(RestrictedExpression::new_long),
        Value::String(s) => Some(RestrictedExpression::new_string(s.clone())),
        Value::Array(items) => {
            items.iter().map(|v| to_cedar(v, depth + 1)).collect::<Option<Vec<_>>>().map(RestrictedExpression::new_set)
        }
        Value::Object(map) => {
            let fields =
                map.iter().filter_map(|(k, v)| to_cedar(v, depth + 1).map(|v| (k.clone(), v))).collect::<Vec<_>>();
            RestrictedExpression::new_record(fields).ok()
        }
    }
}

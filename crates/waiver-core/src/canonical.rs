//! Canonical JSON: the exact bytes the audit chain hashes.
//!
//! The encoding follows RFC 8785 (JCS) for the values waiver records: object members sorted
//! by key (byte order of their UTF-8, which equals JCS's UTF-16 order for the ASCII keys
//! waiver writes), no whitespace, strings escaped as JSON requires and nothing more
//! (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other controls as `\u00xx`), non-ASCII
//! written as raw UTF-8, integers in decimal. Waiver records no floating-point numbers.
//!
//! The order is enforced here, not left to `serde_json`'s map type, so that a feature flag
//! elsewhere in the build (`preserve_order`) cannot change the hashed bytes.

use jiff::Timestamp;
use serde_json::Value;

/// Encodes a value canonically.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (idx, item) in items.iter().enumerate() {
                if idx > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (idx, (key, item)) in members.into_iter().enumerate() {
                if idx > 0 {
                    out.push(',');
                }
                write_str(key, out);
                out.push(':');
                write_value(item, out);
            }
            out.push('}');
        }
    }
}

/// Writes a JSON string literal.
pub fn write_str(s: &str, out: &mut String) {
    out.push('"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A timestamp as the log writes it: RFC 3339, UTC, exactly six fractional digits.
pub fn timestamp(at: Timestamp) -> String {
    let micros = Timestamp::from_microsecond(at.as_microsecond()).unwrap_or(at);
    jiff::fmt::temporal::DateTimePrinter::new().precision(Some(6)).timestamp_to_string(&micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        let v = json!({"b": 1, "a": {"z": [true, null, "x"], "c": -2}, "A": "é"});
        assert_eq!(to_string(&v), r#"{"A":"é","a":{"c":-2,"z":[true,null,"x"]},"b":1}"#);
    }

    #[test]
    fn escapes_as_jcs_does() {
        let v = json!("q\"b\\s/\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}\u{2028}");
        assert_eq!(to_string(&v), "\"q\\\"b\\\\s/\\u0001\\b\\f\\n\\r\\t\\u001f\u{7f}\u{2028}\"");
        // Agrees with serde_json for every string: both are valid JSON for the same value.
        let back: Value = serde_json::from_str(&to_string(&v)).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn timestamps_have_fixed_precision_in_utc() {
        let at: Timestamp = "2026-11-23T08:00:00+05:30".parse().unwrap();
        assert_eq!(timestamp(at), "2026-11-23T02:30:00.000000Z");
        let at: Timestamp = "2026-11-23T02:30:00.123456789Z".parse().unwrap();
        assert_eq!(timestamp(at), "2026-11-23T02:30:00.123456Z");
    }
}

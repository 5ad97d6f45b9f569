//! Bounds on what reaches Cedar's parsers, checked before they run.
//!
//! Cedar's parser, its conversion to an AST, `Display`, `Clone` and `Drop` recurse once (or
//! several frames) per level of nesting; 50 nested parentheses overflow a 2 MiB stack in a
//! debug build, and a stack overflow aborts the whole process, not the request. So text is
//! measured with a lexical scan (strings and comments skipped) and refused past
//! [`MAX_NESTING`] levels or [`MAX_OPERATORS`] operators per policy, and the parsing itself
//! runs on a stack of known size ([`on_known_stack`]) whatever thread calls it.

use serde_json::Value;

/// The deepest nesting of brackets (`()`, `[]`, `{}`, schema `<>`) and `if` accepted.
pub const MAX_NESTING: usize = 32;

/// The most binary operators accepted in one policy or condition. Cedar keeps a chain flat
/// when parsing but builds one nested node per operator, which later passes walk recursively.
pub const MAX_OPERATORS: usize = 1_000;

/// Stack the closure of [`on_known_stack`] gets when less than [`RED_ZONE`] remains.
const STACK_BYTES: usize = 32 << 20;
const RED_ZONE: usize = 1 << 20;

/// What kind of Cedar text is scanned: `<` nests only in a schema (`Set<Set<Long>>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Policy,
    Schema,
}

/// How deep text nests and how many operators its largest policy has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    pub nesting: usize,
    pub operators: usize,
}

impl Shape {
    /// `None` when within the limits, else what is over them, for an error message.
    pub fn excess(&self) -> Option<String> {
        if self.nesting > MAX_NESTING {
            Some(format!("it nests {} levels deep; at most {MAX_NESTING} are allowed", self.nesting))
        } else if self.operators > MAX_OPERATORS {
            Some(format!("one policy has {} operators; at most {MAX_OPERATORS} are allowed", self.operators))
        } else {
            None
        }
    }
}

/// The index of the quote closing the string literal that opens at `start` (or the end).
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(&c) = bytes.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    i
}

/// Measures Cedar text without parsing it. Unbalanced brackets are left for the parser to
/// report; the scan only needs an upper bound on how deep the parser will go.
pub fn shape(text: &str, syntax: Syntax) -> Shape {
    let bytes = text.as_bytes();
    let mut shape = Shape::default();
    // Open groups; each remembers how many `if`s were opened inside it (they close with it).
    let mut groups: Vec<usize> = Vec::new();
    let mut ifs = 0usize;
    let mut operators = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => i = string_end(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while bytes.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                groups.push(ifs);
                ifs = 0;
            }
            b'<' if syntax == Syntax::Schema => {
                groups.push(ifs);
                ifs = 0;
            }
            b')' | b']' | b'}' => {
                ifs = groups.pop().unwrap_or(0);
            }
            b'>' if syntax == Syntax::Schema => {
                ifs = groups.pop().unwrap_or(0);
            }
            b';' if syntax == Syntax::Policy && groups.is_empty() => {
                // A policy ends: operators are counted per policy.
                operators = 0;
                ifs = 0;
            }
            b'&' | b'|' | b'=' | b'!' | b'<' | b'>' | b'+' | b'-' | b'*' | b'.' if syntax == Syntax::Policy => {
                operators += 1;
                // `&&`, `||`, `==`, `!=`, `<=`, `>=` are one operator.
                if matches!((b, bytes.get(i + 1)), (b'&', Some(b'&')) | (b'|', Some(b'|')) | (_, Some(b'='))) {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while bytes.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                    i += 1;
                }
                let word = bytes.get(start..=i).unwrap_or_default();
                if syntax == Syntax::Policy {
                    match word {
                        b"if" => ifs += 1,
                        b"in" | b"has" | b"like" | b"is" => operators += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        shape.nesting = shape.nesting.max(groups.len() + ifs + groups.iter().sum::<usize>());
        shape.operators = shape.operators.max(operators);
        i += 1;
    }
    shape
}

/// Whether Cedar text holds a `//` comment (outside string literals).
pub fn has_comment(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => i = string_end(bytes, i),
            b'/' if bytes.get(i + 1) == Some(&b'/') => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// How deep a JSON value nests (a scalar is 0).
pub fn json_depth(value: &Value) -> usize {
    // Iterative, so measuring a hostile value cannot itself overflow.
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// How deep JSON text nests, without parsing it (strings skipped).
pub fn json_text_depth(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => i = string_end(bytes, i),
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// Runs `f` with at least [`RED_ZONE`] of stack, on a fresh segment of [`STACK_BYTES`] when
/// the calling thread (a tokio worker, a test thread) has less left.
pub fn on_known_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(RED_ZONE, STACK_BYTES, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nesting(text: &str) -> usize {
        shape(text, Syntax::Policy).nesting
    }

    #[test]
    fn brackets_and_ifs_nest_strings_and_comments_do_not() {
        assert_eq!(nesting("permit(principal, action, resource);"), 1);
        assert_eq!(nesting("permit(principal, action, resource) when { ((true)) };"), 3);
        assert_eq!(nesting(r#"permit(principal, action, resource) when { "((((((" == "\"((" };"#), 1);
        assert_eq!(nesting("permit(principal, action, resource) // ((((((\n;"), 1);
        assert_eq!(
            nesting("permit(principal, action, resource) when { if if true then true else false then 1 else 2 };"),
            3
        );
        assert_eq!(nesting("when { [{a: [1]}] }"), 4);
        assert_eq!(shape("type T = Set<Set<Set<Long>>>;", Syntax::Schema).nesting, 3);
        assert_eq!(nesting(&format!("when {{ {}true{} }}", "(".repeat(1000), ")".repeat(1000))), 1001);
    }

    #[test]
    fn operators_are_counted_per_policy() {
        let chain = ["true"; 10].join(" && ");
        let text = format!("permit(principal, action, resource) when {{ {chain} }};");
        assert_eq!(shape(&text, Syntax::Policy).operators, 9);
        let two = format!("{text}\n{text}");
        assert_eq!(shape(&two, Syntax::Policy).operators, 9);
        assert_eq!(shape("when { principal in Group::\"a\" && context.x >= 3 }", Syntax::Policy).operators, 4);
    }

    #[test]
    fn comments_are_found_outside_strings_only() {
        assert!(has_comment("true // && context.source_ip.isInRange(ip(\"10.0.0.0/8\"))"));
        assert!(!has_comment(r#"context.url == "https://x//y""#));
        assert!(!has_comment("context.a / 2 == 1"));
    }

    #[test]
    fn json_depth_is_measured_without_recursion() {
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, {"b": []}]})), 3);
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(json_text_depth(&deep), 100_000);
        assert_eq!(json_text_depth(r#"{"a": "[[[[", "b": [1]}"#), 2);
    }
}

//! Checks for free text and names supplied by clients.
//!
//! Text is an input like any other: it has a size, and it may carry control characters or
//! bidirectional overrides that make a log line or a review screen lie to its reader.

use crate::FieldError;

/// Longest free-text field (justification, plans, descriptions), in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Longest name or identifier, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest Cedar condition, in bytes.
pub const MAX_CONDITION_BYTES: usize = 8192;
/// Most items in any list field (actions, resources, controls, waives…).
pub const MAX_ITEMS: usize = 64;

/// Whether a character may never appear in client text: C0/C1 controls (except tab and
/// newline in multi-line text) and the Unicode bidirectional controls (CVE-2021-42574).
fn forbidden(c: char, multiline: bool) -> bool {
    if multiline && (c == '\n' || c == '\t') {
        return false;
    }
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

/// Free text: non-empty (unless `optional`), at most `max` bytes, no forbidden characters.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    check(field, value, max, true)
}

/// A name or identifier: single line, non-empty, no surrounding whitespace.
pub fn check_name(field: &str, value: &str) -> Result<(), FieldError> {
    check(field, value, MAX_NAME_BYTES, false)?;
    if value.trim() != value {
        return Err(FieldError::new(field, "must not start or end with whitespace"));
    }
    Ok(())
}

fn check(field: &str, value: &str, max: usize, multiline: bool) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(FieldError::new(field, format!("is {} bytes long; at most {max} are allowed", value.len())));
    }
    if let Some(c) = value.chars().find(|c| forbidden(*c, multiline)) {
        return Err(FieldError::new(field, format!("contains the control character U+{:04X}", c as u32)));
    }
    Ok(())
}

/// A list: at most [`MAX_ITEMS`] items, and non-empty when `required`.
pub fn check_list<T>(field: &str, items: &[T], required: bool) -> Result<(), FieldError> {
    if required && items.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if items.len() > MAX_ITEMS {
        return Err(FieldError::new(field, format!("has {} items; at most {MAX_ITEMS} are allowed", items.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_controls_bidi_and_padding() {
        assert!(check_name("f", "ci-deployer").is_ok());
        assert!(check_name("f", "déployeur-ü").is_ok());
        assert!(check_name("f", "").is_err());
        assert!(check_name("f", " x").is_err());
        assert!(check_name("f", "a\nb").is_err());
        assert!(check_name("f", "a\u{202E}b").is_err());
        assert!(check_name("f", &"x".repeat(257)).is_err());
    }

    #[test]
    fn text_allows_newlines_but_not_nul_or_huge() {
        assert!(check_text("f", "line one\nline two\twith tab", 100).is_ok());
        let err = check_text("f", "a\0b", 100).unwrap_err();
        assert_eq!(err.message, "contains the control character U+0000");
        let err = check_text("justification", &"x".repeat(1 << 20), MAX_TEXT_BYTES).unwrap_err();
        assert_eq!(err.field, "justification");
        assert!(err.message.contains("1048576 bytes"), "{}", err.message);
    }
}

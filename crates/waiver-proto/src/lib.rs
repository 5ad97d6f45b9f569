//! The wire types of waiver: what CONTRACT.md promises clients, field by field.
//!
//! Only this crate (and the store's row types) derive `Serialize`/`Deserialize`: the domain
//! in `waiver-core` is free to change shape, the wire is not. Inputs are parsed with unknown
//! fields refused and every error naming its field; [`parse`] does that for JSON and YAML.

#![deny(missing_docs)]

pub mod authzen;
mod event;
mod exception;
pub mod gitops;
mod identity;
mod person;
mod problem;
pub mod stored;
pub use person::{Inbox, Person, WorkItem};

pub use event::Event;
pub use exception::{
    Approval, CompensatingControl, Entity, Exception, ExceptionRequest, Narrowing, PendingRenewal, PendingTransfer,
    PostUseReview, Remediation, Resolution, ResourceScope, Review, ReviewInput, Scope, Usage,
};
pub use identity::{Identity, IdentityInput, IdentityPatchInput};
pub use problem::{Problem, ProblemField};

use waiver_core::{FieldError, ValidationError};

/// The format of an input document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML (a superset of JSON in practice).
    Yaml,
}

/// Largest input document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;

/// Parses a document into `T`, naming the field of the first error.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str, format: Format) -> Result<T, ValidationError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(ValidationError::one(FieldError::new(
            "(document)",
            format!("is {} bytes; at most {MAX_DOCUMENT_BYTES} are accepted", text.len()),
        )));
    }
    let result = match format {
        Format::Json => {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| (e.path().to_string(), clean(e.inner().to_string())))
        }
        Format::Yaml => {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| (e.path().to_string(), clean(e.inner().to_string())))
        }
    };
    result.map_err(|(path, message)| {
        let field = if path == "." || path == "?" || path.is_empty() { "(document)".to_owned() } else { path };
        ValidationError::one(FieldError::new(field, message))
    })
}

/// Parses an RFC 3339 timestamp; an offset (`Z` or `+02:00`) is required, so a local
/// time is never guessed.
pub fn parse_timestamp(text: &str) -> Result<jiff::Timestamp, String> {
    text.parse::<jiff::Timestamp>()
        .map_err(|e| format!("`{}` is not an RFC 3339 timestamp with an offset: {e}", waiver_core::id::clip(text)))
}

/// Drops serde's position suffix (`at line 1 column 7`): the field path says where.
fn clean(message: String) -> String {
    match message.find(" at line ") {
        Some(idx) if idx > 0 => message.get(..idx).unwrap_or(&message).to_owned(),
        _ => message,
    }
}

/// Serde default for `bool` fields that default to true.
fn yes() -> bool {
    true
}

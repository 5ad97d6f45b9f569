//! Identifiers: exception ids, Cedar entity references, principals and policy ids.
//!
//! Each is a newtype parsed once at the edge; a value of one of these types is valid.

use std::{fmt, str::FromStr};

use crate::{FieldError, text};

/// An exception's id, shown as `EXC-000042`. Allocated by the store, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExceptionId(u64);

impl ExceptionId {
    /// The id of an exception not yet stored; the store allocates the real one in the same
    /// transaction that records it. Never parsed from input (`EXC-0` is refused).
    pub const UNASSIGNED: ExceptionId = ExceptionId(0);

    pub const fn new(number: u64) -> Self {
        Self(number)
    }

    pub const fn number(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ExceptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EXC-{:06}", self.0)
    }
}

/// Why a string is not an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(String);

impl FromStr for ExceptionId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix("EXC-")
            .ok_or_else(|| IdError(format!("`{}` is not an exception id like `EXC-000042`", clip(s))))?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError(format!("`{}` is not an exception id like `EXC-000042`", clip(s))));
        }
        digits
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Self)
            .ok_or_else(|| IdError(format!("`{}` is out of range for an exception id", clip(s))))
    }
}

/// A Cedar entity type name, possibly namespaced: `ServiceAccount`, `Acme::Workload`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityType(String);

impl EntityType {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl FromStr for EntityType {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() <= text::MAX_NAME_BYTES && !s.is_empty() && s.split("::").all(is_ident) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError(format!(
                "`{}` is not a Cedar entity type: use identifiers joined by `::`, like `ServiceAccount` or `Acme::Workload`",
                clip(s)
            )))
        }
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Cedar entity: `ServiceAccount::"ci-deployer"`. Written `TYPE:ID` on the command line.
/// An identity in the inventory is referred to by one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityRef {
    entity_type: EntityType,
    id: String,
}

impl EntityRef {
    pub fn new(entity_type: EntityType, id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        text::check_name("id", &id).map_err(|e| IdError(format!("entity id {}", e.message)))?;
        Ok(Self { entity_type, id })
    }

    /// Parses the two parts, reporting errors against `field.type` and `field.id`.
    pub fn parse_parts(field: &str, entity_type: &str, id: &str) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let entity_type = entity_type
            .parse::<EntityType>()
            .map_err(|e| errors.push(FieldError::new(format!("{field}.type"), e.0)))
            .ok();
        if let Err(e) = text::check_name(&format!("{field}.id"), id) {
            errors.push(e);
        }
        match entity_type {
            Some(entity_type) if errors.is_empty() => Ok(Self { entity_type, id: id.to_owned() }),
            _ => Err(errors),
        }
    }

    pub fn entity_type(&self) -> &EntityType {
        &self.entity_type
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// `TYPE:ID`: the type ends at the first `:` that is not part of a `::`, so ids may hold
/// colons (`Workload:spiffe://prod/ns/pay/sa/api`) and types may be namespaced.
impl FromStr for EntityRef {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let mut idx = 0;
        while let Some(&b) = bytes.get(idx) {
            if b == b':' {
                if bytes.get(idx + 1) == Some(&b':') {
                    idx += 2;
                    continue;
                }
                let (ty, id) = (s.get(..idx).unwrap_or_default(), s.get(idx + 1..).unwrap_or_default());
                let entity_type = ty.parse::<EntityType>()?;
                return Self::new(entity_type, id);
            }
            idx += 1;
        }
        Err(IdError(format!("`{}` is not an entity reference like `ServiceAccount:ci-deployer`", clip(s))))
    }
}

impl fmt::Display for EntityRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.entity_type, self.id)
    }
}

/// A person or workload that acts: a requester, owner, approver or responder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal(String);

impl Principal {
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        text::check_name(field, value)?;
        if value.chars().any(char::is_whitespace) {
            return Err(FieldError::new(field, "must not contain whitespace"));
        }
        // One person, one name: `Alex` and `alex` are the same principal, or separation of
        // duties could be dodged by case. A workload acting for itself (`TYPE:ID`) keeps
        // its entity reference as Cedar spells it.
        if value.contains(':') { Ok(Self(value.to_owned())) } else { Ok(Self(value.to_lowercase())) }
    }

    /// waiver itself, acting for time: expiry, timeouts, revalidation triggers.
    pub fn system() -> Self {
        Self("waiver".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The principal of a workload acting for itself (an `agent` token), if this is one.
    pub fn as_entity(&self) -> Option<EntityRef> {
        self.0.parse().ok()
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Principal {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse("principal", s).map_err(|e| IdError(format!("principal {}", e.message)))
    }
}

/// The `@id` of a baseline Cedar policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId(String);

impl PolicyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PolicyId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError(format!(
                "`{}` is not a policy id: use 1 to 128 of letters, digits, `-`, `_`, `.`, `:` and `/`",
                clip(s)
            )))
        }
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shortens user input quoted in an error so a 1 MB value does not become a 1 MB message.
pub fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.escape_debug().to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default().escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_ids_round_trip() {
        let id: ExceptionId = "EXC-000042".parse().unwrap();
        assert_eq!(id.number(), 42);
        assert_eq!(id.to_string(), "EXC-000042");
        assert_eq!(ExceptionId::new(1234567).to_string(), "EXC-1234567");
        for bad in ["", "EXC-", "EXC-0", "exc-1", "EXC-1a", "EXC-99999999999999999999999", "EXC-+1"] {
            assert!(bad.parse::<ExceptionId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn entity_refs_split_at_the_first_single_colon() {
        let r: EntityRef = "Workload:spiffe://prod/ns/pay/sa/api".parse().unwrap();
        assert_eq!(r.entity_type().as_str(), "Workload");
        assert_eq!(r.id(), "spiffe://prod/ns/pay/sa/api");
        let r: EntityRef = "Acme::ServiceAccount:ci".parse().unwrap();
        assert_eq!(r.entity_type().as_str(), "Acme::ServiceAccount");
        assert_eq!(r.to_string(), "Acme::ServiceAccount:ci");
        for bad in ["ServiceAccount", "ServiceAccount:", ":x", "1Bad:x", "A::x", "Service Account:x"] {
            assert!(bad.parse::<EntityRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn clip_keeps_errors_short_and_escaped() {
        let long = "é".repeat(100);
        assert!(clip(&long).chars().count() < 50);
        assert_eq!(clip("a\nb"), "a\\nb");
    }
}

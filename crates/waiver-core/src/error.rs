//! Errors of the domain: field validation, governance rules and lifecycle refusals.
//!
//! Messages follow Cedar's style: lowercase, no trailing period, user input in backticks.

use std::fmt;

use crate::{ExceptionId, Role, State};

/// One thing wrong with one field of an input, optionally naming the governance rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path in the public shape, e.g. `scope.actions[0]`.
    pub field: String,
    pub message: String,
    /// The governance rule that refused it, as its key in the rules file.
    pub rule: Option<String>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into(), rule: None }
    }

    pub fn rule(field: impl Into<String>, rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into(), rule: Some(rule.into()) }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "{}: {} (rule `{rule}`)", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Every field error of one input, so a client can fix them all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ValidationError {
    pub errors: Vec<FieldError>,
}

impl ValidationError {
    /// Builds the error from its field errors; an empty list still means "invalid".
    pub fn new(errors: Vec<FieldError>) -> Self {
        Self { errors }
    }

    pub fn one(error: FieldError) -> Self {
        Self { errors: vec![error] }
    }

    /// Whether any of the errors came from a governance rule rather than the input's shape.
    pub fn breaks_rule(&self) -> bool {
        // Malformed input is said first (400); only a request that is well formed and breaks
        // governance rules is a 422.
        !self.errors.is_empty() && self.errors.iter().all(|e| e.rule.is_some())
    }

    /// `Ok(())` when empty, the error otherwise.
    pub fn into_result(errors: Vec<FieldError>) -> Result<(), Self> {
        if errors.is_empty() { Ok(()) } else { Err(Self { errors }) }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let breaks_rule = self.breaks_rule();
        match self.errors.as_slice() {
            [] => write!(f, "invalid input"),
            [one] if breaks_rule => write!(f, "refused by governance rules: {one}"),
            [one] => write!(f, "invalid input: {one}"),
            many => {
                let what = if breaks_rule { "refused by governance rules" } else { "invalid input" };
                write!(f, "{what}: {} problems", many.len())?;
                for e in many {
                    write!(f, "\n  - {e}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a lifecycle transition was refused. Never non-exhaustive: callers map every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// The actor lacks every role that may do this.
    #[error("`{principal}` may not {action}: it needs one of the roles {}", roles_list(.needs))]
    Forbidden { principal: String, action: &'static str, needs: Vec<Role> },
    /// The actor may not do this to this exception because of who they are in it.
    #[error("separation of duties: {0}")]
    SeparationOfDuties(String),
    /// The exception is not in a state that allows the action.
    #[error("cannot {action} `{id}`: it is {state}{}", hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    InvalidState { id: ExceptionId, action: &'static str, state: State, hint: Option<String> },
    /// The action's own input breaks a rule or is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

fn roles_list(roles: &[Role]) -> String {
    roles.iter().map(|r| format!("`{}`", r.as_str())).collect::<Vec<_>>().join(", ")
}

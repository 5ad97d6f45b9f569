//! RFC 9457 problem bodies (CONTRACT.md §4), shared by the HTTP API and `--output json`.

use serde::{Deserialize, Serialize};

/// A problem: what went wrong, for a program and for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status, also meaningful on the command line.
    pub status: u16,
    /// What went wrong in this case.
    pub detail: String,
    /// A stable snake_case code to match on.
    pub code: String,
    /// One entry per bad field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
}

/// One bad field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProblemField {
    /// The field's path, e.g. `scope.actions[0]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// The governance rule that refused it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl From<&waiver_core::FieldError> for ProblemField {
    fn from(e: &waiver_core::FieldError) -> Self {
        Self { field: e.field.clone(), message: e.message.clone(), rule: e.rule.clone() }
    }
}

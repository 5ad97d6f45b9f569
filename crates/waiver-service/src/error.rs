//! The service's error: what went wrong, in the terms the edges map to exit codes and
//! HTTP statuses.

use waiver_core::{LifecycleError, ValidationError};
use waiver_store::StoreError;

/// Why an operation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input is malformed, or breaks a governance rule (see [`ValidationError::breaks_rule`]).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The actor lacks the role.
    #[error("{0}")]
    Forbidden(String),
    /// The action needs a recent or stronger sign-in at the identity provider (the rules'
    /// `[step_up]`): signing in again, as asked, allows it.
    #[error("{0}")]
    StepUp(String),
    /// The actor holds the role but may not act on this exception (separation of duties).
    #[error("{0}")]
    SeparationOfDuties(String),
    /// The exception or identity is not in a state that allows the action.
    #[error("{0}")]
    InvalidState(String),
    /// The id names nothing.
    #[error("{0} not found")]
    NotFound(String),
    /// It already exists, or kept changing under us.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// An export could not be rendered.
    #[error(transparent)]
    Export(#[from] waiver_evidence::ExportError),
}

impl ServiceError {
    /// A stable snake_case code for scripts and problem bodies.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Invalid(e) if e.breaks_rule() => "rule_violation",
            ServiceError::Invalid(_) => "invalid_input",
            ServiceError::Forbidden(_) => "forbidden",
            ServiceError::StepUp(_) => "step_up_required",
            ServiceError::SeparationOfDuties(_) => "separation_of_duties",
            ServiceError::InvalidState(_) => "invalid_state",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict(_) => "conflict",
            ServiceError::Store(StoreError::Unavailable(_)) => "store_unavailable",
            ServiceError::Store(StoreError::Tampered(_)) => "record_tampered",
            ServiceError::Store(_) => "store_error",
            ServiceError::Export(_) => "export_failed",
        }
    }

    /// The HTTP status this maps to (CONTRACT.md §4).
    pub fn status(&self) -> u16 {
        match self {
            ServiceError::Invalid(e) if e.breaks_rule() => 422,
            ServiceError::Invalid(_) => 400,
            ServiceError::StepUp(_) => 401,
            ServiceError::Forbidden(_) | ServiceError::SeparationOfDuties(_) => 403,
            ServiceError::InvalidState(_) | ServiceError::Conflict(_) => 409,
            ServiceError::NotFound(_) => 404,
            ServiceError::Store(StoreError::Unavailable(_)) => 503,
            ServiceError::Store(StoreError::NotFound(_)) => 404,
            // The record is there but is not what the log says: nothing acts on it until an
            // operator restores it (`audit verify` names it).
            ServiceError::Store(StoreError::Conflict(_) | StoreError::Tampered(_)) => 409,
            ServiceError::Store(StoreError::Corrupt(_) | StoreError::Other(_)) | ServiceError::Export(_) => 500,
        }
    }

    /// The problem body for this error.
    pub fn problem(&self) -> waiver_proto::Problem {
        let status = self.status();
        let title = match status {
            400 => "Invalid input",
            401 => "Sign in again",
            403 => "Forbidden",
            404 => "Not found",
            409 => "Conflict",
            422 => "Refused by governance rules",
            503 => "Service unavailable",
            _ => "Internal error",
        };
        let errors = match self {
            ServiceError::Invalid(e) => e.errors.iter().map(Into::into).collect(),
            _ => Vec::new(),
        };
        waiver_proto::Problem {
            problem_type: format!("https://waiver.dev/problems/{}", self.code().replace('_', "-")),
            title: title.to_owned(),
            status,
            detail: self.to_string(),
            code: self.code().to_owned(),
            errors,
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ServiceError::NotFound(what),
            other => ServiceError::Store(other),
        }
    }
}

impl From<LifecycleError> for ServiceError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Forbidden { .. } => ServiceError::Forbidden(e.to_string()),
            LifecycleError::SeparationOfDuties(_) => ServiceError::SeparationOfDuties(e.to_string()),
            LifecycleError::InvalidState { .. } => ServiceError::InvalidState(e.to_string()),
            LifecycleError::Invalid(v) => ServiceError::Invalid(v),
        }
    }
}

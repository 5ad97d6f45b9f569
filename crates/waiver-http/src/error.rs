//! Errors as RFC 9457 problem responses, mapped once.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use waiver_proto::{Problem, ProblemField};

/// An error response: a problem document (boxed: errors travel through every handler's
/// `Result`, and the happy path should not pay for their size).
#[derive(Debug)]
pub struct ApiError(Box<Problem>);

fn title(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "Invalid request",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "Body too large",
        StatusCode::REQUEST_TIMEOUT => "Request timeout",
        StatusCode::SERVICE_UNAVAILABLE => "Service unavailable",
        _ => "Error",
    }
}

impl ApiError {
    fn new(status: StatusCode, code: &str, detail: impl Into<String>, errors: Vec<ProblemField>) -> Self {
        Self(Box::new(Problem {
            problem_type: format!("https://waiver.dev/problems/{}", code.replace('_', "-")),
            title: title(status).to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            errors,
        }))
    }

    /// A problem document made by the service.
    pub fn problem(problem: Problem) -> Self {
        Self(Box::new(problem))
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>, field: Option<&str>) -> Self {
        let detail = detail.into();
        let errors = field
            .map(|f| vec![ProblemField { field: f.to_owned(), message: detail.clone(), rule: None }])
            .unwrap_or_default();
        Self::new(StatusCode::BAD_REQUEST, code, detail, errors)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail, vec![])
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail, vec![])
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail, vec![])
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail, vec![])
    }

    pub fn request_timeout() -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request body did not arrive in time", vec![])
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take that method",
            vec![],
        )
    }

    /// The problem document inside (the UI renders it as a page).
    pub fn into_problem(self) -> Problem {
        *self.0
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {limit} bytes"),
            vec![],
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let step_up = self.0.code == "step_up_required";
        let mut response = (status, axum::Json(*self.0)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // A store outage or a full disk is transient: tell clients when to try again.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750, and RFC 9470 when the sign-in is too old or too weak.
            let challenge = if step_up { "Bearer error=\"insufficient_user_authentication\"" } else { "Bearer" };
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

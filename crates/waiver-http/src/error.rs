//! Errors as RFC 9457 problem responses, mapped once.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use waiver_proto::{Problem, ProblemField};

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    errors: Vec<ProblemField>,
}

impl ApiError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>, field: Option<&str>) -> Self {
        let detail = detail.into();
        let errors = field
            .map(|f| vec![ProblemField { field: f.to_owned(), message: detail.clone(), rule: None }])
            .unwrap_or_default();
        Self { status: StatusCode::BAD_REQUEST, code, detail, errors }
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self { status: StatusCode::UNAUTHORIZED, code: "unauthorized", detail: detail.into(), errors: vec![] }
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self { status: StatusCode::FORBIDDEN, code: "forbidden", detail: detail.into(), errors: vec![] }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, code: "not_found", detail: detail.into(), errors: vec![] }
    }

    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            detail: format!("the body is larger than {limit} bytes"),
            errors: vec![],
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = match self.status {
            StatusCode::BAD_REQUEST => "Invalid request",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::PAYLOAD_TOO_LARGE => "Body too large",
            _ => "Error",
        };
        let problem = Problem {
            problem_type: format!("https://waiver.dev/problems/{}", self.code.replace('_', "-")),
            title: title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code.to_owned(),
            errors: self.errors,
        };
        let mut response = (self.status, axum::Json(problem)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

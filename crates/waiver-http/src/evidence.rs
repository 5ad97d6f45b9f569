//! Evidence endpoints: exports of the register and reports over it.

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::IntoParams;
use waiver_evidence::{
    Format,
    reports::{Options, Report},
};

use crate::{
    ApiError,
    rest::{ApiState, Caller, P, Q, invalid},
};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExportParams {
    /// `csv`, `json`, `oscal-poam` (OSCAL 1.1 plan of action and milestones, JSON) or `yaml` (what `waiver apply` reads).
    format: Option<String>,
}

/// The whole register — every exception with its framework controls, events and chain
/// head — in the format asked for. Admin, auditor or approver.
#[utoipa::path(get, path = "/api/v1/export", tag = "evidence", params(ExportParams),
    responses(
        (status = 200, description = "The export: `text/csv` for csv, YAML for yaml, JSON otherwise", content((String = "text/csv"), (String = "application/yaml"), (Object = "application/json"))),
        (status = 400, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 401, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 403, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The audit chain does not verify", body = waiver_proto::Problem, content_type = "application/problem+json")))]
pub(crate) async fn export(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Q(params): Q<ExportParams>,
) -> Result<Response, ApiError> {
    let name = params.format.ok_or_else(|| invalid("format", "is required: `csv`, `json`, `oscal-poam` or `yaml`"))?;
    let format = Format::parse(&name).map_err(|e| invalid("format", e.to_string()))?;
    let text = api.service.export(&actor, format).await?;
    let file = format!("attachment; filename=\"waiver-register.{}\"", format.extension());
    Ok(([(header::CONTENT_TYPE, format.media_type().to_owned()), (header::CONTENT_DISPOSITION, file)], text)
        .into_response())
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReportParams {
    /// Weeks of history for time series and precedent clusters, 1 to 520 (default 12).
    weeks: Option<String>,
    /// Days without a granted decision after which a live exception is unused, 1 to 3650 (default 30).
    unused_days: Option<String>,
    /// Distinct subjects that make a cluster a precedent, 2 to 1000 (default 3).
    min_subjects: Option<String>,
}

fn number(
    field: &str,
    value: Option<&str>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ApiError> {
    match value {
        None => Ok(default),
        Some(text) => {
            text.parse::<u32>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
                invalid(field, format!("must be a whole number from {} to {}", range.start(), range.end()))
            })
        }
    }
}

/// A report over the register (`sprawl`, `drift`, `precedent`, `hygiene`, `break-glass`,
/// `frameworks`), as of now. Admin, auditor or approver.
#[utoipa::path(get, path = "/api/v1/reports/{name}", tag = "evidence",
    params(("name" = String, Path, description = "`sprawl`, `drift`, `precedent`, `hygiene`, `break-glass` or `frameworks`"), ReportParams),
    responses(
        (status = 200, description = "The report", body = Object),
        (status = 400, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 401, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 403, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 404, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The audit chain does not verify", body = waiver_proto::Problem, content_type = "application/problem+json")))]
pub(crate) async fn report(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    P(name): P<String>,
    Q(params): Q<ReportParams>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let report = Report::parse(&name).map_err(ApiError::not_found)?;
    let options = Options {
        weeks: number("weeks", params.weeks.as_deref(), 12, 1..=520)?,
        unused_days: number("unused_days", params.unused_days.as_deref(), 30, 1..=3650)?,
        min_subjects: number("min_subjects", params.min_subjects.as_deref(), 3, 2..=1000)? as usize,
    };
    Ok(axum::Json(api.service.report(&actor, report, options).await?))
}

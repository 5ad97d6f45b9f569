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
    let file = format!("attachment; filename=\"waiver-register.{}\"", format.extension());
    let headers = [(header::CONTENT_TYPE, format.media_type().to_owned()), (header::CONTENT_DISPOSITION, file)];
    if format == Format::Json {
        // Streamed: the largest export, and the one with every event.
        let pieces = api.service.export_json_stream(&actor).await?;
        let stream = futures_util::stream::unfold(pieces, |mut pieces| async move {
            pieces.recv().await.map(|piece| (piece, pieces))
        });
        return Ok((headers, axum::body::Body::from_stream(stream)).into_response());
    }
    let text = api.service.export(&actor, format).await?;
    Ok((headers, text).into_response())
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
    /// Most items any one list in the report carries, 1 to 100000 (default 1000); each
    /// list's full length is under `totals`.
    limit: Option<String>,
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
        limit: number("limit", params.limit.as_deref(), 1000, 1..=100_000)? as usize,
    };
    Ok(axum::Json(api.service.report(&actor, report, options).await?))
}

/// Largest CSV an import takes over HTTP: a 100k-row spreadsheet fits.
pub const MAX_IMPORT_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImportParams {
    /// `true` checks every row and stores nothing (default `false`).
    dry_run: Option<String>,
    /// `true` files the valid rows even when others are invalid (default `false`: a file
    /// with any invalid row stores nothing).
    skip_invalid: Option<String>,
    /// Columns named otherwise than the request fields: `FIELD=COLUMN` pairs separated by
    /// `;`, e.g. `justification=Business reason;subject=Service Account`.
    map: Option<String>,
}

fn flag(field: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(invalid(field, "must be `true` or `false`")),
    }
}

/// Files exception requests from a CSV file (a spreadsheet or ticket export; the body,
/// `text/csv`, header row first), each checked exactly as filing checks it. The imported
/// exceptions are `requested`: they still need their approvals. A file with any invalid
/// row stores nothing (422, one error per row and field) unless `skip_invalid=true`.
/// Any role that may request; the caller is the requester of every row.
#[utoipa::path(post, path = "/api/v1/import", tag = "evidence", params(ImportParams),
    request_body(content = String, content_type = "text/csv", description = "The CSV: columns named after request fields (`subject`, `waives`, `actions`, `resources`, `justification`, `normal_path_unavailable`, `risk`, `owner`, `expires_at`, …); lists `;`-separated"),
    responses(
        (status = 200, description = "What was filed (or, in a dry run, would be): a report per row", body = Object),
        (status = 400, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 401, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 403, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 413, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Rows are invalid; nothing was stored", body = waiver_proto::Problem, content_type = "application/problem+json")))]
pub(crate) async fn import(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Q(params): Q<ImportParams>,
    body: axum::body::Body,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    waiver_service::require(&actor, "import exception requests", waiver_core::actor::may::FILE)?;
    let mode = waiver_service::import::ImportMode {
        dry_run: flag("dry_run", params.dry_run.as_deref())?,
        skip_invalid: flag("skip_invalid", params.skip_invalid.as_deref())?,
    };
    let pairs: Vec<String> = params
        .map
        .as_deref()
        .map(|m| m.split(';').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let bytes =
        axum::body::to_bytes(body, MAX_IMPORT_BYTES).await.map_err(|_| ApiError::too_large(MAX_IMPORT_BYTES))?;
    let rows = waiver_evidence::csv_import::requests(bytes.as_ref(), &pairs).map_err(|e| {
        let field = if matches!(e, waiver_evidence::csv_import::ImportError::Csv(_)) { "body" } else { "map" };
        invalid(field, e.to_string())
    })?;
    let report = api.service.import(&actor, rows, mode, &|_, _| {}).await?;
    if report.invalid > 0 && !mode.dry_run && !mode.skip_invalid {
        let errors = report
            .rows
            .iter()
            .flat_map(|row| {
                row.errors.iter().map(move |e| waiver_proto::ProblemField {
                    field: format!("line {}: {}", row.line, e.field),
                    message: e.message.clone(),
                    rule: e.rule.clone(),
                })
            })
            .collect();
        return Err(ApiError::problem(waiver_proto::Problem {
            problem_type: "https://waiver.dev/problems/invalid-rows".into(),
            title: "Invalid rows".into(),
            status: 422,
            detail: format!(
                "{} of {} rows are invalid; nothing was stored (fix them, or pass skip_invalid=true)",
                report.invalid,
                report.rows.len()
            ),
            code: "invalid_rows".into(),
            errors,
        }));
    }
    Ok(axum::Json(report.to_json(mode.dry_run)))
}

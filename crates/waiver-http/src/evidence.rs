//! Evidence endpoints: exports of the register for auditors.

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::IntoParams;
use waiver_evidence::Format;

use crate::{
    ApiError,
    rest::{ApiState, Caller, Q, invalid},
};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExportParams {
    /// `csv`, `json` or `oscal-poam` (OSCAL 1.1 plan of action and milestones, JSON).
    format: Option<String>,
}

/// The whole register — every exception with its framework controls, events and chain
/// head — in the format asked for. Admin, auditor or approver.
#[utoipa::path(get, path = "/api/v1/export", tag = "evidence", params(ExportParams),
    responses(
        (status = 200, description = "The export: `text/csv` for csv, JSON otherwise", content((String = "text/csv"), (Object = "application/json"))),
        (status = 400, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 401, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 403, body = waiver_proto::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The audit chain does not verify", body = waiver_proto::Problem, content_type = "application/problem+json")))]
pub(crate) async fn export(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Q(params): Q<ExportParams>,
) -> Result<Response, ApiError> {
    let name = params.format.ok_or_else(|| invalid("format", "is required: `csv`, `json` or `oscal-poam`"))?;
    let format = Format::parse(&name).map_err(|e| invalid("format", e.to_string()))?;
    let text = api.service.export(&actor, format).await?;
    let file = format!("attachment; filename=\"waiver-register.{}\"", format.extension());
    Ok(([(header::CONTENT_TYPE, format.media_type().to_owned()), (header::CONTENT_DISPOSITION, file)], text)
        .into_response())
}

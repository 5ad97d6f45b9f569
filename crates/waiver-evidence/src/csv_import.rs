//! Exception requests from a spreadsheet or ticket export (CSV), for `waiver import` and
//! `POST /api/v1/import`.
//!
//! Columns are named after request fields (`subject`, `waives`, `actions`, `resources`,
//! `justification`, …); a mapping `FIELD=COLUMN` reads a field from a column named
//! otherwise. Lists are `;`-separated. Rows become requests here; the service checks each
//! as filing checks it.

use std::collections::BTreeMap;

use waiver_core::{FieldError, ValidationError};
use waiver_proto::{CompensatingControl, Entity, ExceptionRequest, Remediation, ResourceScope, ReviewInput, Scope};

/// Why a file cannot be read as requests at all (row errors are reported per row instead).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("mapping `{0}`: expected FIELD=COLUMN")]
    MappingShape(String),
    #[error("mapping `{pair}`: `{field}` is not a request field; the fields are {fields}")]
    UnknownField { pair: String, field: String, fields: String },
    #[error("column `{column}` (mapped to `{field}`) is not in the file; its columns are {columns}")]
    MappedColumnMissing { column: String, field: String, columns: String },
    #[error(
        "no column for the required field `{field}`: name a column `{field}` or map one to it (`--map {field}=COLUMN`; `map` over the API); the file's columns are {columns}"
    )]
    RequiredColumnMissing { field: String, columns: String },
    #[error("the CSV does not parse: {0}")]
    Csv(String),
}

/// Every field a column can feed, with whether a row needs it.
pub const FIELDS: &[(&str, bool)] = &[
    ("subject", true),
    ("waives", true),
    ("actions", true),
    ("resources", true),
    ("justification", true),
    ("normal_path_unavailable", true),
    ("risk", true),
    ("owner", true),
    ("expires_at", true),
    ("condition", false),
    ("compensating_controls", false),
    ("credential_type", false),
    ("starts_at", false),
    ("references", false),
    ("affected_systems", false),
    ("remediation", false),
    ("remediation_ticket", false),
    ("review_every", false),
    ("revalidate_on", false),
    ("frameworks", false),
];

/// Which column feeds which field: `FIELD=COLUMN` pairs over the default (same name).
pub fn mapping(pairs: &[String], header: &csv::StringRecord) -> Result<BTreeMap<&'static str, usize>, ImportError> {
    let mut named: BTreeMap<&'static str, String> = BTreeMap::new();
    for pair in pairs {
        let clipped = || waiver_core::id::clip(pair).to_owned();
        let (field, column) = pair.split_once('=').ok_or_else(|| ImportError::MappingShape(clipped()))?;
        let Some((field, _)) = FIELDS.iter().find(|(f, _)| *f == field.trim()) else {
            return Err(ImportError::UnknownField {
                pair: clipped(),
                field: waiver_core::id::clip(field.trim()).to_owned(),
                fields: FIELDS.iter().map(|(f, _)| format!("`{f}`")).collect::<Vec<_>>().join(", "),
            });
        };
        named.insert(field, column.trim().to_owned());
    }
    let mut out = BTreeMap::new();
    let columns = || header.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
    for (field, required) in FIELDS {
        let column = named.get(field).cloned().unwrap_or_else(|| (*field).to_owned());
        match header.iter().position(|c| c.trim().eq_ignore_ascii_case(&column)) {
            Some(idx) => {
                out.insert(*field, idx);
            }
            None if named.contains_key(field) => {
                return Err(ImportError::MappedColumnMissing {
                    column: waiver_core::id::clip(&column).to_owned(),
                    field: (*field).to_owned(),
                    columns: columns(),
                });
            }
            None if *required => {
                return Err(ImportError::RequiredColumnMissing { field: (*field).to_owned(), columns: columns() });
            }
            None => {}
        }
    }
    Ok(out)
}

/// A cell as typed: our CSV export defuses formulas with a leading `'`, which comes off.
fn cell<'a>(row: &'a csv::StringRecord, map: &BTreeMap<&'static str, usize>, field: &str) -> &'a str {
    let text = map.get(field).and_then(|idx| row.get(*idx)).unwrap_or("").trim();
    match text.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@']) => rest,
        _ => text,
    }
}

fn list(text: &str) -> Vec<String> {
    text.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn optional(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn entity(field: &str, text: &str, errors: &mut Vec<FieldError>) -> Entity {
    match text.split_once(':') {
        Some((t, id)) if !t.is_empty() && !id.is_empty() => Entity { entity_type: t.to_owned(), id: id.to_owned() },
        _ => {
            errors.push(FieldError::new(field, format!("`{}` is not `TYPE:ID`", waiver_core::id::clip(text))));
            Entity { entity_type: String::new(), id: String::new() }
        }
    }
}

fn timestamp(field: &str, text: &str, errors: &mut Vec<FieldError>) -> Option<jiff::Timestamp> {
    if text.is_empty() {
        return None;
    }
    waiver_proto::parse_timestamp(text).map_err(|e| errors.push(FieldError::new(field, e))).ok()
}

/// One row as a request; errors name the field.
pub fn request(
    row: &csv::StringRecord,
    map: &BTreeMap<&'static str, usize>,
) -> Result<ExceptionRequest, ValidationError> {
    let mut errors = Vec::new();
    let get = |field: &str| cell(row, map, field);
    let subject = entity("subject", get("subject"), &mut errors);
    let resources = list(get("resources"))
        .iter()
        .enumerate()
        .map(|(idx, r)| {
            let (text, descendants) = match r.strip_suffix("(and descendants)") {
                Some(rest) => (rest.trim(), true),
                None => (r.as_str(), false),
            };
            let e = entity(&format!("resources[{idx}]"), text, &mut errors);
            ResourceScope { entity_type: e.entity_type, id: e.id, descendants }
        })
        .collect();
    let compensating_controls = list(get("compensating_controls"))
        .iter()
        .map(|c| match c.split_once(':') {
            Some((kind, description)) => CompensatingControl {
                kind: kind.trim().to_owned(),
                description: description.trim().to_owned(),
                enforced: true,
            },
            None => CompensatingControl { kind: "other".into(), description: c.clone(), enforced: true },
        })
        .collect();
    let expires_at = timestamp("expires_at", get("expires_at"), &mut errors);
    if expires_at.is_none() && errors.iter().all(|e| e.field != "expires_at") {
        errors.push(FieldError::new("expires_at", "is required: every exception expires"));
    }
    let starts_at = timestamp("starts_at", get("starts_at"), &mut errors);
    let request = ExceptionRequest {
        kind: None,
        subject,
        waives: list(get("waives")),
        scope: Scope { actions: list(get("actions")), resources },
        condition: optional(get("condition")),
        compensating_controls,
        justification: get("justification").to_owned(),
        normal_path_unavailable: get("normal_path_unavailable").to_owned(),
        affected_systems: list(get("affected_systems")),
        references: list(get("references")),
        risk: get("risk").to_owned(),
        credential_type: optional(get("credential_type")),
        owner: get("owner").to_owned(),
        starts_at,
        expires_at: expires_at.unwrap_or_default(),
        review: ReviewInput { every: optional(get("review_every")), revalidate_on: list(get("revalidate_on")) },
        remediation: optional(get("remediation")).map(|plan| Remediation {
            plan,
            retire_by: None,
            ticket: optional(get("remediation_ticket")),
        }),
        frameworks: list(get("frameworks")),
    };
    ValidationError::into_result(errors).map(|()| request)
}

/// Reads CSV text: the header, then each row with its line number.
pub fn read(input: impl std::io::Read) -> Result<(csv::StringRecord, Vec<(usize, csv::StringRecord)>), ImportError> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(input);
    let header = reader.headers().map_err(|e| ImportError::Csv(e.to_string()))?.clone();
    let mut rows = Vec::new();
    for (idx, record) in reader.records().enumerate() {
        let record = record.map_err(|e| ImportError::Csv(e.to_string()))?;
        rows.push((record.position().map_or(idx + 2, |p| usize::try_from(p.line()).unwrap_or(idx + 2)), record));
    }
    Ok((header, rows))
}

/// The rows of a CSV text as requests (or their errors), by line: what the service imports.
#[allow(clippy::type_complexity)]
pub fn requests(
    input: impl std::io::Read,
    pairs: &[String],
) -> Result<Vec<(usize, Result<ExceptionRequest, ValidationError>)>, ImportError> {
    let (header, records) = read(input)?;
    let map = mapping(pairs, &header)?;
    Ok(records.iter().map(|(line, row)| (*line, request(row, &map))).collect())
}

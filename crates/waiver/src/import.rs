//! `waiver import FILE.csv`: exception requests from a spreadsheet or ticket export.
//!
//! Columns are named after request fields (`subject`, `waives`, `actions`, `resources`,
//! `justification`, …); `--map FIELD=COLUMN` reads a field from a column named otherwise.
//! Lists are `;`-separated. Every row is checked as filing checks it; a file with any
//! invalid row stores nothing unless `--skip-invalid`.

use std::{collections::BTreeMap, path::Path};

use waiver_core::{FieldError, ValidationError};
use waiver_proto::{CompensatingControl, Entity, ExceptionRequest, Remediation, ResourceScope, ReviewInput, Scope};

use crate::commands::CliError;

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
pub fn mapping(pairs: &[String], header: &csv::StringRecord) -> Result<BTreeMap<&'static str, usize>, CliError> {
    let mut named: BTreeMap<&'static str, String> = BTreeMap::new();
    for pair in pairs {
        let (field, column) =
            pair.split_once('=').ok_or_else(|| CliError::Usage(format!("--map `{pair}`: expected FIELD=COLUMN")))?;
        let Some((field, _)) = FIELDS.iter().find(|(f, _)| *f == field.trim()) else {
            return Err(CliError::Usage(format!(
                "--map `{pair}`: `{}` is not a request field; the fields are {}",
                field.trim(),
                FIELDS.iter().map(|(f, _)| format!("`{f}`")).collect::<Vec<_>>().join(", ")
            )));
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
                return Err(CliError::Usage(format!(
                    "column `{column}` (mapped to `{field}`) is not in the file; its columns are {}",
                    columns()
                )));
            }
            None if *required => {
                return Err(CliError::Usage(format!(
                    "no column for the required field `{field}`: name a column `{field}` or pass --map {field}=COLUMN; the file's columns are {}",
                    columns()
                )));
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

/// Reads the file: the header, then each row with its line number.
pub fn read(path: &Path) -> Result<(csv::StringRecord, Vec<(usize, csv::StringRecord)>), CliError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    let header = reader.headers().map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?.clone();
    let mut rows = Vec::new();
    for (idx, record) in reader.records().enumerate() {
        let record = record.map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
        rows.push((record.position().map_or(idx + 2, |p| usize::try_from(p.line()).unwrap_or(idx + 2)), record));
    }
    Ok((header, rows))
}

//! Evidence out of the register: exports for auditors (CSV, JSON, OSCAL 1.1 POA&M) and
//! reports (sprawl, drift, precedent, hygiene, break-glass, framework coverage).
//!
//! Architecture invariant: pure functions of a [`Register`] — the exceptions, identities
//! and events the service read, and the instant the export is made at. No I/O, no clock:
//! the same register renders the same bytes, which the golden files hold the formats to.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::Timestamp;
use waiver_core::{Exception, ExceptionId, Identity, audit::ChainHead, audit::EventRecord};

mod csv_export;
pub use csv_export::cell as csv_cell;
pub mod csv_import;
mod json_export;
pub mod oscal;
pub mod reports;
mod verify;

pub use json_export::{ExportedArtifact, JsonWriter};
pub use verify::{ExportVerified, verify_export};

/// What an export covers.
/// The artifacts of the log an export carries: every version of each put in force.
pub const ARTIFACT_KINDS: &[&str] = &["baseline", "rules", "people"];

/// Whether a seal key names an artifact kind (rather than a record).
pub fn is_artifact_kind(key: &str) -> bool {
    ARTIFACT_KINDS.contains(&key)
}

#[derive(Debug, Clone)]
pub struct Register {
    /// When the export is made: effective states and overdue flags are as of this instant.
    pub generated_at: Timestamp,
    /// In id order; shared with the serving node's in-memory register, not copied.
    pub exceptions: Vec<Arc<Exception>>,
    pub identities: Vec<Identity>,
    /// Index into `identities` by entity (reports look one up per exception).
    by_entity: HashMap<waiver_core::EntityRef, usize>,
    /// Each exception's events, in log order.
    pub events: BTreeMap<ExceptionId, Vec<EventRecord>>,
    /// The audit chain the events belong to, as verified when the register was read;
    /// exports need it (reports read no events and leave it out).
    pub chain: Option<ChainHead>,
    /// The governance rules in force (reports compare against them).
    pub rules: waiver_core::Rules,
    /// The baseline in force, if one is loaded (precedent proposals are checked against it).
    pub baseline: Option<Arc<waiver_engine::Baseline>>,
    /// The whole log up to the chain head, as stored (the JSON export carries it).
    pub log: Vec<EventRecord>,
    /// Each token record's key and digest (the JSON export carries them).
    pub tokens: Vec<(String, String)>,
    /// Every baseline and rules text the log put in force (the JSON export carries them).
    pub artifacts: Vec<ExportedArtifact>,
}

impl Register {
    /// A register of these records, without events or a chain head (exports add them).
    pub fn new(
        generated_at: Timestamp,
        exceptions: Vec<Arc<Exception>>,
        identities: Vec<Identity>,
        rules: waiver_core::Rules,
        baseline: Option<Arc<waiver_engine::Baseline>>,
    ) -> Self {
        let by_entity = identities.iter().enumerate().map(|(idx, i)| (i.entity.clone(), idx)).collect();
        Self {
            generated_at,
            exceptions,
            identities,
            by_entity,
            events: BTreeMap::new(),
            chain: None,
            rules,
            baseline,
            log: Vec::new(),
            tokens: Vec::new(),
            artifacts: Vec::new(),
        }
    }

    /// The exceptions, in id order.
    pub fn records(&self) -> impl Iterator<Item = &Exception> {
        self.exceptions.iter().map(|e| &**e)
    }

    fn identity(&self, e: &Exception) -> Option<&Identity> {
        self.by_entity.get(&e.subject).and_then(|idx| self.identities.get(*idx))
    }

    fn events_of(&self, id: ExceptionId) -> &[EventRecord] {
        self.events.get(&id).map_or(&[], Vec::as_slice)
    }
}

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    OscalPoam,
    /// The GitOps document `waiver apply` reads.
    Yaml,
}

impl Format {
    pub const NAMES: &'static [&'static str] = &["csv", "json", "oscal-poam", "yaml"];

    /// Parses a format name; the error lists the known ones.
    pub fn parse(s: &str) -> Result<Self, ExportError> {
        match s {
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            "oscal-poam" => Ok(Self::OscalPoam),
            "yaml" => Ok(Self::Yaml),
            other => Err(ExportError::UnknownFormat(waiver_core::id::clip(other).to_string())),
        }
    }

    /// The media type to serve it as.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json | Self::OscalPoam => "application/json",
            Self::Yaml => "application/yaml",
        }
    }

    /// A file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::OscalPoam => "oscal-poam.json",
            Self::Yaml => "yaml",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("`{0}` is not an export format; expected one of `csv`, `json`, `oscal-poam`, `yaml`")]
    UnknownFormat(String),
    #[error("cannot render the export: {0}")]
    Render(String),
}

/// Renders the register in `format`.
pub fn export(register: &Register, format: Format) -> Result<String, ExportError> {
    match format {
        Format::Csv => csv_export::render(register),
        Format::Json => json_export::render(register),
        Format::OscalPoam => oscal::render(register),
        Format::Yaml => gitops(register),
    }
}

/// The GitOps document: every identity, every open exception (with its id) and the
/// baseline's sources — what `waiver apply` reads, so apply → export → apply changes nothing.
fn gitops(register: &Register) -> Result<String, ExportError> {
    use waiver_proto::gitops::{BaselineSources, DesiredIdentity, Document, request_of};
    let now = register.generated_at;
    let mut exceptions = Vec::new();
    for e in register.records().filter(|e| e.is_open(now)) {
        let mut entry = serde_json::to_value(request_of(e)).map_err(|err| ExportError::Render(err.to_string()))?;
        if let serde_json::Value::Object(fields) = &mut entry {
            // The id first, for people reading the file.
            let mut ordered = serde_json::Map::new();
            ordered.insert("id".into(), e.id.to_string().into());
            ordered.extend(std::mem::take(fields).into_iter().filter(|(_, v)| !v.is_null()));
            *fields = ordered;
        }
        exceptions.push(entry);
    }
    let baseline = register.baseline.as_deref().map(|b| {
        let (policies, schema, entities) = b.sources();
        BaselineSources {
            policies: policies.to_owned(),
            schema: schema.map(str::to_owned),
            entities: entities.and_then(|e| serde_json::from_str(e).ok()),
        }
    });
    let document =
        Document { identities: register.identities.iter().map(DesiredIdentity::from).collect(), exceptions, baseline };
    let text = serde_yaml_ng::to_string(&document).map_err(|e| ExportError::Render(e.to_string()))?;
    Ok(format!(
        "# waiver register, exported {now} for `waiver apply` (audit chain: {} events)\n{text}",
        register.chain.as_ref().map_or(0, |c| c.n_events)
    ))
}

/// The framework controls an exception is mapped to, with their titles, in catalog order.
/// The framework controls an exception is mapped to.
pub fn controls(e: &Exception) -> Vec<&'static waiver_core::frameworks::Control> {
    e.frameworks.iter().filter_map(|k| waiver_core::frameworks::control(k)).collect()
}

/// Who approved it, in approval order, each once.
fn approvers(e: &Exception) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in &e.approvals {
        let by = a.by.to_string();
        if !out.contains(&by) {
            out.push(by);
        }
    }
    out
}

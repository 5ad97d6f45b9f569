//! The text a store keeps for a record, which its seal hashes (`waiver_store::seal`). Here,
//! beside the wire shapes, so the store, the exports and an offline verifier produce the
//! same bytes from the same record.

use waiver_core::{Exception, Identity};

/// An exception's stored text: its wire record with usage zeroed (usage is unsealed
/// telemetry kept beside it). The wire types hold strings, numbers, lists and ordered maps
/// only, and serialise their fields in declaration order, so the text is the same for the
/// same record everywhere.
pub fn exception_text(e: &Exception) -> Result<String, serde_json::Error> {
    let mut record = crate::Exception::record(e);
    record.usage = crate::exception::Usage::default();
    serde_json::to_string(&record)
}

/// An identity's stored text.
pub fn identity_text(i: &Identity) -> Result<String, serde_json::Error> {
    serde_json::to_string(&crate::Identity::from(i))
}

/// The [`Terms`](waiver_core::Terms) of an exception's stored text, parsed without the rest
/// of the record: what a serving node compiles at start. Checks what it reads exactly as
/// the whole record's parse does (ids, kinds, states, entities, principals); what it skips
/// was checked when the record was written, and the record's seal proves it unchanged.
pub fn exception_terms(text: &str) -> Result<waiver_core::Terms, String> {
    use std::borrow::Cow;

    use waiver_core::{ControlKind, EntityRef, Kind, Principal, ResourceScope, Scope, State, Waived};

    #[derive(serde::Deserialize)]
    struct Entity<'a> {
        #[serde(rename = "type", borrow)]
        entity_type: Cow<'a, str>,
        #[serde(borrow)]
        id: Cow<'a, str>,
    }
    #[derive(serde::Deserialize)]
    struct Resource<'a> {
        #[serde(rename = "type", borrow)]
        entity_type: Cow<'a, str>,
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(default)]
        descendants: bool,
    }
    #[derive(serde::Deserialize)]
    struct ScopeTerms<'a> {
        actions: Vec<String>,
        #[serde(borrow)]
        resources: Vec<Resource<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Control<'a> {
        #[serde(borrow)]
        kind: Cow<'a, str>,
        #[serde(default = "crate::yes")]
        enforced: bool,
    }
    #[derive(serde::Deserialize)]
    struct Record<'a> {
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow)]
        state: Cow<'a, str>,
        #[serde(borrow)]
        subject: Entity<'a>,
        #[serde(borrow)]
        waives: Vec<Cow<'a, str>>,
        #[serde(borrow)]
        scope: ScopeTerms<'a>,
        condition: Option<String>,
        #[serde(borrow)]
        compensating_controls: Vec<Control<'a>>,
        #[serde(borrow)]
        owner: Cow<'a, str>,
        starts_at: jiff::Timestamp,
        expires_at: jiff::Timestamp,
        version: u64,
    }

    fn fields(errors: Vec<waiver_core::FieldError>) -> String {
        errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    }

    let r: Record<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut resources = Vec::with_capacity(r.scope.resources.len());
    for (idx, res) in r.scope.resources.iter().enumerate() {
        let entity =
            EntityRef::parse_parts(&format!("scope.resources[{idx}]"), &res.entity_type, &res.id).map_err(fields)?;
        resources.push(ResourceScope { entity, descendants: res.descendants });
    }
    let mut obligations = Vec::new();
    for c in &r.compensating_controls {
        let kind = ControlKind::parse(&c.kind)?;
        if c.enforced && kind != ControlKind::Other {
            obligations.push(kind);
        }
    }
    Ok(waiver_core::Terms {
        id: r.id.parse().map_err(|e: waiver_core::id::IdError| e.to_string())?,
        version: r.version,
        kind: Kind::parse(&r.kind)?,
        state: State::parse(&r.state)?,
        subject: EntityRef::parse_parts("subject", &r.subject.entity_type, &r.subject.id).map_err(fields)?,
        waives: r.waives.iter().map(|w| Waived::parse(w)).collect::<Result<_, _>>()?,
        scope: Scope { actions: r.scope.actions, resources },
        condition: r.condition,
        obligations,
        owner: Principal::parse("owner", &r.owner).map_err(|e| e.to_string())?,
        starts_at: r.starts_at,
        expires_at: r.expires_at,
    })
}

/// An exception's terms as one line of a register checkpoint: the stored record's own
/// field names, only the terms' fields, so [`exception_terms`] reads it with the same checks
/// as a whole stored record. Obligations are written as the enforced controls they came
/// from (`{"kind": …}`), which is how a record holds them.
pub fn terms_text(t: &waiver_core::Terms) -> String {
    let resources: Vec<serde_json::Value> = t
        .scope
        .resources
        .iter()
        .map(|r| {
            serde_json::json!({
                "type": r.entity.entity_type().as_str(),
                "id": r.entity.id(),
                "descendants": r.descendants,
            })
        })
        .collect();
    let controls: Vec<serde_json::Value> =
        t.obligations.iter().map(|k| serde_json::json!({ "kind": k.as_str() })).collect();
    serde_json::json!({
        "id": t.id.to_string(),
        "kind": t.kind.as_str(),
        "state": t.state.as_str(),
        "subject": { "type": t.subject.entity_type().as_str(), "id": t.subject.id() },
        "waives": t.waives.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "scope": { "actions": t.scope.actions, "resources": resources },
        "condition": t.condition,
        "compensating_controls": controls,
        "owner": t.owner.as_str(),
        "starts_at": t.starts_at,
        "expires_at": t.expires_at,
        "version": t.version,
    })
    .to_string()
}

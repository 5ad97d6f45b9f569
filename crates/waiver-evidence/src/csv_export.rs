//! One row per exception, for spreadsheets and GRC tools.

use crate::{ExportError, Register, approvers, controls};

const HEADER: &[&str] = &[
    "id",
    "kind",
    "state",
    "subject",
    "identity_kind",
    "team",
    "owner",
    "requester",
    "approvers",
    "risk",
    "credential_type",
    "waives",
    "actions",
    "resources",
    "condition",
    "compensating_controls",
    "justification",
    "normal_path_unavailable",
    "remediation",
    "starts_at",
    "expires_at",
    "renewals",
    "review_next_due",
    "review_overdue",
    "uses",
    "last_used_at",
    "frameworks",
    "created_at",
    "updated_at",
];

/// A cell as a spreadsheet may not run: text starting with `=`, `+`, `-`, `@`, tab or
/// carriage return is a formula to Excel and LibreOffice (CSV injection), so it gets a
/// leading `'`, as OWASP advises. Every other cell is verbatim.
pub fn cell(text: &str) -> String {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_owned(),
    }
}

pub(crate) fn render(register: &Register) -> Result<String, ExportError> {
    let mut out = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
    let fail = |e: csv::Error| ExportError::Render(e.to_string());
    out.write_record(HEADER).map_err(fail)?;
    let now = register.generated_at;
    for e in register.records() {
        let identity = register.identity(e);
        let row = [
            e.id.to_string(),
            e.kind.to_string(),
            e.effective_state(now).to_string(),
            e.subject.to_string(),
            identity.map(|i| i.kind.to_string()).unwrap_or_default(),
            identity.and_then(|i| i.team.clone()).unwrap_or_default(),
            e.owner.to_string(),
            e.requester.to_string(),
            approvers(e).join("; "),
            e.risk.to_string(),
            e.credential_type.to_string(),
            e.waives.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            e.scope.actions.join("; "),
            e.scope
                .resources
                .iter()
                .map(|r| if r.descendants { format!("{} (and descendants)", r.entity) } else { r.entity.to_string() })
                .collect::<Vec<_>>()
                .join("; "),
            e.condition.clone().unwrap_or_default(),
            e.compensating_controls
                .iter()
                .map(|c| format!("{}: {}", c.kind, c.description))
                .collect::<Vec<_>>()
                .join("; "),
            e.justification.clone(),
            e.normal_path_unavailable.clone(),
            e.remediation.as_ref().map(|r| r.plan.clone()).unwrap_or_default(),
            e.starts_at.to_string(),
            e.expires_at.to_string(),
            e.renewals.to_string(),
            e.review.next_due.to_string(),
            e.review_overdue(now).to_string(),
            e.usage.count.to_string(),
            e.usage.last_used_at.map(|t| t.to_string()).unwrap_or_default(),
            controls(e).iter().map(|c| c.key).collect::<Vec<_>>().join("; "),
            e.created_at.to_string(),
            e.updated_at.to_string(),
        ];
        out.write_record(row.iter().map(|c| cell(c))).map_err(fail)?;
    }
    let bytes = out.into_inner().map_err(|e| ExportError::Render(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| ExportError::Render(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn formulas_are_defused() {
        assert_eq!(cell("=HYPERLINK(\"http://x\")"), "'=HYPERLINK(\"http://x\")");
        assert_eq!(cell("-1+1"), "'-1+1");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("ServiceAccount:ci"), "ServiceAccount:ci");
        assert_eq!(cell(""), "");
    }
}

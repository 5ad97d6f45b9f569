//! The built-in control catalog auditors map exceptions to, and the default mapping of an
//! exception to its controls.
//!
//! Rows come from `FRAMEWORKS.md` (OWASP NHI Top 10 2025, NIST CSF 2.0, SP 800-207 tenets,
//! AI RMF 1.0 GOVERN, CSA CCM v4 / AICM, SP 800-53 r5), keyed `framework:control` as its
//! §7 suggests (`owasp-nhi-2025:NHI5`, `nist-800-53r5:AC-2(2)`). Withdrawn CSF 1.1 ids are
//! not in the catalog; `PR.AC-*` inputs are read as their CSF 2.0 successor.

use crate::{CredentialType, Exception, Identity, IdentityKind, IdentityStatus, Kind, Waived};

/// One framework of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framework {
    /// The key prefix: `nist-csf-2.0`.
    pub key: &'static str,
    pub title: &'static str,
}

/// One control (or risk, tenet, subcategory) of a framework.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// `framework:id`, the stable key stored on an exception.
    pub key: &'static str,
    pub title: &'static str,
    /// Why it bears on exception governance.
    pub relevance: &'static str,
}

impl Control {
    /// The framework part of the key.
    pub fn framework(&self) -> &'static str {
        self.key.split_once(':').map_or(self.key, |(f, _)| f)
    }

    /// The control id within its framework (`AC-2(2)`).
    pub fn id(&self) -> &'static str {
        self.key.split_once(':').map_or(self.key, |(_, c)| c)
    }
}

pub const FRAMEWORKS: &[Framework] = &[
    Framework { key: "owasp-nhi-2025", title: "OWASP Top 10 Non-Human Identities Risks 2025" },
    Framework { key: "nist-csf-2.0", title: "NIST Cybersecurity Framework 2.0" },
    Framework { key: "nist-800-207", title: "NIST SP 800-207 Zero Trust Architecture, tenets (§2.1)" },
    Framework { key: "nist-ai-rmf-1.0", title: "NIST AI RMF 1.0, GOVERN function" },
    Framework { key: "csa-ccm-4", title: "CSA Cloud Controls Matrix v4 / AI Controls Matrix" },
    Framework { key: "nist-800-53r5", title: "NIST SP 800-53 Rev. 5" },
];

macro_rules! controls {
    ($($key:literal, $title:literal, $why:literal;)+) => {
        &[$(Control { key: $key, title: $title, relevance: $why }),+]
    };
}

/// Every control of the catalog, grouped by framework in [`FRAMEWORKS`] order.
pub const CONTROLS: &[Control] = controls! {
    "owasp-nhi-2025:NHI1", "Improper Offboarding", "An exception carries an owner and a hard end so it cannot outlive its purpose.";
    "owasp-nhi-2025:NHI2", "Secret Leakage", "Exceptions that allow static secrets are flagged and tracked.";
    "owasp-nhi-2025:NHI3", "Vulnerable Third-Party NHI", "Vendor access needs scope and expiry.";
    "owasp-nhi-2025:NHI4", "Insecure Authentication", "Records accepted use of a weak authentication method until migration.";
    "owasp-nhi-2025:NHI5", "Overprivileged NHI", "The classic temporary elevated access exception.";
    "owasp-nhi-2025:NHI6", "Insecure Cloud Deployment Configurations", "Pipelines not yet on constrained OIDC.";
    "owasp-nhi-2025:NHI7", "Long-Lived Secrets", "The record of an accepted non-rotating secret.";
    "owasp-nhi-2025:NHI8", "Environment Isolation", "A tolerated cross-environment identity.";
    "owasp-nhi-2025:NHI9", "NHI Reuse", "A tolerated shared identity.";
    "owasp-nhi-2025:NHI10", "Human Use of NHI", "Approved break-glass or human use of a service identity.";
    "nist-csf-2.0:GV.RM-04", "Strategic direction that describes appropriate risk response options is established and communicated", "Defines when accepting a risk is allowed.";
    "nist-csf-2.0:GV.RM-06", "A standardized method for calculating, documenting, categorizing, and prioritizing cybersecurity risks is established and communicated", "Consistent risk rating of each exception.";
    "nist-csf-2.0:GV.PO-02", "Policy for managing cybersecurity risks is reviewed, updated, communicated, and enforced", "Recurring exceptions signal the policy needs revising.";
    "nist-csf-2.0:GV.OV-03", "Organizational cybersecurity risk management performance is evaluated and reviewed for adjustments needed", "Open, expired and overdue exceptions as metrics.";
    "nist-csf-2.0:GV.RR-02", "Roles, responsibilities, and authorities related to cybersecurity risk management are established, communicated, understood, and enforced", "Who may request, approve and renew exceptions.";
    "nist-csf-2.0:ID.RA-06", "Risk responses are chosen, prioritized, planned, tracked, and communicated", "Accept or mitigate, tracked as a plan of action.";
    "nist-csf-2.0:ID.RA-07", "Changes and exceptions are managed, assessed for risk impact, recorded, and tracked", "The subcategory that names exceptions.";
    "nist-csf-2.0:PR.AA-01", "Identities and credentials for authorized users, services, and hardware are managed by the organization", "Covers service identities and their credentials.";
    "nist-csf-2.0:PR.AA-03", "Users, services, and hardware are authenticated", "Weak-authentication exceptions deviate here.";
    "nist-csf-2.0:PR.AA-05", "Access permissions, entitlements, and authorizations are defined in a policy, managed, enforced, and reviewed, and incorporate the principles of least privilege and separation of duties", "The control an over-privilege exception deviates from.";
    "nist-csf-2.0:DE.CM-03", "Personnel activity and technology usage are monitored to find potentially adverse events", "Monitoring the use of an excepted identity.";
    "nist-csf-2.0:DE.CM-06", "External service provider activities and services are monitored to find potentially adverse events", "Third-party identity exceptions.";
    "nist-800-207:tenet-3", "Access to individual enterprise resources is granted on a per-session basis", "Exceptions are time-boxed and per-resource, never standing.";
    "nist-800-207:tenet-4", "Access is determined by dynamic policy", "An exception is a policy input with conditions, not a blanket bypass.";
    "nist-800-207:tenet-5", "The enterprise monitors and measures the integrity and security posture of all owned and associated assets", "Compensating monitoring for excepted identities.";
    "nist-800-207:tenet-6", "All resource authentication and authorization are dynamic and strictly enforced before access is allowed", "Re-evaluated at every decision; no carry-over past expiry.";
    "nist-800-207:tenet-7", "The enterprise collects information about asset, network and communication state to improve its security posture", "Exception history feeds policy improvement.";
    "nist-ai-rmf-1.0:GOVERN-1.5", "Ongoing monitoring and periodic review of the risk management process are planned, roles defined, review frequency set", "Exception review cadence and owners.";
    "nist-ai-rmf-1.0:GOVERN-1.6", "Mechanisms are in place to inventory AI systems, resourced by risk priority", "Inventory of agents holding exceptions.";
    "nist-ai-rmf-1.0:GOVERN-2.1", "Roles, responsibilities and lines of communication for AI risks are documented and clear", "A named owner and approver per agent exception.";
    "nist-ai-rmf-1.0:GOVERN-3.2", "Policies define and differentiate roles and responsibilities for human-AI configurations and oversight of AI systems", "A human accountable for each agent's access.";
    "nist-ai-rmf-1.0:GOVERN-6.1", "Policies address AI risks associated with third-party entities", "Third-party agent and tool access exceptions.";
    "csa-ccm-4:IAM-04", "Separation of Duties", "The requester never approves an exception.";
    "csa-ccm-4:IAM-10", "Management of Privileged Access Roles", "Privileged access granted for a time-limited period.";
    "csa-ccm-4:IAM-18", "Agent Access Restriction (AICM)", "Agents restricted to the tools they need.";
    "nist-800-53r5:AC-2", "Account Management", "Approvals, monitoring and periodic review of accounts.";
    "nist-800-53r5:AC-2(2)", "Automated Temporary and Emergency Account Management", "Temporary and emergency access removed automatically after a period.";
    "nist-800-53r5:AC-2(12)", "Account Monitoring for Atypical Usage", "Compensating monitoring while an exception is open.";
    "nist-800-53r5:AC-6", "Least Privilege", "The principle an over-privilege exception deviates from.";
    "nist-800-53r5:AC-6(7)", "Review of User Privileges", "Periodic review, renewal and expiry.";
    "nist-800-53r5:AC-6(9)", "Log Use of Privileged Functions", "Evidence of what was done under elevated access.";
    "nist-800-53r5:IA-5", "Authenticator Management", "Long-lived secrets that are not refreshed.";
    "nist-800-53r5:IA-9", "Service Identification and Authentication", "Services uniquely identified and authenticated.";
    "nist-800-53r5:CA-5", "Plan of Action and Milestones", "An exception is a POA&M item with a deadline.";
    "nist-800-53r5:CA-6", "Authorization", "An accountable official explicitly accepts the risk.";
    "nist-800-53r5:RA-7", "Risk Response", "Accepting risk with a recorded justification.";
    "nist-800-53r5:CM-6", "Configuration Settings", "Deviations are identified, documented and approved.";
    "nist-800-53r5:AU-6", "Audit Record Review, Analysis, and Reporting", "Review of excepted identities' activity.";
};

/// CSF 1.1 `PR.AC` ids read as their CSF 2.0 successor (the first, where several).
const CSF_ALIASES: &[(&str, &str)] = &[
    ("nist-csf-2.0:PR.AC-01", "nist-csf-2.0:PR.AA-01"),
    ("nist-csf-2.0:PR.AC-03", "nist-csf-2.0:PR.AA-03"),
    ("nist-csf-2.0:PR.AC-04", "nist-csf-2.0:PR.AA-05"),
    ("nist-csf-2.0:PR.AC-07", "nist-csf-2.0:PR.AA-03"),
];

/// The control a key names, reading legacy aliases. Keys compare case-insensitively.
pub fn control(key: &str) -> Option<&'static Control> {
    let key = CSF_ALIASES.iter().find(|(alias, _)| alias.eq_ignore_ascii_case(key)).map_or(key, |(_, to)| to);
    CONTROLS.iter().find(|c| c.key.eq_ignore_ascii_case(key))
}

/// Parses a mapping as given on a request: the catalog's key, or an error naming what is
/// wrong (an unknown framework lists the known ones).
pub fn parse(key: &str) -> Result<&'static Control, String> {
    if let Some(c) = control(key) {
        return Ok(c);
    }
    let shown = crate::id::clip(key);
    match key.split_once(':') {
        Some((framework, _)) if FRAMEWORKS.iter().any(|f| f.key.eq_ignore_ascii_case(framework)) => {
            Err(format!("`{shown}` is not a control of the built-in `{framework}` catalog"))
        }
        _ => Err(format!(
            "`{shown}` is not a framework control; expected `FRAMEWORK:CONTROL` with FRAMEWORK one of {}",
            FRAMEWORKS.iter().map(|f| format!("`{}`", f.key)).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The controls every exception bears on, whatever it is.
const ALWAYS: &[&str] = &[
    "nist-csf-2.0:ID.RA-07",
    "nist-800-53r5:CA-5",
    "nist-800-53r5:AC-6",
    "nist-800-53r5:RA-7",
    "nist-800-53r5:AC-6(7)",
    "csa-ccm-4:IAM-04",
    "nist-800-207:tenet-3",
];

/// The default mapping, derived from what the exception is and who holds it: every
/// exception is a tracked, approved, reviewed deviation (CSF ID.RA-07, 800-53
/// CA-5/AC-6/RA-7/AC-6(7), CCM IAM-04); a long-lived secret adds NHI7 and IA-5; break-glass adds NHI10 and AC-2(2); an
/// agent adds the AI RMF's accountability rows; an exception to the default deny or a
/// forbid is an over-privilege (NHI5, PR.AA-05); a vendor's identity adds NHI3.
pub fn default_mapping(e: &Exception, identity: Option<&Identity>) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = ALWAYS.to_vec();
    let mut add = |more: &[&'static str]| keys.extend_from_slice(more);
    if !e.waives.is_empty() {
        add(&["owasp-nhi-2025:NHI5", "nist-csf-2.0:PR.AA-05"]);
    }
    if e.waives.iter().any(|w| matches!(w, Waived::DefaultDeny)) {
        add(&["csa-ccm-4:IAM-10"]);
    }
    match e.credential_type {
        CredentialType::LongLivedSecret | CredentialType::ApiKey => {
            add(&["owasp-nhi-2025:NHI7", "nist-800-53r5:IA-5"]);
        }
        CredentialType::AgentToken => add(&["nist-ai-rmf-1.0:GOVERN-2.1"]),
        CredentialType::JitCredential
        | CredentialType::WorkloadToken
        | CredentialType::Certificate
        | CredentialType::Other => {}
    }
    if e.kind == Kind::BreakGlass {
        add(&["owasp-nhi-2025:NHI10", "nist-800-53r5:AC-2(2)", "nist-800-53r5:AC-6(9)"]);
    }
    if !e.compensating_controls.is_empty() {
        add(&["nist-800-53r5:AC-2(12)"]);
    }
    if let Some(identity) = identity {
        match identity.kind {
            IdentityKind::Agent => {
                add(&["nist-ai-rmf-1.0:GOVERN-2.1", "nist-ai-rmf-1.0:GOVERN-3.2", "csa-ccm-4:IAM-18"]);
            }
            IdentityKind::Pipeline => add(&["owasp-nhi-2025:NHI6"]),
            IdentityKind::ServiceAccount
            | IdentityKind::ApiKey
            | IdentityKind::Workload
            | IdentityKind::Bot
            | IdentityKind::Other => {}
        }
        if identity.attributes.contains_key("vendor") {
            add(&["owasp-nhi-2025:NHI3", "nist-csf-2.0:DE.CM-06"]);
            if identity.kind == IdentityKind::Agent {
                add(&["nist-ai-rmf-1.0:GOVERN-6.1"]);
            }
        }
        if identity.status == IdentityStatus::Offboarded {
            add(&["owasp-nhi-2025:NHI1"]);
        }
    }
    sorted(keys)
}

/// Keys in catalog order, each once.
pub fn sorted(mut keys: Vec<&'static str>) -> Vec<&'static str> {
    let rank = |k: &str| CONTROLS.iter().position(|c| c.key == k).unwrap_or(usize::MAX);
    keys.sort_by_key(|k| (rank(k), *k));
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_unique_and_names_a_known_framework() {
        let mut keys: Vec<_> = CONTROLS.iter().map(|c| c.key).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "duplicate control keys");
        for c in CONTROLS {
            assert!(FRAMEWORKS.iter().any(|f| f.key == c.framework()), "{} has no framework", c.key);
        }
        for key in ALWAYS {
            assert!(control(key).is_some(), "{key} is in the catalog");
        }
    }

    #[test]
    fn parse_reads_aliases_and_names_what_is_wrong() {
        assert_eq!(parse("nist-csf-2.0:PR.AC-04").map(|c| c.key), Ok("nist-csf-2.0:PR.AA-05"));
        assert_eq!(parse("OWASP-NHI-2025:nhi7").map(|c| c.key), Ok("owasp-nhi-2025:NHI7"));
        let e = parse("nist-800-53r5:ZZ-9").unwrap_err();
        assert!(e.contains("not a control of the built-in `nist-800-53r5` catalog"), "{e}");
        let e = parse("iso-27001:A.5.15").unwrap_err();
        assert!(e.contains("`owasp-nhi-2025`"), "{e}");
    }
}

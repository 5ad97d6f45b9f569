//! The OpenAPI 3.1 document, generated from the handlers and wire types.

use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::rest;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("wvr_…").build()),
        );
        openapi.security =
            Some(vec![utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "waiver", description = "Governed exceptions to access policy for non-human identities: the governance REST API (CONTRACT.md §3). Errors are RFC 9457 problem documents."),
    modifiers(&BearerAuth),
    paths(
        rest::list_exceptions, rest::create_exception, rest::get_exception, rest::exception_events,
        rest::approve, rest::reject, rest::withdraw, rest::revoke, rest::attest, rest::end_break_glass,
        rest::post_use_review, rest::renew, rest::set_frameworks, rest::transfer, rest::accept_transfer,
        rest::activate_break_glass, rest::inbox, rest::list_people, rest::add_person, rest::offboard_person, rest::person_notifications,
        rest::list_identities, rest::add_identity, rest::get_identity, rest::update_identity,
        rest::offboard_identity, rest::identity_change,
        rest::get_baseline, rest::put_baseline,
        rest::audit_events, rest::audit_verify, rest::get_artifact, rest::put_rules,
        rest::list_tokens, rest::issue_token, rest::revoke_token, rest::rotate_token,
        rest::list_webhooks, rest::create_webhook, rest::delete_webhook,
        crate::evidence::export, crate::evidence::report, crate::evidence::import,
    ),
    tags(
        (name = "exceptions", description = "The register and the lifecycle"),
        (name = "break-glass", description = "Emergency access, active at once, reviewed after"),
        (name = "identities", description = "The inventory of non-human identities"),
        (name = "baseline", description = "The Cedar baseline exceptions waive"),
        (name = "audit", description = "The hash-chained event log"),
        (name = "evidence", description = "Exports for auditors (CSV, JSON, OSCAL POA&M) and reports"),
        (name = "people", description = "The people directory: owners and approvers"),
        (name = "tokens", description = "API tokens (admin)"),
        (name = "webhooks", description = "CloudEvents over Standard Webhooks (admin)"),
    )
)]
pub(crate) struct ApiDoc;

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or(serde_json::Value::Null)
}

//! SCIM 2.0 provisioning of people (RFC 7643/7644), the subset Entra ID and Okta send for
//! users: create, read, filter by `userName`, replace, patch `active` (and email or display
//! name), delete. The provisioning client authenticates with an admin bearer token. A user
//! set inactive or deleted is offboarded exactly as `waiver person offboard` does it.
//! Groups (`/scim/v2/Groups`): create, read, filter by `displayName`, replace, patch
//! members (add, remove, replace) and the name, delete. A group's name maps to waiver roles
//! through an issuer's `groups` table, as a group claim does at sign-in.

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use waiver_core::Role;
use waiver_service::{ServiceError, people::Provisioned};

use crate::{
    ApiState,
    rest::{Caller, body, require_before_body},
};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const LIST: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

fn scim(status: StatusCode, value: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/scim+json")], Json(value)).into_response()
}

/// A SCIM error document (RFC 7644 §3.12).
fn error(status: u16, detail: impl Into<String>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    scim(code, json!({ "schemas": [ERROR], "status": status.to_string(), "detail": detail.into() }))
}

fn failed(e: ServiceError) -> Response {
    let problem = e.problem();
    let mut detail = problem.detail;
    for f in &problem.errors {
        detail.push_str(&format!(" ({}: {})", f.field, f.message));
    }
    error(problem.status, detail)
}

fn user(p: &waiver_service::people::Person) -> Value {
    let mut v = json!({
        "schemas": [USER],
        "id": p.name,
        "userName": p.name,
        "active": p.is_active(),
        "meta": { "resourceType": "User", "created": p.added_at, "location": format!("/scim/v2/Users/{}", p.name) },
    });
    if let Some(map) = v.as_object_mut() {
        if let Some(email) = &p.email {
            map.insert("emails".into(), json!([{ "value": email, "primary": true }]));
        }
        if let Some(name) = &p.display_name {
            map.insert("displayName".into(), json!(name));
        }
    }
    v
}

/// `true`/`false` as JSON, or as the strings Entra ID sends (`"False"`).
fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn primary_email(v: &Value) -> Option<String> {
    let emails = v.as_array()?;
    let pick = emails.iter().find(|e| e.get("primary").and_then(truthy) == Some(true)).or_else(|| emails.first())?;
    pick.get("value").and_then(Value::as_str).map(str::to_owned)
}

/// A full SCIM user (POST, PUT) as waiver keeps it.
fn provisioned(v: &Value, name_from_path: Option<&str>) -> Result<Provisioned, String> {
    let user_name = v
        .get("userName")
        .and_then(Value::as_str)
        .or(name_from_path)
        .ok_or_else(|| "`userName` is required".to_owned())?;
    if name_from_path.is_some_and(|n| !n.eq_ignore_ascii_case(user_name)) {
        return Err("`userName` cannot change; deprovision and provision again".into());
    }
    Ok(Provisioned {
        user_name: user_name.to_owned(),
        active: v.get("active").map_or(Some(true), truthy).ok_or_else(|| "`active` is not a boolean".to_owned())?,
        email: v.get("emails").and_then(primary_email),
        display_name: v.get("displayName").and_then(Value::as_str).map(str::to_owned),
    })
}

/// The body of a provisioning call, read only once the caller may provision.
async fn provisioning_body(actor: &waiver_core::Actor, raw: Body) -> Result<Value, Response> {
    let raw = require_before_body(actor, "provision people", &[Role::Admin], raw)
        .await
        .map_err(IntoResponse::into_response)?;
    body(raw).await.map_err(IntoResponse::into_response)
}

async fn find(api: &ApiState, name: &str) -> Result<waiver_service::people::Person, Response> {
    let directory = api.service.directory().await.map_err(failed)?;
    let key = name.to_lowercase();
    directory
        .directory
        .people
        .get(&key)
        .cloned()
        .ok_or_else(|| error(404, format!("no user `{}`", waiver_core::id::clip(name))))
}

/// The value of a `ATTR eq "VALUE"` filter (the one Entra ID and Okta send), or why any
/// other filter is refused.
fn eq_filter(filter: Option<&str>, attribute: &str) -> Result<Option<String>, String> {
    let refuse = || format!("only `{attribute} eq \"NAME\"` filters are supported");
    match filter.map(str::trim) {
        None | Some("") => Ok(None),
        Some(f) => match f.split_once(' ') {
            Some((attr, rest)) if attr.eq_ignore_ascii_case(attribute) => match rest.trim().split_once(' ') {
                Some((op, value)) if op.eq_ignore_ascii_case("eq") => {
                    Ok(Some(value.trim().trim_matches('"').to_owned()))
                }
                _ => Err(refuse()),
            },
            _ => Err(refuse()),
        },
    }
}

/// The list's paging and filter (`userName eq "sam"`, the one Entra ID and Okta use).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListParams {
    filter: Option<String>,
    #[serde(rename = "startIndex")]
    start_index: Option<usize>,
    count: Option<usize>,
}

pub(crate) async fn list_users(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Query(p): Query<ListParams>,
) -> Response {
    if let Err(e) = waiver_service::require(&actor, "read provisioned users", &[Role::Admin]) {
        return failed(e);
    }
    let wanted = match eq_filter(p.filter.as_deref(), "userName") {
        Ok(w) => w.map(|w| w.to_lowercase()),
        Err(why) => return error(400, why),
    };
    let directory = match api.service.directory().await {
        Ok(d) => d.directory,
        Err(e) => return failed(e),
    };
    let matching: Vec<&waiver_service::people::Person> =
        directory.people.values().filter(|p| wanted.as_deref().is_none_or(|w| p.name == w)).collect();
    let start = p.start_index.unwrap_or(1).max(1);
    let count = p.count.unwrap_or(100).min(500);
    let page: Vec<Value> = matching.iter().skip(start - 1).take(count).map(|p| user(p)).collect();
    scim(
        StatusCode::OK,
        json!({ "schemas": [LIST], "totalResults": matching.len(), "startIndex": start,
                "itemsPerPage": page.len(), "Resources": page }),
    )
}

pub(crate) async fn create_user(State(api): State<ApiState>, Caller(actor): Caller, raw: Body) -> Response {
    let v = match provisioning_body(&actor, raw).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let wanted = match provisioned(&v, None) {
        Ok(p) => p,
        Err(why) => return error(400, why),
    };
    match api.service.provision(&actor, wanted, true).await {
        Ok(p) => scim(StatusCode::CREATED, user(&p)),
        Err(ServiceError::Conflict(detail)) => scim(
            StatusCode::CONFLICT,
            json!({ "schemas": [ERROR], "status": "409", "scimType": "uniqueness", "detail": detail }),
        ),
        Err(e) => failed(e),
    }
}

pub(crate) async fn get_user(State(api): State<ApiState>, Caller(actor): Caller, Path(id): Path<String>) -> Response {
    if let Err(e) = waiver_service::require(&actor, "read provisioned users", &[Role::Admin]) {
        return failed(e);
    }
    match find(&api, &id).await {
        Ok(p) => scim(StatusCode::OK, user(&p)),
        Err(r) => r,
    }
}

pub(crate) async fn replace_user(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    raw: Body,
) -> Response {
    let v = match provisioning_body(&actor, raw).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = find(&api, &id).await {
        return r;
    }
    let wanted = match provisioned(&v, Some(&id)) {
        Ok(p) => p,
        Err(why) => return error(400, why),
    };
    match api.service.provision(&actor, wanted, false).await {
        Ok(p) => scim(StatusCode::OK, user(&p)),
        Err(e) => failed(e),
    }
}

/// `PatchOp`: `replace`/`add` of `active`, `emails`, `displayName`, with or without a path
/// (`{"op": "Replace", "path": "active", "value": "False"}` from Entra ID,
/// `{"op": "replace", "value": {"active": false}}` from Okta).
pub(crate) async fn patch_user(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    raw: Body,
) -> Response {
    let v = match provisioning_body(&actor, raw).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let current = match find(&api, &id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut wanted = Provisioned {
        user_name: current.name.clone(),
        active: current.is_active(),
        email: current.email.clone(),
        display_name: current.display_name.clone(),
    };
    let Some(ops) = v.get("Operations").and_then(Value::as_array) else {
        return error(400, "`Operations` is required");
    };
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or_default().to_lowercase();
        if kind != "replace" && kind != "add" {
            return error(
                400,
                format!("`{}` operations are not supported; use `replace`", waiver_core::id::clip(&kind)),
            );
        }
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        let pairs: Vec<(String, Value)> = match op.get("path").and_then(Value::as_str) {
            Some(path) => vec![(path.to_owned(), value)],
            None => value.as_object().map(|m| m.clone().into_iter().collect()).unwrap_or_default(),
        };
        for (path, value) in pairs {
            match path.as_str() {
                "active" => match truthy(&value) {
                    Some(active) => wanted.active = active,
                    None => return error(400, "`active` is not a boolean"),
                },
                "displayName" => wanted.display_name = value.as_str().map(str::to_owned),
                p if p.starts_with("emails") => {
                    wanted.email = primary_email(&value).or_else(|| value.as_str().map(str::to_owned))
                }
                // Attributes waiver does not keep (name parts, titles) are accepted and ignored.
                _ => {}
            }
        }
    }
    match api.service.provision(&actor, wanted, false).await {
        Ok(p) => scim(StatusCode::OK, user(&p)),
        Err(e) => failed(e),
    }
}

/// Deleting a user is deprovisioning: offboarded, tokens revoked, what they own held.
pub(crate) async fn delete_user(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = waiver_service::require(&actor, "provision people", &[Role::Admin]) {
        return failed(e);
    }
    let current = match find(&api, &id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let gone = Provisioned {
        user_name: current.name,
        active: false,
        email: current.email,
        display_name: current.display_name,
    };
    match api.service.provision(&actor, gone, false).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}

/// What this server supports, for the provisioning client's discovery.
pub(crate) async fn service_provider_config() -> Response {
    scim(
        StatusCode::OK,
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "patch": { "supported": true },
            "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": 0 },
            "filter": { "supported": true, "maxResults": 500 },
            "changePassword": { "supported": false },
            "sort": { "supported": false },
            "etag": { "supported": false },
            "authenticationSchemes": [{ "type": "oauthbearertoken", "name": "Bearer token",
                "description": "An admin token issued by `waiver token issue --roles admin`" }],
        }),
    )
}

fn group(g: &waiver_service::people::Group) -> Value {
    json!({
        "schemas": [GROUP],
        "id": g.id,
        "displayName": g.display_name,
        "members": g.members.iter().map(|m| json!({ "value": m, "display": m })).collect::<Vec<_>>(),
        "meta": { "resourceType": "Group", "location": format!("/scim/v2/Groups/{}", g.id) },
    })
}

/// The member names of a `members` value: `[{"value": "sam"}, …]`.
fn member_values(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|m| {
                m.get("value")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| "each member is `{\"value\": \"USER ID\"}`".to_owned())
            })
            .collect(),
        _ => Err("`members` is a list".into()),
    }
}

async fn find_group(api: &ApiState, id: &str) -> Result<waiver_service::people::Group, Response> {
    let directory = api.service.directory().await.map_err(failed)?;
    directory
        .directory
        .groups
        .get(id)
        .cloned()
        .ok_or_else(|| error(404, format!("no group `{}`", waiver_core::id::clip(id))))
}

pub(crate) async fn list_groups(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Query(p): Query<ListParams>,
) -> Response {
    if let Err(e) = waiver_service::require(&actor, "read provisioned groups", &[Role::Admin]) {
        return failed(e);
    }
    let wanted = match eq_filter(p.filter.as_deref(), "displayName") {
        Ok(w) => w,
        Err(why) => return error(400, why),
    };
    let directory = match api.service.directory().await {
        Ok(d) => d.directory,
        Err(e) => return failed(e),
    };
    let matching: Vec<&waiver_service::people::Group> = directory
        .groups
        .values()
        .filter(|g| wanted.as_deref().is_none_or(|w| g.display_name.eq_ignore_ascii_case(w)))
        .collect();
    let start = p.start_index.unwrap_or(1).max(1);
    let count = p.count.unwrap_or(100).min(500);
    let page: Vec<Value> = matching.iter().skip(start - 1).take(count).map(|g| group(g)).collect();
    scim(
        StatusCode::OK,
        json!({ "schemas": [LIST], "totalResults": matching.len(), "startIndex": start,
                "itemsPerPage": page.len(), "Resources": page }),
    )
}

async fn group_body(actor: &waiver_core::Actor, raw: Body) -> Result<Value, Response> {
    let raw = require_before_body(actor, "provision groups", &[Role::Admin], raw)
        .await
        .map_err(IntoResponse::into_response)?;
    body(raw).await.map_err(IntoResponse::into_response)
}

pub(crate) async fn create_group(State(api): State<ApiState>, Caller(actor): Caller, raw: Body) -> Response {
    let v = match group_body(&actor, raw).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(name) = v.get("displayName").and_then(Value::as_str) else {
        return error(400, "`displayName` is required");
    };
    let members = match member_values(v.get("members").unwrap_or(&Value::Null)) {
        Ok(m) => m,
        Err(why) => return error(400, why),
    };
    match api.service.group_put(&actor, None, name, members).await {
        Ok(g) => scim(StatusCode::CREATED, group(&g)),
        Err(ServiceError::Conflict(detail)) => scim(
            StatusCode::CONFLICT,
            json!({ "schemas": [ERROR], "status": "409", "scimType": "uniqueness", "detail": detail }),
        ),
        Err(e) => failed(e),
    }
}

pub(crate) async fn get_group(State(api): State<ApiState>, Caller(actor): Caller, Path(id): Path<String>) -> Response {
    if let Err(e) = waiver_service::require(&actor, "read provisioned groups", &[Role::Admin]) {
        return failed(e);
    }
    match find_group(&api, &id).await {
        Ok(g) => scim(StatusCode::OK, group(&g)),
        Err(r) => r,
    }
}

pub(crate) async fn replace_group(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    raw: Body,
) -> Response {
    let v = match group_body(&actor, raw).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let current = match find_group(&api, &id).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let name = v.get("displayName").and_then(Value::as_str).unwrap_or(&current.display_name).to_owned();
    let members = match member_values(v.get("members").unwrap_or(&Value::Null)) {
        Ok(m) => m,
        Err(why) => return error(400, why),
    };
    match api.service.group_put(&actor, Some(&id), &name, members).await {
        Ok(g) => scim(StatusCode::OK, group(&g)),
        Err(e) => failed(e),
    }
}

/// `PatchOp` on a group: `add`/`remove`/`replace` of `members` (Entra ID removes with
/// `"path": "members[value eq \"ID\"]"`, Okta with a `value` list) and `replace` of
/// `displayName`.
pub(crate) async fn patch_group(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    raw: Body,
) -> Response {
    let v = match group_body(&actor, raw).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let current = match find_group(&api, &id).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let (mut name, mut members) = (current.display_name.clone(), current.members.clone());
    let Some(ops) = v.get("Operations").and_then(Value::as_array) else {
        return error(400, "`Operations` is required");
    };
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or_default().to_lowercase();
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
        // `members[value eq "sam"]`: the one member the path names.
        let filtered = path
            .strip_prefix("members[value eq ")
            .and_then(|rest| rest.strip_suffix(']'))
            .map(|v| v.trim().trim_matches('"').to_owned());
        let listed = match (&filtered, path) {
            (Some(one), _) => Ok(vec![one.clone()]),
            (None, "members") => member_values(&value),
            (None, "") => match value.get("members") {
                Some(m) => member_values(m),
                None => Ok(Vec::new()),
            },
            _ => Ok(Vec::new()),
        };
        let listed = match listed {
            Ok(l) => l,
            Err(why) => return error(400, why),
        };
        match kind.as_str() {
            "add" => {
                for m in listed {
                    if !members.iter().any(|x| x.eq_ignore_ascii_case(&m)) {
                        members.push(m);
                    }
                }
            }
            "remove" => members.retain(|x| !listed.iter().any(|m| m.eq_ignore_ascii_case(x))),
            "replace" => {
                if path == "members" || value.get("members").is_some() {
                    members = listed;
                }
                let renamed = if path == "displayName" {
                    value.as_str()
                } else {
                    value.get("displayName").and_then(Value::as_str)
                };
                if let Some(n) = renamed {
                    n.clone_into(&mut name);
                }
            }
            other => {
                return error(400, format!("`{}` operations are not supported", waiver_core::id::clip(other)));
            }
        }
    }
    match api.service.group_put(&actor, Some(&id), &name, members).await {
        Ok(g) => scim(StatusCode::OK, group(&g)),
        Err(e) => failed(e),
    }
}

pub(crate) async fn delete_group(
    State(api): State<ApiState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Response {
    match api.service.group_delete(&actor, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failed(e),
    }
}

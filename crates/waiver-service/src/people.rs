//! The people waiver knows. Owners are people in this directory, never a free string; a
//! person leaving (offboarded) takes their tokens with them and holds (or flags) what they
//! own until someone accepts it.
//!
//! The directory is one JSON document, an artifact of the log like the baseline and the
//! rules: each change writes a new version sealed by its `person.*` event in the same commit,
//! naming the version it replaces, so two writers never lose each other's change. People
//! enter it when an admin adds them, when a token is issued to them, and when an admin names
//! them as an identity's owner; sign-in and SCIM will add them the same way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use waiver_core::{Actor, FieldError, Principal, RevalidationTrigger, Role, ValidationError, audit::EventDraft};
use waiver_store::{Artifact, Commit, ExceptionFilter, Write};

use crate::{Service, ServiceError, events, require};

/// The artifact kind (and seal key) of the directory.
pub const KIND: &str = "people";

pub use waiver_proto::Person;

/// The directory document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub people: BTreeMap<String, Person>,
    /// Groups an identity provider provisions (SCIM `Group`), by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Group>,
}

/// A group of people as the identity provider keeps it. Its `display_name` maps to waiver
/// roles through an issuer's `groups` table, as a group claim does at sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub id: String,
    pub display_name: String,
    /// People, by name.
    pub members: Vec<String>,
}

impl Directory {
    /// The display names of the groups `person` belongs to.
    pub fn groups_of(&self, person: &str) -> Vec<String> {
        self.groups.values().filter(|g| g.members.iter().any(|m| m == person)).map(|g| g.display_name.clone()).collect()
    }
}

/// The directory as read, with the digest of the version it is (`None`: none yet).
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub digest: Option<String>,
    pub directory: Directory,
}

impl Held {
    /// Refuses `owner` unless it is an active person (named for the `field`).
    pub fn check_owner(&self, field: &str, owner: &Principal) -> Result<(), FieldError> {
        match self.directory.people.get(owner.as_str()) {
            Some(p) if p.is_active() => Ok(()),
            Some(_) => Err(FieldError::new(field, format!("`{owner}` has left (offboarded); name a current person"))),
            None if owner.as_entity().is_some() => {
                Err(FieldError::new(field, format!("`{owner}` is a workload; an owner is a person")))
            }
            None => Err(FieldError::new(
                field,
                format!("`{owner}` is not a person waiver knows; an admin adds people (`waiver person add`)"),
            )),
        }
    }

    /// The people `names` adds that the directory lacks (or holds as offboarded: they are
    /// not brought back silently).
    fn missing<'a>(&self, names: impl IntoIterator<Item = &'a Principal>) -> Vec<Principal> {
        let mut out: Vec<Principal> = Vec::new();
        for name in names {
            if name.as_entity().is_none()
                && *name != Principal::system()
                && !self.directory.people.contains_key(name.as_str())
                && !out.contains(name)
            {
                out.push(name.clone());
            }
        }
        out
    }

    /// A new version adding `names`, its event, and the artifact (replacing this one); `None`
    /// when nobody is new.
    fn adding(
        &self,
        by: &Principal,
        at: jiff::Timestamp,
        names: &[Principal],
        via: &str,
    ) -> Option<(EventDraft, Artifact)> {
        let names = self.missing(names);
        if names.is_empty() {
            return None;
        }
        let mut next = self.directory.clone();
        let added_at = waiver_core::canonical::timestamp(at);
        for name in &names {
            next.people.insert(name.to_string(), Person::new(name.as_str(), via, by.as_str(), &added_at));
        }
        let names: Vec<&str> = names.iter().map(Principal::as_str).collect();
        Some(self.version(next, event(by, at, "person.added", json!({ "people": names, "via": via }))))
    }

    fn version(&self, next: Directory, mut event: EventDraft) -> (EventDraft, Artifact) {
        let body = render(&next);
        if let serde_json::Value::Object(map) = &mut event.data {
            map.insert("artifact".into(), json!(waiver_store::seal::digest(&body)));
            map.insert("previous".into(), json!(self.digest));
        }
        (event, Artifact { kind: KIND.into(), body, replaces: Some(self.digest.clone()) })
    }
}

fn render(directory: &Directory) -> String {
    // A BTreeMap of plain strings: serialising cannot fail, and the output is canonical.
    serde_json::to_string_pretty(directory).unwrap_or_default()
}

fn event(by: &Principal, at: jiff::Timestamp, event_type: &str, data: serde_json::Value) -> EventDraft {
    EventDraft { at, actor: by.clone(), event_type: event_type.into(), exception_id: None, data }
}

/// What offboarding a person did.
#[derive(Debug, Clone, Default)]
pub struct PersonOffboarded {
    pub person: Option<Person>,
    pub tokens_revoked: Vec<String>,
    /// Exceptions they owned that are now held (or flagged) until a new owner accepts them.
    pub exceptions: Vec<waiver_core::ExceptionId>,
    /// Those exceptions as recorded now (a serving node applies them to its decisions).
    pub changed: Vec<waiver_core::Exception>,
}

impl Service {
    /// The directory as the log has it.
    pub async fn directory(&self) -> Result<Held, ServiceError> {
        match self.store.artifact_at(KIND, None).await? {
            None => Ok(Held::default()),
            Some(held) => {
                let directory = serde_json::from_str(&held.body).map_err(|e| {
                    ServiceError::Store(waiver_store::StoreError::Corrupt(format!(
                        "the people directory put in force by event {}: {e}",
                        held.seq
                    )))
                })?;
                Ok(Held { digest: Some(held.digest), directory })
            }
        }
    }

    /// Every person, for anyone who may read the register.
    pub async fn people(&self, actor: &Actor) -> Result<Vec<Person>, ServiceError> {
        require(actor, "read the people directory", crate::READERS)?;
        Ok(self.directory().await?.directory.people.into_values().collect())
    }

    /// An admin adds a person.
    pub async fn person_add(&self, actor: &Actor, name: &str) -> Result<Person, ServiceError> {
        require(actor, "add people", &[Role::Admin])?;
        let name = Principal::parse("name", name).map_err(ValidationError::one)?;
        if name.as_entity().is_some() || name == Principal::system() {
            return Err(ValidationError::one(FieldError::new(
                "name",
                format!("`{name}` is a workload or waiver itself; people are named plainly (`sam`)"),
            ))
            .into());
        }
        let name = &name;
        self.retrying(move || async move {
            let held = self.directory().await?;
            if let Some(person) = held.directory.people.get(name.as_str()) {
                return Err(ServiceError::Conflict(format!(
                    "`{name}` is already in the directory ({})",
                    person.status
                )));
            }
            let now = self.clock.now();
            let (event, artifact) = held
                .adding(&actor.principal, now, std::slice::from_ref(name), "admin")
                .ok_or_else(|| ServiceError::Conflict(format!("`{name}` is already in the directory")))?;
            let person =
                Person::new(name.as_str(), "admin", actor.principal.as_str(), &waiver_core::canonical::timestamp(now));
            Ok((Some(Commit { events: vec![event], artifacts: vec![artifact], ..Commit::default() }), person))
        })
        .await
    }

    /// A person leaves: marked offboarded, every token of theirs revoked, and every live
    /// exception they own held (suspended, or only flagged, as the rules' `people.owner_left`
    /// says) until a new owner accepts it — all in one commit.
    pub async fn person_offboard(
        &self,
        actor: &Actor,
        name: &str,
        comment: Option<String>,
    ) -> Result<PersonOffboarded, ServiceError> {
        require(actor, "offboard people", &[Role::Admin])?;
        if let Some(c) = &comment {
            waiver_core::text::check_text("comment", c, waiver_core::text::MAX_TEXT_BYTES)
                .map_err(ValidationError::one)?;
        }
        let name = Principal::parse("name", name).map_err(ValidationError::one)?;
        if actor.is(&name) {
            return Err(ServiceError::Forbidden(format!("`{name}` may not offboard themselves")));
        }
        let (name, comment) = (&name, &comment);
        self.retrying(move || async move {
            let now = self.clock.now();
            let held = self.directory().await?;
            let person = match held.directory.people.get(name.as_str()) {
                None => return Err(ServiceError::NotFound(format!("person `{name}`"))),
                Some(p) if !p.is_active() => {
                    return Err(ServiceError::InvalidState(format!("`{name}` is already offboarded")));
                }
                Some(p) => p.clone(),
            };
            let mut next = held.directory.clone();
            let mut left = person.clone();
            left.status = "offboarded".into();
            left.offboarded_at = Some(waiver_core::canonical::timestamp(now));
            next.people.insert(name.to_string(), left.clone());
            let mut commit = Commit::default();
            let mut outcome = PersonOffboarded { person: Some(left), ..PersonOffboarded::default() };
            // Tokens first: each seals with the event before the directory's.
            for mut token in self.store.tokens().await? {
                if token.principal != name.as_str() || token.revoked_at.is_some() {
                    continue;
                }
                token.revoked_at = Some(waiver_core::canonical::timestamp(now));
                commit.events.push(event(
                    &actor.principal,
                    now,
                    "token.revoked",
                    json!({ "token_id": token.id, "principal": token.principal, "reason": "person offboarded" }),
                ));
                outcome.tokens_revoked.push(token.id.clone());
                commit.tokens.push(token);
            }
            let (event, artifact) = held.version(
                next,
                event(
                    &actor.principal,
                    now,
                    "person.offboarded",
                    json!({ "person": name.as_str(), "comment": comment }),
                ),
            );
            commit.events.push(event);
            commit.artifacts.push(artifact);
            // Owner-left applies to every exception whatever its own triggers, as the rules say.
            let mut rules = (*self.rules()).clone();
            rules.revalidation_action = rules.owner_left_action;
            rules.revalidation_triggers.push(RevalidationTrigger::OwnerLeft);
            let filter = ExceptionFilter { owner: Some(name.to_string()), ..ExceptionFilter::default() };
            for exception in self.store.exceptions(&filter).await? {
                if !exception.is_open(now) {
                    continue;
                }
                if let Some(t) = exception.revalidate(RevalidationTrigger::OwnerLeft, &rules, now) {
                    outcome.exceptions.push(exception.id);
                    outcome.changed.push(t.exception.clone());
                    commit.events.push(events::exception_event(&actor.principal, now, &t.exception, &t.change));
                    commit.exceptions.push(Write::update(t.exception, exception.version));
                }
            }
            Ok((Some(commit), outcome))
        })
        .await
    }

    /// The directory's new version, if `names` brings anyone new (for a commit that names
    /// them: a token issued, an identity's owner). Its event goes after the commit's others.
    pub(crate) async fn people_to_add(
        &self,
        by: &Principal,
        names: &[Principal],
        via: &str,
    ) -> Result<Option<(EventDraft, Artifact)>, ServiceError> {
        let held = self.directory().await?;
        Ok(held.adding(by, self.clock.now(), names, via))
    }

    /// Fills an empty directory once, from what the log already holds: the people tokens
    /// were issued to, identity owners and exception owners (trusted as found, recorded by
    /// the system as `person.added` via `imported`). Returns how many it added.
    pub async fn seed_people(&self) -> Result<usize, ServiceError> {
        let held = self.directory().await?;
        // A new log starts its directory with its first person (the first token issued).
        if held.digest.is_some() || self.store.last_seq().await? == 0 {
            return Ok(0);
        }
        let mut names: Vec<Principal> = Vec::new();
        for token in self.store.tokens().await? {
            let person = token
                .roles
                .iter()
                .filter_map(|r| Role::parse(r))
                .any(|r| waiver_core::actor::may::ACT_AS_PERSON.contains(&r) || r == Role::Auditor);
            if token.revoked_at.is_none()
                && person
                && let Ok(p) = Principal::parse("principal", &token.principal)
            {
                names.push(p);
            }
        }
        names.extend(self.store.identities().await?.into_iter().map(|i| i.owner));
        names.extend(self.store.exceptions(&ExceptionFilter::default()).await?.into_iter().map(|e| e.owner));
        let now = self.clock.now();
        let (event, artifact) = match held.adding(&Principal::system(), now, &names, "imported") {
            Some(added) => added,
            // Nobody yet: an empty directory, so this runs once.
            None => held.version(
                Directory::default(),
                event(&Principal::system(), now, "person.added", json!({ "people": [], "via": "imported" })),
            ),
        };
        let added = held.missing(&names).len();
        match self
            .store
            .commit(Box::new(move |_| Commit { events: vec![event], artifacts: vec![artifact], ..Commit::default() }))
            .await
        {
            Ok(_) => Ok(added),
            // Another node seeded it first.
            Err(waiver_store::StoreError::Conflict(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// A person as an identity provider provisions them (SCIM 2.0 `User`, the subset Entra ID
/// and Okta send): `userName` is the principal they act as in waiver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provisioned {
    pub user_name: String,
    pub active: bool,
    pub email: Option<String>,
    pub display_name: Option<String>,
}

impl Service {
    /// Creates or updates a provisioned person (admin: the provisioning token). Creating one
    /// that exists is a conflict when `create` is set (SCIM `POST`). A person set inactive is
    /// offboarded exactly as `person offboard` does it (tokens revoked, what they own held);
    /// one set active again is a current person again (their tokens stay revoked).
    pub async fn provision(&self, actor: &Actor, user: Provisioned, create: bool) -> Result<Person, ServiceError> {
        require(actor, "provision people", &[Role::Admin])?;
        let name = Principal::parse("userName", &user.user_name).map_err(ValidationError::one)?;
        if name.as_entity().is_some() || name == Principal::system() {
            return Err(ValidationError::one(FieldError::new("userName", "a person is named plainly (`sam`)")).into());
        }
        for (field, value) in [("emails", &user.email), ("displayName", &user.display_name)] {
            if let Some(v) = value {
                waiver_core::text::check_name(field, v).map_err(ValidationError::one)?;
            }
        }
        let existing = self.directory().await?.directory.people.get(name.as_str()).cloned();
        if create && existing.is_some() {
            return Err(ServiceError::Conflict(format!("`{name}` is already in the directory")));
        }
        // Deprovisioning is offboarding: the same commit, the same owner-left rules.
        if !user.active && existing.as_ref().is_some_and(Person::is_active) {
            self.person_offboard(actor, name.as_str(), Some("deprovisioned by the identity provider".into())).await?;
        }
        let (name, user) = (&name, &user);
        self.retrying(move || async move {
            let held = self.directory().await?;
            let now = self.clock.now();
            let at = waiver_core::canonical::timestamp(now);
            let mut next = held.directory.clone();
            let before = next.people.get(name.as_str()).cloned();
            let mut person =
                before.clone().unwrap_or_else(|| Person::new(name.as_str(), "scim", actor.principal.as_str(), &at));
            person.email.clone_from(&user.email);
            person.display_name.clone_from(&user.display_name);
            let event_type = match (before.as_ref().map(Person::is_active), user.active) {
                (None, true) => "person.added",
                (None, false) => {
                    person.status = "offboarded".into();
                    person.offboarded_at = Some(at.clone());
                    "person.added"
                }
                (Some(false), true) => {
                    person.status = "active".into();
                    person.offboarded_at = None;
                    "person.reactivated"
                }
                _ => "person.updated",
            };
            if before.as_ref() == Some(&person) {
                return Ok((None, person));
            }
            next.people.insert(name.to_string(), person.clone());
            let data = json!({ "person": name.as_str(), "via": "scim", "active": person.is_active() });
            let (event, artifact) = held.version(next, event(&actor.principal, now, event_type, data));
            Ok((Some(Commit { events: vec![event], artifacts: vec![artifact], ..Commit::default() }), person))
        })
        .await
    }
}

impl Service {
    /// A person the identity provider signed in: added to the directory at their first
    /// sign-in (`via: sign_in`), refused when they have left. Their email and name follow
    /// the provider's when it sends them.
    pub async fn sign_in(
        &self,
        principal: &Principal,
        roles: &[Role],
        email: Option<&str>,
        display_name: Option<&str>,
        team: Option<&str>,
    ) -> Result<Person, ServiceError> {
        if principal.as_entity().is_some() || *principal == Principal::system() {
            return Err(ServiceError::Forbidden(format!("`{principal}` is not a person; people sign in to the UI")));
        }
        let clean =
            |v: Option<&str>| v.filter(|v| waiver_core::text::check_name("claim", v).is_ok()).map(str::to_owned);
        let (email, display_name, team) = (clean(email), clean(display_name), clean(team));
        let (email, display_name, team) = (&email, &display_name, &team);
        self.retrying(move || async move {
            let held = self.directory().await?;
            let now = self.clock.now();
            let before = held.directory.people.get(principal.as_str()).cloned();
            if before.as_ref().is_some_and(|p| !p.is_active()) {
                return Err(ServiceError::Forbidden(format!(
                    "`{principal}` has left (offboarded); an admin reactivates people"
                )));
            }
            let mut person = before.clone().unwrap_or_else(|| {
                Person::new(
                    principal.as_str(),
                    "sign_in",
                    Principal::system().as_str(),
                    &waiver_core::canonical::timestamp(now),
                )
            });
            if email.is_some() {
                person.email.clone_from(email);
            }
            if display_name.is_some() {
                person.display_name.clone_from(display_name);
            }
            person.roles = roles.iter().map(|r| r.as_str().to_owned()).collect();
            if team.is_some() {
                person.team.clone_from(team);
            }
            if before.as_ref() == Some(&person) {
                return Ok((None, person));
            }
            let event_type = if before.is_none() { "person.added" } else { "person.updated" };
            let mut next = held.directory.clone();
            next.people.insert(principal.to_string(), person.clone());
            let data = json!({ "person": principal.as_str(), "via": "sign_in" });
            let (event, artifact) = held.version(next, event(&Principal::system(), now, event_type, data));
            Ok((Some(Commit { events: vec![event], artifacts: vec![artifact], ..Commit::default() }), person))
        })
        .await
    }

    /// The actor of a session the identity provider signed in, checked again at every
    /// request: `None` once the person has left or is no longer in the directory.
    pub async fn signed_in_actor(
        &self,
        principal: &Principal,
        roles: &[Role],
        authentication: &waiver_core::Authentication,
    ) -> Result<Option<Actor>, ServiceError> {
        let held = self.directory().await?;
        Ok(held
            .directory
            .people
            .get(principal.as_str())
            .filter(|p| p.is_active())
            .map(|_| Actor::new(principal.clone(), roles).authenticated(authentication.clone())))
    }

    /// The actor of an API call with an identity provider's JWT: refused when it names a
    /// person who has left (a workload's client need not be in the directory).
    pub async fn bearer_actor(
        &self,
        principal: &Principal,
        roles: &[Role],
        authentication: &waiver_core::Authentication,
    ) -> Result<Option<Actor>, ServiceError> {
        let held = self.directory().await?;
        if held.directory.people.get(principal.as_str()).is_some_and(|p| !p.is_active()) {
            return Ok(None);
        }
        Ok(Some(Actor::new(principal.clone(), roles).authenticated(authentication.clone())))
    }
}

impl Service {
    /// Creates (`id` none) or replaces a provisioned group; every member must be in the
    /// directory. Recorded as `group.created` or `group.updated`.
    pub async fn group_put(
        &self,
        actor: &Actor,
        id: Option<&str>,
        display_name: &str,
        members: Vec<String>,
    ) -> Result<Group, ServiceError> {
        require(actor, "provision groups", &[Role::Admin])?;
        waiver_core::text::check_name("displayName", display_name).map_err(ValidationError::one)?;
        if members.len() > 10_000 {
            return Err(ValidationError::one(FieldError::new("members", "at most 10,000 members")).into());
        }
        let (members, display_name) = (&members, display_name);
        self.retrying(move || async move {
            let held = self.directory().await?;
            let mut errors = Vec::new();
            let mut clean: Vec<String> = Vec::new();
            for (i, m) in members.iter().enumerate() {
                let key = m.to_lowercase();
                if held.directory.people.contains_key(&key) {
                    if !clean.contains(&key) {
                        clean.push(key);
                    }
                } else {
                    errors.push(FieldError::new(
                        format!("members[{i}]"),
                        format!("`{}` is not a provisioned user", waiver_core::id::clip(m)),
                    ));
                }
            }
            ValidationError::into_result(errors)?;
            let mut next = held.directory.clone();
            let (group_id, event_type) = match id {
                Some(id) => {
                    if !next.groups.contains_key(id) {
                        return Err(ServiceError::NotFound(format!("group `{}`", waiver_core::id::clip(id))));
                    }
                    (id.to_owned(), "group.updated")
                }
                None => {
                    if next.groups.values().any(|g| g.display_name.eq_ignore_ascii_case(display_name)) {
                        return Err(ServiceError::Conflict(format!("a group `{display_name}` exists")));
                    }
                    (format!("grp_{}", hex::encode(rand::random::<[u8; 8]>())), "group.created")
                }
            };
            let group = Group { id: group_id.clone(), display_name: display_name.to_owned(), members: clean };
            if next.groups.get(&group_id) == Some(&group) {
                return Ok((None, group));
            }
            next.groups.insert(group_id.clone(), group.clone());
            let now = self.clock.now();
            let data = json!({ "group": group_id, "display_name": display_name, "members": group.members });
            let (event, artifact) = held.version(next, event(&actor.principal, now, event_type, data));
            Ok((Some(Commit { events: vec![event], artifacts: vec![artifact], ..Commit::default() }), group))
        })
        .await
    }

    /// Deletes a provisioned group (`group.deleted`); its members stay.
    pub async fn group_delete(&self, actor: &Actor, id: &str) -> Result<(), ServiceError> {
        require(actor, "provision groups", &[Role::Admin])?;
        self.retrying(move || async move {
            let held = self.directory().await?;
            let mut next = held.directory.clone();
            let Some(gone) = next.groups.remove(id) else {
                return Err(ServiceError::NotFound(format!("group `{}`", waiver_core::id::clip(id))));
            };
            let now = self.clock.now();
            let data = json!({ "group": id, "display_name": gone.display_name });
            let (event, artifact) = held.version(next, event(&actor.principal, now, "group.deleted", data));
            Ok((Some(Commit { events: vec![event], artifacts: vec![artifact], ..Commit::default() }), ()))
        })
        .await
    }
}

impl Service {
    /// How `name` is notified: the channels (`email`, `chat`; `None` for every one set up)
    /// and whether a daily digest replaces the per-event email. A person sets their own;
    /// an admin anyone's.
    pub async fn person_notifications(
        &self,
        actor: &Actor,
        name: &str,
        channels: Option<Vec<String>>,
        digest: bool,
    ) -> Result<Person, ServiceError> {
        if !(actor.roles.contains(Role::Admin)
            || (actor.acts_as(&Principal::parse("name", name).map_err(ValidationError::one)?)))
        {
            return Err(ServiceError::Forbidden(format!("`{}` may set only their own notifications", actor.principal)));
        }
        if let Some(list) = &channels {
            let errors: Vec<FieldError> = list
                .iter()
                .enumerate()
                .filter(|(_, c)| !matches!(c.as_str(), "email" | "chat"))
                .map(|(i, c)| {
                    FieldError::new(
                        format!("channels[{i}]"),
                        format!("`{}` is not `email` or `chat`", waiver_core::id::clip(c)),
                    )
                })
                .collect();
            ValidationError::into_result(errors)?;
        }
        let (channels, name) = (&channels, name);
        self.retrying(move || async move {
            let held = self.directory().await?;
            let Some(before) = held.directory.people.get(name).cloned() else {
                return Err(ServiceError::NotFound(format!("person `{}`", waiver_core::id::clip(name))));
            };
            let mut person = before.clone();
            person.channels.clone_from(channels);
            if let Some(list) = &mut person.channels {
                list.sort();
                list.dedup();
            }
            person.digest = digest;
            if person == before {
                return Ok((None, person));
            }
            let mut next = held.directory.clone();
            next.people.insert(name.to_owned(), person.clone());
            let data = json!({ "person": name, "channels": person.channels, "digest": digest });
            let (event, artifact) =
                held.version(next, event(&actor.principal, self.clock.now(), "person.updated", data));
            Ok((Some(Commit { events: vec![event], artifacts: vec![artifact], ..Commit::default() }), person))
        })
        .await
    }
}

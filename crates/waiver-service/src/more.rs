//! Use cases the REST API adds: pages of the register, token administration, reported
//! identity changes and baseline diffs.

use std::collections::BTreeSet;

use serde_json::json;
use waiver_core::{
    Actor, EntityRef, Exception, ExceptionId, IdentityStatus, Principal, RevalidationTrigger, Role, ValidationError,
    audit::EventDraft,
};
use waiver_engine::Baseline;
use waiver_store::{Commit, ExceptionFilter, TokenRecord, Write};

use crate::{ListQuery, Service, ServiceError, events, require};

/// Largest page of a list.
pub const MAX_PAGE: usize = 500;
/// Page size when none is asked for.
pub const DEFAULT_PAGE: usize = 100;

/// One page of exceptions, and where the next one starts.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Exception>,
    pub next: Option<ExceptionId>,
}

/// What replacing the baseline would do: policies added, removed and changed, and the open
/// exceptions that waive a changed or removed policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaselineDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// `(exception, policy)` pairs: open exceptions waiving a policy the change touches.
    pub affected: Vec<(ExceptionId, String)>,
    /// Why the change is refused; empty if it may be applied.
    pub refusals: Vec<String>,
}

impl Service {
    /// One page of the register: at most `limit` (default 100, at most 500) after the cursor.
    pub async fn list_page(&self, actor: &Actor, query: &ListQuery) -> Result<Page, ServiceError> {
        let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let mut query = query.clone();
        query.limit = Some(limit + 1);
        let mut items = self.list(actor, &query).await?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|e| e.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Every token (never a secret nor its hash leaves the service through this).
    pub async fn tokens(&self, actor: &Actor) -> Result<Vec<TokenRecord>, ServiceError> {
        require(actor, "list tokens", &[Role::Admin, Role::Auditor])?;
        Ok(self.store.tokens().await?)
    }

    async fn find_token(&self, id: &str) -> Result<TokenRecord, ServiceError> {
        self.store
            .tokens()
            .await?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| ServiceError::NotFound(format!("token `{}`", waiver_core::id::clip(id))))
    }

    /// Revokes a token: it authenticates nobody from now on.
    pub async fn revoke_token(&self, actor: &Actor, id: &str) -> Result<TokenRecord, ServiceError> {
        require(actor, "revoke tokens", &[Role::Admin])?;
        let mut token = self.find_token(id).await?;
        if token.revoked_at.is_some() {
            return Err(ServiceError::InvalidState(format!("token `{id}` is already revoked")));
        }
        let now = self.clock.now();
        token.revoked_at = Some(waiver_core::canonical::timestamp(now));
        let event = EventDraft {
            at: now,
            actor: actor.principal.clone(),
            event_type: "token.revoked".into(),
            exception_id: None,
            data: json!({ "token_id": token.id, "principal": token.principal }),
        };
        let written = token.clone();
        self.store
            .commit(Box::new(move |_| Commit { events: vec![event], tokens: vec![written], ..Commit::default() }))
            .await?;
        Ok(token)
    }

    /// Replaces a token: a new secret with the same principal, roles and label (and a fresh
    /// lifetime), and the old one revoked, in one commit. An admin rotates any token; anyone
    /// may rotate their own (the answer carries the new secret, once).
    pub async fn rotate_token(&self, actor: &Actor, id: &str) -> Result<crate::IssuedToken, ServiceError> {
        let mut old = self.find_token(id).await?;
        if !(actor.roles.contains(Role::Admin) || actor.principal.as_str() == old.principal) {
            require(actor, "rotate another principal's token", &[Role::Admin])?;
        }
        let now = self.clock.now();
        if old.revoked_at.is_some() || crate::token_expired(&old, now) {
            return Err(ServiceError::InvalidState(format!("token `{id}` is revoked or expired; issue a new one")));
        }
        let max = self.rules().token_max_lifetime;
        let secret = format!("wvr_{}", hex::encode(rand::random::<[u8; 32]>()));
        let record = TokenRecord {
            id: format!("tok_{}", hex::encode(rand::random::<[u8; 8]>())),
            secret_hash: crate::token_hash(&secret),
            principal: old.principal.clone(),
            roles: old.roles.clone(),
            label: old.label.clone(),
            created_at: waiver_core::canonical::timestamp(now),
            revoked_at: None,
            // Whoever rotates saw the new secret: they stand behind it, as an issuer does.
            issued_by: Some(actor.principal.to_string()),
            expires_at: Some(waiver_core::canonical::timestamp(now.checked_add(max.duration()).unwrap_or(now))),
            scopes: old.scopes.clone(),
            last_used_at: None,
        };
        old.revoked_at = Some(waiver_core::canonical::timestamp(now));
        let events = vec![
            EventDraft {
                at: now,
                actor: actor.principal.clone(),
                event_type: "token.issued".into(),
                exception_id: None,
                data: json!({ "token_id": record.id, "principal": record.principal, "roles": record.roles,
                              "label": record.label, "expires_at": record.expires_at, "rotated_from": old.id }),
            },
            EventDraft {
                at: now,
                actor: actor.principal.clone(),
                event_type: "token.revoked".into(),
                exception_id: None,
                data: json!({ "token_id": old.id, "principal": old.principal, "reason": "rotated", "replaced_by": record.id }),
            },
        ];
        let tokens = vec![record.clone(), old];
        self.store.commit(Box::new(move |_| Commit { events, tokens, ..Commit::default() })).await?;
        Ok(crate::IssuedToken { secret, record })
    }

    /// Reports a change to an identity that the inventory does not hold (a deploy of new
    /// code, a vendor swap): its exceptions that name the trigger are suspended or flagged,
    /// as the rules say. Admins, and the identity's owner, may report.
    pub async fn identity_change(
        &self,
        actor: &Actor,
        entity: &EntityRef,
        trigger: RevalidationTrigger,
        detail: Option<String>,
    ) -> Result<Vec<ExceptionId>, ServiceError> {
        if let Some(d) = &detail {
            waiver_core::text::check_text("detail", d, waiver_core::text::MAX_TEXT_BYTES)
                .map_err(ValidationError::one)?;
        }
        if trigger == RevalidationTrigger::Offboarded {
            return Err(ValidationError::one(waiver_core::FieldError::new(
                "kind",
                "offboarding is its own action: POST …/offboard",
            ))
            .into());
        }
        let detail = &detail;
        self.retrying(move || async move {
            let now = self.clock.now();
            let identity = self.load_identity(entity).await?;
            if !(actor.roles.contains(Role::Admin) || actor.acts_as(&identity.owner)) {
                require(actor, "report a change to an identity they do not own", &[Role::Admin])?;
            }
            if identity.status == IdentityStatus::Offboarded {
                return Err(ServiceError::InvalidState(format!("identity `{entity}` is offboarded")));
            }
            let mut commit = Commit::default();
            commit.events.push(events::identity_event(
                &actor.principal,
                now,
                "identity.changed",
                &identity,
                json!({ "trigger": trigger.as_str(), "detail": detail }),
            ));
            let mut touched = Vec::new();
            let filter = ExceptionFilter { subject: Some(entity.clone()), ..Default::default() };
            for exception in self.store.exceptions(&filter).await? {
                if let Some(t) = exception.revalidate(trigger, &self.rules(), now) {
                    touched.push(exception.id);
                    commit.events.push(events::exception_event(&Principal::system(), now, &t.exception, &t.change));
                    commit.exceptions.push(Write::update(t.exception, exception.version));
                }
            }
            Ok((Some(commit), touched))
        })
        .await
    }

    /// What reporting `trigger` for `entity` would do, without doing it: the exceptions it
    /// would revalidate and the state each would be in (suspended, or unchanged when the
    /// rules only flag).
    pub async fn identity_change_preview(
        &self,
        actor: &Actor,
        entity: &EntityRef,
        trigger: RevalidationTrigger,
    ) -> Result<Vec<(ExceptionId, waiver_core::State)>, ServiceError> {
        let identity = self.load_identity(entity).await?;
        if !(actor.roles.contains(Role::Admin) || actor.acts_as(&identity.owner)) {
            require(actor, "report a change to an identity they do not own", &[Role::Admin])?;
        }
        let now = self.clock.now();
        let filter = ExceptionFilter { subject: Some(entity.clone()), ..Default::default() };
        Ok(self
            .store
            .exceptions(&filter)
            .await?
            .into_iter()
            .filter_map(|e| e.revalidate(trigger, &self.rules(), now).map(|t| (e.id, t.exception.effective_state(now))))
            .collect())
    }

    /// What replacing the baseline with `next` would do, without doing it.
    pub async fn diff_baseline(&self, actor: &Actor, next: &Baseline) -> Result<BaselineDiff, ServiceError> {
        require(actor, "read the baseline", waiver_core::actor::may::READ_BASELINE)?;
        self.baseline_diff(next).await
    }

    /// [`Service::diff_baseline`] without the role check, for [`Service::check_baseline`].
    pub(crate) async fn baseline_diff(&self, next: &Baseline) -> Result<BaselineDiff, ServiceError> {
        let now = self.clock.now();
        let current = self.baseline();
        let empty = BTreeSet::new();
        let before = current.as_ref().map_or(&empty, |b| b.policy_ids());
        let after = next.policy_ids();
        let mut diff = BaselineDiff {
            added: after.difference(before).cloned().collect(),
            removed: before.difference(after).cloned().collect(),
            ..Default::default()
        };
        if let Some(current) = &current {
            diff.changed = before
                .intersection(after)
                .filter(|id| current.policy_text(id) != next.policy_text(id))
                .cloned()
                .collect();
        }
        for e in self.store.exceptions(&ExceptionFilter::default()).await? {
            if !e.is_open(now) {
                continue;
            }
            for waived in e.waives.iter().filter(|w| !w.is_control()) {
                let id = waived.to_string();
                if !next.can_waive(&id) {
                    let what = if next.policy_ids().contains(&id) { "makes a permit" } else { "removes" };
                    diff.refusals.push(format!("`{}` waives `{id}`, which the new baseline {what}", e.id));
                }
                if diff.removed.contains(&id) || diff.changed.contains(&id) {
                    diff.affected.push((e.id, id));
                }
            }
            if let Some(condition) = &e.condition
                && let Err(err) = next.compile_condition(condition)
            {
                diff.refusals.push(format!("`{}` has a condition the new baseline refuses: {err}", e.id));
            }
        }
        Ok(diff)
    }
}

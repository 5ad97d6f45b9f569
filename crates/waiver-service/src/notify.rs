//! Notifications to people: what an event asks of whom, said in words with a link.
//!
//! Delivery works like webhooks (see [`crate::webhooks`]): each channel (email, chat) is a
//! subscription of its own (`wh_notify_email`, `wh_notify_chat`) whose cursor moves through
//! the event log only after the messages for an event were accepted, so delivery is at
//! least once, retried with backoff, claimed by one node at a time, and visible to admins
//! beside the webhooks (`GET /api/v1/webhooks`: backlog, attempts, last error). The senders
//! (SMTP, HTTP) live in the binary; this module decides who hears what.
//!
//! Routing: a new request or renewal goes to each person who may approve it (routing and
//! separation of duties applied as at approval); a break-glass goes to those who may review
//! it after use and to its owner; reminders, overdue reviews, suspensions, expiries and
//! revalidations go to the owner; a decision goes to the requester and the owner; a proposed
//! transfer to the proposed owner. Each person chooses their channels (`channels`), or one
//! daily digest by email instead (`digest`).

use std::collections::BTreeSet;

use serde::Deserialize;
use waiver_core::{Actor, Exception, Principal, Role, State, audit::EventRecord};
use waiver_store::{Commit, WebhookProgress, WebhookRecord};

use crate::{Service, ServiceError, people::Held};

/// The subscription id of the email channel.
pub const EMAIL: &str = "wh_notify_email";
/// The subscription id of the chat channel.
pub const CHAT: &str = "wh_notify_chat";

/// The `[notify]` part of the server's configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    pub smtp: Option<SmtpConfig>,
    pub chat: Option<ChatConfig>,
    /// The hour (UTC, 0–23) the daily digest goes out.
    #[serde(default = "default_digest_hour")]
    pub digest_hour: u8,
}

fn default_digest_hour() -> u8 {
    8
}

/// An SMTP relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// `From:` (`waiver <waiver@example.com>`).
    pub from: String,
    /// `starttls` (required), or `none` (only for a relay on loopback).
    #[serde(default = "default_tls")]
    pub tls: String,
    pub username: Option<String>,
    /// The environment variable holding the password (never the file).
    #[serde(default = "default_password_env")]
    pub password_env: String,
}

fn default_smtp_port() -> u16 {
    587
}
fn default_tls() -> String {
    "starttls".into()
}
fn default_password_env() -> String {
    "WAIVER_SMTP_PASSWORD".into()
}

/// A chat incoming webhook (Slack-compatible JSON: `{"text": …}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    pub url: String,
}

impl NotifyConfig {
    /// Refuses what cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.digest_hour > 23 {
            return Err("`notify.digest_hour`: an hour of the day, 0 to 23".into());
        }
        if let Some(smtp) = &self.smtp {
            match smtp.tls.as_str() {
                "starttls" => {}
                "none" if matches!(smtp.host.as_str(), "127.0.0.1" | "localhost" | "::1") => {}
                "none" => {
                    return Err("`notify.smtp.tls`: `none` only for a relay on loopback; use `starttls`".into());
                }
                other => return Err(format!("`notify.smtp.tls`: `{other}` is not `starttls` or `none`")),
            }
            if smtp.host.is_empty() || smtp.from.is_empty() {
                return Err("`notify.smtp`: `host` and `from` are needed".into());
            }
        }
        if let Some(chat) = &self.chat
            && crate::webhooks::Target::parse(&chat.url).is_none()
        {
            return Err("`notify.chat.url`: an http(s) URL".into());
        }
        Ok(())
    }
}

/// Someone a notice goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub person: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub channels: Channels,
}

/// The channels a recipient is reached on for one notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Channels {
    pub email: bool,
    pub chat: bool,
}

/// What one event tells people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub seq: u64,
    /// `approve`, `review`, `owner`, `decided`, `transfer`.
    pub kind: &'static str,
    pub subject: String,
    pub text: String,
    pub link: String,
    pub to: Vec<Recipient>,
}

impl Notice {
    /// The chat message: the text, the people it is for, and the link.
    pub fn chat_text(&self) -> Option<String> {
        let names: Vec<&str> = self.to.iter().filter(|r| r.channels.chat).map(|r| r.person.as_str()).collect();
        if names.is_empty() {
            return None;
        }
        Some(format!("{} — for {} — <{}|open in waiver>", self.text, names.join(", "), self.link))
    }

    /// The recipients to email.
    pub fn emails(&self) -> impl Iterator<Item = (&Recipient, &str)> {
        self.to.iter().filter(|r| r.channels.email).filter_map(|r| Some((r, r.email.as_deref()?)))
    }
}

fn describe(e: &Exception) -> String {
    let waives: Vec<String> = e.waives.iter().map(ToString::to_string).collect();
    format!("{} waiving {} ({} risk)", e.subject, waives.join(", "), e.risk)
}

impl Service {
    /// Makes sure a notification channel's subscription exists for `target` (created with
    /// its cursor at the log's head, recorded as `webhook.created`), and is deleted when the
    /// channel is no longer set up.
    pub async fn ensure_channel(&self, id: &str, target: Option<&str>) -> Result<(), ServiceError> {
        let existing = self.store.webhooks().await?.into_iter().find(|h| h.id == id && h.deleted_at.is_none());
        let now = self.clock.now();
        let at = waiver_core::canonical::timestamp(now);
        let mut commit = Commit::default();
        if let Some(old) = &existing {
            if Some(old.url.as_str()) == target {
                return Ok(());
            }
            let mut ended = old.clone();
            ended.deleted_at = Some(at.clone());
            commit.events.push(channel_event(now, "webhook.deleted", id, &old.url));
            commit.webhooks.push(ended);
        }
        if let Some(url) = target {
            let record = WebhookRecord {
                id: id.to_owned(),
                url: url.to_owned(),
                secret: String::new(),
                event_types: Vec::new(),
                created_by: Principal::system().to_string(),
                created_at: at,
                deleted_at: None,
                progress: WebhookProgress { delivered_seq: self.store.last_seq().await?, ..Default::default() },
            };
            commit.events.push(channel_event(now, "webhook.created", id, url));
            commit.webhooks.push(record);
        }
        if commit.events.is_empty() {
            return Ok(());
        }
        self.store.commit(Box::new(move |_| commit)).await?;
        Ok(())
    }

    /// The people who may act as an approver: routed ones when the rules route `e`, else
    /// every current person holding the approver role (from their sign-in or a live token);
    /// in both cases only those the lifecycle would let approve (separation of duties).
    async fn approvers_of(&self, e: &Exception, held: &Held, review: bool) -> Result<Vec<Principal>, ServiceError> {
        let now = self.clock.now();
        let mut holders: BTreeSet<String> = held
            .directory
            .people
            .values()
            .filter(|p| p.is_active() && p.roles.iter().any(|r| r == "approver"))
            .map(|p| p.name.clone())
            .collect();
        for token in self.store.tokens().await? {
            if token.revoked_at.is_none()
                && !crate::token_expired(&token, now)
                && token.roles.iter().any(|r| r == "approver")
                && held.directory.people.get(&token.principal).is_some_and(|p| p.is_active())
            {
                holders.insert(token.principal);
            }
        }
        // Routed by the rules (`@approvers`): the groups' members are the approvers.
        if let Some(routed) = (!review).then(|| self.eligible_approvers(e)).flatten() {
            holders = routed
                .iter()
                .filter(|p| held.directory.people.get(p.as_str()).is_some_and(|x| x.is_active()))
                .map(ToString::to_string)
                .collect();
        }
        Ok(holders
            .into_iter()
            .filter_map(|name| Principal::parse("person", &name).ok())
            .filter(|p| {
                let actor = Actor::new(p.clone(), &[Role::Approver]);
                if review {
                    e.review_post_use(&actor, Some("(dry run)".into()), now).is_ok()
                } else {
                    e.approve(&actor, None, now).is_ok()
                }
            })
            .collect())
    }

    /// What `event` tells whom; `None` when it tells nobody anything.
    pub async fn notice(&self, event: &EventRecord, public_url: &str) -> Result<Option<Notice>, ServiceError> {
        let Some(id) = event.exception_id.as_deref().and_then(|i| i.parse().ok()) else { return Ok(None) };
        let Some(e) = self.store.exception(id).await.ok().flatten() else { return Ok(None) };
        let held = self.directory().await?;
        let link = format!("{}/ui/exceptions/{}", public_url.trim_end_matches('/'), e.id);
        let what = describe(&e);
        let person = |name: &str| Principal::parse("person", name).ok();
        let data: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
        let (kind, subject, text, to): (&str, String, String, Vec<Principal>) = match event.event_type.as_str() {
            "exception.requested" | "exception.renewal_requested" => {
                // Decided before the notice went out: nothing to ask any more.
                if e.effective_state(self.clock.now()) != State::Requested && e.pending_renewal.is_none() {
                    return Ok(None);
                }
                let renewal = event.event_type == "exception.renewal_requested";
                let noun = if renewal { "renewal" } else { "request" };
                (
                    "approve",
                    format!("[waiver] Approval needed: {} {noun} {}", e.requester, e.id),
                    format!("{} asks for {what}, owned by {}. You may approve or reject it.", e.requester, e.owner),
                    self.approvers_of(&e, &held, false).await?,
                )
            }
            "break_glass.activated" | "break_glass.ended" | "break_glass.review_overdue" => {
                let mut to = self.approvers_of(&e, &held, true).await?;
                to.push(e.owner.clone());
                (
                    "review",
                    format!("[waiver] Break-glass {}: post-use review needed", e.id),
                    match event.event_type.as_str() {
                        "break_glass.activated" => {
                            format!("{} broke glass: {what}. It needs a post-use review after it ends.", e.requester)
                        }
                        "break_glass.ended" => {
                            format!("The break-glass {} ({what}) ended: review how it was used.", e.id)
                        }
                        _ => format!("The post-use review of {} ({what}) is overdue.", e.id),
                    },
                    to,
                )
            }
            "exception.expiring"
            | "exception.review_due"
            | "exception.review_overdue"
            | "exception.unused"
            | "exception.revalidation_required"
            | "exception.suspended"
            | "exception.expired" => {
                let said = match event.event_type.as_str() {
                    "exception.expiring" => format!("expires at {}", e.expires_at),
                    "exception.review_due" => format!("is due for review by {}", e.review.next_due),
                    "exception.review_overdue" => "is overdue for review: attest it or let it go".to_owned(),
                    "exception.unused" => "granted nothing for a long time".to_owned(),
                    "exception.revalidation_required" => "needs revalidation after a change".to_owned(),
                    "exception.suspended" => "is suspended until you attest it".to_owned(),
                    _ => "has expired".to_owned(),
                };
                (
                    "owner",
                    format!("[waiver] {} {said}", e.id),
                    format!("Your exception {} ({what}) {said}.", e.id),
                    vec![e.owner.clone()],
                )
            }
            "exception.approved"
            | "exception.rejected"
            | "exception.renewal_approved"
            | "exception.renewal_rejected" => {
                let verb = event.event_type.trim_start_matches("exception.").replace('_', " ");
                let by = data.get("by").and_then(|b| b.as_str()).unwrap_or("an approver");
                (
                    "decided",
                    format!("[waiver] {} {verb}", e.id),
                    format!("{} was {verb} by {by}: {what}.", e.id),
                    vec![e.requester.clone(), e.owner.clone()],
                )
            }
            "exception.transfer_proposed" => {
                let Some(to) = data.get("to").and_then(|t| t.as_str()).and_then(person) else { return Ok(None) };
                (
                    "transfer",
                    format!("[waiver] {} asks you to own {}", e.owner, e.id),
                    format!("{} proposes that you own {} ({what}). Accept it to take it on.", e.owner, e.id),
                    vec![to],
                )
            }
            _ => return Ok(None),
        };
        let mut seen = BTreeSet::new();
        let to: Vec<Recipient> = to
            .into_iter()
            .filter(|p| seen.insert(p.clone()))
            .filter_map(|p| {
                let person = held.directory.people.get(p.as_str()).filter(|x| x.is_active())?;
                let channels = Channels {
                    email: person.wants("email") && !person.digest && person.email.is_some(),
                    chat: person.wants("chat"),
                };
                (channels.email || channels.chat).then(|| Recipient {
                    person: person.name.clone(),
                    display_name: person.display_name.clone(),
                    email: person.email.clone(),
                    channels,
                })
            })
            .collect();
        if to.is_empty() {
            return Ok(None);
        }
        Ok(Some(Notice { seq: event.seq, kind, subject, text: format!("{text} {link}"), link, to }))
    }

    /// The daily digest of a person who asked for one: what waits for them, or `None` when
    /// nothing does.
    pub async fn digest(
        &self,
        person: &waiver_proto::Person,
        public_url: &str,
    ) -> Result<Option<String>, ServiceError> {
        let Ok(principal) = Principal::parse("person", &person.name) else { return Ok(None) };
        // Their roles: from their last sign-in and their live tokens.
        let now = self.clock.now();
        let mut roles: Vec<Role> = person.roles.iter().filter_map(|r| Role::parse(r)).collect();
        for token in self.store.tokens().await? {
            if token.principal == person.name && token.revoked_at.is_none() && !crate::token_expired(&token, now) {
                roles.extend(token.roles.iter().filter_map(|r| Role::parse(r)));
            }
        }
        roles.retain(|r| waiver_core::actor::may::ACT_AS_PERSON.contains(r));
        if roles.is_empty() {
            return Ok(None);
        }
        let work = self.my_work(&Actor::new(principal, &roles), 20).await?;
        if work.total() == 0 {
            return Ok(None);
        }
        let mut text = format!("Waiting for you in waiver ({}):\n", work.total());
        for item in work.items.values().flatten() {
            text.push_str(&format!(
                "- {}: {} — {}/ui/exceptions/{}\n",
                item.kind.as_str(),
                describe(&item.exception),
                public_url.trim_end_matches('/'),
                item.exception.id
            ));
        }
        Ok(Some(text))
    }
}

fn channel_event(at: jiff::Timestamp, event_type: &str, id: &str, url: &str) -> waiver_core::audit::EventDraft {
    waiver_core::audit::EventDraft {
        at,
        actor: Principal::system(),
        event_type: event_type.into(),
        exception_id: None,
        data: serde_json::json!({ "webhook_id": id, "url": crate::webhooks::redact(url), "channel": "notifications" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_checked() {
        let ok: NotifyConfig = toml::from_str(
            "[smtp]\nhost = \"127.0.0.1\"\nport = 2525\nfrom = \"waiver <w@example.com>\"\ntls = \"none\"\n[chat]\nurl = \"http://127.0.0.1:9/hook\"\n",
        )
        .unwrap_or_default();
        assert!(ok.check().is_ok());
        let clear: NotifyConfig =
            toml::from_str("[smtp]\nhost = \"mail.example\"\nfrom = \"w@example.com\"\ntls = \"none\"\n")
                .unwrap_or_default();
        assert!(clear.check().unwrap_err().contains("loopback"));
        assert!(toml::from_str::<NotifyConfig>("[smtp]\nhost = \"x\"\nfrom = \"y\"\nsurprise = 1\n").is_err());
    }
}

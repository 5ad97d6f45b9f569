//! Webhooks: subscriptions, and each event as a CloudEvents 1.0 message signed as
//! Standard Webhooks specifies.
//!
//! The event log is the outbox. A subscription's cursor (`delivered_seq`) moves only after
//! the receiver acknowledged, so a crash between sending and recording sends again: at
//! least once, in order, across restarts. The sender (an HTTP client) lives in the binary;
//! this module decides what to send, how to sign it, and records progress.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use sha2::Sha256;
use waiver_core::{Actor, FieldError, Role, ValidationError, audit::EventDraft, audit::EventRecord};
use waiver_store::{Commit, WebhookProgress, WebhookRecord};

use crate::{Service, ServiceError, require};

/// Longest URL accepted.
const MAX_URL_BYTES: usize = 2048;
/// Longest wait between attempts at one event.
const MAX_BACKOFF: SignedDuration = SignedDuration::from_secs(3600);

/// One message to send: Standard Webhooks headers and the CloudEvents JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u64,
    /// `webhook-id`: the same on every retry of this event to this subscription.
    pub id: String,
    /// `webhook-timestamp`: seconds since the Unix epoch, at signing.
    pub timestamp: i64,
    /// `webhook-signature`: `v1,<base64 HMAC-SHA256>`.
    pub signature: String,
    pub body: String,
}

/// The CloudEvents 1.0 structured-mode JSON for an event.
pub fn cloud_event(event: &EventRecord) -> serde_json::Value {
    let view = waiver_proto::Event::from(event);
    json!({
        "specversion": "1.0",
        "id": event.hash,
        "source": "urn:waiver",
        "type": format!("dev.waiver.{}", event.event_type),
        "subject": event.exception_id,
        "time": event.at,
        "datacontenttype": "application/json",
        "data": view,
    })
}

/// The Standard Webhooks signature of `body`: HMAC-SHA256 over `id.timestamp.body` with the
/// base64 key after `whsec_`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| format!("the webhook secret is not base64: {e}"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// Whether a subscription wants this event type.
pub fn wants(hook: &WebhookRecord, event_type: &str) -> bool {
    hook.event_types.is_empty() || hook.event_types.iter().any(|prefix| event_type.starts_with(prefix.as_str()))
}

/// The wait before the next attempt after `attempts` failures: 1 s, 2 s, 4 s … up to an hour.
pub fn backoff(attempts: u32) -> SignedDuration {
    let secs = 1i64.checked_shl(attempts.min(20)).unwrap_or(i64::MAX);
    SignedDuration::from_secs(secs).min(MAX_BACKOFF)
}

fn check_url(url: &str) -> Result<(), ValidationError> {
    let ok_scheme = url.starts_with("http://") || url.starts_with("https://");
    let host = url.split_once("://").map(|(_, rest)| rest).unwrap_or_default();
    if !ok_scheme || host.is_empty() || host.starts_with('/') {
        return Err(ValidationError::one(FieldError::new("url", "must be an absolute `http://` or `https://` URL")));
    }
    if url.len() > MAX_URL_BYTES || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::one(FieldError::new(
            "url",
            format!("must be at most {MAX_URL_BYTES} bytes with no spaces or control characters"),
        )));
    }
    Ok(())
}

impl Service {
    /// Subscribes `url` to events (all, or those whose type starts with one of
    /// `event_types`), from now on. Returns the record with its signing secret, shown once.
    pub async fn webhook_create(
        &self,
        actor: &Actor,
        url: &str,
        event_types: Vec<String>,
    ) -> Result<WebhookRecord, ServiceError> {
        require(actor, "manage webhooks", &[Role::Admin])?;
        check_url(url)?;
        let mut errors = Vec::new();
        if event_types.len() > 64 {
            errors.push(FieldError::new("event_types", "at most 64 entries"));
        }
        for (i, t) in event_types.iter().enumerate() {
            if t.is_empty() || t.len() > 128 || !t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                errors.push(FieldError::new(
                    format!("event_types[{i}]"),
                    "an event type or prefix: letters, digits, `.`, `_`, `-`",
                ));
            }
        }
        ValidationError::into_result(errors)?;
        let now = self.clock.now();
        let record = WebhookRecord {
            id: format!("wh_{}", hex::encode(rand::random::<[u8; 8]>())),
            url: url.to_owned(),
            secret: format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 32]>())),
            event_types,
            created_by: actor.principal.to_string(),
            created_at: waiver_core::canonical::timestamp(now),
            deleted_at: None,
            // Events from now on; the creation event itself is the first delivered.
            progress: WebhookProgress { delivered_seq: self.store.last_seq().await?, ..Default::default() },
        };
        let event = EventDraft {
            at: now,
            actor: actor.principal.clone(),
            event_type: "webhook.created".into(),
            exception_id: None,
            data: json!({ "webhook_id": record.id, "url": record.url, "event_types": record.event_types }),
        };
        let written = record.clone();
        self.store
            .commit(Box::new(move |_| Commit { events: vec![event], webhooks: vec![written], ..Commit::default() }))
            .await?;
        Ok(record)
    }

    /// Every subscription, deleted or not.
    pub async fn webhooks(&self, actor: &Actor) -> Result<Vec<WebhookRecord>, ServiceError> {
        require(actor, "read webhooks", &[Role::Admin, Role::Auditor])?;
        Ok(self.store.webhooks().await?)
    }

    /// Ends a subscription; nothing more is sent to it.
    pub async fn webhook_delete(&self, actor: &Actor, id: &str) -> Result<WebhookRecord, ServiceError> {
        require(actor, "manage webhooks", &[Role::Admin])?;
        let hooks = self.store.webhooks().await?;
        let mut hook = hooks
            .into_iter()
            .find(|h| h.id == id && h.deleted_at.is_none())
            .ok_or_else(|| ServiceError::NotFound(format!("webhook `{}`", waiver_core::id::clip(id))))?;
        let now = self.clock.now();
        hook.deleted_at = Some(waiver_core::canonical::timestamp(now));
        let event = EventDraft {
            at: now,
            actor: actor.principal.clone(),
            event_type: "webhook.deleted".into(),
            exception_id: None,
            data: json!({ "webhook_id": hook.id, "url": hook.url }),
        };
        let written = hook.clone();
        self.store
            .commit(Box::new(move |_| Commit { events: vec![event], webhooks: vec![written], ..Commit::default() }))
            .await?;
        Ok(hook)
    }

    /// Subscriptions due for delivery at `now` (live, and past their backoff).
    pub async fn webhooks_due(&self) -> Result<Vec<WebhookRecord>, ServiceError> {
        let now = self.clock.now();
        Ok(self
            .store
            .webhooks()
            .await?
            .into_iter()
            .filter(|h| h.deleted_at.is_none())
            .filter(|h| {
                h.progress.next_attempt_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok()).is_none_or(|t| t <= now)
            })
            .collect())
    }

    /// The next messages for a subscription, signed now; events it does not want are
    /// returned as `Err(seq)` so the cursor can pass them.
    pub async fn webhook_messages(
        &self,
        hook: &WebhookRecord,
        limit: u32,
    ) -> Result<Vec<Result<Message, u64>>, ServiceError> {
        let timestamp = self.clock.now().as_second();
        let events = self.store.events(hook.progress.delivered_seq, limit).await?;
        let mut messages = Vec::with_capacity(events.len());
        for event in events {
            if !wants(hook, &event.event_type) {
                messages.push(Err(event.seq));
                continue;
            }
            let id = format!("msg_{}_{}", hook.id, event.seq);
            let body = cloud_event(&event).to_string();
            let signature = sign(&hook.secret, &id, timestamp, &body).map_err(ServiceError::InvalidState)?;
            messages.push(Ok(Message { seq: event.seq, id, timestamp, signature, body }));
        }
        Ok(messages)
    }

    /// Records delivery progress: everything up to `delivered_seq` acknowledged, and, if the
    /// next attempt failed, why and when to try again.
    pub async fn webhook_progress(
        &self,
        hook: &WebhookRecord,
        delivered_seq: u64,
        failure: Option<String>,
    ) -> Result<WebhookProgress, ServiceError> {
        let now = self.clock.now();
        let progress = match failure {
            None => WebhookProgress { delivered_seq, ..Default::default() },
            Some(error) => {
                let attempts =
                    if delivered_seq == hook.progress.delivered_seq { hook.progress.attempts + 1 } else { 1 };
                let next = now.checked_add(backoff(attempts)).unwrap_or(now);
                WebhookProgress {
                    delivered_seq,
                    attempts,
                    next_attempt_at: Some(waiver_core::canonical::timestamp(next)),
                    last_error: Some(error.chars().take(512).collect()),
                }
            }
        };
        let id = hook.id.clone();
        let written = progress.clone();
        self.store
            .commit(Box::new(move |_| Commit { webhook_progress: vec![(id, written)], ..Commit::default() }))
            .await?;
        Ok(progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification's reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(0), SignedDuration::from_secs(1));
        assert_eq!(backoff(3), SignedDuration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example/x").is_ok());
        for bad in ["ftp://x", "http://", "hooks.example", "http:///x", "http://a b"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}

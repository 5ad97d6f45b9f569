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

/// The parts of a receiver URL that decide where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: &'static str,
    /// Lowercased; IPv6 without brackets.
    pub host: String,
    pub port: u16,
    /// `user:password@` was given.
    pub has_userinfo: bool,
    /// Anything after the authority (path, query), which may carry a secret.
    pub has_path: bool,
}

impl Target {
    pub fn parse(url: &str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "http" => ("http", 80),
            "https" => ("https", 443),
            _ => return None,
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        if host.is_empty() {
            return None;
        }
        Some(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            has_userinfo: userinfo.is_some(),
            has_path: !tail.is_empty() && tail != "/",
        })
    }

    /// What logs and events may show: no credentials, no path or query.
    pub fn redacted(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{}://{host}:{}{}", self.scheme, self.port, if self.has_path { "/…" } else { "" })
    }

    /// Whether the rules' allow-list names this receiver (`HOST` or `HOST:PORT`).
    pub fn allowed_internal(&self, allow: &[String]) -> bool {
        let with_port = format!("{}:{}", self.host, self.port);
        let bracketed = format!("[{}]:{}", self.host, self.port);
        allow.iter().any(|a| *a == self.host || *a == with_port || *a == bracketed || *a == format!("[{}]", self.host))
    }
}

/// The URL as logs and events may show it (credentials, path and query removed).
pub fn redact(url: &str) -> String {
    Target::parse(url).map_or_else(|| "(an invalid URL)".to_owned(), |t| t.redacted())
}

/// Addresses a webhook may not reach unless allow-listed: loopback, private, link-local,
/// shared (CGNAT), multicast, unspecified and broadcast, in IPv4 and IPv6 (mapped too).
pub fn internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(a) => {
            let [first, second, ..] = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_unspecified()
                || a.is_broadcast()
                || first == 0
                || (first == 100 && (second & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            let first = a.segments().first().copied().unwrap_or_default();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some_and(|v4| internal(IpAddr::V4(v4)))
        }
    }
}

/// Why a receiver may not be reached now, if it may not: it names, or resolves to, an
/// internal address the rules do not allow. A name that does not resolve is not refused
/// here (delivery checks again, and fails, while it does not).
pub async fn refused_target(url: &str, allow: &[String]) -> Option<String> {
    let Some(target) = Target::parse(url) else { return Some("not an `http://` or `https://` URL".into()) };
    if target.allowed_internal(allow) {
        return None;
    }
    let addresses: Vec<std::net::IpAddr> = match target.host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) if target.host == "localhost" || target.host.ends_with(".localhost") => {
            vec![std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)]
        }
        Err(_) => match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
            Ok(found) => found.map(|a| a.ip()).collect(),
            Err(_) => return None,
        },
    };
    addresses.iter().any(|ip| internal(*ip)).then(|| {
        format!(
            "`{}` is an internal address (loopback, private, link-local or multicast); \
             an admin may allow it in the rules' `webhooks.allow_internal`",
            target.host
        )
    })
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
    if Target::parse(url).is_none() {
        return Err(ValidationError::one(FieldError::new("url", "must name a host, and a port from 1 to 65535")));
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
        if let Some(why) = refused_target(url, &self.rules().webhook_allow_internal).await {
            return Err(ValidationError::one(FieldError::new("url", why)).into());
        }
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
            // Every role reads the log: credentials and paths in a URL stay out of it.
            data: json!({ "webhook_id": record.id, "url": redact(&record.url), "event_types": record.event_types }),
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
            data: json!({ "webhook_id": hook.id, "url": redact(&hook.url) }),
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
            .filter(|h| h.deleted_at.is_none() && !h.id.starts_with("wh_notify_"))
            .filter(|h| {
                h.progress.next_attempt_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok()).is_none_or(|t| t <= now)
            })
            .collect())
    }

    /// A notification channel's subscription (`notify::EMAIL`, `notify::CHAT`), when live and
    /// due (past its backoff).
    pub async fn channel_due(&self, id: &str) -> Result<Option<WebhookRecord>, ServiceError> {
        let now = self.clock.now();
        Ok(self.store.webhooks().await?.into_iter().find(|h| {
            h.id == id
                && h.deleted_at.is_none()
                && h.progress
                    .next_attempt_at
                    .as_deref()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .is_none_or(|t| t <= now)
        }))
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
    fn targets_parse_redact_and_match_the_allow_list() {
        let t = Target::parse("https://user:pw@Hooks.Example:8443/secret/path?token=x").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.has_userinfo, t.has_path), ("hooks.example", 8443, true, true));
        assert_eq!(t.redacted(), "https://hooks.example:8443/…");
        assert_eq!(redact("http://[::1]:9000/"), "http://[::1]:9000");
        assert_eq!(redact("http://127.0.0.1"), "http://127.0.0.1:80");
        let allow = vec!["127.0.0.1:9000".to_owned(), "relay.internal".to_owned()];
        assert!(Target::parse("http://127.0.0.1:9000/x").unwrap().allowed_internal(&allow));
        assert!(!Target::parse("http://127.0.0.1:5432/x").unwrap().allowed_internal(&allow));
        assert!(Target::parse("http://relay.internal:1/x").unwrap().allowed_internal(&allow));
        for bad in ["http://a:99999/", "http://:80/", "gopher://a/"] {
            assert!(Target::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn internal_addresses_are_named() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "ff02::1",
            "::",
        ] {
            assert!(internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(!internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn internal_targets_are_refused_unless_allowed() {
        for url in
            ["http://127.0.0.1:5432/", "http://localhost:5432/", "http://[::1]/", "http://169.254.169.254/latest"]
        {
            assert!(refused_target(url, &[]).await.is_some(), "{url}");
        }
        assert!(refused_target("http://127.0.0.1:9000/x", &["127.0.0.1:9000".to_owned()]).await.is_none());
        assert!(refused_target("http://127.0.0.1:9001/x", &["127.0.0.1:9000".to_owned()]).await.is_some());
        assert!(refused_target("http://93.184.216.34/x", &[]).await.is_none(), "a public address");
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example/x").is_ok());
        for bad in ["ftp://x", "http://", "hooks.example", "http:///x", "http://a b"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}

//! Notification senders: email over SMTP (lettre) and chat incoming webhooks (Slack-compatible
//! JSON), fed from the event log by the service's routing (`waiver_service::notify`) with
//! the webhooks' at-least-once delivery, backoff and claims; and the daily digest.

use std::{sync::Arc, time::Duration};

use lettre::{
    Message, SmtpTransport, Transport,
    message::{Mailbox, header::ContentType},
    transport::smtp::authentication::Credentials,
};
use waiver_service::{
    Service,
    notify::{CHAT, EMAIL, Notice, NotifyConfig, SmtpConfig},
};

/// The subscription whose cursor holds the last day (since the epoch) a digest went out.
const DIGEST: &str = "wh_notify_digest";
/// How long a claim on a channel lasts (several SMTP timeouts).
const LEASE: Duration = Duration::from_secs(60);

/// What a node needs to send notifications.
#[derive(Clone)]
pub struct Notifier {
    pub config: Arc<NotifyConfig>,
    pub public_url: Arc<str>,
    password: Option<String>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(config: NotifyConfig, public_url: Arc<str>) -> Self {
        let password = config.smtp.as_ref().and_then(|s| std::env::var(&s.password_env).ok());
        Self { config: Arc::new(config), public_url, password }
    }

    /// Creates (or retires) each channel's subscription as the configuration says.
    pub async fn set_up(&self, service: &Service) -> Result<(), String> {
        let smtp = self.config.smtp.as_ref().map(|s| format!("smtp://{}:{}", s.host, s.port));
        service.ensure_channel(EMAIL, smtp.as_deref()).await.map_err(|e| e.to_string())?;
        service.ensure_channel(DIGEST, smtp.as_deref()).await.map_err(|e| e.to_string())?;
        let chat = self.config.chat.as_ref().map(|c| c.url.as_str());
        service.ensure_channel(CHAT, chat).await.map_err(|e| e.to_string())
    }

    /// Sends what the log holds for each channel past its cursor; returns how many events
    /// told someone something.
    pub async fn deliver(&self, service: &Service, stop: &tokio::sync::watch::Receiver<bool>) -> Result<usize, String> {
        let mut told = 0;
        for id in [EMAIL, CHAT] {
            told += self.deliver_channel(service, id, stop).await?;
        }
        Ok(told)
    }

    async fn deliver_channel(
        &self,
        service: &Service,
        id: &str,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<usize, String> {
        let store = service.store();
        let Some(_) = service.channel_due(id).await.map_err(|e| e.to_string())? else { return Ok(0) };
        if !store.claim_webhook(id, LEASE).await.map_err(|e| e.to_string())? {
            return Ok(0);
        }
        // Read again under the claim: another node may have moved the cursor.
        let Some(mut hook) = service.channel_due(id).await.map_err(|e| e.to_string())? else { return Ok(0) };
        let events = store.events(hook.progress.delivered_seq, 50).await.map_err(|e| e.to_string())?;
        let mut told = 0;
        for event in events {
            if *stop.borrow() {
                break;
            }
            let notice = service.notice(&event, &self.public_url).await.map_err(|e| e.to_string())?;
            let sent = match &notice {
                None => Ok(()),
                Some(notice) if id == EMAIL => self.email(notice).await,
                Some(notice) => self.chat(service, &hook.url, notice).await,
            };
            let failure = sent.err();
            if let Some(e) = &failure {
                tracing::warn!(channel = id, event = event.seq, "notification failed; retrying with backoff: {e}");
            } else if notice.is_some() {
                told += 1;
            }
            let failed = failure.is_some();
            let cursor = if failed { hook.progress.delivered_seq } else { event.seq };
            hook.progress = service.webhook_progress(&hook, cursor, failure).await.map_err(|e| e.to_string())?;
            if failed {
                break;
            }
        }
        Ok(told)
    }

    async fn email(&self, notice: &Notice) -> Result<(), String> {
        let Some(smtp) = self.config.smtp.clone() else { return Ok(()) };
        let mut messages = Vec::new();
        for (recipient, address) in notice.emails() {
            let to = match &recipient.display_name {
                Some(name) => format!("{name} <{address}>"),
                None => address.to_owned(),
            };
            messages.push((to, notice.subject.clone(), format!("{}\n\n{}\n", notice.text, notice.link)));
        }
        if messages.is_empty() {
            return Ok(());
        }
        let password = self.password.clone();
        tokio::task::spawn_blocking(move || send_mail(&smtp, password.as_deref(), &messages))
            .await
            .map_err(|_| "the mail sender failed".to_owned())?
    }

    async fn chat(&self, service: &Service, url: &str, notice: &Notice) -> Result<(), String> {
        let Some(text) = notice.chat_text() else { return Ok(()) };
        // Checked at every send, as webhooks are: a name may resolve elsewhere since.
        if let Some(why) = waiver_service::webhooks::refused_target(url, &service.rules().webhook_allow_internal).await
        {
            return Err(format!("refused: {why}"));
        }
        let (url, body) = (url.to_owned(), serde_json::json!({ "text": text }).to_string());
        tokio::task::spawn_blocking(move || {
            let response = crate::background::receiver_agent()
                .post(&url)
                .header("content-type", "application/json")
                .send(body.as_bytes())
                .map_err(|_| "could not reach the chat receiver".to_owned())?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the chat receiver answered {}xx", status.as_u16() / 100))
            }
        })
        .await
        .map_err(|_| "the chat sender failed".to_owned())?
    }

    /// Sends each person who asked for a digest what waits for them, once a day at the
    /// configured hour (the day is recorded, so a restart or another node does not send twice).
    pub async fn digests(&self, service: &Service) -> Result<usize, String> {
        let Some(smtp) = self.config.smtp.clone() else { return Ok(0) };
        let now = service.now();
        let utc = now.to_zoned(jiff::tz::TimeZone::UTC);
        if utc.hour() < i8::try_from(self.config.digest_hour).unwrap_or(8) {
            return Ok(0);
        }
        let today = u64::try_from(now.as_second() / 86_400).unwrap_or(0);
        let Some(hook) = service.channel_due(DIGEST).await.map_err(|e| e.to_string())? else { return Ok(0) };
        // The cursor starts at the log's head when created: anything larger than a day
        // number that low means "never sent".
        if hook.progress.delivered_seq == today
            || !service.store().claim_webhook(DIGEST, LEASE).await.map_err(|e| e.to_string())?
        {
            return Ok(0);
        }
        let directory = service.directory().await.map_err(|e| e.to_string())?;
        let mut messages = Vec::new();
        for person in directory.directory.people.values().filter(|p| p.is_active() && p.digest) {
            let (Some(address), true) = (&person.email, person.wants("email")) else { continue };
            if let Some(text) = service.digest(person, &self.public_url).await.map_err(|e| e.to_string())? {
                messages.push((address.clone(), "[waiver] Your daily digest".to_owned(), text));
            }
        }
        let n = messages.len();
        let password = self.password.clone();
        let sent = tokio::task::spawn_blocking(move || send_mail(&smtp, password.as_deref(), &messages))
            .await
            .map_err(|_| "the mail sender failed".to_owned())?;
        let cursor = if sent.is_ok() { today } else { hook.progress.delivered_seq };
        service.webhook_progress(&hook, cursor, sent.err()).await.map_err(|e| e.to_string())?;
        Ok(n)
    }
}

/// Sends `(to, subject, text)` messages over one SMTP connection.
fn send_mail(smtp: &SmtpConfig, password: Option<&str>, messages: &[(String, String, String)]) -> Result<(), String> {
    let from: Mailbox = smtp.from.parse().map_err(|e| format!("`notify.smtp.from`: {e}"))?;
    let builder = if smtp.tls == "starttls" {
        SmtpTransport::starttls_relay(&smtp.host).map_err(|e| format!("SMTP: {e}"))?
    } else {
        SmtpTransport::builder_dangerous(&smtp.host)
    };
    let mut builder = builder.port(smtp.port).timeout(Some(Duration::from_secs(10)));
    if let (Some(user), Some(password)) = (&smtp.username, password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.to_owned()));
    }
    let mailer = builder.build();
    for (to, subject, text) in messages {
        let to: Mailbox = match to.parse() {
            Ok(to) => to,
            Err(e) => {
                // One bad address must not hold everyone else's mail back.
                tracing::warn!("not emailing `{to}`: {e}");
                continue;
            }
        };
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(text.clone())
            .map_err(|e| format!("the message could not be built: {e}"))?;
        mailer.send(&message).map_err(|e| format!("the SMTP relay refused: {e}"))?;
    }
    Ok(())
}

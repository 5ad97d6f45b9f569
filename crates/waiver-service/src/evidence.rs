//! Evidence for auditors: the register gathered once, rendered by `waiver-evidence`.

use waiver_core::{
    Actor, Role,
    audit::{BrokenLink, ChainHead, ChainVerifier},
};
use waiver_evidence::{
    Format, Register,
    reports::{Options, Report},
};
use waiver_store::ExceptionFilter;

use crate::{Service, ServiceError, require};

/// Who may take evidence out: those who answer for the register.
const EVIDENCE_READERS: &[Role] = &[Role::Admin, Role::Auditor, Role::Approver];

/// Exceptions read per page of a streamed export.
const EXPORT_PAGE: u32 = 500;

/// How often a report verifies the whole chain rather than what was appended since.
pub const FULL_VERIFY_EVERY: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);

impl Service {
    /// Everything an export covers, as of now: every exception, identity and exception
    /// event, with the chain head they verify against. A broken chain is refused: an export
    /// of a log that does not verify would be evidence of nothing.
    pub async fn register(&self, actor: &Actor) -> Result<Register, ServiceError> {
        require(actor, "read evidence (exports and reports)", EVIDENCE_READERS)?;
        let chain = self.store.verify_chain().await?.map_err(|broken| {
            ServiceError::Conflict(format!(
                "cannot export evidence: the audit chain does not verify ({broken}); run `waiver audit verify`"
            ))
        })?;
        // Records from the store, not the in-memory copy: with the events, one consistent cut.
        let mut register = self.register_records(false).await?;
        let mut after = 0;
        // Read by page up to the verified head only, so the export is one consistent cut.
        while after < chain.n_events {
            let page = self.store.events(after, 10_000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for event in page.into_iter().take_while(|e| e.seq <= chain.n_events) {
                if let Some(seal) = event.seal.as_ref().filter(|s| waiver_evidence::is_artifact_kind(&s.key)) {
                    register.artifacts.push(self.exported_artifact(&seal.key, event.seq).await?);
                }
                if let Some(id) = event.exception_id.as_deref().and_then(|id| id.parse().ok()) {
                    register.events.entry(id).or_default().push(event.clone());
                }
                register.log.push(event);
            }
        }
        register.tokens = self.token_digests().await?;
        register.chain = Some(chain);
        Ok(register)
    }

    /// The baseline or rules text event `seq` put in force, for an export.
    async fn exported_artifact(&self, kind: &str, seq: u64) -> Result<waiver_evidence::ExportedArtifact, ServiceError> {
        let held = self.store.artifact_at(kind, Some(seq)).await?.ok_or_else(|| {
            ServiceError::Store(waiver_store::StoreError::Other(format!("the {kind} of event {seq} is gone")))
        })?;
        Ok(waiver_evidence::ExportedArtifact {
            kind: kind.to_owned(),
            set_by_event: held.seq,
            sha256: held.digest,
            body: held.body,
        })
    }

    /// Each token record's key and digest (exports carry these, not the secrets' hashes).
    async fn token_digests(&self) -> Result<Vec<(String, String)>, ServiceError> {
        Ok(self
            .store
            .tokens()
            .await?
            .iter()
            .map(|t| {
                (waiver_store::seal::token_key(&t.id), waiver_store::seal::digest(&waiver_store::seal::token_text(t)))
            })
            .collect())
    }

    /// The exceptions and identities, rules and baseline: what reports read (records only,
    /// no events, no chain verification, so a report costs a read of the register).
    pub(crate) async fn register_records(&self, in_memory: bool) -> Result<Register, ServiceError> {
        // A serving node's in-memory register; a read of the store elsewhere (the CLI).
        let held = if in_memory { self.records.all() } else { None };
        let exceptions = match held {
            Some(held) => held,
            None => {
                self.store.exceptions(&ExceptionFilter::default()).await?.into_iter().map(std::sync::Arc::new).collect()
            }
        };
        Ok(Register::new(
            self.now(),
            exceptions,
            self.store.identities().await?,
            (*self.rules()).clone(),
            self.baseline(),
        ))
    }

    /// A report over the register.
    pub async fn report(
        &self,
        actor: &Actor,
        report: Report,
        options: Options,
    ) -> Result<serde_json::Value, ServiceError> {
        require(actor, "read evidence (exports and reports)", EVIDENCE_READERS)?;
        self.chain_intact().await?.map_err(|broken| {
            ServiceError::Conflict(format!(
                "cannot report: the audit chain does not verify ({broken}); run `waiver audit verify`"
            ))
        })?;
        let register = self.register_records(true).await?;
        Ok(waiver_evidence::reports::run(report, &register, options))
    }

    /// Whether the audit chain verifies: only the events appended since the last check are
    /// read, and the whole chain again once the last full check is older than
    /// [`FULL_VERIFY_EVERY`] (so a report costs little, and a rewrite of old events is still
    /// found).
    async fn chain_intact(&self) -> Result<Result<ChainHead, BrokenLink>, ServiceError> {
        let now = self.clock.now();
        let held = self.chain_checked.lock().ok().and_then(|slot| slot.clone());
        let (mut verifier, full_at) = match held {
            Some((head, at)) if now.duration_since(at) < FULL_VERIFY_EVERY => (ChainVerifier::resume(&head), at),
            _ => (ChainVerifier::default(), now),
        };
        let mut after = verifier.next_seq() - 1;
        loop {
            let page = self.store.events(after, 10_000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for event in &page {
                if let Err(broken) = verifier.push(event) {
                    if let Ok(mut slot) = self.chain_checked.lock() {
                        *slot = None;
                    }
                    return Ok(Err(broken));
                }
            }
        }
        let head = verifier.finish();
        if let Ok(mut slot) = self.chain_checked.lock() {
            *slot = Some((head.clone(), full_at));
        }
        Ok(Ok(head))
    }

    /// The JSON export as a stream of pieces, read from the store a page of exceptions at a
    /// time (with each one's events), so memory stays flat in the size of the register. The
    /// chain is verified first; the export covers events up to the verified head. A store
    /// error mid-way ends the stream with that error (the document is then incomplete).
    pub async fn export_json_stream(
        &self,
        actor: &Actor,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<String, ServiceError>>, ServiceError> {
        require(actor, "read evidence (exports and reports)", EVIDENCE_READERS)?;
        let chain = self.store.verify_chain().await?.map_err(|broken| {
            ServiceError::Conflict(format!(
                "cannot export evidence: the audit chain does not verify ({broken}); run `waiver audit verify`"
            ))
        })?;
        let identities = self.store.identities().await?;
        let (pieces, stream) = tokio::sync::mpsc::channel(8);
        let (store, now, service) = (self.store.clone(), self.now(), self.clone());
        tokio::spawn(async move {
            let mut writer = waiver_evidence::JsonWriter::new(now, &chain);
            let written = async {
                let send = |piece: String| pieces.send(Ok(piece));
                if send(writer.head()?).await.is_err() {
                    return Ok(());
                }
                let mut after = None;
                loop {
                    let page = ExceptionFilter { after, limit: Some(EXPORT_PAGE), ..ExceptionFilter::default() };
                    let page = store.exceptions(&page).await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.id);
                    for e in &page {
                        let mut events = store.events_of(e.id).await?;
                        events.retain(|ev| ev.seq <= chain.n_events);
                        let piece = writer.exception(e, &waiver_evidence::controls(e), &events)?;
                        if send(piece).await.is_err() {
                            return Ok(()); // the client went away
                        }
                    }
                }
                if send(writer.identities(&identities)?).await.is_err() {
                    return Ok(());
                }
                // The whole log up to the verified head, a page at a time.
                let mut artifacts = Vec::new();
                let mut after = 0;
                while after < chain.n_events {
                    let page = store.events(after, 10_000).await?;
                    let Some(last) = page.last() else { break };
                    after = last.seq;
                    for event in page.iter().take_while(|e| e.seq <= chain.n_events) {
                        if let Some(seal) = event.seal.as_ref().filter(|s| waiver_evidence::is_artifact_kind(&s.key)) {
                            artifacts.push(service.exported_artifact(&seal.key, event.seq).await?);
                        }
                        if send(writer.log_event(event)?).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                let _ = send(writer.close(&service.token_digests().await?, &artifacts)?).await;
                Ok::<(), ServiceError>(())
            }
            .await;
            if let Err(e) = written {
                tracing::error!("the JSON export stopped part-way: {e}");
                let _ = pieces.send(Err(e)).await;
            }
        });
        Ok(stream)
    }

    /// The register rendered in `format`.
    pub async fn export(&self, actor: &Actor, format: Format) -> Result<String, ServiceError> {
        let register = self.register(actor).await?;
        Ok(waiver_evidence::export(&register, format)?)
    }
}

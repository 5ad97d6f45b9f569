//! Evidence for auditors: the register gathered once, rendered by `waiver-evidence`.

use waiver_core::{Actor, Role};
use waiver_evidence::{
    Format, Register,
    reports::{Options, Report},
};
use waiver_store::ExceptionFilter;

use crate::{Service, ServiceError, require};

/// Who may take evidence out: those who answer for the register.
const EVIDENCE_READERS: &[Role] = &[Role::Admin, Role::Auditor, Role::Approver];

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
                if let Some(id) = event.exception_id.as_deref().and_then(|id| id.parse().ok()) {
                    register.events.entry(id).or_default().push(event);
                }
            }
        }
        register.chain = Some(chain);
        Ok(register)
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
            (*self.rules).clone(),
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
        let register = self.register_records(true).await?;
        Ok(waiver_evidence::reports::run(report, &register, options))
    }

    /// The register rendered in `format`.
    pub async fn export(&self, actor: &Actor, format: Format) -> Result<String, ServiceError> {
        let register = self.register(actor).await?;
        Ok(waiver_evidence::export(&register, format)?)
    }
}

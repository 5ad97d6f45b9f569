//! The text a store keeps for a record, which its seal hashes (`waiver_store::seal`). Here,
//! beside the wire shapes, so the store, the exports and an offline verifier produce the
//! same bytes from the same record.

use waiver_core::{Exception, Identity};

/// An exception's stored text: its wire record with usage zeroed (usage is unsealed
/// telemetry kept beside it). The wire types hold strings, numbers, lists and ordered maps
/// only, and serialise their fields in declaration order, so the text is the same for the
/// same record everywhere.
pub fn exception_text(e: &Exception) -> Result<String, serde_json::Error> {
    let mut record = crate::Exception::record(e);
    record.usage = crate::exception::Usage::default();
    serde_json::to_string(&record)
}

/// An identity's stored text.
pub fn identity_text(i: &Identity) -> Result<String, serde_json::Error> {
    serde_json::to_string(&crate::Identity::from(i))
}

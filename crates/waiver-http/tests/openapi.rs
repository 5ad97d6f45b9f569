//! The OpenAPI document is a golden file (`docs/openapi.json`): a change to the API shows
//! up in review as a change to that file. Regenerate with `WAIVER_UPDATE_GOLDEN=1`.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::path::Path;

#[test]
fn the_openapi_document_matches_the_golden_file() {
    let document = waiver_http::openapi_document();
    assert_eq!(document["openapi"], "3.1.0");
    let text = serde_json::to_string_pretty(&document).unwrap() + "\n";
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("WAIVER_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(expected == text, "docs/openapi.json is stale; rerun with WAIVER_UPDATE_GOLDEN=1 and review the diff");
}

//! GitOps on the real binary: `export --format yaml` writes what `apply` reads; applying is
//! idempotent, goes through the same rules and events, and refuses what they refuse.

use crate::support::{Waiver, in_hours};

fn events(w: &Waiver) -> u64 {
    w.run("admin", &["--output", "json", "audit", "verify"]).ok().json()["events"].as_u64().unwrap()
}

fn yaml(path: &std::path::Path) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn apply_export_apply_is_a_no_op_and_changes_go_through_the_rules() {
    let w = Waiver::new();
    w.run("admin", &["demo", "--no-serve"]).ok();
    let dir = w.dir.path();
    let exported = dir.join("register.yaml");
    w.run("admin", &["export", "--format", "yaml", "--out", &exported.to_string_lossy()]).ok();

    // The export applied to the register it came from changes nothing.
    let before = events(&w);
    let plan = w.run("admin", &["--output", "json", "apply", &exported.to_string_lossy()]).ok().json();
    assert_eq!(plan["changes"], serde_json::json!([]), "{plan}");
    assert_eq!(plan["refusals"], serde_json::json!([]));
    assert!(plan["unchanged"].as_u64().unwrap() > 50);
    assert_eq!(events(&w), before, "no event for a no-op");

    // Changes, in a directory of files: a new identity, a request for it, a later expiry.
    let mut document = yaml(&exported);
    let exceptions = document["exceptions"].as_sequence_mut().unwrap();
    let renewed =
        exceptions.iter_mut().find(|e| e["subject"]["id"] == "backup-runner" || e.get("kind").is_none()).unwrap();
    let renewed_id = renewed["id"].as_str().unwrap().to_owned();
    let later = jiff::Timestamp::from_second(
        renewed["expires_at"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap().as_second() + 86_400,
    )
    .unwrap();
    renewed["expires_at"] = serde_yaml_ng::Value::String(later.to_string());
    let tree = dir.join("gitops");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("10-register.yaml"), serde_yaml_ng::to_string(&document).unwrap()).unwrap();
    std::fs::write(
        tree.join("20-new.yaml"),
        format!(
            r#"
identities:
  - {{type: ServiceAccount, id: gitops-bot, kind: service_account, owner: sam, team: platform, credential_type: workload_token}}
exceptions:
  - subject: {{type: ServiceAccount, id: gitops-bot}}
    waives: [forbid-prod-db-direct-access]
    scope: {{actions: [connect], resources: [{{type: Database, id: orders-prod}}]}}
    compensating_controls:
      - {{kind: read_only, description: replica user}}
      - {{kind: extra_logging, description: every query logged}}
    justification: nightly reconciliation reads orders directly until the export API lands
    normal_path_unavailable: the export API is not built yet
    risk: high
    owner: sam
    expires_at: "{}"
    remediation: {{plan: move to the export API, ticket: DATA-77}}
"#,
            in_hours(72)
        ),
    )
    .unwrap();
    let tree = tree.to_string_lossy().into_owned();
    let before = events(&w);
    let dry = w.run("admin", &["apply", &tree, "--dry-run"]).ok();
    assert!(dry.stdout.contains("+ identity ServiceAccount:gitops-bot"), "{}", dry.stdout);
    assert!(dry.stdout.contains("+ exception request for ServiceAccount:gitops-bot"), "{}", dry.stdout);
    assert!(dry.stdout.contains(&format!("~ {renewed_id}: renew until")), "{}", dry.stdout);
    assert_eq!(events(&w), before, "a dry run changes nothing");

    let applied = w.run("dana", &["apply", &tree]).ok();
    assert!(applied.stdout.contains("applied: + exception request"), "{}", applied.stdout);
    assert!(events(&w) >= before + 3, "identity added, request filed, renewal asked: each an event");
    let filed =
        w.run("admin", &["--output", "json", "exception", "list", "--subject", "ServiceAccount:gitops-bot"]).ok();
    let filed = filed.json();
    let item = &filed["items"][0];
    assert_eq!(item["state"], "requested", "a filed request still needs its approval");
    assert_eq!(item["requester"], "dana");
    let refused = w.run("dana", &["exception", "approve", item["id"].as_str().unwrap()]);
    assert_eq!(refused.code, 2, "the requester does not approve what apply filed: {refused:?}");

    // Again: nothing to do (the request and the pending renewal are recognised).
    let after = events(&w);
    let again = w.run("admin", &["--output", "json", "apply", &tree]).ok().json();
    assert_eq!(again["changes"], serde_json::json!([]), "{again}");
    assert_eq!(events(&w), after);

    // Export again, apply: still nothing.
    let second = dir.join("second.yaml");
    w.run("admin", &["export", "--format", "yaml", "--out", &second.to_string_lossy()]).ok();
    let round = w.run("admin", &["--output", "json", "apply", &second.to_string_lossy()]).ok().json();
    assert_eq!(round["changes"], serde_json::json!([]), "{round}");

    // Terms are fixed once filed: a changed scope is refused, naming the field; nothing applied.
    let mut changed = yaml(&second);
    let first = &mut changed["exceptions"][0];
    first["scope"]["actions"] = serde_yaml_ng::from_str("[connect, drop]").unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, serde_yaml_ng::to_string(&changed).unwrap()).unwrap();
    let before = events(&w);
    let refused = w.run("admin", &["apply", &bad.to_string_lossy()]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stdout.contains("differs in scope"), "{}", refused.stdout);
    assert_eq!(events(&w), before);

    // An identity the inventory would refuse is refused by the plan, naming the field.
    let odd = dir.join("odd.yaml");
    std::fs::write(&odd, "identities:\n  - {type: ServiceAccount, id: odd-bot, kind: robot, owner: sam, credential_type: workload_token}\n").unwrap();
    let refused = w.run("admin", &["apply", &odd.to_string_lossy(), "--dry-run"]);
    assert_eq!(refused.code, 2);
    assert!(refused.stdout.contains("identities[0].kind"), "{}", refused.stdout);

    // A malformed file names the file and the field.
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, "identities:\n  - {type: ServiceAccount, id: x, kind: robot, owner: sam, credential_type: workload_token, colour: red}\n").unwrap();
    let refused = w.run("admin", &["apply", &broken.to_string_lossy()]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("broken.yaml") && refused.stderr.contains("colour"), "{}", refused.stderr);
}

#[test]
fn import_checks_every_row_and_stores_nothing_from_a_file_with_errors_unless_told() {
    let w = Waiver::new();
    w.run("admin", &["demo", "--no-serve"]).ok();
    let (soon, past) = (in_hours(48), "2020-01-01T00:00:00Z");
    let row = |subject: &str, risk: &str, expires: &str| {
        format!(
            "ServiceAccount:{subject},forbid-prod-db-direct-access,connect,Database:orders-prod,\"replica reads, nightly\",export API not built,{risk},sam,{expires},read_only: replica user; extra_logging: all queries,move to the export API\n"
        )
    };
    let csv = format!(
        "Service Account,waives,actions,resources,Business reason,normal_path_unavailable,risk,owner,expires_at,compensating_controls,remediation\n{}{}{}{}{}",
        row("backup-runner", "high", &soon),
        row("ledger-sync", "high", &soon),
        row("billing-etl", "high", past),
        row("report-builder", "extreme", &soon),
        row("analytics-loader", "high", &soon),
    );
    let file = w.dir.path().join("tickets.csv");
    std::fs::write(&file, csv).unwrap();
    let file = file.to_string_lossy().into_owned();
    let map = ["--map", "subject=Service Account", "--map", "justification=Business reason"];
    let before = events(&w);

    let mut args = vec!["--output", "json", "import", &file, "--dry-run"];
    args.extend(map);
    let dry = w.run("dana", &args);
    assert_eq!(dry.code, 2, "{dry:?}");
    let report = dry.json();
    assert_eq!((report["valid"].as_u64(), report["invalid"].as_u64()), (Some(3), Some(2)), "{report}");
    let bad: Vec<(u64, String)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["errors"].as_array().unwrap().is_empty())
        .map(|r| (r["line"].as_u64().unwrap(), r["errors"][0]["field"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(bad, vec![(4, "expires_at".to_owned()), (5, "risk".to_owned())], "each bad row named, with its field");

    let mut args = vec!["import", &file];
    args.extend(map);
    let refused = w.run("dana", &args);
    assert_eq!(refused.code, 2);
    assert!(refused.stdout.contains("line 5: risk"), "{}", refused.stdout);
    assert!(refused.stdout.contains("nothing stored"), "{}", refused.stdout);
    assert_eq!(events(&w), before, "a file with errors stores nothing");

    let mut args = vec!["--output", "json", "import", &file, "--skip-invalid"];
    args.extend(map);
    let done = w.run("dana", &args).ok().json();
    assert_eq!(done["filed"], 3);
    assert_eq!(events(&w), before + 3, "one `exception.requested` per filed row");
    let id = done["rows"][0]["id"].as_str().unwrap().to_owned();
    let shown = w.run("admin", &["--output", "json", "exception", "show", &id]).ok().json();
    assert_eq!((shown["state"].as_str(), shown["requester"].as_str()), (Some("requested"), Some("dana")));
    assert_eq!(shown["justification"], "replica reads, nightly");
    assert_eq!(shown["compensating_controls"].as_array().unwrap().len(), 2);

    // A required field with no column, and a --map naming a column that is not there.
    let missing = w.run("dana", &["import", &file]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("`subject`") && missing.stderr.contains("--map"), "{}", missing.stderr);
    let wrong = w.run("dana", &["import", &file, "--map", "subject=Nope"]);
    assert!(wrong.stderr.contains("column `Nope`"), "{}", wrong.stderr);
}

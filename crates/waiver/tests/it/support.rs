//! Runs the real binary against a scratch data dir.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

pub struct Waiver {
    pub dir: tempfile::TempDir,
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }
}

pub const IDENTITY: &str = r#"{"type": "ServiceAccount", "id": "ci-deployer", "kind": "service_account",
  "owner": "sam", "team": "platform", "credential_type": "workload_token"}"#;

/// A valid request for `ServiceAccount:ci-deployer`, expiring `days` from now.
pub fn request(days: i64) -> Value {
    serde_json::json!({
        "subject": {"type": "ServiceAccount", "id": "ci-deployer"},
        "waives": ["forbid-prod-writes-outside-change-window"],
        "scope": {"actions": ["deploy"], "resources": [{"type": "Environment", "id": "prod", "descendants": true}]},
        "condition": "context.source_ip.isInRange(ip(\"10.20.0.0/16\"))",
        "compensating_controls": [
            {"kind": "ip_restriction", "description": "runner subnet only", "enforced": true},
            {"kind": "extra_logging", "description": "every use logged", "enforced": true}
        ],
        "justification": "release train 42 needs deploys during the freeze",
        "normal_path_unavailable": "change window closed; fix cannot wait",
        "risk": "high",
        "owner": "sam",
        "expires_at": in_days(days),
        "remediation": {"plan": "move deploys to the merge queue", "ticket": "CHG-1881"},
        "review": {"revalidate_on": ["owner_change"]}
    })
}

pub fn in_days(days: i64) -> String {
    in_hours(24 * days)
}

#[expect(clippy::disallowed_methods, reason = "tests build inputs relative to the real clock the binary reads")]
pub fn in_hours(hours: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(hours)).to_string()
}

impl Waiver {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    /// A data dir after `init`, with the identity `ServiceAccount:ci-deployer` owned by sam.
    pub fn ready() -> Self {
        let waiver = Self::new();
        waiver.run("admin", &["init"]).ok();
        waiver.run_file("admin", &["identity", "add"], "identity.json", IDENTITY).ok();
        waiver
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn run(&self, as_name: &str, args: &[&str]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_waiver"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--as", as_name])
            .args(args)
            .env_remove("WAIVER_DATABASE_URL")
            .output()
            .unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Writes `contents` to `name` in the scratch dir and runs `args --file PATH`.
    pub fn run_file(&self, as_name: &str, args: &[&str], name: &str, contents: &str) -> Run {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let mut args = args.to_vec();
        let path = path.to_string_lossy().into_owned();
        args.extend(["--file", &path]);
        self.run(as_name, &args)
    }

    pub fn file_request(&self, as_name: &str, request: &Value) -> Run {
        self.run_file(as_name, &["--output", "json", "exception", "request"], "request.json", &request.to_string())
    }

    pub fn state(&self, id: &str) -> String {
        let shown = self.run("admin", &["--output", "json", "exception", "show", id]).ok().json();
        shown["state"].as_str().unwrap().to_owned()
    }

    /// The number of events in the chain, which must verify.
    pub fn n_events(&self) -> u64 {
        let verified = self.run("admin", &["--output", "json", "audit", "verify"]).ok().json();
        verified["events"].as_u64().unwrap()
    }

    /// Edits the rules in force (`waiver rules show`) and puts the result in force (`waiver
    /// rules set`): the rules are the log's, the data dir's file only what was imported first.
    pub fn edit_rules(&self, edit: impl FnOnce(String) -> String) {
        let path = self.data_dir().join("rules.toml");
        let rules = edit(self.run("admin", &["rules", "show"]).ok().stdout);
        std::fs::write(&path, rules).unwrap();
        self.run("admin", &["rules", "set", &path.to_string_lossy()]).ok();
    }

    /// Runs SQL against the data dir's database, as someone with the file might.
    pub fn tamper(&self, sql: &[&str]) {
        let path = self.data_dir().join("waiver.db");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            use sqlx::Connection;
            let url = format!("sqlite://{}", path.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            for statement in sql {
                sqlx::query(statement).execute(&mut conn).await.unwrap();
            }
            conn.close().await.unwrap();
        });
    }
}

//! The OpenID AuthZEN interop suites, replayed over real HTTP against `waiver serve` with
//! each scenario's baseline, compared as the upstream harness compares (shared/authzen-interop).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;

/// A running `waiver serve`, killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Sends `signal` (`TERM`, `KILL`) to the server and waits for it to exit.
    pub fn stop(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// Starts the binary on a free port with `args` and waits for its "listening" line.
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Self::start_in(dir, &data, args)
    }

    /// The same, on an existing data dir.
    pub fn start_in(dir: tempfile::TempDir, data_dir: &Path, args: &[&str]) -> Self {
        Self::start_in_env(dir, data_dir, args, &[])
    }

    /// The same, with variables added to the server's environment.
    pub fn start_in_env(dir: tempfile::TempDir, data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_waiver"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // Keep reading what the server prints, so its stdout never fills or closes.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let base =
            line.trim().strip_prefix("waiver listening on ").unwrap_or_else(|| panic!("unexpected: {line}")).to_owned();
        Self { child, base, _dir: dir }
    }

    /// POSTs JSON the way the interop harness does (`Authorization: undefined`).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, _, body) = self.send(path, &[("Authorization", "undefined")], body.to_string());
        (status, body)
    }

    /// POSTs a raw body with headers; returns the status, the response headers and the body.
    pub fn send(&self, path: &str, headers: &[(&str, &str)], body: String) -> (u16, ureq::http::HeaderMap, Value) {
        self.try_send(path, headers, body).unwrap()
    }

    /// [`Server::send`], returning a transport error instead of panicking.
    pub fn try_send(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<(u16, ureq::http::HeaderMap, Value), ureq::Error> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut request = agent.post(&format!("{}{path}", self.base)).header("Content-Type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request.send(body)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok((status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut response = agent.get(&format!("{}{path}", self.base)).call().unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

fn shared(path: &str) -> Value {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/authzen-interop").join(path);
    serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))).unwrap()
}

pub fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/authzen-interop").join(name).display().to_string()
}

fn decisions(server: &Server, cases: &Value) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut n = 0;
    for case in cases["evaluation"].as_array().into_iter().flatten() {
        n += 1;
        let (status, response) = server.post("/access/v1/evaluation", &case["request"]);
        let decision = response["decision"].as_bool().unwrap_or(false);
        if status != 200 || decision != case["expected"].as_bool().unwrap() {
            failures.push(format!("{} -> {status} {response}", case["request"]));
        }
    }
    for case in cases["evaluations"].as_array().into_iter().flatten() {
        n += 1;
        let (status, response) = server.post("/access/v1/evaluations", &case["request"]);
        // Exact equality: an item with anything beside `decision` fails, as in the harness.
        if status != 200 || response["evaluations"] != case["expected"] {
            failures.push(format!("{} -> {status} {response}", case["request"]));
        }
    }
    (n, failures)
}

fn sorted(results: &Value) -> Vec<String> {
    let mut items: Vec<String> = results.as_array().into_iter().flatten().map(Value::to_string).collect();
    items.sort();
    items
}

fn searches(server: &Server, path: &str, cases: &[Value]) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    for case in cases {
        let (status, response) = server.post(path, &case["request"]);
        if status != 200 || sorted(&response["results"]) != sorted(&case["expected"]["results"]) {
            failures.push(format!("{} -> {status} {response} (expected {})", case["request"], case["expected"]));
        }
    }
    (cases.len(), failures)
}

#[test]
fn todo_scenario_passes_all_43_cases() {
    let server = Server::start(&["--baseline", &scenario("todo"), "--decision-auth", "none"]);
    let (n, failures) = decisions(&server, &shared("todo/decisions-authorization-api-1_0-02.json"));
    assert_eq!(n, 43);
    assert!(failures.is_empty(), "{} of {n} failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn gateway_scenario_passes_all_25_cases() {
    let server = Server::start(&["--baseline", &scenario("gateway"), "--decision-auth", "none"]);
    let (n, failures) = decisions(&server, &shared("api-gateway/decisions.json"));
    assert_eq!(n, 25);
    assert!(failures.is_empty(), "{} of {n} failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn search_scenario_passes_all_198_cases() {
    let server = Server::start(&["--baseline", &scenario("search"), "--decision-auth", "none"]);
    let mut total = 0;
    let mut failures = Vec::new();
    for (kind, path) in [
        ("subject", "search/subject/results.json"),
        ("resource", "search/resource/results.json"),
        ("action", "search/action/results.json"),
    ] {
        let cases = shared(path);
        let (n, f) = searches(&server, &format!("/access/v1/search/{kind}"), cases["evaluation"].as_array().unwrap());
        total += n;
        failures.extend(f);
    }
    assert_eq!(total, 198);
    assert!(failures.is_empty(), "{} of {total} failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn idp_scenario_passes_all_6_cases() {
    let server = Server::start(&["--baseline", &scenario("idp"), "--decision-auth", "none"]);
    let cases = shared("idp/results.json");
    let (n, failures) = searches(&server, "/access/v1/search/resource", cases["search"].as_array().unwrap());
    assert_eq!(n, 6);
    assert!(failures.is_empty(), "{} of {n} failed:\n{}", failures.len(), failures.join("\n"));
}

#!/usr/bin/env python3
"""Replicas on PostgreSQL: `waiver serve` processes sharing one database.

Builds the demo into a fresh database and starts three replicas (A, B, C) and a fourth (D).
1. Propagation, N rounds: file and approve an exception on A, wait until B and C allow;
   revoke on A, time until B and C deny (polling each as fast as one client can).
2. Writes across replicas: D is frozen (SIGSTOP); `wrk` files exceptions on A, B and C at
   once (one wrk per replica) until D has missed --missed events; the first wrk round gives
   writes/s across the replicas.
3. Catch-up: D resumes (SIGCONT); time until its `waiver_applied_seq` reaches the head.
4. Late start: a fifth replica E starts on the grown database; time until /readyz is 200.
5. `waiver audit verify` on the database: the chain written by four processes is whole.

    scripts/bench-replicas.py [--rounds 1000] [--missed 100000] [--url postgres://…/test]
"""
import argparse, json, os, subprocess, sys, tempfile, time, urllib.request, uuid, threading

p = argparse.ArgumentParser()
p.add_argument("--rounds", type=int, default=1000)
p.add_argument("--url", default=os.environ.get("WAIVER_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/test"))
p.add_argument("--bin", default="target/release/waiver")
p.add_argument("--missed", type=int, default=100_000)
p.add_argument("--write-seconds", type=int, default=20)
p.add_argument("--connections", type=int, default=4, help="wrk connections per replica")
args = p.parse_args()

base_url, _ = args.url.rsplit("/", 1)
db = "waiver_bench_" + uuid.uuid4().hex[:12]
subprocess.run(["psql", args.url, "-qc", f"CREATE DATABASE {db}"], check=True)
url = f"{base_url}/{db}"
work = tempfile.mkdtemp()
data = os.path.join(work, "data")
subprocess.run([args.bin, "--data-dir", data, "--database-url", url, "demo", "--no-serve"], check=True, stdout=subprocess.DEVNULL)
tokens = json.load(open(os.path.join(data, "demo-tokens.json")))
tok = {k: v["token"] for k, v in tokens.items()}

def start(extra=()):
    proc = subprocess.Popen([args.bin, "--data-dir", data, "--database-url", url, "serve", "--listen", "127.0.0.1:0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
    return proc, line.strip().removeprefix("waiver listening on ")

def call(base, who, method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + tok[who], "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")

def allowed(base, subject):
    _, v = call(base, "pep", "POST", "/access/v1/evaluation", {"subject": {"type": "ServiceAccount", "id": subject},
               "action": {"name": "connect"}, "resource": {"type": "Database", "id": "orders-prod"}})
    return v["decision"]

def request(subject):
    exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    return {"subject": {"type": "ServiceAccount", "id": subject}, "waives": ["forbid-prod-db-direct-access"],
            "scope": {"actions": ["connect"], "resources": [{"type": "Database", "id": "orders-prod"}]},
            "compensating_controls": [{"kind": "extra_logging", "description": "l"}, {"kind": "read_only", "description": "r"}],
            "justification": "bench", "normal_path_unavailable": "bench", "risk": "high", "owner": "sam",
            "expires_at": exp, "remediation": {"plan": "none"}}

def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs); return xs[min(len(xs) - 1, round((len(xs) - 1) * q))]

procs = [start() for _ in range(3)]
(a, b, c) = [base for _, base in procs]
to_b, to_c, writes = [], [], 0
t_writes = 0.0
for i in range(args.rounds):
    t = time.perf_counter()
    _, e = call(a, "requester", "POST", "/api/v1/exceptions", request("backup-runner"))
    call(a, "approver", "POST", f"/api/v1/exceptions/{e['id']}/approve", {})
    t_writes += time.perf_counter() - t; writes += 2
    while not (allowed(b, "backup-runner") and allowed(c, "backup-runner")):
        pass
    call(a, "owner", "POST", f"/api/v1/exceptions/{e['id']}/revoke", {})
    t0 = time.perf_counter(); writes += 1
    done_b = done_c = None
    while done_b is None or done_c is None:
        if done_b is None and not allowed(b, "backup-runner"): done_b = time.perf_counter() - t0
        if done_c is None and not allowed(c, "backup-runner"): done_c = time.perf_counter() - t0
    to_b.append(done_b * 1e3); to_c.append(done_c * 1e3)

result = {"rounds": args.rounds,
          "revoke_to_deny_ms": {"B": {"p50": pct(to_b, .5), "p99": pct(to_b, .99), "max": max(to_b, default=0)},
                                "C": {"p50": pct(to_c, .5), "p99": pct(to_c, .99), "max": max(to_c, default=0)}},
          "sequential_rest_writes_per_s": 2 * args.rounds / t_writes if args.rounds else None}
print(json.dumps(result, indent=2), flush=True)

def metric(base, name):
    with urllib.request.urlopen(base + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])

def head():
    out = subprocess.run(["psql", url, "-Atqc", "SELECT coalesce(max(seq), 0) FROM events"], check=True,
                         capture_output=True, text=True).stdout
    return int(out.strip())

# 2. Writes across replicas while D is frozen.
d_proc, d = start()
while metric(d, "waiver_ready") != 1.0:
    time.sleep(0.05)
frozen_at = head()
os.kill(d_proc.pid, 19)  # SIGSTOP
lua = os.path.join(work, "create.lua")
# Requests spread over the demo's service accounts, as a real register's are.
subjects = ["analytics-loader", "backup-runner", "billing-etl", "cert-rotator", "ci-deployer", "dns-updater",
            "email-sender", "fraud-scorer", "hr-sync", "kyc-checker", "ledger-sync", "payments-api",
            "queue-drainer", "report-builder", "search-indexer"]
with open(lua, "w") as f:
    bodies = ", ".join(json.dumps(json.dumps(request(s))) for s in subjects)
    f.write(f"""wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {tok['requester']}"
local bodies = {{ {bodies} }}
request = function()
  return wrk.format(nil, nil, nil, bodies[math.random(#bodies)])
end
""")

def wrk_round(seconds):
    runs = [subprocess.Popen(["wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s", "-s", lua, base + "/api/v1/exceptions"],
                             stdout=subprocess.PIPE, text=True) for base in (a, b, c)]
    rates, bad = [], 0
    for r in runs:
        text = r.communicate()[0]
        for line in text.splitlines():
            if line.startswith("Requests/sec:"):
                rates.append(float(line.split()[1]))
            if "Non-2xx" in line:
                bad += int(line.split()[-1])
    return rates, bad

rates, bad = wrk_round(args.write_seconds)
writes = {"per_replica_per_s": rates, "total_per_s": sum(rates), "non_2xx": bad,
          "seconds": args.write_seconds, "connections_per_replica": args.connections}
print(json.dumps({"writes_across_replicas": writes}), flush=True)
while head() - frozen_at < args.missed:
    _, more_bad = wrk_round(10)
    bad += more_bad
missed = head() - frozen_at

# 3. D resumes: time until its snapshot reflects the head.
target = head()
t0 = time.perf_counter()
os.kill(d_proc.pid, 18)  # SIGCONT
while (metric(d, "waiver_applied_seq") or 0) < target:
    time.sleep(0.01)
catch_up = time.perf_counter() - t0

# 4. A late replica: start to ready.
n_exceptions = int(subprocess.run(["psql", url, "-Atqc", "SELECT count(*) FROM exceptions"], check=True,
                                  capture_output=True, text=True).stdout.strip())
t0 = time.perf_counter()
e_proc, e = start()
while True:
    try:
        with urllib.request.urlopen(e + "/readyz") as r:
            if r.status == 200:
                break
    except urllib.error.HTTPError:
        pass
    time.sleep(0.01)
late_ready = time.perf_counter() - t0
while (metric(e, "waiver_applied_seq") or 0) < head():
    time.sleep(0.01)

# 5. The chain four writers built.
verify = subprocess.run([args.bin, "--data-dir", data, "--database-url", url, "--output", "json", "audit", "verify"],
                        capture_output=True, text=True)
result.update({"writes_across_replicas": writes, "non_2xx_total": bad,
               "catch_up": {"missed_events": missed, "seconds": catch_up},
               "late_start": {"exceptions": n_exceptions, "events": head(), "ready_seconds": late_ready},
               "audit_verify_exit": verify.returncode, "audit_verify": verify.stdout.strip()[-300:]})
print(json.dumps(result, indent=2))
for proc, _ in procs + [(d_proc, d), (e_proc, e)]:
    proc.kill(); proc.wait()
subprocess.run(["psql", args.url, "-qc", f"DROP DATABASE {db} WITH (FORCE)"], check=True)

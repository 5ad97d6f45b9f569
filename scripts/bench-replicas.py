#!/usr/bin/env python3
"""Replica propagation on PostgreSQL: three `waiver serve` processes on one database.

Builds the demo into a fresh database, starts three replicas, then N times: file and approve
an exception on replica A, wait until B and C allow; revoke on A, time until B and C deny
(polling each as fast as one client can). Prints p50/p99 of revoke-to-deny per replica and
the sequential REST write rate.

    scripts/bench-replicas.py [--rounds 1000] [--url postgres://postgres@127.0.0.1:5432/test]
"""
import argparse, json, os, subprocess, sys, tempfile, time, urllib.request, uuid, threading

p = argparse.ArgumentParser()
p.add_argument("--rounds", type=int, default=1000)
p.add_argument("--url", default=os.environ.get("WAIVER_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/test"))
p.add_argument("--bin", default="target/release/waiver")
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
          "revoke_to_deny_ms": {"B": {"p50": pct(to_b, .5), "p99": pct(to_b, .99)}, "C": {"p50": pct(to_c, .5), "p99": pct(to_c, .99)}},
          "sequential_rest_writes_per_s": 2 * args.rounds / t_writes}

print(json.dumps(result, indent=2))
for proc, _ in procs:
    proc.kill(); proc.wait()
subprocess.run(["psql", args.url, "-qc", f"DROP DATABASE {db} WITH (FORCE)"], check=True)

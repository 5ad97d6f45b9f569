#!/usr/bin/env bash
# Decisions over HTTP against peers, side by side in one run (issue 21): `waiver serve` on
# the demo, cedar-agent (permitio's Cedar HTTP agent, built from its crates.io source) on the
# same policies and entities, and `waiver bench ceiling` (waiver's HTTP stack parsing the
# same AuthZEN JSON and answering `{"decision":true}`: the most an HTTP decision can be here).
#
#   scripts/bench-peers.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Rounds are interleaved (waiver, ceiling, cedar-agent, waiver with batches of 100, then
# again), each `wrk -t1` for
# SECONDS over CONNECTIONS keep-alive connections; wrk shares the machine's cores with the
# server under test (the other two sit idle). Prints each round and the ratios of the medians.
# Needs a release build and wrk. The first run builds cedar-agent into target/peers (a few
# minutes); cedar-agent 0.2.0 embeds Cedar 2.4, which has no `is`, so its copy of the
# policies drops each `is Type` scope test. For the request measured (billing-etl connect
# orders-prod) every policy answers as in the original: a forbid matches, so Cedar denies,
# and in waiver an exception waiving that forbid grants (the longest path waiver has).
set -euo pipefail
rounds=${1:-3}
secs=${2:-10}
conns=${3:-8}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${WAIVER_BIN:-$root/target/release/waiver}
peers=$root/target/peers
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
[ -x "$bin" ] || { echo "build first: cargo build --release -p waiver" >&2; exit 1; }
if [ ! -x "$peers/bin/cedar-agent" ]; then
    cargo install --locked --root "$peers" cedar-agent --version 0.2.0 >&2
fi
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$bin" --data-dir "$work/demo" demo --no-serve >/dev/null
python3 - "$work" <<'PY'
import json, re, sys
work = sys.argv[1]
text = open(f"{work}/demo/baseline/policies.cedar").read()
text = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
policies = []
for chunk in text.split(";"):
    chunk = chunk.strip()
    if not chunk:
        continue
    ident = re.search(r'@id\("([^"]+)"\)', chunk).group(1)
    body = re.sub(r'@id\("[^"]+"\)\s*', "", chunk)
    body = re.sub(r"\b(principal|resource) is [A-Za-z_:]+", r"\1", body)
    policies.append({"id": ident, "content": body + ";"})
json.dump(policies, open(f"{work}/policies.json", "w"))
entities = json.load(open(f"{work}/demo/baseline/entities.json"))
json.dump(entities, open(f"{work}/data.json", "w"))
authzen = {"subject": {"type": "ServiceAccount", "id": "billing-etl"}, "action": {"name": "connect"},
           "resource": {"type": "Database", "id": "orders-prod"}}
cedar = {"principal": 'ServiceAccount::"billing-etl"', "action": 'Action::"connect"',
         "resource": 'Database::"orders-prod"', "context": {}}
# A batch of 100 evaluations (/access/v1/evaluations): the grant above, a baseline allow
# and a forbid's deny, in turn.
mix = [authzen,
       {"subject": {"type": "ServiceAccount", "id": "ci-deployer"}, "action": {"name": "deploy"},
        "resource": {"type": "Environment", "id": "staging"}},
       {"subject": {"type": "Agent", "id": "code-review-agent"}, "action": {"name": "invoke_tool"},
        "resource": {"type": "Tool", "id": "shell"}}]
batch = {"evaluations": [mix[i % 3] for i in range(100)]}
for name, body in (("authzen", authzen), ("cedar", cedar), ("batch", batch)):
    with open(f"{work}/{name}.lua", "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        f.write(f"wrk.body = {json.dumps(json.dumps(body))}\n")
    json.dump(body, open(f"{work}/{name}.json", "w"))
PY

"$bin" --data-dir "$work/demo" serve --listen 127.0.0.1:18191 --decision-auth none >"$work/waiver.log" 2>&1 &
pids+=($!)
"$bin" bench ceiling --listen 127.0.0.1:18190 >"$work/ceiling.log" 2>&1 &
pids+=($!)
"$peers/bin/cedar-agent" --addr 127.0.0.1 --port 18192 --log-level error >"$work/cedar-agent.log" 2>&1 &
pids+=($!)
ready() { for _ in $(seq 1 120); do curl -s -o /dev/null "$1" && return 0; sleep 0.5; done; echo "$1 never answered" >&2; exit 1; }
ready http://127.0.0.1:18191/readyz
ready http://127.0.0.1:18190/
ready http://127.0.0.1:18192/v1/policies
curl -sf -X PUT -H 'Content-Type: application/json' -d @"$work/policies.json" http://127.0.0.1:18192/v1/policies >/dev/null
curl -sf -X PUT -H 'Content-Type: application/json' -d @"$work/data.json" http://127.0.0.1:18192/v1/data >/dev/null

# Each server must answer the measured request as expected before it is timed.
post() { curl -sf -X POST -H 'Content-Type: application/json' -d @"$2" "$1"; }
post http://127.0.0.1:18191/access/v1/evaluation "$work/authzen.json" | grep -q '"decision":true' \
    || { echo "waiver did not grant the measured request" >&2; exit 1; }
post http://127.0.0.1:18190/access/v1/evaluation "$work/authzen.json" | grep -q '"decision":true' \
    || { echo "the ceiling did not answer" >&2; exit 1; }
post http://127.0.0.1:18192/v1/is_authorized "$work/cedar.json" | grep -q '"Deny"' \
    || { echo "cedar-agent did not deny the measured request" >&2; exit 1; }

run() { # name url script
    wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$3" "$2" >"$work/wrk.out"
    python3 - "$1" "$work/wrk.out" <<'PY' | tee -a "$work/rounds"
import re, sys
name, out = sys.argv[1], open(sys.argv[2]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
def ms(v, unit): return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
p50 = ms(*re.search(r"50%\s+([\d.]+)(us|ms|s)", out).groups())
p99 = ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups())
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
print(f"{name}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{errors.group(1) if errors else 0}")
PY
}
echo -e "server\treq/s\tp50 ms\tp99 ms\tnon-2xx"
for r in $(seq 1 "$rounds"); do
    run waiver http://127.0.0.1:18191/access/v1/evaluation "$work/authzen.lua"
    run ceiling http://127.0.0.1:18190/access/v1/evaluation "$work/authzen.lua"
    run cedar-agent http://127.0.0.1:18192/v1/is_authorized "$work/cedar.lua"
    run waiver-batch-100 http://127.0.0.1:18191/access/v1/evaluations "$work/batch.lua"
done
python3 - "$work/rounds" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
med = {n: statistics.median(float(r[1]) for r in rows if r[0] == n) for n in ("waiver", "ceiling", "cedar-agent")}
print(f"medians: waiver {med['waiver']:.0f}, ceiling {med['ceiling']:.0f}, cedar-agent {med['cedar-agent']:.0f} req/s")
batch = statistics.median(float(r[1]) for r in rows if r[0] == "waiver-batch-100")
print(f"batches of 100: {batch:.0f} req/s = {batch * 100:.0f} decisions/s (target >= 200,000)")
print(f"waiver / ceiling = {med['waiver'] / med['ceiling']:.2f} (target >= 0.8); "
      f"waiver / cedar-agent = {med['waiver'] / med['cedar-agent']:.2f} (target >= 3)")
PY

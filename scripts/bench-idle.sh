#!/usr/bin/env bash
# Idle cost of a serving node: CPU and resident memory of `waiver serve` with every
# background job on (scheduler, usage flush, gauges, webhooks) and no traffic.
#
#   scripts/bench-idle.sh [EXCEPTIONS] [SECONDS]
#
# Builds a register of EXCEPTIONS generated exceptions (`waiver bench decisions
# --through-store sqlite --reuse`, kept in target/bench-idle-N.db so a repeat reuses it),
# starts a node on it with the demo baseline, waits for the work due at start to be
# recorded, then reads the process's CPU time and VmRSS over SECONDS. Needs a release build.
set -euo pipefail
n=${1:-100000}
secs=${2:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release/waiver
db=$root/target/bench-idle-$n.db
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" bench decisions --exceptions "$n" --subjects $((n / 10)) --through-store sqlite --reuse "$db" --seconds 0.2 >/dev/null
"$bin" --data-dir "$work/demo" demo --no-serve >/dev/null
port=18099
mkdir -p "$work/node"
"$bin" --data-dir "$work/node" --database-url "sqlite://$db" serve --listen 127.0.0.1:$port \
    --baseline "$work/demo/baseline" >"$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 240); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.5; done
cpu() { awk '{print $14 + $15}' /proc/$pid/stat; }
rss() { awk '/VmRSS/ {print $2}' /proc/$pid/status; }
# A fresh register has work due at once (the first notices run records an overdue review
# for every generated exception): wait until a 10 s window costs under 5 % of a core.
for _ in $(seq 1 60); do
    a=$(cpu); sleep 10; b=$(cpu)
    [ $((b - a)) -lt 50 ] && break
done
c0=$(cpu); r0=$(rss)
sleep "$secs"
c1=$(cpu); r1=$(rss)
python3 -c "print(f'$n exceptions, idle for $secs s: {($c1 - $c0) / 100 / $secs * 100:.2f}% of a core; RSS {$r0 / 1024:.0f} -> {$r1 / 1024:.0f} MiB')"

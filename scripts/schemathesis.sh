#!/usr/bin/env bash
# Fuzzes the REST API from its own OpenAPI document with schemathesis, against a real
# `waiver serve` on the demo data, as the admin (the role that can reach every operation).
# Passes when no request gets a 5xx and every response matches the document (status code,
# content type, headers, body schema). Schema-valid requests may still be refused: the
# governance rules are stricter than a JSON schema can say, so that one check is off.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v st >/dev/null || { echo "schemathesis: the \`st\` command is missing (pip install schemathesis)" >&2; exit 1; }
cargo build --locked -p waiver
bin=target/debug/waiver
work=$(mktemp -d)
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin" --data-dir "$work/data" demo --no-serve >/dev/null
"$bin" --data-dir "$work/data" serve --listen 127.0.0.1:0 >"$work/serve.log" 2>"$work/serve.err" &
server=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$work/serve.log" 2>/dev/null && break
  sleep 0.1
done
base=$(sed -n 's/^waiver listening on //p' "$work/serve.log" | head -1)
[ -n "$base" ] || { echo "schemathesis: the server did not start" >&2; cat "$work/serve.err" >&2; exit 1; }
admin=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"]["token"])' "$work/data/demo-tokens.json")

# From the scratch dir: schemathesis keeps a cache of earlier runs in its working directory,
# and a run should depend on nothing but the seed.
cd "$work"
st run "$base/api/v1/openapi.json" \
  -H "Authorization: Bearer $admin" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-25}" --max-time "${SCHEMATHESIS_SECONDS:-150}" \
  --workers 2 --seed 42 --warnings off
kill -0 "$server" || { echo "schemathesis: the server died" >&2; cat "$work/serve.err" >&2; exit 1; }

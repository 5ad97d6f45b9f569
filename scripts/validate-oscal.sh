#!/usr/bin/env bash
# Validates waiver's OSCAL export with compliance-trestle (NIST's OSCAL 1.1 models): builds
# the demo, exports it as a plan of action and milestones, imports the file into a scratch
# trestle workspace (import validates the model: required fields, types, date-times, unique
# uuids) and runs `trestle validate -a`. Fails on any finding.
#
# trestle 3.x carries the OSCAL 1.1.3 models (4.x and later move to OSCAL 1.2); it lives in
# its own virtualenv ($WAIVER_TRESTLE_VENV, created here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${WAIVER_TRESTLE_VENV:-$HOME/.cache/waiver/trestle-venv}"
if [ ! -x "$venv/bin/trestle" ]; then
  command -v python3 >/dev/null || { echo "validate-oscal: python3 is needed for compliance-trestle" >&2; exit 1; }
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'compliance-trestle==3.12.4'
fi

cargo build --locked -p waiver
bin=target/debug/waiver
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" --data-dir "$work/data" demo --no-serve >/dev/null
"$bin" --data-dir "$work/data" export --format oscal-poam --out "$work/poam.json"

mkdir "$work/ws"
cd "$work/ws"
"$venv/bin/trestle" init >/dev/null
"$venv/bin/trestle" import -f "$work/poam.json" -o waiver
"$venv/bin/trestle" validate -a
echo "validate-oscal: the OSCAL POA&M export is valid ($(grep -c '"risk-uuid"' "$work/poam.json") poam-items)"

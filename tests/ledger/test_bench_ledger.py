"""``bench/ledger.py`` still measures something: every scenario's sidecars are granted leases.

The bench drives the real ledger process over HTTP against LocalKube; when the ledger began
requiring a serving pod of the model, every request of the bench was refused and it reported
zeros until it crashed. It now fails (exit 1, naming the first refusal) when any scenario has
a failed request or no grant, and this runs its HTTP scenarios briefly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ledger.py"


def test_the_ledger_bench_is_granted_leases_in_every_scenario() -> None:
    env = {**os.environ}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    done = subprocess.run(
        [sys.executable, str(BENCH), "--seconds", "1", "--sidecars", "2", "--request", "50",
         "--no-pld"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    scenarios = [line for line in done.stdout.splitlines() if " grants " in line]
    assert len(scenarios) == 4, done.stdout
    for line in scenarios:
        assert line.rstrip().endswith("errors 0"), line
    assert "grants_per_s=" in done.stdout


def test_the_pld_bench_measures_a_granted_first_lease_after_a_restart() -> None:
    """The restart figure is the resume reconcile and a grant, never a refusal."""
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import ledger; "
         "print(*ledger.ledger_after_restart(True))", str(BENCH.parent)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resume, first = (float(value) for value in done.stdout.split())
    assert resume > 0 and first > 0

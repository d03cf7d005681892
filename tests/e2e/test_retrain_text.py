"""onBudgetExhausted: Retrain for a language model: a DP-LoRA Job fine-tunes a tiny GPT-2 on a
JSONL window, the ledger charges the Job's reported run to the next budget, the model rolls
to v2 and answers a chat completion through the sidecar.

The trigger. A generator is served with mechanism none: its answers are free, so queries
never exhaust its budget; the only spend is the declared DP fine-tuning of a version. Here
v1's declared run costs more than its budget holds, so v1 is never served
(TrainingSpendExceedsBudget). A retrain is then sound only from a base that is not v1 (v1's
training was never paid for): ``lora.base`` names a public base, v2 is that base adapted on
the new window, and its ε is charged to the next budget from the Job's report.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from e2e_support import DELTA, E2E

from dpserve.accounting import epsilon_spent
from dpserve.accounting.events import SubsampledGaussian
from dpserve_testkit.demo import manifests
from dpserve_testkit.localkube.waiting import wait_until
from text_support import build_tiny_causal_lm, corpus_lines

# v1's declared DP fine-tuning: about ε = 1.34 at δ = 1e-5 (RDP), above the first budget.
TRAINING = {"noiseMultiplier": "1.0", "sampleRate": "0.01", "steps": 200,
            "sampling": "poisson"}
FIRST_LIMIT, NEXT_LIMIT, TARGET = "0.5", "8", "6"
RECORDS = 64


def _model(ns: str, v1: str, base: str, dataset: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "budgetRef": {"name": "notes-1"},
        "model": {"artifact": v1, "format": "huggingface", "task": "text-generation",
                  "training": TRAINING},
        "serving": {"replicas": 1, "mechanism": {"type": "none"},
                    "generation": {"maxTokens": 16, "maxChoices": 1},
                    "resources": {"cpu": "1", "memory": "2Gi"}},
        "confidential": {"profile": "none", "required": False},
        "outputFilter": {"action": "redact", "entities": ["EMAIL_ADDRESS", "PHONE_NUMBER"]},
        "onBudgetExhausted": "Retrain",
        "retraining": {
            "dataset": dataset, "targetEpsilon": TARGET, "epochs": 1, "batchSize": 16,
            "maxSeqLength": 32, "learningRate": "0.002",
            "nextBudget": {"name": "notes-2", "epsilon": NEXT_LIMIT, "delta": DELTA},
            "lora": {"rank": 2, "targetModules": ["c_attn"], "base": base},
        },
    }
    return {"apiVersion": manifests.API_VERSION, "kind": "PrivateModel",
            "metadata": {"name": "writer", "namespace": ns}, "spec": spec}


def _condition(model: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in model["status"]["conditions"] if c["type"] == kind)


@pytest.mark.slow
def test_dp_lora_retrain_of_a_generator_rolls_to_v2(e2e: E2E, tmp_path: Path) -> None:
    ns = e2e.namespace("retrain-text")
    v1 = e2e.install(build_tiny_causal_lm(tmp_path / "v1"), "models", f"{ns}/writer/v1")
    base = e2e.install(build_tiny_causal_lm(tmp_path / "public"), "models", f"{ns}/public-base")
    window = tmp_path / "notes-2027q1.jsonl"
    window.write_text("".join(json.dumps({"text": line}) + "\n"
                              for line in corpus_lines()[:RECORDS]), "utf-8")
    dataset = e2e.install(window, "datasets", f"{ns}/notes-2027q1.jsonl")
    declared = epsilon_spent([(SubsampledGaussian(1.0, 0.01, 200), 1)], float(DELTA), "rdp")
    assert declared > float(FIRST_LIMIT)
    e2e.apply(manifests.budget("notes-1", ns, epsilon=FIRST_LIMIT, delta=DELTA),
              _model(ns, v1, base, dataset))

    # v1's training does not fit: v1 is never served, nothing is charged for it.
    refused = wait_until(
        lambda: _condition(e2e.pm(ns, "writer"), "BudgetAvailable")["reason"]
        == "TrainingSpendExceedsBudget", what=lambda: f"the refusal\n{e2e.diagnostics(ns)}")
    assert refused
    assert not (e2e.pb(ns, "notes-1").get("status") or {}).get("ledger")

    job = wait_until(
        lambda: e2e.api.find(f"/apis/batch/v1/namespaces/{ns}/jobs/writer-train-v2"),
        what=lambda: f"the retraining Job\n{e2e.diagnostics(ns)}")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--format") + 1] == "huggingface"
    assert args[args.index("--task") + 1] == "text-generation"
    assert "--architecture" not in args

    def rolled() -> dict[str, Any] | None:
        model = e2e.pm(ns, "writer")
        retraining = _condition(model, "Retraining")
        assert retraining["reason"] != "RetrainFailed", \
            f"{retraining['message']}\n{e2e.diagnostics(ns)}"
        return model if model["status"].get("modelVersion") == "v2" else None

    model = wait_until(rolled, timeout_s=180,
                       what=lambda: f"the roll to v2\n{e2e.diagnostics(ns)}")
    assert model["status"]["budget"] == "notes-2"
    v2_dir = e2e.stack.pvc_root / "models" / ns / "writer" / "v2"
    manifest = json.loads((v2_dir / "manifest.json").read_text("utf-8"))
    assert manifest["format"] == "huggingface" and manifest["task"] == "text-generation"
    lora = manifest["training"]["lora"]
    assert lora["rank"] == 2 and (v2_dir / "adapter").is_dir()
    public = json.loads((e2e.stack.pvc_root / "models" / ns / "public-base" / "manifest.json")
                        .read_text("utf-8"))
    assert lora["base"]["version"] == public["version"]

    # The Job's reported run (σ, q, steps) is what the next budget's ledger charged, once.
    second, second_eps = e2e.ledger(ns, "notes-2")
    (entry,) = [e for e in second.ledger if e.kind == "training"]
    assert entry.model_version == "v2" and entry.training is not None
    assert Decimal(entry.training.noise_multiplier) == Decimal(
        str(manifest["training"]["noiseMultiplier"]))
    assert Decimal(entry.training.sample_rate) == Decimal(str(manifest["training"]["sampleRate"]))
    assert entry.training.steps == manifest["training"]["steps"]
    assert 0 < second_eps <= float(TARGET) + 1e-6

    e2e.wait_serving(ns, "writer", timeout_s=180)
    (endpoint,) = e2e.stack.endpoints(ns, "writer")
    client = openai.OpenAI(base_url=f"{endpoint}/v1", api_key="unused", max_retries=0,
                           timeout=120)
    answer = client.chat.completions.create(
        model="writer", messages=[{"role": "user", "content": "How do I reach the clinic?"}],
        temperature=0, max_tokens=8)
    assert answer.choices[0].message.content is not None
    assert answer.choices[0].finish_reason in ("stop", "length")

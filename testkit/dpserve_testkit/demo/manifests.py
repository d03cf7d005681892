"""The demo's PrivacyBudgets and PrivateModels, adapted from ``examples/``.

``examples/budget-rdp.yaml``, ``examples/model-pate-retrain.yaml`` and
``examples/model-text-embeddings.yaml`` with local artifacts
(``pvc://`` claims that the local kubelet maps to directories under the work dir), the
``none`` confidential profile (no TEE on a laptop; ``required: false``, which the API insists
on for ``none``) and budgets small enough to run out within a minute of traffic.
"""

from __future__ import annotations

from typing import Any

API_VERSION = "dpserve.io/v1alpha1"
Obj = dict[str, Any]


def budget(name: str, namespace: str, *, epsilon: str, delta: str,
           accountant: str = "rdp", partitions: Obj | None = None) -> Obj:
    """``partitions``: per-tenant sub-ledgers (see :func:`partitions`)."""
    spec: Obj = {"epsilon": epsilon, "delta": delta, "accountant": accountant,
                 "alertThresholds": ["0.8", "0.95"]}
    if partitions is not None:
        spec["partitions"] = partitions
    return {"apiVersion": API_VERSION, "kind": "PrivacyBudget",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def partitions(*, header: str, epsilon: str, tenants: list[str]) -> Obj:
    """Each tenant (named by ``header``) gets ``epsilon`` of its own for tenant-side queries."""
    return {"header": header, "epsilon": epsilon, "tenants": tenants}


def pate_model(
    name: str, namespace: str, *, budget: str, artifact: str, teachers: int,
    noise_multiplier: str, entities: list[str] | None = None, action: str = "redact",
    replicas: int = 1, retraining: Obj | None = None,
) -> Obj:
    """A PATE (GNMax) model; ``retraining`` given: ``onBudgetExhausted: Retrain``."""
    spec: Obj = {
        "budgetRef": {"name": budget},
        "model": {"artifact": artifact, "format": "pate-ensemble"},
        "serving": {"replicas": replicas,
                    "mechanism": {"type": "pate", "teachers": teachers,
                                  "noiseMultiplier": noise_multiplier}},
        "confidential": {"profile": "none", "required": False},
        "outputFilter": {"action": action,
                         "entities": entities or ["EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN"]},
        "onBudgetExhausted": "Retrain" if retraining is not None else "ScaleToZero",
    }
    if retraining is not None:
        spec["retraining"] = retraining
    return {"apiVersion": API_VERSION, "kind": "PrivateModel",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def gaussian_model(
    name: str, namespace: str, *, budget: str, artifact: str, noise_multiplier: str,
    clip_norm: str, sensitivity: str, training: Obj | None, format: str = "state-dict",
    retraining: Obj | None = None, replicas: int = 1,
) -> Obj:
    """Gaussian output perturbation; ``training``: the artifact's declared DP-SGD run."""
    model: Obj = {"artifact": artifact, "format": format}
    if training is not None:
        model["training"] = training
    spec: Obj = {
        "budgetRef": {"name": budget},
        "model": model,
        "serving": {"replicas": replicas,
                    "mechanism": {"type": "gaussian", "noiseMultiplier": noise_multiplier,
                                  "clipNorm": clip_norm, "sensitivity": sensitivity}},
        "confidential": {"profile": "none", "required": False},
        "onBudgetExhausted": "Retrain" if retraining is not None else "ScaleToZero",
    }
    if retraining is not None:
        spec["retraining"] = retraining
    return {"apiVersion": API_VERSION, "kind": "PrivateModel",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def embedding_model(
    name: str, namespace: str, *, budget: str, artifact: str, epsilon: str,
    replicas: int = 1, cpu: str = "1", memory: str = "2Gi",
) -> Obj:
    """A sentence encoder (huggingface artifact, task feature-extraction) answering
    ``laplace-embedding`` vectors, ``epsilon`` per text, charged to the asking tenant.

    No verbatim guard: an embedding carries no text and a pre-trained encoder has no
    training text of ours to guard (as ``examples/model-text-embeddings.yaml``)."""
    return {
        "apiVersion": API_VERSION, "kind": "PrivateModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "budgetRef": {"name": budget},
            "model": {"artifact": artifact, "format": "huggingface",
                      "task": "feature-extraction"},
            "serving": {"replicas": replicas,
                        "mechanism": {"type": "laplace-embedding", "epsilon": epsilon,
                                      "privacyUnit": "query-text"},
                        "resources": {"cpu": cpu, "memory": memory}},
            "confidential": {"profile": "none", "required": False},
            "outputFilter": {"verbatimGuard": {"enabled": False}},
            "onBudgetExhausted": "ScaleToZero",
        },
    }


def retraining(
    *, dataset: str, mode: str, target_epsilon: str, next_budget: str, next_epsilon: str,
    delta: str, epochs: int, batch_size: int, hidden: int, teachers: int | None = None,
    lora_rank: int | None = None,
) -> Obj:
    section: Obj = {
        "dataset": dataset, "mode": mode, "targetEpsilon": target_epsilon, "epochs": epochs,
        "batchSize": batch_size, "maxGradNorm": "1.0", "hiddenDims": [hidden],
        "nextBudget": {"name": next_budget, "epsilon": next_epsilon, "delta": delta},
    }
    if teachers is not None:
        section["teachers"] = teachers
    if lora_rank is not None:  # DP-PEFT: adapters on the version being served
        section["lora"] = {"rank": lora_rank}
    return section


def erasure_request(
    name: str, namespace: str, *, model: str, record_ids: list[str], reason: str,
    mode: str = "Immediate", deadline_days: int | None = None,
) -> Obj:
    """Erase ``record_ids`` from ``model`` (docs/erasure.md)."""
    spec: Obj = {"modelRef": {"name": model}, "recordIds": record_ids, "reason": reason,
                 "mode": mode}
    if deadline_days is not None:
        spec["deadlineDays"] = deadline_days
    return {"apiVersion": API_VERSION, "kind": "ErasureRequest",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def namespace(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def group_path(namespace: str, plural: str, name: str = "") -> str:
    """REST path of a dpserve.io resource."""
    base = f"/apis/{API_VERSION}/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


def text_generation_model(
    name: str, namespace: str, *, budget: str, artifact: str, training: Obj,
    entities: list[str], max_tokens: int, cpu: str = "1", memory: str = "2Gi",
) -> Obj:
    """A causal LM (huggingface artifact, task text-generation) served with mechanism
    ``none``: its privacy comes from the declared DP-SGD run (``training``, charged to the
    budget once, at deploy), and the sidecar redacts ``entities`` from every answer."""
    return {
        "apiVersion": API_VERSION, "kind": "PrivateModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "budgetRef": {"name": budget},
            "model": {"artifact": artifact, "format": "huggingface", "task": "text-generation",
                      "training": training},
            "serving": {"replicas": 1, "mechanism": {"type": "none"},
                        "generation": {"maxTokens": max_tokens, "maxChoices": 1},
                        "resources": {"cpu": cpu, "memory": memory}},
            "confidential": {"profile": "none", "required": False},
            # Pattern entities only (short stream hold-back); the canary is a phone number.
            "outputFilter": {"action": "redact", "entities": entities,
                             "verbatimGuard": {"enabled": False}},
            "onBudgetExhausted": "ScaleToZero",
        },
    }

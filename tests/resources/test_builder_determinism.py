"""Deterministic rendering: the same input gives the same bytes, whatever the dict order.

Pod-level TEEs pin a hash of the exact pod spec, and the operator writes nothing when
nothing changed: both depend on this.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from resources_support import BUILDERS

from dpserve.api.privatemodel import PrivateModel

RICH_SPEC = {
    "confidential": {"profile": "aks-kata-cc", "required": True},
    "outputFilter": {
        "entities": ["US_SSN", "EMAIL_ADDRESS", "PHONE_NUMBER", "IBAN_CODE"],
        "entityThresholds": {"PHONE_NUMBER": "0.7", "EMAIL_ADDRESS": "0.6", "US_SSN": "0.9"},
    },
}
RICH_METADATA = {
    "labels": {"team": "ml", "env": "prod"},
    "annotations": {"io.katacontainers.config.agent.policy": "cGFja2FnZQ==", "note": "x"},
}


def reversed_order(value: Any) -> Any:
    """The same data with every dict's insertion order reversed."""
    if isinstance(value, dict):
        return {k: reversed_order(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_order(v) for v in value]
    return value


def render_all(model: PrivateModel, make_ctx) -> str:
    ctx = make_ctx(model)
    # No sort_keys: the builders' own key order must already be canonical.
    return json.dumps([b(model, ctx) for b in BUILDERS])


def test_two_renders_are_byte_identical(make_model, make_ctx):
    model = make_model(spec=RICH_SPEC, metadata=RICH_METADATA)
    assert render_all(model, make_ctx) == render_all(model, make_ctx)


def test_independent_of_input_dict_order(make_model, make_ctx):
    model = make_model(spec=RICH_SPEC, metadata=RICH_METADATA)
    raw = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    flipped = PrivateModel.model_validate(reversed_order(raw))
    assert list(flipped.metadata["annotations"]) != list(model.metadata["annotations"])
    assert render_all(flipped, make_ctx) == render_all(model, make_ctx)


def test_entity_list_order_does_not_change_the_pod(make_model, make_ctx):
    a = make_model(spec={"outputFilter": {"entities": ["US_SSN", "EMAIL_ADDRESS"]}})
    b = make_model(spec={"outputFilter": {"entities": ["EMAIL_ADDRESS", "US_SSN", "US_SSN"]}})
    assert render_all(a, make_ctx) == render_all(b, make_ctx)


def _assert_sorted(value: Any, path: str = "") -> None:
    if isinstance(value, dict):
        assert list(value) == sorted(value), path
        for k, v in value.items():
            _assert_sorted(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _assert_sorted(v, f"{path}[{i}]")


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_keys_are_in_canonical_order(builder, make_model, make_ctx):
    model = make_model(spec=RICH_SPEC, metadata=RICH_METADATA)
    _assert_sorted(builder(model, make_ctx(model)))


def test_independent_of_the_hash_seed():
    """Set iteration order varies with PYTHONHASHSEED; the output must not."""
    script = textwrap.dedent(
        """
        import hashlib, json
        from dpserve.api.privatemodel import PrivateModel
        from dpserve.resources import (build_context, build_deployment, build_configmap,
                                       build_job, build_networkpolicy)
        model = PrivateModel.model_validate({
            "metadata": {"name": "m", "namespace": "ns", "uid": "u-1"},
            "spec": {"budgetRef": {"name": "b"},
                     "model": {"artifact": "pvc://c/m/v1", "format": "state-dict",
                       "training": {"noiseMultiplier": "1.1", "sampleRate": "0.01",
                                    "steps": 100}},
                     "confidential": {"profile": "gke-tdx"},
                     "outputFilter": {"entities": ["US_SSN", "URL", "EMAIL_ADDRESS", "IP_ADDRESS"],
                                      "entityThresholds": {"URL": "0.8", "US_SSN": "0.9"}},
                     "retraining": {"dataset": "pvc://d/x.npz", "targetEpsilon": "1",
                                    "nextBudget": {"epsilon": "2", "delta": "1e-6"}}}})
        ctx = build_context(model, image="img:1", ledger_url="http://l.ops.svc:8443",
                            operator_namespace="ops", replicas=2)
        objs = [f(model, ctx) for f in (build_deployment, build_configmap, build_job,
                                        build_networkpolicy)]
        print(hashlib.sha256(json.dumps(objs).encode()).hexdigest())
        """
    )
    digests = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1

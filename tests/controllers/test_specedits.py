"""What the operator does with an edit of budgetRef / model (follow, roll, refuse), as a table."""

from __future__ import annotations

from typing import Any

import pytest

from dpserve.api.privatemodel import AcceptedSpec, PrivateModelSpec
from dpserve.controllers.specedits import FOLLOW, KEEP, ROLL, decide

TRAINING = {"noiseMultiplier": "1.1", "sampleRate": "0.01", "steps": 100}


def spec(budget: str = "b", artifact: str = "pvc://m/v1", version: str = "v1",
         training: dict[str, Any] | None = TRAINING) -> PrivateModelSpec:
    return PrivateModelSpec.model_validate({
        "budgetRef": {"name": budget},
        "model": {"artifact": artifact, "format": "state-dict", "version": version,
                  **({"training": training} if training else {})},
        "confidential": {"profile": "none", "required": False},
    })


def accepted(spent: bool) -> AcceptedSpec:
    s = spec()
    return AcceptedSpec(budget_ref="b", artifact="pvc://m/v1", version="v1",
                        training=s.model.training, spent=spent)


def test_first_reconcile_accepts_the_spec() -> None:
    out = decide(spec(), None, current_version=None, served_versions=[])
    assert out.action == KEEP and out.refused is None
    assert out.accepted == accepted(False)


@pytest.mark.parametrize(("new", "spent", "action", "refused_fields"), [
    (spec(), True, KEEP, []),
    # not spent yet: everything is followed (the typo fix)
    (spec(budget="b-fixed"), False, FOLLOW, []),
    (spec(artifact="pvc://m/other"), False, FOLLOW, []),
    (spec(version="v2"), False, FOLLOW, []),
    # spent: budgetRef fixed; a new artifact / training needs a new version
    (spec(budget="b2"), True, KEEP, ["spec.budgetRef.name"]),
    (spec(artifact="pvc://m/v2"), True, KEEP, ["spec.model.artifact"]),
    (spec(training={**TRAINING, "steps": 1}), True, KEEP, ["spec.model.training"]),
    (spec(artifact="pvc://m/v2", version="v2"), True, ROLL, []),
    # several refused edits are all named
    (spec(budget="b2", artifact="pvc://m/v2"), True, KEEP,
     ["spec.budgetRef.name", "spec.model.artifact"]),
    (spec(budget="b2", artifact="pvc://m/v2", version="v2"), True, KEEP,
     ["spec.budgetRef.name"]),
])
def test_decide(new: PrivateModelSpec, spent: bool, action: str,
                refused_fields: list[str]) -> None:
    out = decide(new, accepted(spent), current_version="v1", served_versions=[])
    assert out.action == action
    assert bool(out.refusals) == bool(refused_fields)
    assert all(f in (out.refused or "") for f in refused_fields)
    if action == KEEP:
        assert out.accepted == accepted(spent)  # a refused edit changes nothing accepted
    else:
        assert out.accepted.version == new.model.version
        assert out.accepted.budget_ref == new.budget_ref.name
        assert out.accepted.spent == spent


def test_a_served_version_is_refused() -> None:
    out = decide(spec(artifact="pvc://m/x", version="v2"), accepted(True),
                 current_version="v3", served_versions=["v2"])
    assert out.action == KEEP and out.refused is not None
    assert out.refused.startswith("spec.model.version: v2 was already served")
    out = decide(spec(artifact="pvc://m/x", version="v3"), accepted(True),
                 current_version="v3", served_versions=["v2"])
    assert out.action == KEEP and "v3 was already served" in (out.refused or "")

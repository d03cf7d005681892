"""The PrivateModel's update rules (CEL transition rules with oldSelf), evaluated as the API
server evaluates them: the rule text from the generated CRD, `self` the new object and
`oldSelf` the one it replaces."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dpserve.api.cel import CelRule, evaluate, is_transition_rule
from dpserve.api.crdgen import privatemodel_crd

Obj = dict[str, Any]
TRAINING = {"noiseMultiplier": "1.1", "sampleRate": "0.01", "steps": 100, "sampling": "poisson"}


def _rules() -> list[CelRule]:
    schema = privatemodel_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return [CelRule(r["rule"], r["message"], r.get("fieldPath"))
            for r in schema.get("x-kubernetes-validations", [])]


def _model(*, spent: bool | None, budget: str = "b", artifact: str = "pvc://m/v1",
           version: str = "v1", training: Obj | None = None, served: str | None = "v1",
           retired: tuple[str, ...] = ()) -> Obj:
    obj: Obj = {
        "apiVersion": "dpserve.io/v1alpha1", "kind": "PrivateModel",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"budgetRef": {"name": budget},
                 "model": {"artifact": artifact, "format": "state-dict", "version": version,
                           **({"training": training} if training else {})}},
    }
    if spent is not None:
        obj["status"] = {
            "accepted": {"budgetRef": "b", "artifact": "pvc://m/v1", "version": "v1",
                         "spent": spent},
            **({"modelVersion": served} if served else {}),
            "versions": [{"version": v, "budget": "b", "artifact": f"pvc://m/{v}"}
                         for v in retired],
        }
    return obj


def _refused(old: Obj, new: Obj) -> list[str]:
    """The fields the refused rules report on ([] = admitted)."""
    return [r.field_path or "" for r in _rules() if not evaluate(r, new, old)]


def _edit(old: Obj, **changes: Any) -> Obj:
    new = copy.deepcopy(old)
    for path, value in changes.items():
        node = new["spec"]
        *parents, leaf = path.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return new


def test_every_update_rule_is_a_transition_rule() -> None:
    rules = _rules()
    assert len(rules) == 3
    assert all(is_transition_rule(r) for r in rules)


def test_create_is_not_judged_by_update_rules() -> None:
    # On a create there is no oldSelf: the API server skips transition rules.
    assert all(evaluate(r, _model(spent=True)) for r in _rules())


@pytest.mark.parametrize(("spent", "changes", "refused"), [
    # before the model spent anything every declared field may change (a typo is fixable)
    (None, {"budgetRef__name": "b2"}, []),
    (False, {"budgetRef__name": "b2"}, []),
    (False, {"model__artifact": "pvc://m/fixed"}, []),
    (False, {"model__training": TRAINING}, []),
    # once it spent: the budget holds its spend
    (True, {"budgetRef__name": "b2"}, [".spec.budgetRef.name"]),
    # new weights under the version already charged would be served unpaid
    (True, {"model__artifact": "pvc://m/v2"}, [".spec.model.artifact"]),
    (True, {"model__training": TRAINING}, [".spec.model.artifact"]),
    # a new artifact as a new version is a roll-out
    (True, {"model__artifact": "pvc://m/v2", "model__version": "v2"}, []),
    (True, {"model__version": "v2", "model__training": TRAINING}, []),
    # unrelated fields stay editable
    (True, {"serving": {"replicas": 3}}, []),
])
def test_update_rules(spent: bool | None, changes: dict[str, Any], refused: list[str]) -> None:
    old = _model(spent=spent)
    assert _refused(old, _edit(old, **changes)) == refused


def test_a_version_already_served_is_refused() -> None:
    old = _model(spent=True, version="v3", served="v3", retired=("v1", "v2"))
    for reused in ("v1", "v2"):
        assert _refused(old, _edit(old, model__version=reused,
                                   model__artifact="pvc://m/x")) == [".spec.model.version"]
    assert _refused(old, _edit(old, model__version="v4", model__artifact="pvc://m/v4")) == []


def test_status_writes_pass_the_update_rules() -> None:
    """A /status write leaves spec as it is: every update rule holds."""
    old = _model(spent=False)
    new = copy.deepcopy(old)
    new["status"]["accepted"]["spent"] = True
    new["status"]["versions"] = [{"version": "v1", "budget": "b", "artifact": "pvc://m/v1"}]
    assert _refused(old, new) == []

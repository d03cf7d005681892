"""Generate the CustomResourceDefinitions from the pydantic models (the single source of truth).

Pydantic's JSON Schema is turned into a Kubernetes *structural* schema: references inlined,
``anyOf [X, null]`` collapsed to an optional X, titles dropped, map key enums turned into CEL
(``propertyNames`` is not allowed in CRDs), and list-map markers added for conditions.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from dpserve import API_GROUP, API_VERSION
from dpserve.api import erasurerequest, privacybudget, privatemodel
from dpserve.api.cel import CelRule

CATEGORY = "dpserve"
_CONDITION_LIST_MARKERS = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return _inline(target, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "properties":
            out[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _inline(value, defs)
    if "anyOf" in out:
        variants = [v for v in out["anyOf"] if v.get("type") != "null"]
        if len(variants) == 1:
            rest = {k: v for k, v in out.items() if k != "anyOf"}
            merged = dict(variants[0])
            merged.update(rest)
            if merged.get("default", 0) is None:
                del merged["default"]
            out = merged
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if "propertyNames" in out:
        names = out.pop("propertyNames").get("enum", [])
        if names:
            allowed = ", ".join(f"'{n}'" for n in names)
            out.setdefault("x-kubernetes-validations", []).append(
                {"rule": f"self.all(k, k in [{allowed}])",
                 "message": f"keys must be one of {allowed}"}
            )
    if "properties" in out and out.get("additionalProperties") is False:
        # CRDs forbid properties + additionalProperties; unknown fields are pruned instead.
        del out["additionalProperties"]
    if out.get("type") == "array" and _is_condition_list(out):
        out.update(_CONDITION_LIST_MARKERS)
    return _ordered(out)


_FIRST = ("type", "description", "default", "enum", "required")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Readable key order: type and description first, nested properties last."""
    head = [k for k in _FIRST if k in node]
    tail = [k for k in ("properties", "items", "x-kubernetes-validations") if k in node]
    middle = sorted(k for k in node if k not in head and k not in tail)
    return {k: node[k] for k in (*head, *middle, *tail)}


def _is_condition_list(schema: dict[str, Any]) -> bool:
    items = schema.get("items", {})
    props = items.get("properties", {})
    return {"type", "status", "reason", "lastTransitionTime"} <= set(props)


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _inline(raw, defs)
    schema.pop("description", None) if model.__doc__ is None else None
    return dict(schema)


def _top_schema(
    spec: type[BaseModel], status: type[BaseModel], description: str,
    rules: tuple[CelRule, ...] = (),
) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural_schema(spec),
            "status": structural_schema(status),
        },
    }
    if rules:  # rules over spec and status together (transition rules reading oldSelf)
        schema["x-kubernetes-validations"] = [r.as_validation() for r in rules]
    return schema


def _condition_column(name: str, cond: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{cond}")].status',
    }


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    schema: dict[str, Any],
    columns: list[dict[str, Any]],
    subresources: dict[str, Any],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "dpserve", "app.kubernetes.io/part-of": "dpserve"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def privacybudget_crd() -> dict[str, Any]:
    return _crd(
        kind=privacybudget.KIND,
        plural=privacybudget.PLURAL,
        short_names=privacybudget.SHORT_NAMES,
        schema=_top_schema(
            privacybudget.PrivacyBudgetSpec,
            privacybudget.PrivacyBudgetStatus,
            "A differential-privacy budget (ε, δ) over one protected dataset, with the ledger "
            "of every spend against it.",
        ),
        columns=[
            _condition_column("Ready", "Ready"),
            {"name": "Epsilon Spent", "type": "string", "jsonPath": ".status.epsilonSpent"},
            {"name": "Epsilon Limit", "type": "string", "jsonPath": ".spec.epsilon"},
            {"name": "Epsilon Remaining", "type": "string", "jsonPath": ".status.epsilonRemaining"},
            _condition_column("Exhausted", "Exhausted"),
            {"name": "Delta", "type": "string", "jsonPath": ".spec.delta", "priority": 1},
            {"name": "Accountant", "type": "string", "jsonPath": ".spec.accountant",
             "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        subresources={"status": {}},
    )


def privatemodel_crd() -> dict[str, Any]:
    return _crd(
        kind=privatemodel.KIND,
        plural=privatemodel.PLURAL,
        short_names=privatemodel.SHORT_NAMES,
        schema=_top_schema(
            privatemodel.PrivateModelSpec,
            privatemodel.PrivateModelStatus,
            "A model served behind a DP mechanism and an output filter, spending a "
            "PrivacyBudget, on confidential nodes.",
            privatemodel.OBJECT_RULES,
        ),
        columns=[
            _condition_column("Ready", "Ready"),
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Epsilon Spent", "type": "string", "jsonPath": ".status.epsilonSpent"},
            {"name": "Epsilon Limit", "type": "string", "jsonPath": ".status.epsilonLimit"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
            {"name": "Version", "type": "string", "jsonPath": ".status.modelVersion"},
            {"name": "Mechanism", "type": "string", "jsonPath": ".spec.serving.mechanism.type",
             "priority": 1},
            {"name": "Budget", "type": "string", "jsonPath": ".status.budget", "priority": 1},
            {"name": "Profile", "type": "string", "jsonPath": ".spec.confidential.profile",
             "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        subresources={
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.serving.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
    )


def erasurerequest_crd() -> dict[str, Any]:
    return _crd(
        kind=erasurerequest.KIND,
        plural=erasurerequest.PLURAL,
        short_names=erasurerequest.SHORT_NAMES,
        schema=_top_schema(
            erasurerequest.ErasureRequestSpec,
            erasurerequest.ErasureRequestStatus,
            "Erase records (by opaque id) from a PrivateModel: version N+1 is trained without "
            "them (only the affected teachers of a PATE ensemble), and every later training "
            "run of the model excludes them. No ε is refunded.",
            erasurerequest.OBJECT_RULES,
        ),
        columns=[
            {"name": "Model", "type": "string", "jsonPath": ".spec.modelRef.name"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            _condition_column("Complete", "Complete"),
            {"name": "Removed In", "type": "string", "jsonPath": ".status.removedInVersion"},
            {"name": "Deadline", "type": "string", "jsonPath": ".status.deadline"},
            {"name": "Mode", "type": "string", "jsonPath": ".spec.mode", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        subresources={"status": {}},
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD manifest."""
    return {
        f"{API_GROUP}_{erasurerequest.PLURAL}.yaml": erasurerequest_crd(),
        f"{API_GROUP}_{privacybudget.PLURAL}.yaml": privacybudget_crd(),
        f"{API_GROUP}_{privatemodel.PLURAL}.yaml": privatemodel_crd(),
    }


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `dpserve crds` from dpserve.api: do not edit by hand.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, allow_unicode=True, width=100)


def write_crds(output_dir: Path) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in all_crds().items():
        path = output_dir / name
        path.write_text(render(crd), encoding="utf-8")
        written.append(path)
    return written

"""Every example is admitted by the CRD (defaults, schema, CEL) and parsed by the pydantic
model, both agree on the defaulted spec, and together the examples cover the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from dpserve.api.mechanism import Mechanism, is_tenant_side, privacy_unit
from dpserve_testkit.localkube.crdvalidation import validate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CR_KINDS = {"PrivacyBudget", "PrivateModel", "ErasureRequest"}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text("utf-8")) if d]
    return docs


DOCUMENTS = _documents()
CRS = [(name, doc) for name, doc in DOCUMENTS if doc["kind"] in CR_KINDS]


def test_kustomization_lists_every_example_and_nothing_else() -> None:
    kustomization = yaml.safe_load((EXAMPLES / "kustomization.yaml").read_text("utf-8"))
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in EXAMPLES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk


def test_readme_describes_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text("utf-8")
    for path in EXAMPLES.glob("*.yaml"):
        assert f"`{path.name}`" in readme, f"README.md does not describe {path.name}"


@pytest.mark.parametrize(("name", "doc"), CRS, ids=[f"{n}:{d['metadata']['name']}" for n, d in CRS])
def test_example_is_admitted_and_parsed_alike(
    name: str,
    doc: dict[str, Any],
    crds_by_kind: dict[str, dict[str, Any]],
    models_by_kind: dict[str, type[BaseModel]],
) -> None:
    defaulted, errors = validate(doc, crds_by_kind[doc["kind"]])
    assert errors == [], f"{name}: the CRD refuses it"
    model = models_by_kind[doc["kind"]].model_validate(doc)
    wire = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    # Both validators fill in the same defaults: the CRD's defaults are the model's.
    assert wire["spec"] == defaulted["spec"]


@pytest.mark.parametrize(
    ("name", "doc"),
    [(n, d) for n, d in DOCUMENTS if d["kind"] not in CR_KINDS],
    ids=lambda value: value if isinstance(value, str) else value["kind"],
)
def test_builtin_objects_validate(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def _specs(kind: str) -> list[dict[str, Any]]:
    return [doc["spec"] for _, doc in CRS if doc["kind"] == kind]


def test_examples_cover_every_mechanism_policy_profile_and_accountant() -> None:
    models, budgets = _specs("PrivateModel"), _specs("PrivacyBudget")
    assert {m["serving"]["mechanism"]["type"] for m in models} == {
        "none", "pate", "gaussian", "laplace-embedding"
    }
    assert {m.get("onBudgetExhausted", "ScaleToZero") for m in models} == {"ScaleToZero", "Retrain"}
    assert all("retraining" in m for m in models if m.get("onBudgetExhausted") == "Retrain")
    profiles = {(m["confidential"]["profile"], m["confidential"].get("required", True))
                for m in models}
    assert {("coco-snp", True), ("gke-tdx", True), ("none", False)} <= profiles
    assert {b.get("accountant", "rdp") for b in budgets} == {"rdp", "pld"}
    assert any("partitions" in b for b in budgets)
    none_models = [m for m in models if m["serving"]["mechanism"]["type"] == "none"]
    assert all("training" in m["model"] for m in none_models), "mechanism none needs DP-SGD"


def test_references_resolve_within_the_examples() -> None:
    namespaces = {d["metadata"]["name"] for _, d in DOCUMENTS if d["kind"] == "Namespace"}
    budgets = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"]
               for _, d in CRS if d["kind"] == "PrivacyBudget"}
    for _, doc in CRS:
        assert doc["metadata"]["namespace"] in namespaces
        if doc["kind"] == "ErasureRequest":
            models = {d["metadata"]["name"] for _, d in CRS if d["kind"] == "PrivateModel"
                      and d["metadata"]["namespace"] == doc["metadata"]["namespace"]}
            assert doc["spec"]["modelRef"]["name"] in models
            continue
        if doc["kind"] != "PrivateModel":
            continue
        key = (doc["metadata"]["namespace"], doc["spec"]["budgetRef"]["name"])
        assert key in budgets, f"{doc['metadata']['name']}: budget {key} is not in examples/"
        if is_tenant_side(Mechanism.model_validate(doc["spec"]["serving"]["mechanism"])):
            assert "partitions" in budgets[key], "a query-text mechanism charges a tenant partition"


def test_examples_cover_the_text_tasks_and_their_privacy_units() -> None:
    text = [m for m in _specs("PrivateModel") if m["model"]["format"] == "huggingface"]
    by_task = {m["model"]["task"]: m for m in text}
    assert {"text-generation", "feature-extraction"} <= set(by_task)
    generator = by_task["text-generation"]
    # A DP-fine-tuned generator: served for free, its training run is the spend.
    assert generator["serving"]["mechanism"]["type"] == "none"
    assert "training" in generator["model"]
    embedder = Mechanism.model_validate(by_task["feature-extraction"]["serving"]["mechanism"])
    assert privacy_unit(embedder) == "query-text"
    assert any(m["serving"].get("resources", {}).get("gpu") for m in text)

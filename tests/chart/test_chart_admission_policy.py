"""The chart's ValidatingAdmissionPolicy refuses file:// (hostPath) URIs in PrivateModels:
its CEL is evaluated here on real model objects (cel-python), since LocalKube does not run
admission policies (the operator refuses them as well: tests/resources)."""

from __future__ import annotations

from typing import Any

import celpy
import pytest

PVC = "pvc://models/triage/v1"


def _policy(render: Any, values: dict[str, Any]) -> dict[str, Any] | None:
    return next((o for o in render(values) if o["kind"] == "ValidatingAdmissionPolicy"), None)


def _model(artifact: str = PVC, retraining: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"artifact": artifact, "format": "state-dict"}}
    if retraining is not None:
        spec["retraining"] = retraining
    return {"apiVersion": "dpserve.io/v1alpha1", "kind": "PrivateModel", "spec": spec}


def _refusals(policy: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    env = celpy.Environment()
    activation = {"object": celpy.json_to_cel(obj)}
    refused = []
    for rule in policy["spec"]["validations"]:
        program = env.program(env.compile(rule["expression"]))
        if not bool(program.evaluate(activation)):
            refused.append(rule["message"])
    return refused


@pytest.mark.parametrize(("obj", "field"), [
    (_model("file:///etc"), "spec.model.artifact"),
    (_model(retraining={"dataset": "file:///srv/q1.npz"}), "spec.retraining.dataset"),
    (_model(retraining={"dataset": "pvc://d/q1.jsonl", "lora": {"base": "file:///srv/b"}}),
     "spec.retraining.lora.base"),
])
def test_host_paths_are_refused_naming_the_field(render, obj, field):
    policy = _policy(render, {})
    assert policy is not None
    refusals = _refusals(policy, obj)
    assert len(refusals) == 1 and refusals[0].startswith(f"{field}: file://")


@pytest.mark.parametrize("obj", [
    _model(),
    _model("oci://registry.example/m:v1", {"dataset": "pvc://d/q1.npz"}),
    _model(retraining={"dataset": "pvc://d/q1.jsonl", "lora": {"rank": 8}}),
])
def test_volumes_from_claims_and_images_pass(render, obj):
    policy = _policy(render, {})
    assert policy is not None and _refusals(policy, obj) == []


def test_allowing_host_paths_drops_the_policy_and_tells_the_operator(render):
    assert _policy(render, {"allowHostPathArtifacts": True}) is None
    objects = render({"allowHostPathArtifacts": True})
    env = {e["name"]: e.get("value") for o in objects if o["kind"] == "Deployment"
           for e in o["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DPSERVE_ALLOW_HOST_PATH_ARTIFACTS"] == "true"


def test_namespace_scoped_install_binds_the_policy_to_its_namespaces(render):
    binding = next(o for o in render({"watchNamespaces": ["team-a"]})
                   if o["kind"] == "ValidatingAdmissionPolicyBinding")
    expression = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]
    assert expression["values"] == ["team-a"]


@pytest.mark.parametrize("values", [{}, {"nameOverride": "privacy"}])
def test_operator_pod_labels_follow_the_chart_selector(render, values):
    objects = render(values)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value")
           for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    told = dict(kv.split("=", 1) for kv in env["DPSERVE_OPERATOR_POD_LABELS"].split(","))
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert told.items() <= pod_labels.items()
    assert told["app.kubernetes.io/name"] == values.get("nameOverride", "dpserve")

"""Every built object validates against the Kubernetes OpenAPI schema (strict: no unknown
fields), at the newest minor kubernetes-validate ships; image volumes need 1.31 or later."""

from __future__ import annotations

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version
from resources_support import BUILDERS

from dpserve.resources.deployment import build_deployment
from dpserve.resources.job import build_job

LATEST = latest_version()
ARTIFACTS = {
    "pvc": ("pvc://models/triage/v1", "pvc://datasets/triage/q1.npz"),
    "file": ("file:///srv/models/triage", "file:///srv/data/q1.npz"),
    "oci": ("oci://registry.example/models/triage:v1", "oci://registry.example/data/q1:1"),
}


def test_validator_is_strict():
    bogus = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "x"},
        "automountToken": False,
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bogus, LATEST, strict=True)


@pytest.mark.parametrize("scheme", sorted(ARTIFACTS))
@pytest.mark.parametrize("profile", ["none", "coco-tdx", "aks-kata-cc", "aks-cvm", "gke-sev"])
def test_all_objects_validate(scheme, profile, make_model, make_ctx):
    artifact, dataset = ARTIFACTS[scheme]
    model = make_model(
        spec={
            "model": {"artifact": artifact},
            "confidential": {"profile": profile, "required": profile != "none"},
            "retraining": {"dataset": dataset},
        }
    )
    ctx = make_ctx(model, allow_host_path_artifacts=scheme == "file")
    for builder in BUILDERS:
        if builder is build_job and scheme == "oci":
            continue  # an image artifact cannot be retrained into (tested in the Job tests)
        obj = builder(model, ctx)
        assert obj is not None
        kubernetes_validate.validate(obj, LATEST, strict=True)


def test_image_volume_needs_1_31(make_model, make_ctx):
    model = make_model(spec={"model": {"artifact": ARTIFACTS["oci"][0]}})
    deployment = build_deployment(model, make_ctx(model))
    kubernetes_validate.validate(deployment, "1.31", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30", strict=True)

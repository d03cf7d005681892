"""The GitOps examples applied with kubectl (``kubectl apply -k examples/``) reconcile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from operator_support import Cluster, condition, wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.skipif(not (EXAMPLES / "kustomization.yaml").exists(), reason="no examples")
def test_examples_apply_and_reconcile(cluster: Cluster) -> None:
    api = cluster.api
    # A cluster that offers the examples' TEEs: the CoCo SNP runtime class, a TDX node pool.
    api.create("/apis/node.k8s.io/v1/runtimeclasses",
               {"metadata": {"name": "kata-qemu-snp"}, "handler": "kata-qemu-snp"})
    api.create("/api/v1/nodes", {"metadata": {"name": "tdx-1", "labels": {
        "cloud.google.com/gke-confidential-nodes-instance-type": "TDX"}}})
    kubectl = ["kubectl", "--kubeconfig", str(cluster.server.kubeconfig)]
    applied = subprocess.run([*kubectl, "apply", "-k", str(EXAMPLES)], capture_output=True,
                             text=True, timeout=60)
    assert applied.returncode == 0, applied.stderr
    models = api.items("/apis/dpserve.io/v1alpha1/namespaces/clinical-ml/privatemodels")
    assert models
    for model in models:
        name = model["metadata"]["name"]
        done = wait_until(
            lambda n=name: (m := api.get(cluster.pm("clinical-ml", n))).get("status", {}).get(
                "observedGeneration") == m["metadata"]["generation"] and m,
            what=f"{name} reconciled")
        confidential = condition(done, "Confidential")
        assert confidential is not None and confidential["status"] == "True", (name, confidential)
        if "attestation" in done["spec"]["confidential"]:  # its key set loads; no pod asked
            attested = wait_until(lambda n=name: condition(api.get(cluster.pm("clinical-ml", n)),
                                                           "Attested"), what=f"{name} Attested")
            assert attested["reason"] == "NoTokenYet", (name, attested)
        deployment = api.get(cluster.path("clinical-ml", "deployments", name))
        owner = deployment["metadata"]["ownerReferences"][0]
        assert owner["uid"] == done["metadata"]["uid"] and owner["controller"] is True
        assert deployment["spec"]["replicas"] == done["status"]["replicas"]
    got = subprocess.run([*kubectl, "get", "pm", "-n", "clinical-ml"], capture_output=True,
                         text=True, timeout=30)
    assert got.returncode == 0 and "PHASE" in got.stdout.splitlines()[0]

"""Training Jobs and erased record ids: the ConfigMap mount, --exclude-ids, the PATE erasure
Job (``<model>-erase-<version>``) and its arguments."""

from __future__ import annotations

import kubernetes_validate
import pytest

from dpserve.resources.job import build_job, build_unlearn_job
from dpserve.resources.labels import ERASED_IDS

LATEST = kubernetes_validate.latest_version()


def _container(job):
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def _args(job) -> dict[str, str]:
    args = _container(job)["args"]
    return dict(zip(args[::2], args[1::2], strict=True))


def test_without_erasures_a_job_mounts_and_passes_nothing(make_model, make_ctx):
    model = make_model()
    job = build_job(model, make_ctx(model))
    assert "--exclude-ids" not in _container(job)["args"]
    assert ERASED_IDS not in job["metadata"].get("annotations", {})
    assert all(v["name"] != "erasure" for v in job["spec"]["template"]["spec"]["volumes"])


def test_every_retrain_leaves_the_erased_ids_out(make_model, make_ctx, assert_restricted):
    model = make_model()
    job = build_job(model, make_ctx(model, erased_ids=3))
    assert _args(job)["--exclude-ids"] == "/erasure/ids.json"
    assert job["metadata"]["annotations"][ERASED_IDS] == "3"
    pod = job["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "erasure"]
    assert volume["configMap"] == {"name": "triage-erasure", "optional": False,
                                   "items": [{"key": "ids.json", "path": "ids.json"}]}
    assert {"name": "erasure", "mountPath": "/erasure", "readOnly": True} in \
        _container(job)["volumeMounts"]
    assert_restricted(pod)
    kubernetes_validate.validate(job, LATEST, strict=True)


def test_the_pate_erasure_job(make_model, make_ctx, assert_restricted):
    model = make_model(status={"modelVersion": "v2", "artifact": "pvc://models/triage/v2"})
    job = build_unlearn_job(model, make_ctx(model, erased_ids=4))
    assert job["metadata"]["name"] == "triage-erase-v3"
    assert _args(job) == {
        "--dataset": "/data/2027q1.npz",
        "--output": "/output/v3",
        "--mode": "pate",
        "--unlearn-base": "/base",  # the served ensemble: its partition map and recipe
        "--exclude-ids": "/erasure/ids.json",
        "--version": "v3",
        "--fingerprint-window-tokens": "50",
    }
    mounts = {m["mountPath"]: m for m in _container(job)["volumeMounts"]}
    assert mounts["/base"]["readOnly"] is True and mounts["/base"]["subPath"] == "triage/v2"
    assert mounts["/output"].get("readOnly") is not True
    assert job["metadata"]["annotations"][ERASED_IDS] == "4"
    # The trainer gets no budget flags: teachers spend nothing, answers are charged per query.
    assert "--max-epsilon" not in _container(job)["args"]
    assert_restricted(job["spec"]["template"]["spec"])
    kubernetes_validate.validate(job, LATEST, strict=True)


def test_the_pate_erasure_job_is_refused_where_it_cannot_run(make_model, make_ctx):
    model = make_model()
    with pytest.raises(ValueError, match="needs erased ids"):
        build_unlearn_job(model, make_ctx(model))
    dpsgd = make_model(spec={"model": {"format": "state-dict", "training": {
        "noiseMultiplier": "1.2", "sampleRate": "0.005", "steps": 10}},
        "serving": {"mechanism": {"type": "none", "teachers": None, "noiseMultiplier": None}},
        "onBudgetExhausted": "ScaleToZero",
        "retraining": {"mode": "dpsgd", "teachers": None}})
    with pytest.raises(ValueError, match="pate-ensemble"):
        build_unlearn_job(dpsgd, make_ctx(dpsgd, erased_ids=1))

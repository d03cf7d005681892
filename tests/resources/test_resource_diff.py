"""needs_update / merge_for_update: no write when nothing changed, a write after a hand edit."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest
from resources_support import BUILDERS

from dpserve.resources.deployment import build_deployment
from dpserve.resources.diff import merge_for_update, needs_update, parse_quantity
from dpserve.resources.job import build_job
from dpserve.resources.labels import DESIRED_HASH
from dpserve.resources.service import build_service


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("profile", ["none", "coco-snp", "aks-kata-cc", "gke-sev-snp"])
def test_no_update_when_live_is_desired_plus_server_defaults(
    builder, profile, make_model, make_ctx, stored
):
    model = make_model(spec={"confidential": {"profile": profile, "required": profile != "none"}})
    desired = builder(model, make_ctx(model))
    assert not needs_update(desired, stored(desired))


def test_hand_edits_of_set_fields_are_detected(make_model, make_ctx, stored):
    model = make_model()
    desired = build_deployment(model, make_ctx(model))
    edits = [
        lambda o: o["spec"].__setitem__("replicas", 5),
        lambda o: o["spec"]["template"]["spec"]["containers"][0].__setitem__("image", "evil:1"),
        lambda o: o["spec"]["template"]["spec"]["containers"][1]["securityContext"].__setitem__(
            "readOnlyRootFilesystem", False
        ),
        lambda o: o["spec"]["template"]["spec"].__setitem__("automountServiceAccountToken", True),
        lambda o: o["spec"]["template"]["spec"].pop("runtimeClassName"),
        lambda o: o["spec"]["template"]["spec"]["containers"][0]["args"].append("--debug"),
        lambda o: o["metadata"]["labels"].pop("dpserve.io/model"),
        lambda o: o["metadata"]["annotations"].__setitem__(DESIRED_HASH, "0" * 64),
        lambda o: o["metadata"].__setitem__("ownerReferences", []),
        lambda o: o["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].__setitem__(
            "memory", "4Gi"
        ),
    ]
    for edit in edits:
        live = stored(desired)
        edit(live)
        assert needs_update(desired, live), edit


def test_foreign_metadata_and_equal_quantities_are_not_changes(make_model, make_ctx, stored):
    model = make_model()
    desired = build_deployment(model, make_ctx(model))
    live = stored(desired)
    live["metadata"]["labels"]["team"] = "ml"
    live["metadata"]["annotations"]["argocd.argoproj.io/tracking-id"] = "x"
    live["metadata"]["ownerReferences"].append(
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "u-2"}
    )
    live["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = (
        "2026-01-02T00:00:00Z"
    )
    resources = live["spec"]["template"]["spec"]["containers"][0]["resources"]
    resources["limits"] = {"cpu": "1000m", "memory": "2048Mi"}  # same values, other spelling
    resources["requests"] = {"cpu": 1, "memory": str(2 * 1024**3)}
    assert not needs_update(desired, live)


def test_a_field_the_operator_stops_setting_triggers_an_update(make_model, make_ctx, stored):
    coco = make_model()
    live = stored(build_deployment(coco, make_ctx(coco)))
    plain = make_model(spec={"confidential": {"profile": "none", "required": False}})
    desired = build_deployment(plain, make_ctx(plain))
    assert "runtimeClassName" not in desired["spec"]["template"]["spec"]
    assert needs_update(desired, live)  # through the desired-hash annotation
    body = merge_for_update(desired, live)
    assert "runtimeClassName" not in body["spec"]["template"]["spec"]
    assert not needs_update(desired, stored(body))


def test_merge_for_update_keeps_server_and_foreign_fields(make_model, make_ctx, stored):
    model = make_model()
    ctx = make_ctx(model)
    svc = build_service(model, ctx)
    live = stored(svc, resource_version="4242")
    live["metadata"]["annotations"]["note"] = "kept"
    live["spec"]["ports"][0]["port"] = 9999  # hand edit
    assert needs_update(svc, live)
    body = merge_for_update(svc, live)
    assert body["metadata"]["resourceVersion"] == "4242"  # optimistic lock
    assert body["metadata"]["annotations"]["note"] == "kept"
    assert "managedFields" not in body["metadata"]
    assert "status" not in body
    assert body["spec"]["clusterIP"] == "10.96.12.34"
    assert body["spec"]["ports"][0]["port"] == 8080
    assert not needs_update(svc, stored(body))


def test_merge_for_update_keeps_rollout_restart_marker(make_model, make_ctx, stored):
    model = make_model()
    desired = build_deployment(model, make_ctx(model))
    live = stored(desired)
    marker = "kubectl.kubernetes.io/restartedAt"
    live["spec"]["template"]["metadata"]["annotations"][marker] = "2026-01-02T00:00:00Z"
    live["spec"]["replicas"] = 7
    body = merge_for_update(desired, live)
    assert body["spec"]["replicas"] == 2
    assert body["spec"]["template"]["metadata"]["annotations"][marker] == "2026-01-02T00:00:00Z"


def test_merge_for_update_keeps_the_job_selector(make_model, make_ctx, stored):
    model = make_model()
    job = build_job(model, make_ctx(model))
    live = stored(job)
    body = merge_for_update(job, live)
    assert body["spec"]["selector"] == live["spec"]["selector"]
    assert "job-name" in body["spec"]["template"]["metadata"]["labels"]
    assert not needs_update(job, stored(body))


def test_merge_does_not_mutate_its_inputs(make_model, make_ctx, stored):
    model = make_model()
    desired = build_deployment(model, make_ctx(model))
    live = stored(desired)
    before = (copy.deepcopy(desired), copy.deepcopy(live))
    merge_for_update(desired, live)
    assert (desired, live) == before


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("1", "1"),
        ("1Gi", str(2**30)),
        ("1024Mi", str(2**30)),
        ("1e3", "1000"),
        ("1.5k", "1500"),
        ("2E", "2e18"),
        ("100n", "1e-7"),
    ],
)
def test_parse_quantity(text, value):
    assert parse_quantity(text) == Decimal(value)


def test_parse_quantity_rejects_garbage():
    for bad in ("", "Gi", "1.2.3", "1Xi", "--1"):
        with pytest.raises(ValueError):
            parse_quantity(bad)

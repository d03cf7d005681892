"""The serving Deployment: the pod as DESIGN.md "The pod" describes it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dpserve.resources.configmap import build_configmap
from dpserve.resources.deployment import build_deployment
from dpserve.resources.labels import FILTER_CONFIG_HASH, MODEL_VERSION, selector_labels
from dpserve.resources.render import content_hash


def containers(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}


def volumes(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def test_model_container_listens_on_localhost_only(make_model, make_ctx):
    model = make_model()
    dep = build_deployment(model, make_ctx(model))
    c = containers(dep)["model"]
    assert c["command"] == ["dpserve-server"]
    mechanism = json.dumps(
        {"noiseMultiplier": "40", "teachers": 50, "type": "pate"}, separators=(",", ":")
    )
    assert c["args"] == [
        "--artifact",
        "/models/current",
        "--mechanism",
        mechanism,
        "--host",
        "127.0.0.1",
        "--port",
        "8081",
    ]
    assert "ports" not in c
    assert c["image"] == make_ctx(model).image
    assert mounts(c)["/models/current"]["readOnly"] is True
    assert mounts(c)["/tmp"]["name"] == "model-tmp"


def test_filter_container_is_the_only_port(make_model, make_ctx):
    model = make_model()
    dep = build_deployment(model, make_ctx(model))
    f = containers(dep)["filter"]
    assert f["command"] == ["dpserve-filter"]
    assert f["args"] == ["--config", "/etc/dpserve/filter.json"]
    assert f["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    env = {e["name"]: e for e in f["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert f["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}
    assert f["livenessProbe"]["httpGet"]["path"] == "/healthz"
    m = mounts(f)
    assert m["/etc/dpserve"] == {
        "name": "filter-config",
        "mountPath": "/etc/dpserve",
        "readOnly": True,
    }
    assert m["/var/run/secrets/dpserve"]["readOnly"] is True
    assert m["/tmp"]["name"] == "filter-tmp"
    # Exactly one container exposes a port.
    assert [c for c in containers(dep).values() if c.get("ports")] == [f]


def test_projected_token_and_no_default_api_token(make_model, make_ctx):
    model = make_model()
    pod = build_deployment(model, make_ctx(model))["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "triage-dpserve"
    token = volumes({"spec": {"template": {"spec": pod}}})["ledger-token"]
    assert token["projected"]["sources"] == [
        {
            "serviceAccountToken": {
                "audience": "dpserve-ledger",
                "expirationSeconds": 3600,
                "path": "token",
            }
        }
    ]
    assert pod["enableServiceLinks"] is False


@pytest.mark.parametrize(
    ("artifact", "volume", "mount_extra"),
    [
        (
            "pvc://models/triage/v1",
            {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
            {"subPath": "triage/v1"},
        ),
        ("pvc://models", {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}}, {}),
        (
            "oci://registry.example/models/triage@sha256:" + "a" * 64,
            {
                "image": {
                    "reference": "registry.example/models/triage@sha256:" + "a" * 64,
                    "pullPolicy": "IfNotPresent",
                }
            },
            {},
        ),
        (
            "file:///srv/models/triage/v1",
            {"hostPath": {"path": "/srv/models/triage/v1", "type": "Directory"}},
            {},
        ),
    ],
)
def test_artifact_volume_per_scheme(make_model, make_ctx, artifact, volume, mount_extra):
    model = make_model(spec={"model": {"artifact": artifact}})
    dep = build_deployment(model, make_ctx(model, allow_host_path_artifacts=True))
    assert volumes(dep)["model-artifact"] == {"name": "model-artifact", **volume}
    for name in ("model", "filter"):  # the filter reads the verbatim-guard fingerprints
        assert mounts(containers(dep)[name])["/models/current"] == {
            "name": "model-artifact",
            "mountPath": "/models/current",
            "readOnly": True,
            **mount_extra,
        }


def test_filter_skips_artifact_without_verbatim_guard(make_model, make_ctx):
    model = make_model(spec={"outputFilter": {"verbatimGuard": {"enabled": False}}})
    dep = build_deployment(model, make_ctx(model))
    assert "/models/current" not in mounts(containers(dep)["filter"])


def test_status_artifact_and_version_override_spec(make_model, make_ctx):
    model = make_model(
        status={
            "modelVersion": "v2",
            "artifact": "pvc://models/triage/v2",
            "budget": "patients-2026q4-v2",
        }
    )
    ctx = make_ctx(model)
    assert (ctx.model_version, ctx.artifact, ctx.budget_name) == (
        "v2",
        "pvc://models/triage/v2",
        "patients-2026q4-v2",
    )
    dep = build_deployment(model, ctx)
    assert mounts(containers(dep)["model"])["/models/current"]["subPath"] == "triage/v2"
    assert dep["spec"]["template"]["metadata"]["annotations"][MODEL_VERSION] == "v2"
    assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/version"] == "v2"


def test_every_container_restricted_and_guaranteed(make_model, make_ctx, assert_restricted):
    model = make_model()
    pod = build_deployment(model, make_ctx(model))["spec"]["template"]["spec"]
    assert_restricted(pod)
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["runAsUser"] == 65532
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert c["resources"]["requests"] == c["resources"]["limits"]
        assert set(c["resources"]["limits"]) >= {"cpu", "memory"}
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert containers({"spec": {"template": {"spec": pod}}})["model"]["resources"]["limits"] == {
        "cpu": "1",
        "memory": "2Gi",
    }


def test_each_container_has_its_own_tmp(make_model, make_ctx):
    model = make_model()
    dep = build_deployment(model, make_ctx(model))
    tmp = {c["name"]: mounts(c)["/tmp"]["name"] for c in containers(dep).values()}
    assert tmp == {"model": "model-tmp", "filter": "filter-tmp"}
    for name in tmp.values():
        assert volumes(dep)[name]["emptyDir"]["medium"] == "Memory"


def test_rollout_settings_and_replicas(make_model, make_ctx):
    model = make_model()
    dep = build_deployment(model, make_ctx(model))
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert 0 < dep["spec"]["revisionHistoryLimit"] <= 5
    assert dep["spec"]["replicas"] == 2
    assert build_deployment(model, make_ctx(model, replicas=0))["spec"]["replicas"] == 0


def test_filter_config_hash_annotation_tracks_the_configmap(make_model, make_ctx):
    model = make_model()
    ctx = make_ctx(model)
    dep = build_deployment(model, ctx)
    data = build_configmap(model, ctx)["data"]["filter.json"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations[FILTER_CONFIG_HASH] == content_hash(data)
    assert annotations[MODEL_VERSION] == "v1"
    changed = make_model(spec={"outputFilter": {"action": "block"}})
    dep2 = build_deployment(changed, make_ctx(changed))
    assert (
        dep2["spec"]["template"]["metadata"]["annotations"][FILTER_CONFIG_HASH]
        != (annotations[FILTER_CONFIG_HASH])
    )
    # Only the annotation differs: the containers are the same.
    assert dep2["spec"]["template"]["spec"] == dep["spec"]["template"]["spec"]


def test_selector_is_stable_across_versions(make_model, make_ctx):
    v1 = make_model()
    v2 = make_model(status={"modelVersion": "v2", "artifact": "pvc://models/triage/v2"})
    d1 = build_deployment(v1, make_ctx(v1))
    d2 = build_deployment(v2, make_ctx(v2))
    assert d1["spec"]["selector"] == d2["spec"]["selector"]
    assert d1["spec"]["selector"]["matchLabels"] == selector_labels("triage")
    template_labels = d2["spec"]["template"]["metadata"]["labels"]
    assert d2["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    assert template_labels["app.kubernetes.io/version"] == "v2"
    # The filter config names the version, so a new version alone rolls new sidecars.
    hashes = [d["spec"]["template"]["metadata"]["annotations"][FILTER_CONFIG_HASH]
              for d in (d1, d2)]
    assert hashes[0] != hashes[1]
    assert hashes[1] == content_hash(build_configmap(v2, make_ctx(v2))["data"]["filter.json"])


def test_recommended_labels(make_model, make_ctx):
    model = make_model()
    labels = build_deployment(model, make_ctx(model))["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/name": "dpserve-model",
        "app.kubernetes.io/instance": "triage",
        "app.kubernetes.io/version": "v1",
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/part-of": "dpserve",
        "app.kubernetes.io/managed-by": "dpserve-operator",
        "dpserve.io/model": "triage",
    }


def test_ledger_ca_is_written_beside_the_filter_config(make_model, make_ctx):
    model = make_model()
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    ctx = make_ctx(model, ledger_url="https://ledger.dpserve-system.svc:8443",
                   ledger_ca_pem=pem)
    configmap = build_configmap(model, ctx)
    assert configmap["data"]["ledger-ca.crt"] == pem
    config = json.loads(configmap["data"]["filter.json"])
    assert config["ledgerCaPath"] == "/etc/dpserve/ledger-ca.crt"
    assert mounts(containers(build_deployment(model, ctx))["filter"])["/etc/dpserve"]
    # A rotated CA rolls the pods.
    rotated = make_ctx(model, ledger_url="https://ledger.dpserve-system.svc:8443",
                       ledger_ca_pem=pem.replace("MIIB", "MIIC"))
    assert (template_annotations(build_deployment(model, ctx))
            != template_annotations(build_deployment(model, rotated)))


def template_annotations(dep):
    return dep["spec"]["template"]["metadata"]["annotations"]


def test_bad_names_and_uris_name_the_field(make_model, make_ctx):
    model = make_model(metadata={"name": "1-starts-with-digit"})
    with pytest.raises(ValueError, match=r"metadata\.name"):
        build_deployment(model, make_ctx(model))
    model = make_model(spec={"model": {"artifact": "pvc://models/../etc"}})
    with pytest.raises(ValueError, match=r"spec\.model\.artifact"):
        build_deployment(model, make_ctx(model))
    model = make_model(metadata={"namespace": None})
    with pytest.raises(ValueError, match=r"metadata\.namespace"):
        build_deployment(model, make_ctx(model))


def test_a_host_path_artifact_is_refused_by_default(make_model, make_ctx):
    # file:///etc was once admitted and mounted: hostPath of any node directory.
    model = make_model(spec={"model": {"artifact": "file:///etc"}})
    with pytest.raises(ValueError, match=r"^spec\.model\.artifact: 'file:///etc': file:// URIs"):
        build_deployment(model, make_ctx(model))

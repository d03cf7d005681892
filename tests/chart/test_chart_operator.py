"""The operator Deployments: restricted securityContext, Recreate, probes, the exact
`dpserve run` flags (standalone, or peering with distinct priorities), env and Services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import helm_python as helm
import pytest

Objects = list[dict[str, Any]]
Render = Callable[[dict[str, Any]], Objects]


def _kind(objects: Objects, kind: str) -> Objects:
    return [o for o in objects if o["kind"] == kind]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _args(deployment: dict[str, Any]) -> list[str]:
    container = _container(deployment)
    assert container["command"] == ["dpserve", "run"]
    args: list[str] = container["args"]
    return args


def _flag(args: list[str], name: str) -> list[str]:
    """Every value given to ``name`` (flags take their value as the next argument)."""
    return [args[i + 1] for i, arg in enumerate(args) if arg == name]


def _env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(deployment)["env"]}


def test_restricted_pod_security(scenario_objects: Objects) -> None:
    deployments = _kind(scenario_objects, "Deployment")
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65532
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "privileged" not in context
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
            assert container["resources"]["requests"] and container["resources"]["limits"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"]
        assert all(set(v) <= {"name", "emptyDir", "configMap", "projected", "secret"}
                   for v in volumes.values())


def test_one_replica_recreate(scenario_objects: Objects) -> None:
    for deployment in _kind(scenario_objects, "Deployment"):
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def _port(container: dict[str, Any], name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    number: int = next(p["containerPort"] for p in container["ports"]
                       if p["name"] == name_or_number)
    return number


def test_probes(scenario_objects: Objects) -> None:
    for deployment in _kind(scenario_objects, "Deployment"):
        container = _container(deployment)
        live = container["livenessProbe"]["httpGet"]
        ready = container["readinessProbe"]["httpGet"]
        assert (live["path"], _port(container, live["port"])) == ("/healthz", 8080)
        assert (ready["path"], _port(container, ready["port"])) == ("/readyz", 8443)
        args = _args(deployment)
        assert _flag(args, "--liveness-port") == ["8080"]
        assert _flag(args, "--ledger-port") == ["8443"]
        assert _flag(args, "--metrics-port") == ["9090"]


def test_default_runs_one_standalone_cluster_wide_operator(render: Render) -> None:
    deployments = _kind(render({}), "Deployment")
    assert len(deployments) == 1
    args = _args(deployments[0])
    assert "--standalone" in args and "--all-namespaces" in args
    assert not {"--peering", "--priority", "--namespace"} & set(args)


def test_standby_runs_two_peered_deployments_with_distinct_priorities(
    render: Render, release_name: str
) -> None:
    objects = render({"standby": {"enabled": True}})
    deployments = {d["metadata"]["name"]: d for d in _kind(objects, "Deployment")}
    active, standby = f"{release_name}-dpserve", f"{release_name}-dpserve-standby"
    assert set(deployments) == {active, standby}
    priorities = {}
    for name, deployment in deployments.items():
        args = _args(deployment)
        assert "--standalone" not in args
        assert _flag(args, "--peering") == [f"{release_name}-dpserve"]
        (priorities[name],) = (int(p) for p in _flag(args, "--priority"))
        assert _env(deployment)["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        # Both replicas state the heartbeat lifetime (the standby waits out the active's).
        assert _env(deployment)["DPSERVE_PEERING_LIFETIME_S"] == "60"
    assert priorities[active] > priorities[standby]
    # Distinct Deployments must not select each other's pods.
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items()))
                 for d in deployments.values()]
    assert len(set(selectors)) == 2
    peering = _kind(objects, "ClusterKopfPeering")
    assert [p["metadata"]["name"] for p in peering] == [f"{release_name}-dpserve"]


def test_standby_lifetime_is_passed_and_bounded(render: Render) -> None:
    objects = render({"standby": {"enabled": True, "lifetimeSeconds": 20}})
    for deployment in _kind(objects, "Deployment"):
        assert _env(deployment)["DPSERVE_PEERING_LIFETIME_S"] == "20"
    with pytest.raises(helm.HelmValuesError, match="lifetimeSeconds"):
        render({"standby": {"enabled": True, "lifetimeSeconds": 1}})
    # Without the standby there is no peering, and no lifetime to state.
    (single,) = _kind(render({}), "Deployment")
    assert "DPSERVE_PEERING_LIFETIME_S" not in _env(single)


def test_standby_priority_must_be_lower(render: Render) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"standby\.priority must be lower"):
        render({"standby": {"enabled": True, "priority": 100}, "priority": 100})


def test_watch_namespaces(render: Render, release_name: str) -> None:
    namespaces = ["team-a", "team-b"]
    objects = render({"watchNamespaces": namespaces, "standby": {"enabled": True}})
    for deployment in _kind(objects, "Deployment"):
        args = _args(deployment)
        assert _flag(args, "--namespace") == namespaces
        assert "--all-namespaces" not in args
        assert _env(deployment)["DPSERVE_WATCH_NAMESPACES"] == "team-a,team-b"
    peering = _kind(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peering) == namespaces
    assert not _kind(objects, "ClusterKopfPeering")


def test_environment(render: Render, release_name: str, release_namespace: str) -> None:
    objects = render({"inferenceImage": {"repository": "registry.local/dpserve-inference",
                                         "tag": "1.2.3"}})
    (deployment,) = _kind(objects, "Deployment")
    env = _env(deployment)
    assert env["DPSERVE_INFERENCE_IMAGE"] == "registry.local/dpserve-inference:1.2.3"
    ledger_url = f"https://{release_name}-dpserve-ledger.{release_namespace}.svc:8443"
    assert env["DPSERVE_LEDGER_URL"] == ledger_url
    assert env["DPSERVE_WATCH_NAMESPACES"] == ""
    assert env["DPSERVE_LOG_FORMAT"] == "json"
    assert _container(deployment)["image"] == "dpserve-operator:0.1.0"


def test_serving_pods_get_dns_only_when_asked(render: Render) -> None:
    """The operator pins the ledger's ClusterIP instead (docs/confidential.md)."""
    (default,) = _kind(render({}), "Deployment")
    assert _env(default)["DPSERVE_SERVING_DNS_EGRESS"] == "false"
    (widened,) = _kind(render({"servingDnsEgress": True,
                               "ledgerUrl": "https://ledger.example.org:8443"}), "Deployment")
    assert _env(widened)["DPSERVE_SERVING_DNS_EGRESS"] == "true"
    assert _env(widened)["DPSERVE_LEDGER_URL"] == "https://ledger.example.org:8443"


def test_image_digests(render: Render) -> None:
    digest = "sha256:" + "b" * 64
    (deployment,) = _kind(render({"image": {"digest": digest},
                                  "inferenceImage": {"digest": digest}}), "Deployment")
    assert _container(deployment)["image"] == f"dpserve-operator@{digest}"
    assert _env(deployment)["DPSERVE_INFERENCE_IMAGE"] == f"dpserve-inference@{digest}"


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_route_to_the_operator_pods(
    scenario_objects: Objects, release_name: str
) -> None:
    services = {s["metadata"]["name"]: s for s in _kind(scenario_objects, "Service")}
    ledger = services[f"{release_name}-dpserve-ledger"]
    metrics = services[f"{release_name}-dpserve-metrics"]
    assert [(p["name"], p["port"]) for p in ledger["spec"]["ports"]] == [("ledger", 8443)]
    assert [(p["name"], p["port"]) for p in metrics["spec"]["ports"]] == [("metrics", 9090)]
    assert metrics["spec"]["publishNotReadyAddresses"] is True
    pods = [d["spec"]["template"] for d in _kind(scenario_objects, "Deployment")]
    for service in (ledger, metrics):
        for pod in pods:
            assert _selects(service["spec"]["selector"], pod["metadata"]["labels"])
            target = service["spec"]["ports"][0]["targetPort"]
            assert target in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    for monitor in _kind(scenario_objects, "ServiceMonitor"):
        matched = [s for s in services.values()
                   if _selects(monitor["spec"]["selector"]["matchLabels"],
                               s["metadata"]["labels"])]
        assert matched == [metrics]
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_service_account_is_the_bound_subject(
    scenario_objects: Objects, release_namespace: str
) -> None:
    (account,) = _kind(scenario_objects, "ServiceAccount")
    name = account["metadata"]["name"]
    for deployment in _kind(scenario_objects, "Deployment"):
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == name
    bindings = _kind(scenario_objects, "ClusterRoleBinding") + _kind(scenario_objects,
                                                                      "RoleBinding")
    assert bindings
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": release_namespace}
        ]

"""The chart's own RBAC on LocalKube: render charts/dpserve with Helm's SDK (offline), apply
its ServiceAccount, (Cluster)Roles and bindings as the admin, and hand the operator a
kubeconfig of that ServiceAccount. The emulator (started with ``rbac=True``) then refuses
what the chart does not grant with a 403, as a real API server does."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from dpserve_testkit.localkube.client import ApiFailure, Client
from dpserve_testkit.localkube.harness import OPERATOR_NAMESPACE, service_account_kubeconfig
from dpserve_testkit.localkube.server import LocalKubeServer

CHART_DIR = Path(__file__).resolve().parents[1] / "charts" / "dpserve"
RELEASE = "dpserve"
RBAC_GROUP = "rbac.authorization.k8s.io"
Obj = dict[str, Any]
IDENTITY_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@cache
def _render(values_json: str, release: str, namespace: str) -> tuple[Obj, ...]:
    # A fresh load per render: Helm mutates a loaded chart while rendering.
    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(json.loads(values_json), name=release, namespace=namespace,
                                 is_install=True)
    return tuple(doc for name, text in sorted(manifests.items())
                 if not name.endswith("NOTES.txt")
                 for doc in yaml.safe_load_all(text) if doc)


def render_chart(values: Obj | None = None, *, release: str = RELEASE,
                 namespace: str = OPERATOR_NAMESPACE) -> list[Obj]:
    """The chart's rendered objects (cached per values; copies, safe to change)."""
    rendered = _render(json.dumps(values or {}, sort_keys=True), release, namespace)
    return json.loads(json.dumps(list(rendered)))  # type: ignore[no-any-return]


def identity_objects(objects: list[Obj]) -> list[Obj]:
    """The ServiceAccount and RBAC objects of a rendering, in an order that can be applied."""
    return sorted((o for o in objects if o["kind"] in IDENTITY_KINDS),
                  key=lambda o: IDENTITY_KINDS.index(o["kind"]))


def service_account(objects: list[Obj]) -> tuple[str, str]:
    """(namespace, name) of the operator's ServiceAccount in a rendering."""
    (sa,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    return sa["metadata"]["namespace"], sa["metadata"]["name"]


def _path(obj: Obj) -> str:
    kind, meta = obj["kind"], obj["metadata"]
    if kind == "ServiceAccount":
        return f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts"
    plural = kind.lower() + "s"
    if "namespace" in meta and kind in ("Role", "RoleBinding"):
        return f"/apis/{RBAC_GROUP}/v1/namespaces/{meta['namespace']}/{plural}"
    return f"/apis/{RBAC_GROUP}/v1/{plural}"


def ensure_namespace(api: Client, name: str) -> None:
    try:
        api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    except ApiFailure as exc:
        if exc.status != 409:
            raise


def apply_identity(api: Client, objects: list[Obj]) -> None:
    """Create the rendering's ServiceAccount and RBAC objects (as the admin ``api``)."""
    for obj in identity_objects(objects):
        namespace = obj["metadata"].get("namespace")
        if namespace:
            ensure_namespace(api, namespace)
        try:
            api.create(_path(obj), obj)
        except ApiFailure as exc:
            if exc.status != 409:
                raise


def chart_values(*, namespaces: tuple[str, ...] = (), standby: bool = False) -> Obj:
    """The chart values matching how the harness runs the operator."""
    values: Obj = {}
    if namespaces:
        values["watchNamespaces"] = list(namespaces)
    if standby:
        values["standby"] = {"enabled": True}
    return values


def operator_credentials(server: LocalKubeServer | Callable[[], LocalKubeServer],
                         kubeconfig: Path, *, values: Obj | None = None,
                         enable_rbac: bool = False) -> Callable[[], Path]:
    """For :attr:`OperatorProcess.credentials`: apply the chart's RBAC and return a kubeconfig
    of the chart's ServiceAccount (a fresh token each start, as a restarted pod gets).

    ``server`` (or a function returning it, for a stack that starts its own) must enforce RBAC
    for the grants to matter: ``enable_rbac`` turns it on before the operator starts, and it
    is checked either way so that a suite cannot silently run without it.
    """
    objects = render_chart(values)

    def credentials() -> Path:
        live = server if isinstance(server, LocalKubeServer) else server()
        if enable_rbac:
            # kubectl in the tests sends no credentials over plain HTTP: it is the admin.
            live.call(lambda kube: kube.enable_rbac(anonymous_admin=True))
        assert live.call(lambda kube: kube.rbac_enabled), "LocalKube runs without RBAC"
        apply_identity(Client(live.url), objects)
        namespace, name = service_account(objects)
        return service_account_kubeconfig(live, kubeconfig, namespace=namespace,
                                          service_account=name)

    return credentials

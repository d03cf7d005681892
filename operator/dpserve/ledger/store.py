"""Where the ledger lives: PrivacyBudget.status, written with a resourceVersion precondition.

The ledger service reads a budget, computes the new status (pure), and replaces the status
with ``metadata.resourceVersion`` set to what it read. The API server refuses the write with
409 if anybody (another operator process, a spec edit, another grant) wrote in between; the
service then re-reads and recomputes. That precondition, not any in-process lock, is what
keeps two writers from spending the same budget twice.

:class:`Store` is the interface; :class:`KubeStore` talks to the API server
(kubernetes_asyncio). The tests' in-memory store with injectable faults is
``dpserve_testkit.memory_store.MemoryStore`` (the dpserve-testkit distribution, never in an
image).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from dpserve import API_GROUP, API_VERSION
from dpserve.api import privacybudget, privatemodel
from dpserve.ledger.conditions import rfc3339
from dpserve.ledger.outcomes import BudgetEvent
from dpserve.resources.access import DEPLOYMENTS, PODS, REPLICASETS

Obj = dict[str, Any]
REQUEST_TIMEOUT_S = 5.0


class StoreError(Exception):
    """Base of the store's failures."""


class NotFound(StoreError):
    """The object does not exist."""


class Conflict(StoreError):
    """The resourceVersion precondition failed: somebody else wrote first."""


class Unavailable(StoreError):
    """The API server could not be reached or failed; a write may or may not have landed."""


class Store(Protocol):
    """The API calls the ledger makes."""

    async def get_budget(self, namespace: str, name: str) -> Obj:
        """The PrivacyBudget object (raises NotFound / Unavailable)."""
        ...

    async def get_model(self, namespace: str, name: str) -> Obj:
        """The PrivateModel object (raises NotFound / Unavailable)."""
        ...

    async def get_config_map(self, namespace: str, name: str) -> Obj:
        """A ConfigMap (the JWK Set of spec.confidential.attestation; raises NotFound /
        Unavailable)."""
        ...

    async def get_pod(self, namespace: str, name: str) -> Obj:
        """The Pod object (raises NotFound / Unavailable)."""
        ...

    async def get_workload(self, namespace: str, kind: str, name: str) -> Obj:
        """A ReplicaSet or Deployment (raises NotFound for any other kind, or Unavailable)."""
        ...

    async def replace_budget_status(self, namespace: str, name: str, body: Obj) -> Obj:
        """Replace the status subresource; ``body.metadata.resourceVersion`` is the precondition.

        Returns the object as written (new resourceVersion). Raises Conflict on a stale
        resourceVersion, NotFound, or Unavailable (outcome unknown).
        """
        ...

    async def annotate_budget(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge ``annotations`` into the PrivacyBudget's metadata (not the status subresource:
        a status write cannot change them)."""
        ...

    async def emit_event(self, namespace: str, involved: Obj, event: BudgetEvent) -> None:
        """Record a Kubernetes Event about ``involved`` (best effort)."""
        ...

    async def ping(self) -> None:
        """Raise Unavailable (or NotFound: CRDs missing) unless the API server answers."""
        ...


# --------------------------------------------------------------------------- Kubernetes


class KubeStore:
    """:class:`Store` over the Kubernetes API (kubernetes_asyncio)."""

    def __init__(self, api: client.ApiClient, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.api = api
        self.timeout_s = timeout_s
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    @classmethod
    async def connect(cls) -> KubeStore:
        """A store with the operator's credentials (in-cluster or KUBECONFIG)."""
        from dpserve.kube import api_client

        return cls(await api_client())

    async def close(self) -> None:
        await self.api.close()

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except ApiException as exc:
            if exc.status == 404:
                raise NotFound(exc.reason or "not found") from exc
            if exc.status == 409:
                raise Conflict(exc.reason or "conflict") from exc
            raise Unavailable(f"API server answered {exc.status} {exc.reason}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unavailable(f"API server unreachable: {exc!r}") from exc

    async def _get(self, namespace: str, plural: str, name: str) -> Obj:
        result: Obj = await self._call(
            self._custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, plural, name, _request_timeout=self.timeout_s
            )
        )
        return result

    async def get_budget(self, namespace: str, name: str) -> Obj:
        return await self._get(namespace, privacybudget.PLURAL, name)

    async def get_model(self, namespace: str, name: str) -> Obj:
        return await self._get(namespace, privatemodel.PLURAL, name)

    async def get_config_map(self, namespace: str, name: str) -> Obj:
        result: Any = await self._call(
            self._core.read_namespaced_config_map(name, namespace,
                                                  _request_timeout=self.timeout_s)
        )
        return {"metadata": {"name": name, "namespace": namespace},
                "data": dict(result.data or {})}

    async def get_pod(self, namespace: str, name: str) -> Obj:
        return await self._get_raw(PODS.path(namespace, name))

    async def get_workload(self, namespace: str, kind: str, name: str) -> Obj:
        res = {"ReplicaSet": REPLICASETS, "Deployment": DEPLOYMENTS}.get(kind)
        if res is None:
            raise NotFound(f"{kind} {namespace}/{name}: not a workload the ledger reads")
        return await self._get_raw(res.path(namespace, name))

    async def _get_raw(self, path: str) -> Obj:
        """GET as plain JSON: the typed models refuse objects a server may well send (an
        ownerReference without apiVersion), which is no reason to refuse a grant."""
        result: Obj = await self._call(self.api.call_api(
            path, "GET", header_params={"Accept": "application/json"},
            response_types_map={200: "object"}, auth_settings=["BearerToken"],
            _return_http_data_only=True, _request_timeout=self.timeout_s,
        ))
        return result

    async def replace_budget_status(self, namespace: str, name: str, body: Obj) -> Obj:
        result: Obj = await self._call(
            self._custom.replace_namespaced_custom_object_status(
                API_GROUP,
                API_VERSION,
                namespace,
                privacybudget.PLURAL,
                name,
                body,
                _request_timeout=self.timeout_s,
            )
        )
        return result

    async def annotate_budget(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        # A merge patch (the client would pick JSON Patch for a dict body); the generated
        # signature does not declare _content_type, which the client reads from kwargs.
        options: dict[str, Any] = {"_content_type": "application/merge-patch+json",
                                   "_request_timeout": self.timeout_s}
        await self._call(
            self._custom.patch_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, privacybudget.PLURAL, name,
                {"metadata": {"annotations": annotations}}, **options,
            )
        )

    async def emit_event(self, namespace: str, involved: Obj, event: BudgetEvent) -> None:
        body: Any = event_body(
            namespace, involved, event, datetime.now(UTC)
        )  # dict bodies are sent as-is
        await self._call(
            self._core.create_namespaced_event(
                namespace,
                body,
                _request_timeout=self.timeout_s,
            )
        )

    async def ping(self) -> None:
        # The dpserve API group's discovery document: the server answers and serves our CRDs.
        await self._call(
            self._custom.get_api_resources(API_GROUP, API_VERSION, _request_timeout=self.timeout_s)
        )


def event_body(namespace: str, involved: Obj, event: BudgetEvent, now: datetime) -> Obj:
    """A core/v1 Event about ``involved`` reported by the ledger."""
    meta = involved.get("metadata", {})
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta.get('name', 'budget')}.{uuid.uuid4().hex[:16]}",
            "namespace": namespace,
        },
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", f"{API_GROUP}/{API_VERSION}"),
            "kind": involved.get("kind", privacybudget.KIND),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": "dpserve-ledger"},
        "reportingComponent": "dpserve.io/ledger",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }

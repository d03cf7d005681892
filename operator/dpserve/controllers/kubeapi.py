"""The operator's own API calls on plain JSON objects (kubernetes_asyncio's raw ``call_api``).

Builders produce dicts and the diff compares dicts, so objects stay dicts end to end: the
typed models of kubernetes_asyncio would only convert back and forth. The resources (group,
version, plural) come from the one table, :mod:`dpserve.resources.access`.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from dpserve.resources.access import (
    CONFIGMAPS,
    ERASUREREQUESTS,
    EVENTS,
    JOBS,
    NODES,
    OWNED_KINDS,
    PODS,
    PRIVACYBUDGETS,
    PRIVATEMODELS,
    RUNTIMECLASSES,
    Res,
)

# Re-exported: the controllers name the resources they call through this module.
__all__ = [
    "BY_KIND", "CONFIGMAPS", "ERASUREREQUESTS", "EVENTS", "JOBS", "NODES", "PODS",
    "PRIVACYBUDGETS", "PRIVATEMODELS", "RUNTIMECLASSES", "ApiError", "Conflict", "KubeApi",
    "Res", "Unreachable",
]

Obj = dict[str, Any]
TIMEOUT_S = 10.0


BY_KIND: dict[str, Res] = {
    **{owned.kind: owned.res for owned in OWNED_KINDS},
    "PrivacyBudget": PRIVACYBUDGETS,
    "PrivateModel": PRIVATEMODELS,
}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class Conflict(ApiError):
    """409: a stale resourceVersion (or the object already exists)."""


class Unreachable(ApiError):
    """No answer from the API server."""


class KubeApi:
    def __init__(self, api: client.ApiClient, timeout_s: float = TIMEOUT_S) -> None:
        self.api = api
        self.timeout_s = timeout_s
        self.user_agent = "dpserve-operator"
        api.user_agent = self.user_agent

    async def close(self) -> None:
        await self.api.close()

    async def _call(
        self, method: str, path: str, *, body: Any = None,
        query: list[tuple[str, str]] | None = None, content_type: str = "application/json",
    ) -> Any:
        try:
            result = await self.api.call_api(
                path, method,
                query_params=query or [],
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=self.timeout_s,
            )
        except ApiException as exc:
            reason, message = exc.reason or "", ""
            if exc.body:
                import json

                try:
                    payload = json.loads(exc.body)
                    reason = payload.get("reason") or reason
                    message = payload.get("message") or ""
                except (ValueError, AttributeError):
                    message = str(exc.body)[:500]
            error = Conflict if exc.status == 409 else ApiError
            raise error(int(exc.status or 0), str(reason), str(message)) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(0, "Unreachable", repr(exc)) from exc
        return result

    async def get(self, res: Res, namespace: str | None, name: str) -> Obj | None:
        try:
            obj: Obj = await self._call("GET", res.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    async def list(self, res: Res, namespace: str | None = None, *,
                   label_selector: str | None = None) -> list[Obj]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result: Obj = await self._call("GET", res.path(namespace), query=query)
        items: list[Obj] = result.get("items") or []
        return items

    async def create(self, res: Res, namespace: str | None, body: Obj) -> Obj:
        obj: Obj = await self._call("POST", res.path(namespace), body=body)
        return obj

    async def replace(self, res: Res, namespace: str | None, name: str, body: Obj,
                      subresource: str | None = None) -> Obj:
        obj: Obj = await self._call("PUT", res.path(namespace, name, subresource), body=body)
        return obj

    async def patch(self, res: Res, namespace: str | None, name: str, patch: Any, *,
                    subresource: str | None = None,
                    content_type: str = "application/merge-patch+json") -> Obj:
        obj: Obj = await self._call("PATCH", res.path(namespace, name, subresource), body=patch,
                                    content_type=content_type)
        return obj

    async def delete(self, res: Res, namespace: str | None, name: str, *,
                     propagation: str = "Background") -> bool:
        try:
            await self._call("DELETE", res.path(namespace, name),
                             body={"propagationPolicy": propagation})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def event(self, involved: Obj, *, type: str, reason: str, message: str,
                    now: str) -> None:
        """A core/v1 Event about ``involved`` (best effort: a failure is not an error)."""
        meta = involved.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta.get('name', 'dpserve')}.{uuid.uuid4().hex[:16]}",
                         "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "dpserve-operator"},
            "reportingComponent": "dpserve.io/operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.create(EVENTS, namespace, body)
        except ApiError:
            return

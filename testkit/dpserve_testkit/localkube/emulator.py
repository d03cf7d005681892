"""LocalKube: kmock's KubernetesEmulator with the server semantics the operator relies on.

kmock provides the HTTP server, request parsing, discovery documents, Status error
rendering, the request log and the ``objects`` array with per-object history (kept in sync
here, so ``kube.objects[res, ns, name].history`` shows every stored version). On top of it:
uid / creationTimestamp / resourceVersion / generation, 409 on stale resourceVersions,
status and scale subresources, CRD schema validation and defaulting, owner-reference
garbage collection, label and field selectors, resumable watches, TokenReview, server-side
Tables for printer columns, and a count of every write request.

With :meth:`LocalKube.enable_rbac` it authenticates and authorises like a real API server:
a bearer token is the admin's (:data:`ADMIN_TOKEN`, group ``system:masters``, as a
cluster's admin kubeconfig), the local kubelet's, or a ServiceAccount token registered with
:attr:`LocalKube.tokens` (valid for the API audience); anything else is 401, no token is
``system:anonymous`` -- or, with ``anonymous_admin``, the admin, as on kube-apiserver's old
insecure port: kubectl (client-go) never sends credentials over plain HTTP, which is what
LocalKube serves, so the harness's kubectl needs it. A request that presents a token is
never upgraded: the operator under test (kubernetes_asyncio sends its token over HTTP) gets
exactly what its ServiceAccount is granted. Each object request is then evaluated against
the stored Roles, ClusterRoles and bindings (:mod:`dpserve_testkit.localkube.rbac`) and refused
with kube-apiserver's 403 ``Status``. SubjectAccessReviews are answered by the same
evaluation. Without it every request is allowed (the unit tests of other parts need no
credentials).

User-defined kmock reactions still take precedence (``kube['patch', ...] << 500`` injects a
fault); the emulator's own behaviour is registered as a fallback.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock import KubernetesScaffold, RawHandler
from kmock import Response as KResponse  # type: ignore[attr-defined]  # exported, not in __all__

from dpserve_testkit.localkube import errors, patching, protobuf, rbac, selectors, tables
from dpserve_testkit.localkube.kinds import Kind, KindRegistry
from dpserve_testkit.localkube.store import Obj, Store, Watcher, WatchEvent
from dpserve_testkit.localkube.tokens import TokenRegistry


def _is_json(content_type: str) -> bool:
    """JSON and its patch dialects (``application/merge-patch+json``, ...); not protobuf."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


PROTOBUF = "application/vnd.kubernetes.protobuf"

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

ADMIN_TOKEN = "localkube-admin"  # the kubeconfig's user: the tests and the demo as admin
ADMIN = rbac.User("localkube-admin", (rbac.SUPERUSER_GROUP, rbac.AUTHENTICATED))
# The local kubelet reads every pod's Secrets and ConfigMaps and writes pod status: the Node
# authorizer that limits a real kubelet to its own pods is not emulated, so it is privileged.
KUBELET_TOKEN = "localkube-kubelet"
KUBELET = rbac.User("system:node:localkube-node",
                    ("system:nodes", rbac.SUPERUSER_GROUP, rbac.AUTHENTICATED))
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class Route:
    kind: Kind
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclass(frozen=True)
class WriteRecord:
    at: float  # time.monotonic()
    method: str
    path: str
    status: int
    user_agent: str


@attrs.define(kw_only=True)
class LocalKube(kmock.KubernetesEmulator):
    """The embedded API server. Enter it (``async with``) and serve it with ``kmock.Server``."""

    tokens: TokenRegistry = attrs.field(factory=TokenRegistry)
    bookmark_interval: float = 30.0
    writes: list[WriteRecord] = attrs.field(factory=list, init=False)
    kinds: KindRegistry = attrs.field(init=False)
    store: Store = attrs.field(init=False)
    rbac_enabled: bool = attrs.field(default=False, init=False)
    anonymous_admin: bool = attrs.field(default=False, init=False)
    _rbac_index: rbac.RbacIndex | None = attrs.field(default=None, init=False)
    _own_payloads: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        # Discovery and the 404 catch-all from the scaffold; object handling is ours, not the
        # plain emulator's (which merges dicts without any server semantics).
        KubernetesScaffold.__attrs_post_init__(self)
        self.kinds = KindRegistry(self)
        self.store = Store(self._objects, self.kinds)
        self.store.listeners.append(self._rbac_changed)
        self.fallback[self._is_object_request] << self._serve
        self.fallback["get /openapi/v3"] << self._serve_openapi_root
        self.fallback["get", re.compile(r"/openapi/v3/.+")] << self._serve_openapi_group
        self._own_payloads = len(self._payloads)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # kmock matches a request against each reaction by scanning every request served so
        # far (quadratic over a long run). With no user-defined reactions the answer is known:
        # serve it directly. Once a test adds reactions, kmock's matching decides as usual.
        if len(self._payloads) == self._own_payloads:
            direct = self._direct(request)
            if direct is not None:
                response: aiohttp.web.StreamResponse = await KResponse(
                    status=200, payload=direct)(request)
                return response
        return await RawHandler._handle(self, request)

    def _direct(self, request: kmock.Request) -> Any:
        path = request.url.path.rstrip("/") or "/"
        method = str(request.method.value).upper()
        if self._route(path) is not None:
            return self._serve
        if method != "GET":
            return None
        parts = path.strip("/").split("/")
        if path == "/api":
            return self._serve_api
        if path == "/apis":
            return self._serve_apis
        if path == "/version":
            return self._serve_server_version
        if path == "/openapi/v3":
            return self._serve_openapi_root
        if path.startswith("/openapi/v3/"):
            return self._serve_openapi_group
        if (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3):
            return self._serve_version
        if parts[0] == "apis" and len(parts) == 2:
            return self._serve_group
        return None

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.rstrip("/") != "/api/v1/namespaces":
            return await super().__call__(raw_request)
        # kmock's URL parser cannot split the bare namespaces collection (it reads the last
        # segment as a namespace name): build the request here; routing uses the path anyway.
        body = await raw_request.read()
        request = kmock.Request(
            method=raw_request.method, url=raw_request.url, params=dict(raw_request.query),
            headers=dict(raw_request.headers), body=body, text=body.decode(errors="replace"),
            raw_request=raw_request,
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as exc:
            return await self._render_error(exc)

    async def _serve_openapi_root(self, request: kmock.Request) -> Obj:
        """OpenAPI v3 discovery: one document per group-version (kubectl validates with it)."""
        paths = {}
        for gv in sorted({(k.group, k.version) for k in self.kinds.all()}):
            rel = f"apis/{gv[0]}/{gv[1]}" if gv[0] else f"api/{gv[1]}"
            paths[rel] = {"serverRelativeURL": f"/openapi/v3/{rel}?hash={self.store.rv}"}
        return {"paths": paths}

    async def _serve_openapi_group(self, request: kmock.Request) -> Obj:
        """A group-version's OpenAPI v3 document, as kubectl's client-side validation reads it.

        CRDs contribute their structural schemas; built-ins get an open schema (the emulator
        does not carry the upstream ones), so only custom resources are checked client-side,
        and the server enforces the same CRD schemas again.
        """
        parts = request.url.path.split("/")[3:]
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        schemas: dict[str, Any] = {}
        paths: dict[str, Any] = {}
        for kind in self.kinds.all():
            if (kind.group, kind.version) != (group, version):
                continue
            if kind.crd is not None:
                from dpserve_testkit.localkube.crdvalidation import crd_schema

                schema = dict(crd_schema(kind.crd, kind.version))
            else:
                schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            schema["x-kubernetes-group-version-kind"] = [
                {"group": kind.group, "version": kind.version, "kind": kind.kind}
            ]
            prefix = ".".join(reversed(kind.group.split("."))) if kind.group else "io.k8s.api.core"
            schemas[f"{prefix}.{kind.version}.{kind.kind}"] = schema
            # kubectl looks for fieldValidation on the kind's PATCH to use server-side
            # field validation (the emulator implements fieldValidation=Strict).
            route = ("/namespaces/{namespace}" if kind.namespaced else "") + \
                f"/{kind.plural}/{{name}}"
            base = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
            paths[base + route] = {"patch": {
                "x-kubernetes-group-version-kind": {"group": kind.group,
                                                    "version": kind.version,
                                                    "kind": kind.kind},
                "parameters": [{"name": "fieldValidation", "in": "query",
                                "schema": {"type": "string"}}],
                "responses": {},
            }}
        return {"openapi": "3.0.0", "info": {"title": "localkube", "version": "v1"},
                "paths": paths, "components": {"schemas": schemas}}

    async def _serve_version(self, request: kmock.Request) -> Obj:
        """APIResourceList as a real server writes it (subresources without short names)."""
        parts = request.url.path.strip("/").split("/")
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        resources: list[Obj] = []
        for kind in self.kinds.all():
            if (kind.group, kind.version) != (group, version):
                continue
            info = self.resources[kind.resource]
            resources.append({
                "name": kind.plural, "singularName": kind.singular or kind.kind.lower(),
                "namespaced": kind.namespaced, "kind": kind.kind,
                "verbs": sorted(info.verbs), "shortNames": kind.short_names,
                "categories": kind.categories,
            })
            for sub in sorted(info.subresources):
                resources.append({"name": f"{kind.plural}/{sub}", "singularName": "",
                                  "namespaced": kind.namespaced,
                                  "kind": "Scale" if sub == "scale" else kind.kind,
                                  "verbs": ["get", "patch", "update"]})
        if not resources:
            raise errors.ApiError(status=404, reason="NotFound",
                                  message="the server could not find the requested resource")
        return {"apiVersion": "v1", "kind": "APIResourceList",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}

    # ------------------------------------------------------------- public helpers
    def install_crds(self, crds: list[dict[str, Any]]) -> None:
        kind = self.kinds.get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        assert kind is not None
        for crd in crds:
            if self.store.find(kind, None, crd["metadata"]["name"]) is None:
                self.store.create(kind, None, crd)

    def enable_rbac(self, *, anonymous_admin: bool = False) -> None:
        """Authenticate every object request and authorise it by the stored RBAC objects.

        ``anonymous_admin``: a request without credentials is the admin (see the module
        docstring: kubectl over plain HTTP); otherwise it is ``system:anonymous``.
        """
        self.rbac_enabled = True
        self.anonymous_admin = anonymous_admin

    def authenticate(self, authorization: str | None) -> rbac.User:
        """The user an ``Authorization`` header names (401 for an unknown token)."""
        if not authorization:
            return ADMIN if self.anonymous_admin else rbac.User(rbac.ANONYMOUS,
                                                                 (rbac.UNAUTHENTICATED,))
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.unauthorized()
        if token == ADMIN_TOKEN:
            return ADMIN
        if token == KUBELET_TOKEN:
            return KUBELET
        identity = self.tokens.authenticate(token, API_AUDIENCE)
        if identity is None:
            raise errors.unauthorized()
        return rbac.User.service_account(identity.namespace, identity.service_account)

    def allows(self, user: rbac.User, attributes: rbac.Attributes) -> bool:
        """Whether RBAC lets ``user`` do what ``attributes`` say (always, RBAC disabled)."""
        if not self.rbac_enabled:
            return True
        return self._rbac().allows(user, attributes)

    def _rbac(self) -> rbac.RbacIndex:
        if self._rbac_index is None:
            def objects(plural: str) -> list[Obj]:
                kind = self.kinds.get(rbac.RBAC_GROUP, "v1", plural)
                assert kind is not None
                return self.store.query(kind, None, lambda _: True)

            self._rbac_index = rbac.RbacIndex.build(
                objects("roles"), objects("clusterroles"), objects("rolebindings"),
                objects("clusterrolebindings"))
        return self._rbac_index

    def _rbac_changed(self, kind: Kind) -> None:
        if kind.group == rbac.RBAC_GROUP:
            self._rbac_index = None  # rebuilt at the next request

    def _authorize(self, request: kmock.Request, route: Route, method: str) -> rbac.User:
        """The requesting user, once RBAC allowed the request (else 401/403)."""
        headers = request.headers
        user = self.authenticate(headers.get("Authorization") or headers.get("authorization"))
        kind, name = route.kind, route.name
        params: Mapping[str, str] = request.url.query
        if method == "GET":
            watch = params.get("watch") in ("true", "1")
            verb = "watch" if watch else "get" if name is not None else "list"
            if name is None:  # a list or watch of one object by name is a request for it
                name = selectors.single_name(params.get("fieldSelector"))
        elif method == "DELETE" and name is None:
            verb = "deletecollection"
        else:
            verb = _METHOD_VERBS.get(method, method.lower())
        namespace = route.namespace
        if kind.plural == "namespaces" and kind.group == "" and name is not None:
            namespace = name  # a namespace object is in itself (RoleBindings there reach it)
        attributes = rbac.Attributes(verb, kind.group, kind.plural, route.subresource or "",
                                     namespace, name)
        if not self._rbac().allows(user, attributes):
            raise errors.ApiError(status=403, reason="Forbidden",
                                  message=rbac.forbidden_message(user, attributes),
                                  details=rbac.forbidden_details(attributes))
        return user

    def kind(self, api_version: str, plural: str) -> Kind:
        group, _, version = api_version.rpartition("/")
        kind = self.kinds.get(group, version, plural)
        if kind is None:
            raise KeyError(f"unknown resource {plural} in {api_version}")
        return kind

    def count_writes(self, since: float = 0.0, *, user_agent: str | None = None) -> int:
        """Write requests (POST/PUT/PATCH/DELETE, reviews excluded) received after ``since``."""
        return sum(
            1 for w in self.writes
            if w.at >= since and (user_agent is None or w.user_agent.startswith(user_agent))
        )

    # ------------------------------------------------------------- routing
    def _route(self, path: str) -> Route | None:
        parts = [p for p in path.strip("/").split("/") if p]
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            return None
        kind = self.kinds.get(group, version, rest[0])
        if kind is None:
            return None
        if namespace is not None and not kind.namespaced:
            return None
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        return Route(kind, namespace, name, subresource)

    def _is_object_request(self, request: kmock.Request) -> bool:
        path = request.url.path
        return path.startswith(("/api/", "/apis/")) and self._route(path) is not None

    # ------------------------------------------------------------- serving
    async def _serve(self, request: kmock.Request) -> KResponse | AsyncIterator[Any] | Obj:
        method = str(request.method.value).upper()
        status = 500
        try:
            result, status = self._dispatch(request, method)
            if isinstance(result, KResponse):
                return result
            # Always state the status: kmock copies a nested Response's status onto the
            # shared reaction, so a bare payload would inherit the previous request's code.
            return KResponse(status=status, payload=result)
        except errors.ApiError as exc:
            status = exc.status
            raise
        finally:
            route = self._route(request.url.path)
            if method in WRITE_METHODS and route is not None and not route.kind.is_review:
                self.writes.append(WriteRecord(
                    time.monotonic(), method, request.url.path, status,
                    request.headers.get("User-Agent", ""),
                ))

    @staticmethod
    def _body(request: kmock.Request) -> Any:
        if not request.body:
            return None
        content_type = request.headers.get("Content-Type", "application/json")
        if content_type.split(";", 1)[0].strip() == PROTOBUF:
            # kubectl's typed generators (create namespace, configmap, ...) send protobuf.
            try:
                return protobuf.decode_object(request.body)
            except protobuf.ProtobufError as exc:
                raise errors.unsupported_media_type(f"{content_type} ({exc})") from exc
        if content_type.split(";", 1)[0].strip().lower() == patching.APPLY:
            try:
                return yaml.safe_load(request.body)
            except yaml.YAMLError as exc:
                raise errors.bad_request(f"the apply configuration is not valid YAML: {exc}"
                                         ) from exc
        if not _is_json(content_type):
            raise errors.unsupported_media_type(content_type)
        try:
            return json.loads(request.body)
        except ValueError as exc:
            raise errors.bad_request(f"the request body is not valid JSON: {exc}") from exc

    def _dispatch(self, request: kmock.Request, method: str) -> tuple[Any, int]:
        route = self._route(request.url.path)
        assert route is not None
        user = self._authorize(request, route, method) if self.rbac_enabled else ADMIN
        kind, ns, name, sub = route.kind, route.namespace, route.name, route.subresource
        params: Mapping[str, str] = request.url.query
        if params.get("dryRun"):
            raise errors.bad_request("dry-run requests are not supported by the emulator")
        accept = request.headers.get("Accept", "")
        if method == "GET":
            if params.get("watch") in ("true", "1"):
                return self._watch_response(kind, ns, name, params, accept), 200
            if name is None:
                return self._list(kind, ns, params, accept), 200
            if sub == "scale":
                return self.store.get_scale(kind, ns, name), 200
            if sub not in (None, "status"):
                raise errors.not_found(kind.plural, kind.group, name)
            obj = self.store.get(kind, ns, name)
            if tables.wants_table(accept):
                return tables.table(kind, [obj], str(self.store.rv)), 200
            return obj, 200
        body = self._body(request)
        strict = params.get("fieldValidation") == "Strict"
        if method == "POST" and name is None:
            if kind.is_review:
                return self._review(kind, body, user, ns), 201
            return self.store.create(kind, ns, body, strict=strict), 201
        if method == "DELETE" and name is None:
            label = selectors.label_selector(params.get("labelSelector"))
            field = selectors.field_selector(params.get("fieldSelector"))
            gone = self.store.delete_collection(
                kind, ns, lambda o: label(o) and field(o)
            )
            return self._list_body(kind, gone, ""), 200
        if name is None or method == "POST":
            raise errors.method_not_allowed(f"{method} is not supported on {request.url.path}")
        if sub not in (None, "status", "scale"):
            raise errors.not_found(kind.plural, kind.group, name)
        content_type = request.headers.get("Content-Type", "application/json")
        if method == "DELETE":
            return self.store.delete(kind, ns, name, body), 200
        if sub == "scale":
            if method == "PATCH":
                scale = patching.apply_patch(self.store.get_scale(kind, ns, name), body,
                                             content_type)
            else:
                scale = body
            return self.store.set_scale(kind, ns, name, scale), 200
        if method == "PUT":
            require_rv = kind.crd is not None
            return self.store.update(kind, ns, name, body, subresource=sub,
                                     require_rv=require_rv, strict=strict), 200
        if method == "PATCH" and content_type.split(";", 1)[0].strip().lower() == patching.APPLY:
            manager = params.get("fieldManager")
            if not manager:
                raise errors.bad_request("fieldManager is required for apply requests")
            obj, created = self.store.apply(kind, ns, name, body, manager=manager,
                                            subresource=sub, strict=strict)
            return obj, 201 if created else 200
        if method == "PATCH":
            return self.store.patch(kind, ns, name, body, content_type, subresource=sub,
                                    strict=strict), 200
        raise errors.method_not_allowed(f"{method} is not supported")

    def _review(self, kind: Kind, body: Any, user: rbac.User, namespace: str | None) -> Obj:
        if kind.plural == "tokenreviews":
            return self.tokens.review(body)
        spec = body.get("spec", {}) if isinstance(body, dict) else {}
        spec = spec if isinstance(spec, dict) else {}
        if not self.rbac_enabled:
            return {"apiVersion": kind.api_version, "kind": kind.kind, "spec": spec,
                    "status": {"allowed": True, "reason": "localkube runs without RBAC"}}
        if kind.plural == "selfsubjectrulesreviews":
            raise errors.method_not_allowed("selfsubjectrulesreviews are not emulated")
        # Subject access reviews: the same evaluation as the requests themselves get.
        subject = user
        if kind.plural in ("subjectaccessreviews", "localsubjectaccessreviews"):
            subject = rbac.User(str(spec.get("user") or ""),
                                tuple(str(g) for g in spec.get("groups") or []))
        raw = spec.get("resourceAttributes")
        if not isinstance(raw, dict):
            raise errors.bad_request("spec.resourceAttributes: required (non-resource URLs "
                                     "are not emulated)")
        attributes = rbac.Attributes(
            str(raw.get("verb") or ""), str(raw.get("group") or ""),
            str(raw.get("resource") or ""), str(raw.get("subresource") or ""),
            namespace if kind.plural == "localsubjectaccessreviews"
            else raw.get("namespace") or None, raw.get("name") or None)
        allowed = self._rbac().allows(subject, attributes)
        status: dict[str, Any] = {"allowed": allowed}
        if not allowed:
            status["reason"] = rbac.forbidden_message(subject, attributes)
        return {"apiVersion": kind.api_version, "kind": kind.kind, "spec": spec,
                "status": status}

    def _list_body(self, kind: Kind, items: list[Obj], rv: str, cont: str = "") -> Obj:
        meta: dict[str, Any] = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List", "metadata": meta,
                "items": items}

    def _list(self, kind: Kind, ns: str | None, params: Mapping[str, str], accept: str) -> Obj:
        label = selectors.label_selector(params.get("labelSelector"))
        field = selectors.field_selector(params.get("fieldSelector"))
        items = self.store.query(kind, ns, lambda o: label(o) and field(o))
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        start = int(params.get("continue") or 0)
        limit = int(params.get("limit") or 0)
        cont = ""
        if limit and start + limit < len(items):
            cont = str(start + limit)
        items = items[start:start + limit] if limit else items[start:]
        rv = str(self.store.rv)
        if tables.wants_table(accept):
            return tables.table(kind, items, rv)
        return self._list_body(kind, items, rv, cont)

    # ------------------------------------------------------------- watching
    def _watch_response(
        self, kind: Kind, ns: str | None, name: str | None, params: Mapping[str, str],
        accept: str,
    ) -> KResponse:
        return KResponse(
            status=200, headers={"Content-Type": "application/json"},
            payload=self._watch(kind, ns, name, dict(params), accept),
        )

    async def _watch(
        self, kind: Kind, ns: str | None, name: str | None, params: dict[str, str], accept: str
    ) -> AsyncIterator[Any]:
        label = selectors.label_selector(params.get("labelSelector"))
        field = selectors.field_selector(params.get("fieldSelector"))
        watcher = Watcher(ns, lambda o: label(o) and field(o)
                          and (name is None or o["metadata"]["name"] == name))
        since = params.get("resourceVersion")
        send_initial = params.get("sendInitialEvents") == "true"
        as_table = tables.wants_table(accept)
        backlog: list[tuple[str, Obj]] = []
        # Snapshot and subscription happen in one synchronous step: no event can fall between.
        if send_initial or since in (None, "", "0"):
            backlog = [("ADDED", o) for o in self.store.query(kind, ns, watcher.predicate)]
        else:
            try:
                events = self.store.events_since(kind, int(since))
            except ValueError:
                events = None
            if events is None:
                yield b""
                yield {"type": "ERROR", "object": {
                    "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                    "reason": "Expired", "code": 410,
                    "message": f"too old resource version: {since} ({self.store.rv})",
                }}
                return
            backlog = [t for t in (watcher.translate(e) for e in events) if t is not None]
        self.store.subscribe(kind, watcher)
        try:
            yield b""  # send the headers now: a watch may stay silent for a long time
            for event_type, obj in backlog:
                yield self._event(kind, event_type, obj, as_table)
            if send_initial:
                yield self._bookmark(kind, initial_end=True)
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
            deadline = None if timeout is None else time.monotonic() + timeout
            bookmarks = params.get("allowWatchBookmarks") == "true"
            while True:
                wait = self.bookmark_interval
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        return
                try:
                    event: WatchEvent = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and (deadline is None or time.monotonic() < deadline):
                        yield self._bookmark(kind)
                    continue
                seen = watcher.translate(event)
                if seen is not None:
                    yield self._event(kind, seen[0], seen[1], as_table)
        finally:
            self.store.unsubscribe(kind, watcher)

    def _event(self, kind: Kind, event_type: str, obj: Obj, as_table: bool) -> Obj:
        if as_table:
            return {"type": event_type,
                    "object": tables.table(kind, [obj], obj["metadata"]["resourceVersion"])}
        return {"type": event_type, "object": obj}

    def _bookmark(self, kind: Kind, *, initial_end: bool = False) -> Obj:
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"type": "BOOKMARK",
                "object": {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": meta}}

"""Who is asking for a lease: TokenReview of the pod's projected ServiceAccount token.

The filter sidecar mounts a projected token with audience ``dpserve-ledger``; the ledger asks
the API server (``authentication.k8s.io/v1`` TokenReview) whom it belongs to and accepts it
only for ``system:serviceaccount:<model namespace>:<model name>-dpserve``, the ServiceAccount
the operator creates for each PrivateModel's pods. The token must be *bound* to a pod (a
projected token names it, ``authentication.kubernetes.io/pod-name``) and the request's pod
must be that pod: an unbound ServiceAccount token could invent pod names and grow the
budget's lease records without bound.

Successful reviews are cached for a short time keyed by the token's SHA-256 (never the token
itself), so a grant does not pay a TokenReview round trip each time. A token revoked within
that window is still accepted until the entry expires.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from dpserve.ledger.store import Unavailable

AUDIENCE = "dpserve-ledger"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
SERVICE_ACCOUNT_SUFFIX = "-dpserve"


def service_account_name(model_name: str) -> str:
    """The ServiceAccount of a PrivateModel's pods (the operator creates it with this name)."""
    return f"{model_name}{SERVICE_ACCOUNT_SUFFIX}"


def service_account_user(namespace: str, model_name: str) -> str:
    """The username a TokenReview reports for that ServiceAccount."""
    return f"system:serviceaccount:{namespace}:{service_account_name(model_name)}"


@dataclass(frozen=True)
class Identity:
    """An authenticated caller as the TokenReview reported it."""

    username: str
    uid: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None  # of the pod the token is bound to, when the review says


class Forbidden(Exception):
    """Authenticated, but not as the model's ServiceAccount (or not as the named pod)."""


class TokenReviewer(Protocol):
    async def review(self, token: str) -> Identity | None:
        """The token's identity, None if it is not valid for the audience.

        Raises :class:`~dpserve.ledger.store.Unavailable` when the API server cannot answer.
        """
        ...


class KubeTokenReviewer:
    """:class:`TokenReviewer` through the API server's TokenReview."""

    def __init__(
        self, api: client.ApiClient, audience: str = AUDIENCE, timeout_s: float = 5.0
    ) -> None:
        self._auth = client.AuthenticationV1Api(api)
        self.audience = audience
        self.timeout_s = timeout_s

    async def review(self, token: str) -> Identity | None:
        body = client.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience]),
        )
        try:
            result = await self._auth.create_token_review(body, _request_timeout=self.timeout_s)
        except ApiException as exc:
            raise Unavailable(f"TokenReview failed: {exc.status} {exc.reason}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unavailable(f"TokenReview unreachable: {exc!r}") from exc
        status = result.status
        if status is None or not status.authenticated or status.user is None:
            return None
        # The server lists the audiences the token is valid for; ours must be among them.
        if status.audiences and self.audience not in status.audiences:
            return None
        extra = status.user.extra or {}
        pods = extra.get(POD_NAME_EXTRA) or []
        uids = extra.get(POD_UID_EXTRA) or []
        return Identity(
            username=status.user.username or "",
            uid=status.user.uid,
            pod_name=pods[0] if pods else None,
            pod_uid=uids[0] if uids else None,
        )


class CachingReviewer:
    """Caches successful reviews for ``ttl_s`` seconds, keyed by the token's SHA-256."""

    def __init__(
        self,
        inner: TokenReviewer,
        ttl_s: float = 30.0,
        max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()

    async def review(self, token: str) -> Identity | None:
        key = hashlib.sha256(token.encode()).digest()
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(key)
            return hit[1]
        identity = await self.inner.review(token)
        if identity is None:
            self._cache.pop(key, None)
            return None
        self._cache[key] = (now + self.ttl_s, identity)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return identity


def authorize(identity: Identity, namespace: str, model_name: str, pod: str) -> None:
    """Raise :class:`Forbidden` unless the identity is the model's ServiceAccount (and pod)."""
    expected = service_account_user(namespace, model_name)
    if identity.username != expected:
        raise Forbidden(
            f"token of {identity.username!r} may not lease for model {namespace}/{model_name}: "
            f"expected {expected!r}"
        )
    if identity.pod_name is None:
        raise Forbidden(
            "Authorization: the token is not bound to a pod; use the projected ServiceAccount "
            "token of the model's pod (audience dpserve-ledger)"
        )
    if identity.pod_name != pod:
        raise Forbidden(f"pod: the token is bound to pod {identity.pod_name!r}, not {pod!r}")


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, None if absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token

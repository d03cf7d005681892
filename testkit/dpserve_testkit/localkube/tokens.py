"""TokenReview backed by a registry the test or demo fills: token -> ServiceAccount (+ pod)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


@dataclass(frozen=True)
class TokenIdentity:
    namespace: str
    service_account: str
    pod_name: str | None = None
    pod_uid: str | None = None
    audiences: tuple[str, ...] = ()
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


class TokenRegistry:
    def __init__(self) -> None:
        self._tokens: dict[str, TokenIdentity] = {}

    def register(
        self, token: str, *, namespace: str, service_account: str,
        pod_name: str | None = None, pod_uid: str | None = None,
        audiences: tuple[str, ...] | list[str] = (),
    ) -> TokenIdentity:
        """Make ``token`` authenticate as the ServiceAccount (bound to the pod when given)."""
        if pod_name and not pod_uid:
            pod_uid = str(uuid.uuid4())
        identity = TokenIdentity(namespace, service_account, pod_name, pod_uid, tuple(audiences))
        self._tokens[token] = identity
        return identity

    def revoke(self, token: str) -> None:
        self._tokens.pop(token, None)

    def authenticate(self, token: str, audience: str) -> TokenIdentity | None:
        """The identity of ``token`` when it is valid for ``audience``.

        A token registered without audiences is valid for any (a legacy ServiceAccount token);
        a projected token only for its own: a sidecar's ledger token does not open the API.
        """
        identity = self._tokens.get(token)
        if identity is None or (identity.audiences and audience not in identity.audiences):
            return None
        return identity

    def review(self, body: Any) -> dict[str, Any]:
        """The answered TokenReview object (``status.authenticated`` false for unknown tokens)."""
        spec = body.get("spec") if isinstance(body, dict) else None
        spec = spec if isinstance(spec, dict) else {}
        token = spec.get("token")
        wanted = [a for a in spec.get("audiences") or [] if isinstance(a, str)]
        identity = self._tokens.get(token) if isinstance(token, str) else None
        status: dict[str, Any]
        if identity is None:
            status = {"authenticated": False, "error": "invalid bearer token"}
        elif wanted and identity.audiences and not set(wanted) & set(identity.audiences):
            status = {"authenticated": False, "error": "token audiences are invalid"}
        else:
            extra: dict[str, list[str]] = {}
            if identity.pod_name:
                extra[POD_NAME_EXTRA] = [identity.pod_name]
            if identity.pod_uid:
                extra[POD_UID_EXTRA] = [identity.pod_uid]
            status = {
                "authenticated": True,
                "user": {
                    "username": identity.username,
                    "uid": identity.uid,
                    "groups": [
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{identity.namespace}",
                        "system:authenticated",
                    ],
                    "extra": extra,
                },
                "audiences": wanted or list(identity.audiences),
            }
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }

"""Projected ServiceAccount tokens: registered with the emulator's TokenReview."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dpserve_testkit.localkube.server import LocalKubeServer


class TokenSink(Protocol):
    """Where tokens are registered (:class:`dpserve_testkit.localkube.TokenRegistry` is one)."""

    def register(
        self, token: str, *, namespace: str, service_account: str,
        pod_name: str | None = None, pod_uid: str | None = None,
        audiences: tuple[str, ...] | list[str] = (),
    ) -> object: ...

    def revoke(self, token: str) -> None: ...


class ServerTokens:
    """A :class:`TokenSink` for a :class:`LocalKubeServer` running on another thread.

    Each call runs on the emulator's loop and waits for it (a dictionary update there).
    """

    def __init__(self, server: LocalKubeServer) -> None:
        self._server = server

    def register(
        self, token: str, *, namespace: str, service_account: str,
        pod_name: str | None = None, pod_uid: str | None = None,
        audiences: tuple[str, ...] | list[str] = (),
    ) -> object:
        return self._server.call(lambda kube: kube.tokens.register(
            token, namespace=namespace, service_account=service_account, pod_name=pod_name,
            pod_uid=pod_uid, audiences=tuple(audiences)))

    def revoke(self, token: str) -> None:
        self._server.call(lambda kube: kube.tokens.revoke(token))

"""The sidecar's side of attestation: a token from the in-guest agent for each lease request.

The attestation agent runs inside the pod's TEE (Confidential Containers: the guest's
api-server-rest on 127.0.0.1:8006). ``GET /aa/token?token_type=kbs`` makes it attest to the
KBS (Trustee) and answers ``{"token": <EAR JWT>, "tee_keypair": <PEM>}``: the private key
whose public half the token binds. Other agents may answer the bare token.

- ``tee-key`` mode: each lease request carries the token and a proof (model, pod, lease id,
  time) signed with the TEE key (``dpserve.attestation.binding``);
- ``runtime-data`` mode: the agent is asked with ``runtime_data=<binding digest>`` (the
  token then carries the digest of this pod's model and name) and no proof is sent.

Tokens are cached until shortly before they expire or grow older than the ledger accepts
(``maxAgeSeconds``), fetched by one request at a time, with bounded timeouts and sizes.
Fail closed: without a usable token :class:`AttestationUnavailable` is raised and the lease
client sends no lease request (the proxy answers 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
from joserfc.jwk import Key

from dpserve.attestation.binding import ProofError, binding_digest, private_key_from_pem, proof
from dpserve.attestation.spec import AgentSettings, PodBinding
from dpserve.attestation.wire import PROOF_HEADER, TOKEN_HEADER

logger = logging.getLogger(__name__)

MAX_AGENT_RESPONSE_BYTES = 1024 * 1024
MIN_REFRESH_MARGIN_S = 5.0
MAX_REFRESH_MARGIN_S = 60.0


class AttestationUnavailable(Exception):
    """No usable token: the lease request must not be sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Credentials:
    token: str
    private_key: Key | None  # the TEE key (tee-key mode)
    refresh_at: float  # wall time from which a new token is fetched
    usable_until: float  # wall time after which this one is never sent


def _b64url_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def token_times(token: str) -> tuple[float, float | None]:
    """(exp, iat) of a compact JWT, read without verifying it (the ledger verifies)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise AttestationUnavailable("the agent's token is not a compact JWS")
    try:
        payload = _b64url_json(parts[1])
    except (ValueError, binascii.Error, UnicodeError, RecursionError) as exc:
        raise AttestationUnavailable("the agent's token payload is not JSON") from exc
    if not isinstance(payload, dict):
        raise AttestationUnavailable("the agent's token payload is not an object")
    exp, iat = payload.get("exp"), payload.get("iat")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise AttestationUnavailable("the agent's token has no exp")
    if isinstance(iat, bool) or not isinstance(iat, (int, float)):
        iat = None
    return float(exp), None if iat is None else float(iat)


def agent_url(base: str, mode: str, model: str, pod: str) -> str:
    """The agent URL of this pod: in runtime-data mode with the binding digest appended."""
    if mode != "runtime-data":
        return base
    parts = urlsplit(base)
    extra = urlencode({"runtime_data": binding_digest(model, pod)})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def parse_agent_answer(raw: bytes) -> tuple[str, str | None]:
    """(token, tee key PEM or None) from a CoCo ``{"token", "tee_keypair"}`` or a bare token."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        token, keypair = value.get("token"), value.get("tee_keypair")
        if not isinstance(token, str) or not token:
            raise AttestationUnavailable("the agent's answer has no token")
        if keypair is not None and not isinstance(keypair, str):
            raise AttestationUnavailable("the agent's tee_keypair is not a PEM string")
        return token.strip(), keypair or None
    if isinstance(value, str):  # a JSON string holding the token
        return value.strip(), None
    return text, None


class AttestationClient:
    """Obtains, caches and presents this pod's attestation token."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        agent: AgentSettings,
        binding: PodBinding,
        max_age_s: float,
        model: str,
        pod: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._url = agent_url(agent.url, binding.mode, model, pod)
        self._timeout = aiohttp.ClientTimeout(total=agent.timeout_seconds)
        self._mode = binding.mode
        self._max_age_s = max_age_s
        self._model = model
        self._pod = pod
        self._clock = clock
        self._current: Credentials | None = None
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        return self._url

    async def headers(self, lease_id: str) -> dict[str, str]:
        """The headers of one lease request; :class:`AttestationUnavailable` if none can be had."""
        creds = await self.credentials()
        out = {TOKEN_HEADER: creds.token}
        if self._mode == "tee-key":
            assert creds.private_key is not None  # _fetch refuses tee-key answers without it
            out[PROOF_HEADER] = proof(creds.private_key, model=self._model, pod=self._pod,
                                      lease_id=lease_id, now=self._clock())
        return out

    def invalidate(self) -> None:
        """Forget the cached token (the ledger refused it): the next request fetches anew."""
        self._current = None

    async def credentials(self) -> Credentials:
        now = self._clock()
        current = self._current
        if current is not None and now < current.refresh_at:
            return current
        async with self._lock:  # one fetch at a time; the others take its result
            current = self._current
            now = self._clock()
            if current is not None and now < current.refresh_at:
                return current
            try:
                fresh = await self._fetch()
            except AttestationUnavailable as exc:
                if current is not None and now < current.usable_until:
                    logger.warning("attestation token refresh failed, still using the "
                                   "current one: %s", exc.message)
                    return current
                self._current = None
                raise
            self._current = fresh
            return fresh

    async def _fetch(self) -> Credentials:
        try:
            async with self._session.get(self._url, timeout=self._timeout) as response:
                raw = await response.content.read(MAX_AGENT_RESPONSE_BYTES + 1)
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise AttestationUnavailable(
                f"attestation agent {self._url} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        if status != 200:
            snippet = raw[:200].decode("utf-8", "replace")
            raise AttestationUnavailable(f"attestation agent answered {status}: {snippet}")
        if len(raw) > MAX_AGENT_RESPONSE_BYTES:
            raise AttestationUnavailable(
                f"attestation agent answer over {MAX_AGENT_RESPONSE_BYTES} bytes")
        token, keypair = parse_agent_answer(raw)
        exp, iat = token_times(token)
        private_key: Key | None = None
        if self._mode == "tee-key":
            if keypair is None:
                raise AttestationUnavailable(
                    "binding mode tee-key needs the agent's tee_keypair; it sent none")
            try:
                private_key = private_key_from_pem(keypair)
            except ProofError as exc:
                raise AttestationUnavailable(str(exc)) from exc
        # The ledger refuses a token past exp or older than maxAgeSeconds: stop sending it a
        # little before the earlier of the two, and fetch its successor a bit before that.
        usable_until = exp if iat is None else min(exp, iat + self._max_age_s)
        now = self._clock()
        lifetime = usable_until - now
        if lifetime <= MIN_REFRESH_MARGIN_S:
            raise AttestationUnavailable(
                f"the agent's token is usable for {math.floor(lifetime)} s only: clock skew?")
        margin = min(MAX_REFRESH_MARGIN_S, max(MIN_REFRESH_MARGIN_S, lifetime / 10))
        return Credentials(token=token, private_key=private_key,
                           refresh_at=usable_until - margin,
                           usable_until=usable_until - MIN_REFRESH_MARGIN_S)

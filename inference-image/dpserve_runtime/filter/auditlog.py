"""The sidecar's audit log: one JSON line per predict request, counts and types only.

A line is formatted directly (no dict, no ``json.dumps``, no logging record per request):
every free-text field is either escaped once at start (the model name) or restricted to
``[A-Za-z0-9._-]`` before it gets here (request ids and tenants are validated by the proxy,
outcomes and entity types are fixed names), so it needs no escaping; anything else is
escaped with ``json.dumps`` as a fallback.

No client-chosen string reaches the log: a request id the client sent (``X-Request-Id``,
which may hold a phone number, an SSN or a card number as well as anything else that
matches ``[A-Za-z0-9._-]``) and a tenant the ledger has not confirmed are logged as
:meth:`AuditFormatter.client_id`, ``h-`` and 24 hex digits of HMAC-SHA256 under a key the
process holds: configured (a mounted secret, ``--audit-key-file``), so that lines of all
replicas and restarts join on the same id, or else 32 random bytes drawn at start, so that
they join within one process only. The hash is one-way for anyone without the key; with it,
an operator can check whether a given id was seen.

Sinks: :class:`LoggingAuditSink` (the ``dpserve.audit`` logger; the default when the app is
embedded, e.g. in tests) and :class:`StreamAuditSink` (the ``dpserve-filter`` process: lines
to stdout, written and flushed once per event-loop iteration, so a burst of requests costs
one ``write`` instead of one per line, and no line waits for more than that iteration).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from typing import BinaryIO, Protocol

AUDIT_LOGGER = "dpserve.audit"
_SAFE = re.compile(r"[A-Za-z0-9._-]*")


class AuditSink(Protocol):
    def write(self, line: str) -> None: ...

    def flush(self) -> None: ...


class LoggingAuditSink:
    """Each line as an INFO record of the ``dpserve.audit`` logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(AUDIT_LOGGER)

    def write(self, line: str) -> None:
        self._logger.info(line)

    def flush(self) -> None:
        return None


class StreamAuditSink:
    """Lines to a binary stream, written and flushed at the end of the loop iteration."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._scheduled = False

    def write(self, line: str) -> None:
        self._pending.append(line)
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (e.g. at shutdown): write now
                self.flush()
                return
            self._scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = "".join(line + "\n" for line in self._pending).encode("utf-8")
        self._pending.clear()
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):  # stdout closed or gone: the request is not failed
            logging.getLogger(__name__).exception("cannot write the audit log")


def _json_string(value: str) -> str:
    if _SAFE.fullmatch(value):
        return f'"{value}"'
    return json.dumps(value)


def _json_optional(value: str | int | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    return _json_string(value)


class AuditFormatter:
    """Formats predict audit lines for one model (timestamps cached per second)."""

    def __init__(self, model: str, id_key: bytes | None = None) -> None:
        self._model = json.dumps(model)
        self._second = -1
        self._ts = ""
        if id_key is not None and len(id_key) < 16:
            raise ValueError("the audit id key must hold at least 16 bytes")
        self._id_key = id_key if id_key is not None else secrets.token_bytes(32)

    def client_id(self, value: str) -> str:
        """The keyed hash of a client-chosen id, as the log holds it."""
        digest = hmac.new(self._id_key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return "h-" + digest[:24]

    def _timestamp(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return self._ts

    def predict_line(
        self, *, request_id: str, tenant: str | None, outcome: str, status: int, inputs: int,
        queries_reserved: int, queries_charged: int, upstream_status: int | None,
        entities: Mapping[str, int], verbatim_blocked: bool, latency_ms: float,
    ) -> str:
        """The JSON line, keys in a fixed order (the same as ``json.dumps`` of the record)."""
        if entities:
            entity_json = "{" + ",".join(
                f"{_json_string(name)}:{int(count)}" for name, count in sorted(entities.items())
            ) + "}"
        else:
            entity_json = "{}"
        return (
            f'{{"event":"predict","ts":"{self._timestamp()}",'
            f'"requestId":{_json_string(request_id)},"model":{self._model},'
            f'"tenant":{_json_optional(tenant)},"outcome":{_json_string(outcome)},'
            f'"status":{int(status)},"inputs":{int(inputs)},'
            f'"queriesReserved":{int(queries_reserved)},'
            f'"queriesCharged":{int(queries_charged)},'
            f'"upstreamStatus":{_json_optional(upstream_status)},'
            f'"entities":{entity_json},'
            f'"verbatimBlocked":{"true" if verbatim_blocked else "false"},'
            f'"latencyMs":{round(latency_ms, 3)!r}}}'
        )

"""The lease protocol on the wire: reading and parsing a request, error answers.

Every client mistake ends here as a :class:`LeaseFailure` with a documented reason and a
message that starts with the field (docs/ledger.md), never as a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from dpserve.api.lease import MAX_LEASE_BODY_BYTES, LeaseError, LeaseErrorReason, LeaseRequest
from dpserve.api.privacybudget import TenantName

STATUS_OF_REASON: dict[LeaseErrorReason, int] = {
    "BadRequest": 400,
    "Unauthenticated": 401,
    "Forbidden": 403,
    "AttestationFailed": 403,
    "NotFound": 404,
    "MechanismMismatch": 409,
    "VersionMismatch": 409,
    "LeaseIdUsed": 409,
    "TooLarge": 413,
    "BudgetExhausted": 429,
    "Unavailable": 503,
}
RETRY_AFTER_S = "1"
# The lease record stores the partition as a tenant name: a request's partition must be one
# (checked here so that a bad one is a 400 naming it, not a failed write later).
_TENANT = TypeAdapter(TenantName)


class LeaseFailure(Exception):
    """A lease request that ends in a documented error answer."""

    def __init__(
        self,
        reason: LeaseErrorReason,
        message: str,
        epsilon_spent: float | None = None,
        epsilon_remaining: float | None = None,
        *,
        claim: str | None = None,
        high_water: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error = LeaseError(
            reason=reason,
            message=message,
            epsilon_spent=epsilon_spent,
            epsilon_remaining=epsilon_remaining,
            claim=claim,
            high_water=None if high_water is None else f"{high_water:016x}",
        )

    @property
    def http_status(self) -> int:
        return STATUS_OF_REASON[self.error.reason]


async def read_body(request: web.Request) -> bytes:
    """The request body, refused (413) beyond MAX_LEASE_BODY_BYTES."""
    if request.content_length is not None and request.content_length > MAX_LEASE_BODY_BYTES:
        raise LeaseFailure(
            "TooLarge", f"body: {request.content_length} bytes, limit {MAX_LEASE_BODY_BYTES}"
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_LEASE_BODY_BYTES:
            raise LeaseFailure("TooLarge", f"body: over the limit of {MAX_LEASE_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes) -> LeaseRequest:
    """The validated request, or a 400 naming the field."""
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeaseFailure("BadRequest", f"body: not valid JSON: {exc}") from exc
    except RecursionError as exc:  # the parser's nesting limit, not a server fault
        raise LeaseFailure("BadRequest", "body: JSON nested too deeply") from exc
    if not isinstance(data, dict):
        raise LeaseFailure("BadRequest", "body: must be a JSON object")
    try:
        request = LeaseRequest.model_validate(data)
    except ValidationError as exc:
        raise LeaseFailure("BadRequest", all_errors(exc)) from exc
    except RecursionError as exc:
        raise LeaseFailure("BadRequest", "body: JSON nested too deeply") from exc
    if request.partition is not None:
        try:
            _TENANT.validate_python(request.partition)
        except ValidationError as exc:
            raise LeaseFailure("BadRequest", f"partition: {exc.errors()[0]['msg']}") from exc
    return request


def location(loc: Sequence[int | str]) -> str:
    """A pydantic error location as a field path (``mechanism.teachers``, ``a[0]``)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{location(first['loc'])}: {first['msg']}"


def all_errors(exc: ValidationError) -> str:
    return "; ".join(f"{location(e['loc'])}: {e['msg']}" for e in exc.errors()[:8])


def body_timeout_response(seconds: float) -> web.Response:
    """408: the body did not arrive in time; the connection is closed after the answer."""
    error = LeaseError(reason="BadRequest", message=f"body: not received within {seconds:g} s")
    response = web.json_response(
        error.model_dump(by_alias=True, exclude_none=True, mode="json"), status=408
    )
    response.force_close()
    return response


def error_response(failure: LeaseFailure) -> web.Response:
    """The JSON error answer; 503s carry Retry-After (nothing was granted, retry)."""
    headers = {"Retry-After": RETRY_AFTER_S} if failure.error.reason == "Unavailable" else None
    return web.json_response(
        failure.error.model_dump(by_alias=True, exclude_none=True, mode="json"),
        status=failure.http_status,
        headers=headers,
    )

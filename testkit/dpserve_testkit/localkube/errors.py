"""API errors rendered as a real API server renders them: a ``v1 Status`` with reason and causes."""

from __future__ import annotations

from typing import Any

import attrs
from kmock import KubernetesError


@attrs.frozen
class ApiError(KubernetesError):
    """A Kubernetes-style failure; kmock renders it as a ``Status`` object with this code."""


def _details(kind: str, name: str | None, group: str = "", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind, "group": group}
    if name is not None:
        out["name"] = name
    out.update(extra)
    return out


def _qualified(resource: str, group: str) -> str:
    """``<plural>.<group>`` as the API server names a resource in messages (core: plural)."""
    return f"{resource}.{group}" if group else resource


def not_found(plural: str, group: str, name: str) -> ApiError:
    qualified = _qualified(plural, group)
    return ApiError(
        status=404,
        reason="NotFound",
        message=f'{qualified} "{name}" not found',
        details=_details(plural, name, group),
    )


def already_exists(plural: str, group: str, name: str) -> ApiError:
    qualified = _qualified(plural, group)
    return ApiError(
        status=409,
        reason="AlreadyExists",
        message=f'{qualified} "{name}" already exists',
        details=_details(plural, name, group),
    )


def conflict(plural: str, group: str, name: str) -> ApiError:
    qualified = _qualified(plural, group)
    return ApiError(
        status=409,
        reason="Conflict",
        message=(
            f'Operation cannot be fulfilled on {qualified} "{name}": the object has been '
            "modified; please apply your changes to the latest version and try again"
        ),
        details=_details(plural, name, group),
    )


def invalid(kind: str, group: str, name: str, causes: list[str]) -> ApiError:
    """422 Invalid; each cause is ``"<field path>: <message>"`` as crdvalidation writes them."""
    qualified = _qualified(kind, group)
    parsed = []
    for cause in causes:
        field, _, message = cause.partition(": ")
        parsed.append({"reason": "FieldValueInvalid", "message": message or cause, "field": field})
    return ApiError(
        status=422,
        reason="Invalid",
        message=f'{qualified} "{name}" is invalid: [{", ".join(causes)}]',
        details=_details(kind, name, group, causes=parsed),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(status=400, reason="BadRequest", message=message, details={})


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        status=415,
        reason="UnsupportedMediaType",
        message=f"the body of the request was in an unknown format: {content_type}",
        details={},
    )


def method_not_allowed(message: str) -> ApiError:
    return ApiError(status=405, reason="MethodNotAllowed", message=message, details={})


def gone(message: str) -> ApiError:
    return ApiError(status=410, reason="Expired", message=message, details={})


def forbidden(kind: str, group: str, name: str, message: str) -> ApiError:
    return ApiError(
        status=403, reason="Forbidden", message=message, details=_details(kind, name, group)
    )


def unauthorized() -> ApiError:
    """401: no valid credentials (kube-apiserver says no more than this)."""
    return ApiError(status=401, reason="Unauthorized", message="Unauthorized", details={})

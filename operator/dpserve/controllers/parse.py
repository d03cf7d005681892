"""Raw objects from the API into the typed models; a bad object becomes InvalidSpec, not a crash."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, TypeVar

from pydantic import ValidationError

from dpserve.api.privacybudget import PrivacyBudget, PrivacyBudgetSpec
from dpserve.api.privatemodel import PrivateModel, PrivateModelSpec


class InvalidSpec(Exception):
    """The object violates the API schema (a cluster without the CRD's validation let it in)."""


def describe(exc: ValidationError, prefix: str = "") -> str:
    """Every violation as ``<field path>: <message>``, joined by '; '."""
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "<root>"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


# Validating a spec runs its CEL rules (milliseconds each time); a spec only changes with
# metadata.generation, so the validated spec is kept per (uid, generation).
_SPECS: OrderedDict[tuple[str, int], PrivateModelSpec] = OrderedDict()
_BUDGET_SPECS: OrderedDict[tuple[str, int], PrivacyBudgetSpec] = OrderedDict()
_CACHE_SIZE = 4096


def _cache_key(raw: dict[str, Any]) -> tuple[str, int] | None:
    meta = raw.get("metadata") or {}
    uid, generation = meta.get("uid"), meta.get("generation")
    if isinstance(uid, str) and isinstance(generation, int):
        return uid, generation
    return None


SpecT = TypeVar("SpecT", PrivateModelSpec, PrivacyBudgetSpec)


def _validated_spec(
    raw: dict[str, Any], model: type[SpecT], cache: OrderedDict[tuple[str, int], SpecT]
) -> SpecT:
    """``raw["spec"]`` validated (CEL included), from the cache when uid and generation match."""
    key = _cache_key(raw)
    spec = cache.get(key) if key is not None else None
    if spec is not None:
        return spec
    try:
        spec = model.model_validate(raw.get("spec"))
    except ValidationError as exc:
        raise InvalidSpec(describe(exc, "spec.")) from exc
    if key is not None:
        cache[key] = spec
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return spec


def parse_model(raw: dict[str, Any]) -> PrivateModel:
    """The PrivateModel with its spec validated; ``status`` is left None.

    The status is read by :func:`dpserve.controllers.statusfields.read_model_status`, which
    keeps what it cannot parse instead of replacing it with an empty status.
    """
    spec = _validated_spec(raw, PrivateModelSpec, _SPECS)
    return PrivateModel.model_construct(
        api_version=raw.get("apiVersion", "dpserve.io/v1alpha1"),
        kind="PrivateModel",
        metadata=dict(raw.get("metadata") or {}),
        spec=spec.model_copy(deep=True),
        status=None,
    )


def parse_budget_spec(raw: dict[str, Any]) -> PrivacyBudgetSpec:
    return _validated_spec(raw, PrivacyBudgetSpec, _BUDGET_SPECS)


def parse_budget(raw: dict[str, Any]) -> PrivacyBudget:
    try:
        return PrivacyBudget.model_validate(
            {"metadata": raw.get("metadata") or {}, "spec": raw.get("spec"),
             "status": raw.get("status")}
        )
    except ValidationError as exc:
        raise InvalidSpec(describe(exc)) from exc

"""Kopf handlers of ErasureRequest: thin wrappers around ``erasure.reconcile_request``.

Three triggers: the request itself (create, resume; its spec is immutable), a change of the
target model's ``status.erasure`` (a Job started, a version rolled, a retrain gave up: raw
PrivateModel events compared with what was seen last), and a timer that catches the
deadline (Overdue) of a request nothing else touches.
"""

from __future__ import annotations

import contextlib
from typing import Any

import kopf

from dpserve import API_GROUP, API_VERSION
from dpserve.controllers.context import OperatorContext
from dpserve.controllers.erasure import reconcile_model_requests, reconcile_request
from dpserve.controllers.kubeapi import ApiError, Conflict
from dpserve.controllers.parse import InvalidSpec

PLURAL = "erasurerequests"
# Deadlines are days away: a minute late on Overdue is fine, and costs one GET per minute
# per open request (a completed request is not written again).
DEADLINE_CHECK_S = 60.0

_seen: dict[tuple[str, str], Any] = {}


def _ctx(memo: Any) -> OperatorContext:
    ctx: OperatorContext = memo.ctx
    return ctx


async def _reconcile(memo: Any, namespace: str, name: str) -> None:
    try:
        await reconcile_request(_ctx(memo), namespace, name)
    except InvalidSpec as exc:
        raise kopf.PermanentError(str(exc)) from exc
    except Conflict as exc:
        raise kopf.TemporaryError(f"conflict, retrying: {exc}", delay=1) from exc
    except ApiError as exc:
        raise kopf.TemporaryError(f"API error, retrying: {exc}", delay=5) from exc


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
async def reconcile(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    assert namespace is not None  # ErasureRequest is namespaced
    await _reconcile(memo, namespace, name)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
async def deleted(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """The ids stay listed (the model keeps excluding them); only the gauge goes."""
    with contextlib.suppress(KeyError):
        _ctx(memo).metrics.erasure_overdue.remove(namespace, name)


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=DEADLINE_CHECK_S,
            initial_delay=DEADLINE_CHECK_S,
            when=lambda status, **_: status.get("phase") not in ("Completed", "Failed"))
async def deadline(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    assert namespace is not None
    await _reconcile(memo, namespace, name)


@kopf.on.event(API_GROUP, API_VERSION, "privatemodels")
async def model_erasure_changed(
    namespace: str | None, name: str, status: Any, event: Any, memo: Any, **_: Any
) -> None:
    """The model's erasure status moved: its open requests are looked at now."""
    assert namespace is not None
    key = (namespace, name)
    if event.get("type") == "DELETED":
        _seen.pop(key, None)
        current = None
    else:
        current = dict(status.get("erasure") or {}) or None
    if current == _seen.get(key) or (current is None and key not in _seen):
        return
    if current is not None:
        _seen[key] = current
    with contextlib.suppress(ApiError):
        await reconcile_model_requests(_ctx(memo), namespace, name)

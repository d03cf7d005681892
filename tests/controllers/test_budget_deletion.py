"""A budget being deleted while a model uses it: one list of the models per recheck."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from prometheus_client import CollectorRegistry

from dpserve.controllers import budget as budget_ctl
from dpserve.controllers.context import OperatorContext
from dpserve.controllers.kubeapi import PRIVACYBUDGETS, PRIVATEMODELS, Res
from dpserve.metrics import operator_metrics

Obj = dict[str, Any]


class _Api:
    """The calls the budget reconcile makes, answered from two objects, and counted."""

    def __init__(self, budget: Obj, models: list[Obj]) -> None:
        self.budget = budget
        self.models = models
        self.lists = 0
        self.patches: list[Obj] = []
        self.events: list[str] = []

    async def get(self, res: Res, namespace: str, name: str) -> Obj | None:
        assert res is PRIVACYBUDGETS
        return self.budget

    async def list(self, res: Res, namespace: str | None = None) -> list[Obj]:
        assert res is PRIVATEMODELS
        self.lists += 1
        return self.models

    async def patch(self, res: Res, namespace: str, name: str, patch: Obj) -> Obj:
        self.patches.append(patch)
        return self.budget

    async def event(self, obj: Obj, **fields: Any) -> None:
        self.events.append(fields["reason"])


class _Queue:
    def __init__(self) -> None:
        self.kicked: list[tuple[tuple[str, str], float | None]] = []

    def kick(self, key: tuple[str, str], delay_s: float | None = None) -> None:
        self.kicked.append((key, delay_s))


def _deleting_budget() -> Obj:
    return {"metadata": {"namespace": "ns", "name": "b", "resourceVersion": "7",
                         "deletionTimestamp": "2026-01-01T00:00:00Z",
                         "finalizers": [budget_ctl.PROTECTION_FINALIZER]}}


def _model(name: str, budget: str) -> Obj:
    return {"metadata": {"namespace": "ns", "name": name},
            "spec": {"budgetRef": {"name": budget}, "serving": {"mechanism": None}}}


def _context(api: _Api, queue: _Queue) -> OperatorContext:
    none = cast(Any, None)
    return OperatorContext(api=cast(Any, api), ledger=none, accounting=none, settings=none,
                           metrics=operator_metrics(CollectorRegistry()), cluster=none,
                           budgets=cast(Any, queue))


def test_in_use_is_listed_once_per_recheck() -> None:
    api, queue = _Api(_deleting_budget(), [_model("m", "b"), _model("other", "c")]), _Queue()
    ctx = _context(api, queue)
    for _ in range(3):
        asyncio.run(budget_ctl.queue_handler(ctx, ("ns", "b")))
    assert api.lists == 3
    assert api.patches == []
    assert api.events == ["DeletionBlocked"]  # once, while the users stay the same
    assert queue.kicked == [(("ns", "b"), budget_ctl.RECHECK_S)] * 3


def test_released_once_unused() -> None:
    api, queue = _Api(_deleting_budget(), [_model("other", "c")]), _Queue()
    asyncio.run(budget_ctl.queue_handler(_context(api, queue), ("ns", "b")))
    assert api.lists == 1
    assert api.patches == [{"metadata": {"finalizers": None, "resourceVersion": "7"}}]
    assert api.events == ["DeletionReleased"]
    assert queue.kicked == []

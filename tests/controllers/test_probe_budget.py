"""A model its budget cannot pay asks the budget to probe again once per budget version."""

from __future__ import annotations

from typing import Any, cast

from dpserve.controllers.context import OperatorContext


class _Queue:
    def __init__(self) -> None:
        self.kicked: list[tuple[str, str]] = []

    def kick(self, key: tuple[str, str], delay_s: float | None = None) -> None:
        self.kicked.append(key)


def _context(queue: _Queue) -> OperatorContext:
    none = cast(Any, None)
    return OperatorContext(api=none, ledger=none, accounting=none, settings=none,
                           metrics=none, cluster=none, budgets=cast(Any, queue))


def test_once_per_budget_version_and_model() -> None:
    queue = _Queue()
    ctx = _context(queue)
    budget, model, other = ("ns", "b"), ("ns", "m"), ("ns", "m2")
    for _ in range(3):  # the budget probed and stayed as it was: asked once
        ctx.probe_budget(budget, "7", model)
    assert queue.kicked == [budget]
    ctx.probe_budget(budget, "7", other)  # another model bound since: asked for it too
    ctx.probe_budget(budget, "8", model)  # the budget changed: asked again
    assert queue.kicked == [budget] * 3
    ctx.probe_budget(budget, None, model)  # no version known: always asked
    ctx.probe_budget(budget, None, model)
    assert len(queue.kicked) == 5

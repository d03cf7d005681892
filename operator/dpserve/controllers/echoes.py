"""Budget versions a model's reconcile has already read: events it need not be woken by.

A budget event carrying the resourceVersion the model's reconcile read tells that model
nothing new; waking it would run a whole reconcile that can only find nothing to do. (The
children's own echo is recognised by :mod:`dpserve.controllers.livecache`.)

Only a resourceVersion equal to the one recorded is skipped: any other version (a later
change, another writer) still queues the reconcile, so no change goes unseen. Versions are
compared for equality only (they are opaque strings).
"""

from __future__ import annotations

ModelKey = tuple[str, str]  # (namespace, name)


class Echoes:
    """Read budgets, by the resourceVersion the model's reconcile saw."""

    def __init__(self) -> None:
        self._read: dict[ModelKey, dict[str, str]] = {}  # model -> budget -> version

    def read_budget(self, namespace: str, model: str, budget: str,
                    resource_version: str | None) -> None:
        """The model's reconcile decided with this version of the budget."""
        if resource_version:
            self._read.setdefault((namespace, model), {})[budget] = resource_version

    def has_read_budget(self, namespace: str, model: str, budget: str,
                        resource_version: str | None) -> bool:
        return (resource_version is not None
                and self._read.get((namespace, model), {}).get(budget) == resource_version)

    def forget_model(self, namespace: str, model: str) -> None:
        """The model is gone: its read records go."""
        self._read.pop((namespace, model), None)

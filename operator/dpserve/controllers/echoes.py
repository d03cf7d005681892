"""What the model reconcile has already seen: watch events it need not be woken by.

A reconcile that creates or replaces a child keeps the server's answer (the object at its
new resourceVersion) and computes the model's status from it. The watch then delivers that
same object back; waking the model for it would run a whole reconcile that can only find
nothing to do. Likewise a budget event carrying the resourceVersion the model's reconcile
already read tells it nothing new.

Only a resourceVersion equal to the one recorded is skipped: any other version (another
writer, a later change, a deletion) still queues the reconcile, so no change goes unseen.
Versions are compared for equality only (they are opaque strings).
"""

from __future__ import annotations

ObjectKey = tuple[str, str, str]  # (kind, namespace, name)
ModelKey = tuple[str, str]  # (namespace, name)


class Echoes:
    """Written children and read budgets, by the resourceVersion the reconcile saw."""

    def __init__(self) -> None:
        self._written: dict[ObjectKey, str] = {}
        self._read: dict[ModelKey, dict[str, str]] = {}  # model -> budget -> version

    def wrote(self, kind: str, namespace: str, name: str, resource_version: str | None) -> None:
        """The model reconcile wrote this child and used the answer."""
        if resource_version:
            self._written[(kind, namespace, name)] = resource_version

    def is_own_write(self, kind: str, namespace: str, name: str,
                     resource_version: str | None) -> bool:
        """Whether a watch event brings back exactly the version written. Any event ends
        the record (one write has one echo; a different version supersedes it), so the
        records stay as few as the writes whose echo is still on its way."""
        recorded = self._written.pop((kind, namespace, name), None)
        return resource_version is not None and recorded == resource_version

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
        """The model is gone: its read records go (children's go with their DELETED events)."""
        self._read.pop((namespace, model), None)

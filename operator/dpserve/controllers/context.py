"""What every reconciler needs, built once at operator startup and handed over in kopf's memo."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dpserve.controllers.echoes import Echoes
from dpserve.controllers.kubeapi import KubeApi
from dpserve.controllers.livecache import LiveCache
from dpserve.controllers.placement import ClusterView
from dpserve.controllers.workqueue import WorkQueue
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.service import LedgerService
from dpserve.metrics import OperatorMetrics
from dpserve.settings import OperatorSettings
from dpserve.tls import CaBundle

ModelKey = tuple[str, str]  # (namespace, name)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class OperatorContext:
    api: KubeApi
    ledger: LedgerService
    accounting: Accounting
    settings: OperatorSettings
    metrics: OperatorMetrics
    cluster: ClusterView
    models: WorkQueue[ModelKey] | None = None
    budgets: WorkQueue[ModelKey] | None = None
    # The CA sidecars verify the ledger's certificate with (None: plain HTTP, LocalKube only).
    ledger_ca: CaBundle | None = None
    _locks: dict[Hashable, asyncio.Lock] = field(default_factory=dict)
    # Last budget state seen per budget: which changes matter to its models.
    budget_seen: dict[ModelKey, tuple[Any, ...]] = field(default_factory=dict)
    # PrivateModel status fields the API server pruned (its CRD is older than this operator).
    pruned_status_paths: set[tuple[str | int, ...]] = field(default_factory=set)
    # Budget versions a model's reconcile already read (no wake-up for them).
    echoes: Echoes = field(default_factory=Echoes)
    # The budget version each model last asked to be probed at (ctx.probe_budget).
    budget_probed: dict[tuple[ModelKey, ModelKey], str] = field(default_factory=dict)
    # Serving children as the watches and the reconciles' own writes last showed them.
    live: LiveCache = field(default_factory=LiveCache)

    def lock(self, key: Hashable) -> asyncio.Lock:
        """One reconcile at a time per object, whichever path (kopf handler or queue) runs it."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def kick_model(self, namespace: str, name: str, delay_s: float | None = None) -> None:
        if self.models is not None:
            self.models.kick((namespace, name), delay_s)

    def kick_budget(self, namespace: str, name: str, delay_s: float | None = None) -> None:
        if self.budgets is not None:
            self.budgets.kick((namespace, name), delay_s)

    def probe_budget(self, budget: ModelKey, version: str | None, model: ModelKey) -> None:
        """Ask the budget to probe again for ``model``, once per budget version: a budget
        that probed and stayed as it was (another model's mechanism still fits, so it is not
        Exhausted) is not asked again on every reconcile of this model."""
        key = (budget, model)
        if version is not None and self.budget_probed.get(key) == version:
            return
        if version is not None:
            self.budget_probed[key] = version
        self.kick_budget(*budget)

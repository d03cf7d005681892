"""What the demo shows: the models' and budgets' status as the API reports it, and Events.

Read through the embedded API exactly as ``kubectl get pm,pb`` would; the counts of answered
queries come from the demo's own clients (:mod:`dpserve_testkit.demo.traffic`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpserve_testkit.demo.manifests import group_path
from dpserve_testkit.localkube.client import ApiFailure, Client

Obj = dict[str, Any]


def _float(text: Any) -> float | None:
    try:
        return None if text is None else float(text)
    except (TypeError, ValueError):
        return None


def _condition(status: Obj, kind: str) -> Obj:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


@dataclass(frozen=True)
class ModelView:
    name: str
    phase: str
    ready: str  # the Ready condition's status
    reason: str  # ... and its reason
    replicas: int
    ready_replicas: int
    version: str
    budget: str
    epsilon_spent: float
    epsilon_limit: float | None
    lifetime_epsilon: float
    retraining: str  # the Retraining condition's reason
    retraining_message: str
    versions: list[Obj] = field(default_factory=list)

    @classmethod
    def of(cls, obj: Obj) -> ModelView:
        status = obj.get("status") or {}
        ready = _condition(status, "Ready")
        spent = _float(status.get("epsilonSpent")) or 0.0
        return cls(
            name=obj["metadata"]["name"],
            phase=status.get("phase") or "Pending",
            ready=ready.get("status", "Unknown"),
            reason=ready.get("reason", ""),
            replicas=int(status.get("replicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            version=status.get("modelVersion") or obj["spec"]["model"].get("version", "v1"),
            budget=status.get("budget") or obj["spec"]["budgetRef"]["name"],
            epsilon_spent=spent,
            epsilon_limit=_float(status.get("epsilonLimit")),
            lifetime_epsilon=_float(status.get("lifetimeEpsilon")) or spent,
            retraining=_condition(status, "Retraining").get("reason", ""),
            retraining_message=_condition(status, "Retraining").get("message", ""),
            versions=list(status.get("versions") or []),
        )


@dataclass(frozen=True)
class PartitionView:
    """One tenant's sub-ledger of a budget with ``spec.partitions``."""

    tenant: str
    epsilon_spent: float
    epsilon_limit: float  # spec.partitions.epsilon: every tenant's own
    granted: int  # queries debited to this tenant


@dataclass(frozen=True)
class BudgetView:
    name: str
    epsilon_spent: float  # the main (dataset) ledger
    epsilon_limit: float
    granted: int  # queries debited to the main ledger
    exhausted: bool
    header: str | None = None  # spec.partitions.header
    partitions: dict[str, PartitionView] = field(default_factory=dict)

    @classmethod
    def of(cls, obj: Obj) -> BudgetView:
        status = obj.get("status") or {}
        queries = [e for e in status.get("ledger") or [] if e.get("kind") == "query"]

        def granted(tenant: str | None) -> int:
            return sum(int(e.get("count") or 0) for e in queries if e.get("partition") == tenant)

        spec_partitions = obj["spec"].get("partitions") or {}
        spent = {str(p.get("tenant")): _float(p.get("epsilonSpent")) or 0.0
                 for p in status.get("partitions") or []}
        tenants = sorted(set(spec_partitions.get("tenants") or []) | set(spent))
        limit = _float(spec_partitions.get("epsilon")) or 0.0
        return cls(
            name=obj["metadata"]["name"],
            epsilon_spent=_float(status.get("epsilonSpent")) or 0.0,
            epsilon_limit=_float(obj["spec"]["epsilon"]) or 0.0,
            granted=granted(None),
            exhausted=_condition(status, "Exhausted").get("status") == "True",
            header=spec_partitions.get("header"),
            partitions={t: PartitionView(t, spent.get(t, 0.0), limit, granted(t))
                        for t in tenants} if spec_partitions else {},
        )


@dataclass(frozen=True)
class EventView:
    time: str
    type: str
    object: str
    reason: str
    message: str


@dataclass(frozen=True)
class Snapshot:
    models: dict[str, ModelView]
    budgets: dict[str, BudgetView]
    events: list[EventView]
    endpoints: dict[str, int]  # ready pods behind each model's Service


def snapshot(api: Client, namespace: str, endpoints: dict[str, int],
             events: int = 8) -> Snapshot:
    """The namespace's PrivateModels, PrivacyBudgets and latest Events."""
    try:
        models = {m.name: m for m in map(ModelView.of, api.items(
            group_path(namespace, "privatemodels")))}
        budgets = {b.name: b for b in map(BudgetView.of, api.items(
            group_path(namespace, "privacybudgets")))}
        raw_events = api.items(f"/api/v1/namespaces/{namespace}/events")
    except ApiFailure:
        models, budgets, raw_events = {}, {}, []

    def stamp(e: Obj) -> str:
        return str(e.get("lastTimestamp") or e.get("eventTime") or
                   (e.get("metadata") or {}).get("creationTimestamp") or "")

    latest = sorted(raw_events, key=stamp)[-events:]
    return Snapshot(
        models=models,
        budgets=budgets,
        events=[EventView(stamp(e)[11:19], str(e.get("type") or ""),
                          f"{(e.get('involvedObject') or {}).get('kind', '')}/"
                          f"{(e.get('involvedObject') or {}).get('name', '')}",
                          str(e.get("reason") or ""), str(e.get("message") or ""))
                for e in latest],
        endpoints=endpoints,
    )

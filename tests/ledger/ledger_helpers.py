"""Helpers of the ledger tests: specs, a fake TokenReview, a clock, a service on MemoryStore."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from dpserve.api.mechanism import Mechanism
from dpserve.api.privacybudget import PrivacyBudgetSpec
from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.auth import Identity, service_account_user
from dpserve.ledger.lease_ids import parse, sequenced_id
from dpserve.ledger.service import LedgerService
from dpserve.ledger.settings import LedgerSettings
from dpserve.ledger.state import LeasePolicy
from dpserve.ledger.store import Unavailable
from dpserve_testkit.memory_store import MemoryStore
from pod_support import add_serving_pod as _add_serving_pod
from pod_support import kube_serving_pod

__all__ = ["kube_serving_pod"]  # re-exported: the ledger tests import it from here

NS = "clinical-ml"
T0 = datetime(2026, 1, 1, tzinfo=UTC)

PATE: dict[str, Any] = {"type": "pate", "teachers": 50, "noiseMultiplier": "40"}
GAUSS: dict[str, Any] = {
    "type": "gaussian",
    "noiseMultiplier": "2",
    "clipNorm": "1",
    "sensitivity": "0.02",
}
LAPLACE: dict[str, Any] = {"type": "laplace-embedding", "epsilon": "0.5"}
FREE: dict[str, Any] = {"type": "none"}


def budget_spec(epsilon: str = "8", **extra: Any) -> dict[str, Any]:
    return {"epsilon": epsilon, "delta": "1e-6", **extra}


def spec(epsilon: str = "8", **extra: Any) -> PrivacyBudgetSpec:
    return PrivacyBudgetSpec.model_validate(budget_spec(epsilon, **extra))


def mechanism(wire: dict[str, Any]) -> Mechanism:
    return Mechanism.model_validate(wire)


def model_spec(
    mech: dict[str, Any], budget: str = "patients", training: dict[str, Any] | None = None
) -> dict[str, Any]:
    fmt = "pate-ensemble" if mech["type"] in ("pate", "gaussian") else "state-dict"
    model: dict[str, Any] = {"artifact": "pvc://models/m/v1", "format": fmt}
    if training is not None:
        model["training"] = training
    return {
        "budgetRef": {"name": budget},
        "model": model,
        "serving": {"mechanism": mech},
        "confidential": {"profile": "none", "required": False},
    }


def add_serving_pod(store: MemoryStore, model: str, pod: str, *, namespace: str = NS,
                    ip: str | None = None, via_replica_set: bool = True) -> dict[str, Any]:
    """:func:`pod_support.add_serving_pod` in the ledger tests' namespace by default."""
    return _add_serving_pod(store, model, pod, namespace=namespace, ip=ip,
                            via_replica_set=via_replica_set)


@dataclass
class FakeReviewer:
    """TokenReview stand-in: token -> identity; counts calls; can be made unreachable.

    With a ``store``, adding a token bound to a pod of an existing model also puts that pod
    (and its owners) in the store, as the kubelet's pod exists before its token does.
    """

    identities: dict[str, Identity] = field(default_factory=dict)
    calls: int = 0
    unreachable: bool = False
    store: MemoryStore | None = None

    def add(self, token: str, model: str, pod: str | None = None, namespace: str = NS,
            ip: str | None = None) -> str:
        uid = None
        if (pod is not None and self.store is not None
                and ("privatemodels", namespace, model) in self.store.objects):
            created = add_serving_pod(self.store, model, pod, namespace=namespace, ip=ip)
            uid = created["metadata"]["uid"]
        self.identities[token] = Identity(
            username=service_account_user(namespace, model), pod_name=pod, pod_uid=uid
        )
        return token

    async def review(self, token: str) -> Identity | None:
        self.calls += 1
        if self.unreachable:
            raise Unavailable("TokenReview unreachable (injected)")
        return self.identities.get(token)


class Clock:
    """A settable clock for the service (lease expiry without sleeping)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_service(
    store: MemoryStore,
    reviewer: FakeReviewer,
    *,
    clock: Callable[[], datetime] | None = None,
    policy: LeasePolicy | None = None,
    **settings: Any,
) -> LedgerService:
    return LedgerService(
        store,
        reviewer,
        settings=LedgerSettings(policy=policy or LeasePolicy(), **settings),
        accounting=LedgerAccounting(),
        registry=CollectorRegistry(),
        clock=clock,
    )


_POOLS: dict[tuple[str, str | None], dict[str, int]] = {}


def seq_id(label: str, pod: str = "triage-0", partition: str | None = None) -> str:
    """The sequenced id a sidecar of ``pod`` sends for the test's lease named ``label``.

    A label keeps its id (a retry of that lease); a new label of a pool takes the pool's next
    sequence, as a sidecar's new lease does. The pools start afresh with each test (conftest).
    An id that is already sequenced (or malformed on purpose) is passed through.
    """
    if parse(label) is not None or not label.startswith("lease-"):
        return label
    pool = _POOLS.setdefault((pod, partition), {})
    return sequenced_id(pod, partition, pool.setdefault(label, len(pool) + 1))


def reset_lease_pools() -> None:
    _POOLS.clear()


def lease_body(
    lease_id: str = "lease-0001",
    model: str = f"{NS}/triage",
    pod: str = "triage-0",
    mech: dict[str, Any] | None = None,
    requested: int = 10,
    partition: str | None = None,
    version: str = "v1",
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "leaseId": seq_id(lease_id, pod, partition),
        "model": model,
        "modelVersion": version,
        "pod": pod,
        "mechanism": mech if mech is not None else PATE,
        "requested": requested,
    }
    if partition is not None:
        body["partition"] = partition
    return body


"""What the pure ledger functions take and answer: requests, grants, refusals, Events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dpserve.accounting.events import Event, Spend
from dpserve.api.lease import LeaseErrorReason
from dpserve.api.mechanism import Mechanism
from dpserve.api.privacybudget import (
    LeaseRecord,
    PartitionStatus,
    PrivacyBudgetStatus,
    TrainingSpend,
)


@dataclass(frozen=True)
class BudgetEvent:
    """A Kubernetes Event the caller emits after the status carrying it is persisted."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class StatusUpdate:
    status: PrivacyBudgetStatus
    events: tuple[BudgetEvent, ...] = ()
    # Every tenant's numbers; status.partitions lists only the most spent of them.
    tenants: tuple[PartitionStatus, ...] = ()


@dataclass(frozen=True)
class GrantRequest:
    """One lease request, already authenticated and matched to its PrivateModel."""

    consumer: str  # "<namespace>/<model>"
    model_version: str
    mechanism: Mechanism  # the model spec's mechanism (the request's was checked equal)
    requested: int
    lease_id: str
    pod: str
    partition: str | None = None
    training: TrainingSpend | None = None  # declared DP-SGD run of this version, charged once


@dataclass(frozen=True)
class Prefetch:
    """What the ledger may work out after answering a pld grant: the same pod's next grant's
    fit and lease check (``leases.prepare_next`` on these inputs), off the grant path."""

    before: tuple[Spend, ...]  # the ledger the next lease's rule starts from
    debited: tuple[Spend, ...]  # the ledger after this grant
    event: Event
    requested: int
    limit: float
    delta: float
    at_risk_fraction: float


@dataclass(frozen=True)
class Grant:
    status: PrivacyBudgetStatus
    granted: int
    lease: LeaseRecord
    epsilon_spent: float  # of the ledger charged (main or the tenant's)
    epsilon_remaining: float
    changed: bool  # the status must be persisted before answering
    replay: bool = False  # the lease id was granted before: same answer, no debit
    events: tuple[BudgetEvent, ...] = ()
    prefetch: Prefetch | None = None


@dataclass(frozen=True)
class Refusal:
    reason: LeaseErrorReason
    message: str
    epsilon_spent: float | None = None
    epsilon_remaining: float | None = None
    high_water: int | None = None  # LeaseIdUsed: the pool's last granted sequence
    # A refusal an operator must act on (a limit reached): emitted on the budget though
    # nothing is written, at most once a minute per reason (commit.Outcome.notices).
    event: BudgetEvent | None = None


@dataclass(frozen=True)
class TrainingRecorded:
    status: PrivacyBudgetStatus
    changed: bool
    # Set when a *different* run was already recorded for this version: it is kept (the
    # first record wins) and nothing is charged.
    existing: TrainingSpend | None = None
    events: tuple[BudgetEvent, ...] = field(default=())
    # With a run id: the differing runs of this version recorded before this one (this run
    # was charged as well: every run that touched the data is on the ledger).
    earlier_runs: tuple[TrainingSpend, ...] = ()

    @property
    def matches(self) -> bool:
        return self.existing is None

"""PrivacyBudget: (ε, δ) over one protected dataset, and the ledger of what was spent."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints

from dpserve.api.base import ApiModel, Condition, Decimal, defaulted
from dpserve.api.cel import CelRule
from dpserve.api.mechanism import Mechanism
from dpserve.api.validation import CelModel

KIND = "PrivacyBudget"
PLURAL = "privacybudgets"
SHORT_NAMES = ["pb"]

AccountantKind = Literal["rdp", "pld"]
HeaderName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$", min_length=1, max_length=64)
]
TenantName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", max_length=63)
]


class Partitions(CelModel):
    """Per-tenant sub-ledgers for query-side mechanisms (parallel composition).

    Each tenant's queries protect that tenant's own inputs, so tenants compose in parallel:
    every tenant gets ``epsilon`` of its own, keyed by the value of ``header``.
    """

    header: HeaderName | None = None
    # A tenant's ledger protects that tenant's own query text, not the dataset: tenants
    # compose in parallel with each other and with the main ledger, so a per-tenant ε above
    # spec.epsilon is legitimate. It gets the same sanity cap as the budget's ε (1000), which
    # also keeps it finite (1e400 would parse as inf).
    epsilon: Decimal | None = Field(
        default=None,
        description="ε of each tenant's own ledger, 0 < epsilon <= 1000; independent of "
        "spec.epsilon (it protects the tenant's query text, not the dataset), so it may "
        "exceed it.",
    )
    tenants: Annotated[list[TenantName], Field(max_length=256)] | None = None

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("has(self.header)", "partitions need a header naming the tenant", ".header",
                "FieldValueRequired"),
        CelRule("has(self.epsilon)", "partitions need a per-tenant epsilon", ".epsilon",
                "FieldValueRequired"),
        CelRule("!has(self.epsilon) || "
                "(double(self.epsilon) > 0.0 && double(self.epsilon) <= 1000.0)",
                "epsilon must be a decimal greater than 0 and <= 1000", ".epsilon"),
    )


class PrivacyBudgetSpec(CelModel):
    epsilon: Decimal = Field(
        description="Total ε of the budget, a decimal string, 0 < ε <= 1000. Mutable: the "
        "ledger keeps every spend, so raising ε resumes a stopped model and lowering it "
        "below what was spent exhausts the budget."
    )
    delta: Decimal = Field(
        description="δ of the budget, a decimal string with 0 < δ < 1. Mutable: the ledger "
        "holds mechanisms and counts, not ε values, so ε spent is recomputed at the new δ "
        "(a smaller δ spends more ε)."
    )
    accountant: AccountantKind = Field(
        "rdp", description="rdp (agrees with Opacus) or pld (tighter, slower). Mutable: ε "
        "spent is recomputed by the new accountant from the same ledger."
    )
    alert_thresholds: Annotated[list[Decimal], Field(max_length=8)] = defaulted(
        lambda: ["0.8", "0.95"],
        description="Fractions of ε spent at which an Event and BudgetLow are raised.",
    )
    partitions: Partitions | None = None

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule("double(self.epsilon) > 0.0 && double(self.epsilon) <= 1000.0",
                "epsilon must be a decimal with 0 < epsilon <= 1000", ".epsilon"),
        CelRule("double(self.delta) > 0.0 && double(self.delta) < 1.0",
                "delta must be a decimal with 0 < delta < 1", ".delta"),
        CelRule("!has(self.alertThresholds) || "
                "self.alertThresholds.all(t, double(t) > 0.0 && double(t) < 1.0)",
                "alertThresholds must be fractions strictly between 0 and 1",
                ".alertThresholds"),
    )


LedgerKind = Literal["training", "query"]
Sampling = Literal["poisson", "without-replacement", "shuffle"]


class TrainingSpend(ApiModel):
    """One DP-SGD run: a (Poisson-)subsampled Gaussian repeated ``steps`` times."""

    noise_multiplier: Decimal
    sample_rate: Decimal
    steps: Annotated[int, Field(ge=1)]
    sampling: Sampling = "poisson"


class LedgerEntry(ApiModel):
    """One consumer x mechanism (x tenant): parameters plus a count, never one per query."""

    consumer: Annotated[str, StringConstraints(max_length=127)]  # "<namespace>/<model>"
    model_version: Annotated[str, StringConstraints(max_length=63)] = "v1"
    kind: LedgerKind
    mechanism: Mechanism | None = None  # kind=query
    training: TrainingSpend | None = None  # kind=training
    partition: TenantName | None = None
    count: Annotated[int, Field(ge=0)]
    run: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        default=None, description="kind=training of a retraining: the uid of the Job that "
        "trained. Every run that touched the data is charged: a second run of one version "
        "is a second entry."
    )


class LeaseRecord(ApiModel):
    """A granted lease, kept until it expires: idempotent retries and the at-risk bound."""

    lease_id: Annotated[str, StringConstraints(max_length=128)]
    consumer: Annotated[str, StringConstraints(max_length=127)]
    # The version the lease was charged to (its ledger entry); None on records written before
    # leases named a version (they expire within one lease TTL).
    model_version: Annotated[str, StringConstraints(max_length=63)] | None = None
    pod: Annotated[str, StringConstraints(max_length=253)]
    partition: TenantName | None = None
    granted: Annotated[int, Field(ge=1)]
    expires_at: str


class PartitionStatus(ApiModel):
    tenant: TenantName
    epsilon_spent: str
    epsilon_remaining: str


class PrivacyBudgetStatus(ApiModel):
    observed_generation: int | None = None
    epsilon_spent: str | None = None
    epsilon_remaining: str | None = None
    lifetime_epsilon: str | None = None
    ledger: Annotated[list[LedgerEntry], Field(max_length=1024)] = Field(default_factory=list)
    leases: Annotated[list[LeaseRecord], Field(max_length=2048)] = Field(default_factory=list)
    partitions: Annotated[list[PartitionStatus], Field(max_length=256)] = Field(
        default_factory=list,
        description="ε spent and remaining of the 64 most-spent tenants, a bounded view (the "
        "ledger entries hold every tenant's spend).",
    )
    tenant_count: Annotated[int, Field(ge=0)] | None = Field(
        None, description="How many tenants have a ledger of their own: those of "
        "spec.partitions.tenants and those charged so far. partitions lists the most spent.",
    )
    alerts_fired: Annotated[list[Decimal], Field(max_length=8)] = Field(default_factory=list)
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)


class PrivacyBudget(ApiModel):
    api_version: str = "dpserve.io/v1alpha1"
    kind: Literal["PrivacyBudget"] = "PrivacyBudget"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: PrivacyBudgetSpec
    status: PrivacyBudgetStatus | None = None

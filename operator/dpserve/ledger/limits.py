"""The numbers a budget is held to: the spec's limits parsed once, and the lease policy.

Pure data: nothing here touches the accountant or the API server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from dpserve.api.privacybudget import PrivacyBudgetSpec
from dpserve.ledger import events as ev

# Schema limits of the status (api/privacybudget.py). Statuses written by earlier releases,
# under the old defaults, stay valid against them.
MAX_LEDGER_ENTRIES = 1024
MAX_LEASE_RECORDS = 2048
MAX_PARTITION_STATUSES = 256
# The defaults the ledger holds a budget to, below the schema's: every grant rewrites the whole
# status object, the API server sends all of it to every watcher of PrivacyBudgets (the
# operator, GitOps controllers, `kubectl get -w`) and etcd keeps each revision until it
# compacts. At these defaults the status stays under 100 KiB with realistic names (~0.19 KiB
# per entry, ~0.22 KiB per lease record; docs/ledger.md, "Status size"): 83 KiB, and 99 KiB
# for a multi-tenant budget at its largest; at the former 1,024 entries, 1,024 leases and 1,024
# remembered records it was 627 KiB. Both are settings (DPSERVE_LEDGER_MAX_ENTRIES,
# DPSERVE_LEDGER_MAX_LEASES) for a cluster that accepts the larger object.
DEFAULT_MAX_ENTRIES = 256  # consumer x version x mechanism x tenant combinations
DEFAULT_MAX_LEASES = 128  # outstanding lease records: 64 pod pools, each current + prefetched
# Tenants whose numbers status.partitions lists, the most spent first (the schema allows 256).
# The list is a view: the ledger entries hold every tenant's spend, the grant answers carry the
# charged tenant's own numbers and ml_privacy_budget_consumed exports them, and
# status.tenantCount says how many tenants there are. Listing all 256 put a multi-tenant
# budget at its largest at 121.6 KiB; the tenants nearest exhaustion are the ones a reader
# acts on.
LISTED_PARTITIONS = 64
# How long a lease may be served from, and so how long its id stays retryable. One value for
# LeasePolicy, the settings' default and docs/ledger.md.
DEFAULT_LEASE_TTL_S = 300.0


@dataclass(frozen=True)
class LeasePolicy:
    """How leases are sized and kept."""

    ttl: timedelta = timedelta(seconds=DEFAULT_LEASE_TTL_S)
    at_risk_fraction: float = 0.01
    max_leases: int = DEFAULT_MAX_LEASES
    max_entries: int = DEFAULT_MAX_ENTRIES

    def __post_init__(self) -> None:
        if self.ttl <= timedelta(0):
            raise ValueError("LeasePolicy.ttl must be positive")
        if not 0.0 < self.at_risk_fraction <= 1.0:
            raise ValueError("LeasePolicy.at_risk_fraction must be in (0, 1]")
        if not 1 <= self.max_leases <= MAX_LEASE_RECORDS:
            raise ValueError(
                f"LeasePolicy.max_leases must be in [1, {MAX_LEASE_RECORDS}] (the schema's limit)"
            )
        if not 1 <= self.max_entries <= MAX_LEDGER_ENTRIES:
            raise ValueError(f"LeasePolicy.max_entries must be in [1, {MAX_LEDGER_ENTRIES}]")


@dataclass(frozen=True)
class Limits:
    """The spec's numbers, parsed once."""

    epsilon: float
    epsilon_text: str
    delta: float
    kind: str
    thresholds: tuple[tuple[str, float], ...]
    partition_epsilon: float | None
    partition_epsilon_text: str | None
    tenants: frozenset[str] | None

    @classmethod
    def from_spec(cls, spec: PrivacyBudgetSpec) -> Limits:
        """The parsed spec, or a ValueError naming the bad field."""
        epsilon = ev.decimal_value(spec.epsilon, "spec.epsilon")
        delta = ev.decimal_value(spec.delta, "spec.delta")
        if delta >= 1.0:
            raise ValueError(f"spec.delta: must be < 1, got {spec.delta!r}")
        thresholds: dict[float, str] = {}  # by value: "0.8" and "0.80" are one threshold
        for index, text in enumerate(spec.alert_thresholds):
            value = ev.decimal_value(text, f"spec.alertThresholds[{index}]")
            if value >= 1.0:
                raise ValueError(f"spec.alertThresholds[{index}]: must be < 1, got {text!r}")
            thresholds.setdefault(value, text)
        partition_epsilon = partition_text = None
        tenants = None
        if spec.partitions is not None and spec.partitions.epsilon is not None:
            partition_text = spec.partitions.epsilon
            partition_epsilon = ev.decimal_value(partition_text, "spec.partitions.epsilon")
            if spec.partitions.tenants:
                tenants = frozenset(spec.partitions.tenants)
        return cls(
            epsilon=epsilon,
            epsilon_text=spec.epsilon,
            delta=delta,
            kind=spec.accountant,
            thresholds=tuple((text, value) for value, text in sorted(thresholds.items())),
            partition_epsilon=partition_epsilon,
            partition_epsilon_text=partition_text,
            tenants=tenants,
        )

    def limit_of(self, partition: str | None) -> tuple[float, str]:
        """The ε limit (number, text) of the main ledger or of a tenant's."""
        if partition is None or self.partition_epsilon is None:
            return self.epsilon, self.epsilon_text
        return self.partition_epsilon, self.partition_epsilon_text or "0"

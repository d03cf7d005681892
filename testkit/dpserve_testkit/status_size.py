"""A PrivacyBudget status filled to given limits, and its size as the API server stores it.

Shared by ``bench/ledger_scale.py`` (which prints the size at the old and the new limits side
by side) and the test that keeps the documented limits under the size target.

The names are realistic, not minimal: a namespace and model name of a regulated team's
cluster, pods named as a Deployment names them (``<model>-<pod-template-hash>-<5 chars>``),
sequenced lease ids as the sidecar forms them, a gaussian mechanism as a model spec writes it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from dpserve.api.base import Condition
from dpserve.api.mechanism import Mechanism
from dpserve.api.privacybudget import (
    LeaseRecord,
    LedgerEntry,
    PartitionStatus,
    PrivacyBudgetSpec,
    PrivacyBudgetStatus,
)
from dpserve.ledger.accountant import LedgerAccounting
from dpserve.ledger.lease_ids import sequenced_id
from dpserve.ledger.limits import LISTED_PARTITIONS, MAX_PARTITION_STATUSES
from dpserve.ledger.status import compute_status

NAMESPACE = "clinical-nlp"
GAUSSIAN = {"type": "gaussian", "noiseMultiplier": "1.25", "clipNorm": "1", "sensitivity": "1"}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _model(index: int) -> str:
    return f"triage-classifier-{index:04d}"


def _pod(index: int) -> str:
    return f"{_model(index)}-7c9d5b8f4-x{index:04x}"


def _tenant(index: int, tenants: bool) -> str | None:
    return f"tenant-{index % MAX_PARTITION_STATUSES:04d}" if tenants else None


def status_at(
    entries: int, outstanding: int, remembered: int, *, tenants: bool = False,
    listed: int = LISTED_PARTITIONS,
) -> PrivacyBudgetStatus:
    """A status holding ``entries`` query entries, ``outstanding`` unexpired lease records (two
    per pod: its current lease and the prefetched next) and ``remembered`` expired ones.

    ``tenants``: a multi-tenant budget at its largest, every entry and lease charged to a
    tenant (256 of them) and the status listing ``listed`` tenants' numbers
    (``partitions``: the ledger's bounded view; 256 before it was bounded at 64).
    """
    mechanism = Mechanism.model_validate(GAUSSIAN)
    ledger = [LedgerEntry(consumer=f"{NAMESPACE}/{_model(i)}", model_version="v12",
                          kind="query", mechanism=mechanism, count=12_345_678,
                          partition=_tenant(i, tenants))
              for i in range(entries)]

    def record(pod: int, sequence: int, expires: datetime) -> LeaseRecord:
        return LeaseRecord(
            lease_id=sequenced_id(_pod(pod), _tenant(pod, tenants), sequence),
            consumer=f"{NAMESPACE}/{_model(pod % max(1, entries))}", model_version="v12",
            pod=_pod(pod), partition=_tenant(pod, tenants), granted=1000,
            expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    leases = [record(i // 2, 100_000 + i, NOW + timedelta(minutes=5))
              for i in range(outstanding)]
    leases += [record(outstanding + i, 100_000 + i, NOW - timedelta(hours=1))
               for i in range(remembered)]
    partitions = [PartitionStatus(tenant=f"tenant-{i:04d}", epsilon_spent="0.123456",
                                  epsilon_remaining="1.876544")
                  for i in range(listed if tenants else 0)]
    return PrivacyBudgetStatus(
        observed_generation=3, epsilon_spent="7.123456", epsilon_remaining="0.876544",
        lifetime_epsilon="7.123456", ledger=ledger, leases=leases, partitions=partitions,
        tenant_count=MAX_PARTITION_STATUSES if tenants else None,
        alerts_fired=["0.5", "0.8"], conditions=_conditions(),
    )


def _conditions() -> list[Condition]:
    """The conditions the ledger writes on a budget, as it writes them (messages included)."""
    spec = PrivacyBudgetSpec.model_validate(
        {"epsilon": "8", "delta": "1e-6", "alertThresholds": ["0.5", "0.8"]})
    return compute_status(spec, 3, None, NOW, accounting=LedgerAccounting()).status.conditions


def stored_bytes(status: PrivacyBudgetStatus) -> int:
    """The status's size as JSON without whitespace: what the API server stores and sends."""
    return len(json.dumps(status.wire(), separators=(",", ":"), ensure_ascii=False).encode())

"""The PrivacyBudget status as pure functions: one import for the ledger's decisions.

No I/O in any of these modules: :mod:`dpserve.ledger.store` reads and writes,
:mod:`dpserve.ledger.service` answers HTTP. Everything that decides a privacy outcome (how
much is spent, whether a lease is granted and how large, which conditions and Events follow)
lives in the modules below and is tested without a server; this module re-exports them so
callers (the controllers, the service) keep one name.

- :mod:`~dpserve.ledger.limits`: the spec's limits, the lease policy, the status bounds
- :mod:`~dpserve.ledger.outcomes`: requests, grants, refusals, Events
- :mod:`~dpserve.ledger.evaluation`: calling the accountant (finite ε or a ValueError)
- :mod:`~dpserve.ledger.entries`: ledger entries, their keys, the debit
- :mod:`~dpserve.ledger.leases`: outstanding leases and lease sizing (the 1% at-risk rule)
- :mod:`~dpserve.ledger.status` / :mod:`~dpserve.ledger.budget_conditions` /
  :mod:`~dpserve.ledger.partitions`: the status, its conditions and tenants
- :mod:`~dpserve.ledger.grant`, :mod:`~dpserve.ledger.training`, :mod:`~dpserve.ledger.fits`:
  lease grants, DP-SGD charges, "does one more query fit"
- :mod:`~dpserve.ledger.tampering`: lost spend, its restoration and the durable watermark

Ledgers. The *main* ledger is every entry without a partition: spends that touch the
protected dataset (DP-SGD training, pate and gaussian queries). With ``spec.partitions``,
tenant-side mechanisms (laplace-embedding: the noise protects the tenant's own query text)
are charged to that tenant's sub-ledger, entries with ``partition = <tenant>``, each limited
by ``partitions.epsilon``; tenants compose in parallel, so their spends never add up.
"""

from __future__ import annotations

from dpserve.ledger.budget_conditions import BUDGET_LOW, CONDITION_TYPES, EXHAUSTED, READY
from dpserve.ledger.evaluation import (
    ACCOUNTING_ERRORS,
    ACCOUNTING_FAILED,
    accounting_message,
    evaluable,
    finite_epsilon,
)
from dpserve.ledger.fits import query_fits
from dpserve.ledger.grant import grant
from dpserve.ledger.leases import LEASES_KEPT_PER_POOL, prune_leases
from dpserve.ledger.limits import (
    DEFAULT_MAX_LEASES,
    MAX_LEDGER_ENTRIES,
    MAX_PARTITION_STATUSES,
    LeasePolicy,
    Limits,
)
from dpserve.ledger.outcomes import (
    BudgetEvent,
    Grant,
    GrantRequest,
    Refusal,
    StatusUpdate,
    TrainingRecorded,
)
from dpserve.ledger.status import accounting_failed_status, compute_status, invalid_spec_status
from dpserve.ledger.tampering import (
    WATERMARK_ANNOTATION,
    below_watermark,
    format_watermark,
    lost_spend,
    restore_spend,
    watermark,
)
from dpserve.ledger.training import record_training

__all__ = [
    "ACCOUNTING_ERRORS",
    "ACCOUNTING_FAILED",
    "BUDGET_LOW",
    "CONDITION_TYPES",
    "DEFAULT_MAX_LEASES",
    "EXHAUSTED",
    "LEASES_KEPT_PER_POOL",
    "MAX_LEDGER_ENTRIES",
    "MAX_PARTITION_STATUSES",
    "READY",
    "WATERMARK_ANNOTATION",
    "BudgetEvent",
    "Grant",
    "GrantRequest",
    "LeasePolicy",
    "Limits",
    "Refusal",
    "StatusUpdate",
    "TrainingRecorded",
    "accounting_failed_status",
    "accounting_message",
    "below_watermark",
    "compute_status",
    "evaluable",
    "finite_epsilon",
    "format_watermark",
    "grant",
    "invalid_spec_status",
    "lost_spend",
    "prune_leases",
    "query_fits",
    "record_training",
    "restore_spend",
    "watermark",
]

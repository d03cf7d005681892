"""The operator's Prometheus metrics.

Budget gauges (ε spent / limit, ``ml_privacy_budget_consumed``) belong to the ledger, the
single writer of budget status: :mod:`dpserve.ledger.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class OperatorMetrics:
    reconciles: Counter
    reconcile_errors: Counter
    reconcile_seconds: Histogram
    api_writes: Counter
    model_replicas: Gauge
    models_stopped_total: Counter
    retrains_total: Counter
    unlearning_requests_total: Counter
    erasure_overdue: Gauge


_CACHE: dict[int, OperatorMetrics] = {}


def operator_metrics(registry: CollectorRegistry = REGISTRY) -> OperatorMetrics:
    """The metrics registered once per registry (tests pass their own registry)."""
    if id(registry) in _CACHE:
        return _CACHE[id(registry)]
    metrics = OperatorMetrics(
        reconciles=Counter("dpserve_reconcile_total", "Reconciles run", ["kind"],
                           registry=registry),
        reconcile_errors=Counter("dpserve_reconcile_errors_total", "Reconciles that failed",
                                 ["kind", "reason"], registry=registry),
        reconcile_seconds=Histogram(
            "dpserve_reconcile_duration_seconds", "Time of one reconcile", ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        ),
        api_writes=Counter("dpserve_operator_api_writes_total",
                           "Writes to the API server by the reconcilers", ["kind", "verb"],
                           registry=registry),
        model_replicas=Gauge("dpserve_model_replicas", "Replicas the operator runs for a model",
                             ["namespace", "model"], registry=registry),
        models_stopped_total=Counter(
            "dpserve_models_stopped_total",
            "Times a model was stopped because its budget could not pay one more query",
            ["namespace", "model", "policy"], registry=registry,
        ),
        retrains_total=Counter("dpserve_retrains_total", "Retraining Jobs by outcome",
                               ["namespace", "model", "outcome"], registry=registry),
        # Each ErasureRequest counts once per outcome it reaches: completed (a version
        # without its records serves), failed (not erasable, or the retrain gave up),
        # overdue (its deadline passed before completion; it may still complete later).
        unlearning_requests_total=Counter(
            "ml_unlearning_requests_total", "ErasureRequests by outcome reached",
            ["outcome"], registry=registry,
        ),
        # 1 while a request is open past its deadline (the alert's input; a counter's
        # increase would stop alerting an hour after the deadline while the request is
        # still open).
        erasure_overdue=Gauge(
            "dpserve_erasure_request_overdue",
            "1 while an ErasureRequest is past its deadline and not completed",
            ["namespace", "request"], registry=registry,
        ),
    )
    _CACHE[id(registry)] = metrics
    return metrics

"""``ml_enclave_attestation_failure_total``: lease requests refused for their attestation.

Registered once per registry by whoever verifies tokens (the ledger); ``reason`` is one of
:data:`~dpserve.attestation.verifier.FAILURE_REASONS`, ``model`` is ``<namespace>/<name>``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from dpserve.attestation.verifier import Verdict

METRIC = "ml_enclave_attestation_failure_total"

_CACHE: dict[int, Counter] = {}


def attestation_failures(registry: CollectorRegistry = REGISTRY) -> Counter:
    if id(registry) not in _CACHE:
        _CACHE[id(registry)] = Counter(
            METRIC, "Lease requests refused because their attestation token failed verification",
            ["model", "reason"], registry=registry,
        )
    return _CACHE[id(registry)]


def count_refusal(counter: Counter, model: str, verdict: Verdict) -> None:
    """Count a refused verdict (an accepted one is not a failure)."""
    if not verdict.ok and verdict.reason is not None:
        counter.labels(model, verdict.reason).inc()

"""API objects -> accounting events: what one answered query or one training run costs.

The mapping is the only place where spec fields become DP parameters, so a reviewer checks
the privacy arithmetic of the API here and nowhere else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from dpserve.accounting.events import (
    Event,
    GaussianQuery,
    GNMaxQuery,
    LaplaceQuery,
    Spend,
    SubsampledGaussian,
)
from dpserve.api.mechanism import Mechanism, privacy_unit
from dpserve.api.mechanism import is_tenant_side as _is_tenant_side
from dpserve.api.privacybudget import LedgerEntry, TrainingSpend
from dpserve.api.privatemodel import DeclaredTraining


def decimal_value(text: str, field: str) -> float:
    """A decimal string of the API as a float, or a ValueError naming the field."""
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError) as exc:
        raise ValueError(f"{field}: {text!r} is not a decimal") from exc
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{field}: must be a finite decimal > 0, got {text!r}")
    return float(value)


def _required(value: str | None, field: str) -> float:
    if value is None:
        raise ValueError(f"{field}: required by this mechanism")
    return decimal_value(value, field)


def mechanism_event(mechanism: Mechanism, field: str = "mechanism") -> Event | None:
    """The DP event of one query answered with ``mechanism``; None when queries are free.

    - pate: GNMax with absolute vote-noise std ``noiseMultiplier`` (sensitivity sqrt(2) is
      inside :class:`GNMaxQuery`).
    - gaussian: noise std is ``noiseMultiplier * clipNorm`` and one record moves the output by
      at most ``sensitivity`` (L2), so the effective noise multiplier is
      ``noiseMultiplier * clipNorm / sensitivity``.
    - laplace-embedding: ``epsilon`` per query, pure DP.
    - none: the model is DP-trained; its answers are post-processing.
    """
    kind = mechanism.type
    if kind == "none":
        return None
    if kind == "pate":
        return GNMaxQuery(sigma=_required(mechanism.noise_multiplier, f"{field}.noiseMultiplier"))
    if kind == "gaussian":
        z = _required(mechanism.noise_multiplier, f"{field}.noiseMultiplier")
        clip = _required(mechanism.clip_norm, f"{field}.clipNorm")
        sensitivity = _required(mechanism.sensitivity, f"{field}.sensitivity")
        return GaussianQuery(noise_multiplier=z * clip / sensitivity)
    if kind == "laplace-embedding":
        return LaplaceQuery(epsilon=_required(mechanism.epsilon, f"{field}.epsilon"))
    raise ValueError(f"{field}.type: unknown mechanism {kind!r}")


def canonical_mechanism(mechanism: Mechanism) -> tuple[tuple[str, str], ...]:
    """The mechanism as a comparable key: decimals by value ("40" == "40.0"), unset dropped,
    the privacy unit as it applies (an omitted default equals the same unit stated)."""
    wire = {**mechanism.wire(), "privacyUnit": privacy_unit(mechanism)}
    items: list[tuple[str, str]] = []
    for key, value in sorted(wire.items()):
        if isinstance(value, str) and key != "type":
            with contextlib.suppress(InvalidOperation):
                value = str(Decimal(value).normalize())
        items.append((key, str(value)))
    return tuple(items)


def is_tenant_side(mechanism: Mechanism) -> bool:
    """Whether the mechanism protects a tenant's query rather than the dataset.

    Tenant-side: laplace-embedding, and gaussian with ``privacyUnit: query-text`` (noise on
    an embedding of the tenant's text). Their queries are charged to the tenant's own
    sub-ledger (tenants compose in parallel); every other spend goes to the main ledger.
    """
    return _is_tenant_side(mechanism)


def training_spend(declared: DeclaredTraining | TrainingSpend) -> TrainingSpend:
    """The ledger's record of a DP-SGD run (sampling scheme always recorded)."""
    return TrainingSpend(
        noise_multiplier=declared.noise_multiplier,
        sample_rate=declared.sample_rate,
        steps=declared.steps,
        sampling=declared.sampling,
    )


def training_event(spend: DeclaredTraining | TrainingSpend, field: str = "training") -> Event:
    """One DP-SGD run: ``steps`` subsampled-Gaussian steps under its sampling scheme."""
    return SubsampledGaussian(
        noise_multiplier=decimal_value(spend.noise_multiplier, f"{field}.noiseMultiplier"),
        sample_rate=decimal_value(spend.sample_rate, f"{field}.sampleRate"),
        steps=spend.steps,
        sampling=spend.sampling,
    )


def entry_event(entry: LedgerEntry) -> Event | None:
    """The event one count of ``entry`` stands for (None: a free entry)."""
    if entry.kind == "training":
        if entry.training is None:
            raise ValueError(f"ledger entry of {entry.consumer}: kind training without training")
        return training_event(entry.training, "ledger.training")
    if entry.mechanism is None:
        raise ValueError(f"ledger entry of {entry.consumer}: kind query without mechanism")
    return mechanism_event(entry.mechanism, "ledger.mechanism")


def spends(entries: Iterable[LedgerEntry]) -> list[Spend]:
    """The entries as (event, count) spends; equal events are merged, free entries dropped.

    Merging keeps the accountant's input small (and its cache keys stable) no matter how many
    consumers share one mechanism.
    """
    merged: dict[Event, int] = {}
    for entry in entries:
        event = entry_event(entry)
        if event is None or entry.count == 0:
            continue
        merged[event] = merged.get(event, 0) + entry.count
    return sorted(merged.items(), key=lambda item: repr(item[0]))

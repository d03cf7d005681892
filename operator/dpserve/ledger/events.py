"""API objects -> accounting events: what one answered query or one training run costs.

Each mechanism's event class (``dpserve.accounting.events``, registered by
``mechanism`` name) turns the mechanism's spec fields into its DP parameters
(``from_mechanism``); this module reads the fields as checked decimals and looks the class
up, so a reviewer checks the privacy arithmetic of a mechanism beside its bounds.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from dpserve.accounting.events import MECHANISM_EVENTS, Event, Spend, SubsampledGaussian
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
    number = float(value)
    # A decimal beyond the float range would silently become inf, and one below the
    # smallest normal float 0.0 or a subnormal that has lost its digits: either way the
    # accountant would compute with a number the spec does not say. Refuse it.
    if number == float("inf"):
        raise ValueError(f"{field}: {text!r} overflows a float (largest {sys.float_info.max:g})")
    if number < sys.float_info.min:
        raise ValueError(
            f"{field}: {text!r} underflows a float (smallest normal {sys.float_info.min:g})"
        )
    return number


def _required(value: str | None, field: str) -> float:
    if value is None:
        raise ValueError(f"{field}: required by this mechanism")
    return decimal_value(value, field)


# API name (camelCase alias) -> attribute of Mechanism, for the event classes' parameters.
_MECHANISM_ATTRIBUTES: dict[str, str] = {
    info.alias or name: name for name, info in Mechanism.model_fields.items()
}


# Memos keyed on a mechanism's field values (in the model's field order), for the few distinct
# mechanisms a ledger holds. Equal decimals ("40" and "40.0") are one key: both memoised
# answers depend on the values only (the event on each decimal's float, the canonical key on
# its normalised form). Bounded; cleared whole when full. Only answers are stored: a refused
# mechanism raises again on every call.
_MEMO_MAX = 4096
FieldValues = tuple[object, ...]


def _field_values(mechanism: Mechanism) -> FieldValues:
    return tuple(mechanism.__dict__.values())


# mechanism_event runs for every entry of every ledger a status reports (each tenant's, on
# every grant of a multi-tenant budget); parsing the decimals was most of that cost.
_EVENTS: dict[FieldValues, Event | None] = {}


def mechanism_event(mechanism: Mechanism, field: str = "mechanism") -> Event | None:
    """The DP event of one query answered with ``mechanism``; None when queries are free.

    ``none`` is free (the model is DP-trained; its answers are post-processing). Every
    other type names its event class (``MECHANISM_EVENTS``), which builds itself from the
    spec fields, each read here as a decimal > 0 or refused naming ``field.<name>``.
    """
    values = _field_values(mechanism)
    if values in _EVENTS:
        return _EVENTS[values]
    event = _mechanism_event(mechanism, field)
    if len(_EVENTS) >= _MEMO_MAX:
        _EVENTS.clear()
    _EVENTS[values] = event
    return event


def _mechanism_event(mechanism: Mechanism, field: str) -> Event | None:
    kind = mechanism.type
    if kind == "none":
        return None
    event_class = MECHANISM_EVENTS.get(kind)
    if event_class is None:
        raise ValueError(f"{field}.type: unknown mechanism {kind!r}")

    def parameter(name: str) -> float:
        return _required(getattr(mechanism, _MECHANISM_ATTRIBUTES[name]), f"{field}.{name}")

    return event_class.from_mechanism(parameter)


MechanismKey = tuple[tuple[str, str], ...]
# canonical_mechanism runs about ten times per grant (every entry and lease is matched by it).
_CANONICAL: dict[FieldValues, MechanismKey] = {}


def canonical_mechanism(mechanism: Mechanism) -> MechanismKey:
    """The mechanism as a comparable key: decimals by value ("40" == "40.0"), unset dropped,
    the privacy unit as it applies (an omitted default equals the same unit stated)."""
    values = _field_values(mechanism)
    found = _CANONICAL.get(values)
    if found is None:
        if len(_CANONICAL) >= _MEMO_MAX:
            _CANONICAL.clear()
        found = _CANONICAL[values] = _canonical(mechanism)
    return found


def _canonical(mechanism: Mechanism) -> MechanismKey:
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
    return ordered(merged)


def ordered(merged: dict[Event, int]) -> list[Spend]:
    """Merged spends in the one order every ledger's spends have (the accountant's cache
    keys: the same ledger must give the same list however it was built)."""
    return sorted(merged.items(), key=lambda item: repr(item[0]))

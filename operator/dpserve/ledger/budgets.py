"""A PrivacyBudget as the ledger service reads it: the raw object and its parsed parts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from dpserve.api.privacybudget import PrivacyBudgetSpec, PrivacyBudgetStatus
from dpserve.ledger.outcomes import BudgetEvent
from dpserve.ledger.store import Obj, Store, Unavailable
from dpserve.ledger.wire import first_error

log = logging.getLogger("dpserve.ledger")

BudgetKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Budget:
    """A PrivacyBudget as read: the raw object (for the write-back) and its parsed parts."""

    raw: Obj
    spec: PrivacyBudgetSpec | None
    spec_error: str | None
    status: PrivacyBudgetStatus | None

    @property
    def generation(self) -> int | None:
        value = self.raw.get("metadata", {}).get("generation")
        return int(value) if value is not None else None

    @property
    def uid(self) -> str:
        return str(self.raw.get("metadata", {}).get("uid") or "")


class BudgetParser:
    """Parses budgets, each spec once per (uid, generation)."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, int], tuple[PrivacyBudgetSpec | None, str | None]] = {}

    def parse(self, raw: Obj) -> Budget:
        """The parsed budget; an unreadable status raises Unavailable (never overwritten)."""
        meta = raw.get("metadata", {})
        spec_key = (str(meta.get("uid")), int(meta.get("generation") or 0))
        parsed = self._specs.get(spec_key)
        if parsed is None:
            try:
                parsed = (PrivacyBudgetSpec.model_validate(raw.get("spec") or {}), None)
            except ValidationError as exc:
                parsed = (None, first_error(exc))
            if len(self._specs) > 4096:
                self._specs.clear()
            self._specs[spec_key] = parsed
        raw_status = raw.get("status")
        try:
            status = PrivacyBudgetStatus.model_validate(raw_status) if raw_status else None
        except ValidationError as exc:
            # Never overwrite a ledger that cannot be read: fail closed until a human looks.
            raise Unavailable(
                f"PrivacyBudget {meta.get('namespace')}/{meta.get('name')} has an unreadable "
                f"status: {first_error(exc)}"
            ) from exc
        return Budget(raw=raw, spec=parsed[0], spec_error=parsed[1], status=status)


async def emit(store: Store, namespace: str, involved: Obj, events: Sequence[BudgetEvent]) -> None:
    """Emit the Events, best effort (the status already says what they say)."""
    for event in events:
        try:
            await store.emit_event(namespace, involved, event)
        except Exception:
            log.warning("could not emit Event %s for %s", event.reason, namespace, exc_info=True)

"""The spend guard: every fresh read is checked against what this process last saw.

Recorded spend is monotone. Per budget (and its uid) the process keeps, out of reach of a
status patch, the most it has written or read; a status that holds less lost spend and is
restored before anything is granted from it. A process that has not seen the budget yet
relies on the durable watermark annotation instead (docs/ledger.md, :mod:`tampering`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from dpserve.api.privacybudget import PrivacyBudgetStatus
from dpserve.ledger import tampering
from dpserve.ledger.accountant import Accounting
from dpserve.ledger.budgets import Budget, BudgetKey, BudgetParser, emit
from dpserve.ledger.metrics import LedgerMetrics
from dpserve.ledger.outcomes import BudgetEvent
from dpserve.ledger.store import Conflict, Store, Unavailable

log = logging.getLogger("dpserve.ledger")

# The durable watermark of recorded spend (an annotation) is raised at most this often.
WATERMARK_INTERVAL_S = 5.0


class SpendGuard:
    """Reads budgets for the ledger, never handing out one that lost recorded spend."""

    def __init__(
        self,
        store: Store,
        metrics: LedgerMetrics,
        accounting: Accounting,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.accounting = accounting
        self.clock = clock
        self.parser = BudgetParser()
        self._evidence: dict[BudgetKey, tuple[str, PrivacyBudgetStatus]] = {}
        # When each budget's durable watermark (an annotation) was last raised.
        self._watermarked: dict[BudgetKey, float] = {}
        self._lost_reported: set[BudgetKey] = set()

    async def read(self, key: BudgetKey) -> Budget:
        """A fresh read, verified against the evidence (restored, or Unavailable)."""
        budget = self.parser.parse(await self.store.get_budget(*key))
        return await self._verify(key, budget)

    def remember(self, key: BudgetKey, budget: Budget) -> None:
        if budget.status is not None:
            self._evidence[key] = (budget.uid, budget.status)

    async def raise_watermark(self, key: BudgetKey, status: PrivacyBudgetStatus) -> None:
        """Raise the durable watermark at most every WATERMARK_INTERVAL_S per budget.

        It lags the status by up to that interval: after a restart, spend recorded in the
        last interval and then erased is not detected (the in-process evidence covers it
        while the process lives). Best effort: a failed patch is retried on a later write.
        """
        last = self._watermarked.get(key)
        if last is not None and time.monotonic() - last < WATERMARK_INTERVAL_S:
            return
        self._watermarked[key] = time.monotonic()
        mark = tampering.format_watermark(tampering.watermark(status))
        try:
            await self.store.annotate_budget(*key, {tampering.WATERMARK_ANNOTATION: mark})
        except Exception:
            self._watermarked.pop(key, None)
            log.warning("could not record the watermark of %s/%s", *key, exc_info=True)
            return
        # The cached copy's resourceVersion is now stale: its next write gets one 409 and
        # re-reads, as after any foreign write.

    async def _verify(self, key: BudgetKey, budget: Budget) -> Budget:
        """Restore spend the status lost relative to the evidence; never grant from less.

        A budget deleted and created again (another uid) starts from its own status.
        """
        held = self._evidence.get(key)
        if held is None or held[0] != budget.uid or budget.spec is None:
            # No evidence in this process (it just started): the durable watermark decides.
            await self._check_watermark(key, budget)
            self.remember(key, budget)
            return budget
        lost = tampering.lost_spend(held[1], budget.status)
        if not lost:
            self.remember(key, budget)
            return budget
        return await self._restore(key, budget, held[1], lost)

    async def _check_watermark(self, key: BudgetKey, budget: Budget) -> None:
        namespace, name = key
        annotations = budget.raw.get("metadata", {}).get("annotations") or {}
        below = tampering.below_watermark(
            budget.status, annotations.get(tampering.WATERMARK_ANNOTATION)
        )
        if below is None:
            self._lost_reported.discard(key)
            return
        message = (f"PrivacyBudget {namespace}/{name} lost recorded spend: {below}; "
                   "nothing is granted from it until status.ledger is restored (or "
                   "the annotation removed, accepting the status as it is)")
        if key not in self._lost_reported:
            self._lost_reported.add(key)
            log.error("%s", message)
            await emit(self.store, namespace, budget.raw,
                       [BudgetEvent("Warning", "RecordedSpendLost", message)])
        raise Unavailable(message)

    async def _restore(
        self, key: BudgetKey, budget: Budget, evidence: PrivacyBudgetStatus, lost: list[str]
    ) -> Budget:
        namespace, name = key
        assert budget.spec is not None
        self.metrics.status_writes.labels("restore").inc()
        restored = tampering.restore_spend(budget.spec, budget.generation, evidence,
                                           budget.status, self.clock(),
                                           accounting=self.accounting)
        body = dict(budget.raw)
        body["status"] = restored.status.wire()
        try:
            written = await self.store.replace_budget_status(namespace, name, body)
        except Conflict as exc:  # written again meanwhile: the caller re-reads and re-checks
            raise Unavailable(f"PrivacyBudget {namespace}/{name} lost recorded spend and "
                              "changed while it was restored; retry") from exc
        message = (f"the status lost recorded spend ({'; '.join(lost[:8])}"
                   + (f"; {len(lost) - 8} more" if len(lost) > 8 else "")
                   + "): restored from the ledger's evidence; nothing was granted from it")
        log.warning("PrivacyBudget %s/%s: %s", namespace, name, message)
        await emit(self.store, namespace, written, [
            BudgetEvent("Warning", "RecordedSpendRestored", message), *restored.events])
        budget = replace(budget, raw=written, status=restored.status)
        self.remember(key, budget)
        return budget

"""Group commit: each budget's decisions go through one queue, many per status write.

While one status write is in flight, further decisions for the same budget queue up; the
next write carries all of them (each decided on the status the previous one left), so under
load one API write answers many grants. A decision is answered only once the write that
carries it has landed. This only saves the process from conflicting with itself: two
processes stay correct through the resourceVersion precondition (409 -> re-read, decide
again, at most ``max_write_attempts`` times).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from dpserve.api.privacybudget import PrivacyBudgetStatus
from dpserve.ledger.budgets import Budget, BudgetKey, emit
from dpserve.ledger.evidence import SpendGuard
from dpserve.ledger.metrics import LedgerMetrics
from dpserve.ledger.outcomes import BudgetEvent
from dpserve.ledger.store import Conflict, NotFound, Store, Unavailable

log = logging.getLogger("dpserve.ledger")

MAX_BATCH = 64  # decisions carried by one status write (group commit)
UNWRITTEN_EVENT_INTERVAL = timedelta(seconds=60)  # Outcome.notices: per budget and reason

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """One decision: its answer, and what (if anything) must be persisted first."""

    result: T
    write: PrivacyBudgetStatus | None = None  # persist this before answering
    events: tuple[BudgetEvent, ...] = ()  # emitted once ``write`` has landed (none without)
    recheck: bool = False  # decided on a cached copy and negative: confirm on a fresh read
    # Emitted though nothing is written (a limit reached); they repeat with every such
    # decision, so each budget emits one per reason at most every UNWRITTEN_EVENT_INTERVAL.
    notices: tuple[BudgetEvent, ...] = ()


Decide = Callable[[Budget, datetime], Outcome[T]]


@dataclass(frozen=True)
class _Job:
    """One queued decision on a budget and the future its caller awaits."""

    decide: Decide[Any]
    fresh: bool
    on_persist: Callable[[], None] | None
    future: asyncio.Future[Any]


class GroupCommit:
    """The per-budget queues and the task draining each."""

    def __init__(
        self,
        store: Store,
        guard: SpendGuard,
        metrics: LedgerMetrics,
        clock: Callable[[], datetime],
        executor: Executor,
        max_write_attempts: int,
    ) -> None:
        self.store = store
        self.guard = guard
        self.metrics = metrics
        self.clock = clock
        self.executor = executor
        self.max_write_attempts = max_write_attempts
        self._queues: dict[BudgetKey, list[_Job]] = {}
        self._workers: dict[BudgetKey, asyncio.Task[None]] = {}
        self._budgets: dict[BudgetKey, Budget] = {}  # the copy this process wrote last
        # budget -> Event reason -> when _emit_notices last emitted it (a deleted budget's go)
        self._noticed: dict[BudgetKey, dict[str, datetime]] = {}
        self._stopped = False

    async def mutate(
        self,
        key: BudgetKey,
        decide: Decide[T],
        *,
        fresh: bool,
        on_persist: Callable[[], None] | None = None,
    ) -> T:
        """Queue a decision on the budget; it is answered once its write has landed."""
        if self._stopped:
            raise Unavailable("the ledger is stopping")
        job = _Job(decide, fresh, on_persist, asyncio.get_running_loop().create_future())
        self._queues.setdefault(key, []).append(job)
        worker = self._workers.get(key)
        if worker is None or worker.done():
            self._workers[key] = asyncio.create_task(self._drain(key))
        result: T = await job.future
        return result

    def stop(self) -> None:
        """Cancel the workers; queued decisions fail with Unavailable (nothing granted)."""
        self._stopped = True
        for worker in self._workers.values():
            worker.cancel()
        for queue in self._queues.values():
            _fail(queue, Unavailable("the ledger is stopping"))
            queue.clear()

    async def _drain(self, key: BudgetKey) -> None:
        queue = self._queues[key]
        while queue:
            jobs = [job for job in queue[:MAX_BATCH] if not job.future.done()]
            del queue[:MAX_BATCH]
            if not jobs:
                continue
            try:
                await self._commit(key, jobs)
            except asyncio.CancelledError:
                _fail(jobs, Unavailable("the ledger is stopping"))
                raise
            except Exception as exc:
                _fail(jobs, exc)

    async def _commit(self, key: BudgetKey, jobs: list[_Job]) -> None:
        """Read -> decide all -> one write with the precondition -> re-read on conflict."""
        budget = None if any(job.fresh for job in jobs) else self._budgets.get(key)
        cached = budget is not None
        if budget is None:
            budget = await self._read_or_forget(key)
        for attempt in range(self.max_write_attempts):
            outcomes, write = await self._decide(jobs, budget)
            if cached and any(isinstance(o, Outcome) and o.recheck for o in outcomes):
                # a refusal decided on the cached copy: confirm it on a fresh read
                budget, cached = await self._read_or_forget(key), False
                continue
            if write is not None:
                written = await self._write(key, budget, write, attempt)
                if written is None:  # conflict: somebody else wrote; decide again
                    budget, cached = await self._read_or_forget(key), False
                    continue
                await self._persisted(key, jobs, outcomes, replace(budget, raw=written,
                                                                   status=write))
            await self._emit_notices(key, budget, outcomes)
            _answer(jobs, outcomes)
            if write is not None:  # after the answers: the watermark never delays a grant
                await self.guard.raise_watermark(key, write)
            return
        raise Unavailable(f"gave up after {self.max_write_attempts} conflicting status writes")

    async def _decide(
        self, jobs: Sequence[_Job], budget: Budget
    ) -> tuple[list[Outcome[Any] | Exception], PrivacyBudgetStatus | None]:
        now = self.clock()
        if budget.spec is not None and budget.spec.accountant == "pld":
            # PLD accounting can take seconds: it runs on a worker thread, off the loop.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, decide_all, jobs, budget, now)
        return decide_all(jobs, budget, now)

    async def _write(
        self, key: BudgetKey, budget: Budget, status: PrivacyBudgetStatus, attempt: int
    ) -> dict[str, Any] | None:
        """The object as written, or None on a conflict (after a small random back-off)."""
        body = dict(budget.raw)
        body["status"] = status.wire()
        try:
            written = await self.store.replace_budget_status(*key, body)
        except Conflict:
            self.metrics.status_writes.labels("conflict").inc()
            # Somebody else wrote: back off a little (two writers must not livelock).
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            return None
        except (Unavailable, NotFound):
            self.metrics.status_writes.labels("error").inc()
            self._budgets.pop(key, None)
            raise
        self.metrics.status_writes.labels("ok").inc()
        return written

    async def _persisted(
        self,
        key: BudgetKey,
        jobs: Sequence[_Job],
        outcomes: Sequence[Outcome[Any] | Exception],
        budget: Budget,
    ) -> None:
        """Bookkeeping once a write landed: cache, evidence, hooks, metrics, Events."""
        self._budgets[key] = budget
        self.guard.remember(key, budget)
        for job in jobs:
            if job.on_persist is not None:
                job.on_persist()
        assert budget.status is not None
        self._observe(key, budget)
        events = [e for o in outcomes if isinstance(o, Outcome) and o.write is not None
                  for e in o.events]
        await emit(self.store, key[0], budget.raw, events)

    async def _emit_notices(
        self, key: BudgetKey, budget: Budget, outcomes: Sequence[Outcome[Any] | Exception]
    ) -> None:
        """The decisions' notices, each reason at most once an interval per budget."""
        now = self.clock()
        due = []
        for event in (e for o in outcomes if isinstance(o, Outcome) for e in o.notices):
            noticed = self._noticed.setdefault(key, {})
            last = noticed.get(event.reason)
            if last is None or now - last >= UNWRITTEN_EVENT_INTERVAL:
                noticed[event.reason] = now
                due.append(event)
        await emit(self.store, key[0], budget.raw, due)

    async def _read_or_forget(self, key: BudgetKey) -> Budget:
        try:
            return await self.guard.read(key)
        except NotFound:
            self._budgets.pop(key, None)
            self._noticed.pop(key, None)
            raise
        except Unavailable:
            self._budgets.pop(key, None)
            raise

    def _observe(self, key: BudgetKey, budget: Budget) -> None:
        status = budget.status
        if budget.spec is None or status is None:
            return
        try:
            self.metrics.epsilon_limit.labels(*key).set(float(budget.spec.epsilon))
            if status.epsilon_spent is not None:
                self.metrics.epsilon_spent.labels(*key).set(float(status.epsilon_spent))
            exhausted = any(
                c.type == "Exhausted" and c.status == "True" for c in status.conditions
            )
            self.metrics.exhausted.labels(*key).set(1.0 if exhausted else 0.0)
        except ValueError:
            pass


def decide_all(
    jobs: Sequence[_Job], budget: Budget, now: datetime
) -> tuple[list[Outcome[Any] | Exception], PrivacyBudgetStatus | None]:
    """Decide the jobs one after the other, each on the status the previous one left."""
    outcomes: list[Outcome[Any] | Exception] = []
    current, write = budget, None
    for job in jobs:
        try:
            outcome = job.decide(current, now)
        except Exception as exc:  # one bad request must not sink the batch
            log.exception("ledger decision failed")
            outcomes.append(exc)
            continue
        if outcome.write is not None:
            write = outcome.write
            current = replace(current, status=write)
        outcomes.append(outcome)
    return outcomes, write


def _answer(jobs: Sequence[_Job], outcomes: Sequence[Outcome[Any] | Exception]) -> None:
    for job, outcome in zip(jobs, outcomes, strict=True):
        if job.future.done():
            continue  # the caller went away; a persisted grant is replayed on retry
        if isinstance(outcome, Exception):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome.result)


def _fail(jobs: Sequence[_Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)

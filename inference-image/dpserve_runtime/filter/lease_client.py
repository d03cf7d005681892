"""Client side of the lease protocol (``dpserve.api.lease``): debit before answering.

The sidecar reserves the queries of a request from a lease before it forwards the request,
and settles the reservation with what the model reported. It never serves more queries than
the ledger granted: units are taken from live leases only, a reservation the answer does not
use goes back to its lease (lost if the lease has expired meanwhile), and a lease's remainder
is never returned to the ledger (conservative, as the design requires).

Fetching: one fetch in flight per partition, shared by all waiting requests; the next lease
is fetched in the background when the remainder falls below ``prefetchFraction`` of the last
grant, so requests do not stall when a lease runs out. The requested size follows the
observed query rate (about ``horizon_seconds`` worth, at most half a lease lifetime), between
the batch that needs it and ``lease.maxSize``.

Lease ids are sequenced (``dpserve.ledger.lease_ids``): ``s<sequence>-<tag of pod and
partition>``, one sequence per partition pool, each new id's sequence
``max(last + 1, wall clock in microseconds)``, so the ids of a restarted sidecar (same pod,
nothing remembered) still rise above the ones it granted before. The ledger keeps each pool's
high-water mark and never charges an id at or below it again.

Retries: a transport error, a timeout or a 5xx answer is retried with the *same* lease id
(the ledger treats it idempotently, so a grant it persisted but could not deliver is
returned, not debited twice); a definitive answer (200 or 4xx) retires the id. A 409
``LeaseIdUsed`` (the id is at or below the pool's high-water mark: a wall clock behind the
one of an earlier run of this pod) retires it too: nothing was charged for it, and the next
id starts above the ``highWater`` the ledger reports.

Every request names the model version this pod serves, so the ledger charges that version's
budget (a pod of a retired version, still serving during a rollout, spends its own budget,
never the new version's). A ``VersionMismatch`` refusal (the model lists no such version, or
not yet) fails closed like an unreachable ledger: 503 with Retry-After, asked again later.

With ``attestation`` (the model's ``spec.confidential.attestation``) every lease request
carries the pod's attestation token and proof (``filter/attestation.py``); without a token
none is sent, and a 403 ``AttestationFailed`` drops the cached token (docs/attestation.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from dpserve.api.filterconfig import LeaseSettings
from dpserve.api.lease import LEASE_PATH, LeaseGrant, LeaseRequest
from dpserve.api.mechanism import Mechanism
from dpserve.ledger.lease_ids import sequenced_id
from dpserve_runtime.filter.attestation import AttestationClient, AttestationUnavailable
from dpserve_runtime.filter.metrics import DEFAULT_GROUP, FilterMetrics

logger = logging.getLogger(__name__)

EXHAUSTED_RECHECK_SECONDS = 1.0  # how long a 429 is remembered before asking again
UNAVAILABLE_RETRY_SECONDS = 2.0  # Retry-After sent while the ledger is unreachable
EXPIRY_MARGIN_SECONDS = 1.0  # stop using a lease this long before its expiresAt
MAX_PARTITIONS = 1024  # tenant pools kept; idle ones are evicted beyond this


class LeaseFailure(Exception):
    """No lease could be had; the proxy answers from the subclass."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BudgetExhausted(LeaseFailure):
    def __init__(self, message: str, epsilon_spent: float | None = None,
                 epsilon_remaining: float | None = None) -> None:
        super().__init__(message)
        self.epsilon_spent = epsilon_spent
        self.epsilon_remaining = epsilon_remaining


class LedgerUnavailable(LeaseFailure):
    def __init__(self, message: str, retry_after: float = UNAVAILABLE_RETRY_SECONDS) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(slots=True)
class _Lease:
    lease_id: str
    granted: int
    remaining: int
    deadline: float  # monotonic time after which no unit of it is served

    def live(self, now: float) -> bool:
        return self.remaining > 0 and now < self.deadline


@dataclass
class _RateWindow:
    """Queries reserved over the last ``span`` seconds."""

    span: float
    events: deque[tuple[float, int]] = field(default_factory=deque)
    started: float | None = None
    total: int = 0  # sum of the counts in ``events``: the rate is O(1), not a sum per call

    def add(self, now: float, count: int) -> None:
        if self.started is None:
            self.started = now
        self.events.append((now, count))
        self.total += count
        self._trim(now)

    def _trim(self, now: float) -> None:
        events, oldest = self.events, now - self.span
        while events and events[0][0] < oldest:
            self.total -= events.popleft()[1]

    def per_second(self, now: float) -> float | None:
        if self.started is None:
            return None
        self._trim(now)
        elapsed = max(1.0, min(self.span, now - self.started))
        return self.total / elapsed


@dataclass
class _Pool:
    """Lease state of one partition (or of the whole model)."""

    partition: str | None
    rate: _RateWindow
    leases: deque[_Lease] = field(default_factory=deque)
    # Earliest deadline among ``leases`` (inf if none): expired leases are looked for only
    # once the clock passes it, not on every reservation.
    first_deadline: float = math.inf
    charged: Any = None  # pre-bound queries-charged counter of this partition, if metrics
    fetch: asyncio.Task[None] | None = None
    pending: tuple[str, int] | None = None  # lease id + size awaiting a definitive answer
    sequence: int = 0  # of the pool's latest lease id (0: none formed yet)
    last_granted: int = 0
    last_ttl: float | None = None
    failure: LeaseFailure | None = None
    failure_until: float = 0.0

    def available(self, now: float) -> int:
        return sum(lease.remaining for lease in self.leases if lease.live(now))

    def add(self, lease: _Lease) -> None:
        self.leases.append(lease)
        self.first_deadline = min(self.first_deadline, lease.deadline)


@dataclass(slots=True)
class Reservation:
    """Queries taken from leases for one request, settled once the model has answered."""

    partition: str | None
    parts: list[tuple[_Lease, int]]
    size: int
    settled: bool = False


class LeaseClient:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        ledger_url: str,
        model: str,
        model_version: str,
        pod: str,
        mechanism: Mechanism,
        token_path: str | Path,
        settings: LeaseSettings,
        metrics: FilterMetrics | None = None,
        request_timeout: float = 5.0,
        attempts: int = 3,
        horizon_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        attestation: AttestationClient | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._session = session
        self._url = ledger_url.rstrip("/") + LEASE_PATH
        self._model = model
        self._model_version = model_version
        self._pod = pod
        self._mechanism = mechanism
        self._token_path = Path(token_path)
        self._settings = settings
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._attempts = max(1, attempts)
        self._horizon = horizon_seconds
        self._clock = clock
        self._attestation = attestation
        self._wall_ns = wall_ns
        self._pools: dict[str | None, _Pool] = {}
        self._background: set[asyncio.Task[None]] = set()

    # --- public API -------------------------------------------------------------------------

    async def reserve(self, count: int, partition: str | None = None) -> Reservation:
        """Take ``count`` queries from live leases, fetching leases as needed.

        Raises :class:`BudgetExhausted` or :class:`LedgerUnavailable` (fail closed).
        """
        if count < 1:
            raise ValueError("reserve at least one query")
        pool = self._pools.get(partition) or self._pool(partition)
        parts: list[tuple[_Lease, int]] = []
        # Hot path: the units are taken from leases in memory; nothing is awaited unless the
        # live leases lack room (then the request waits for the fetch in flight).
        need = count - self._take(pool, count, parts)
        if need:
            try:
                while True:
                    await self._wait_for_lease(pool, need)
                    need -= self._take(pool, need, parts)
                    if need == 0:
                        break
            except BaseException:
                self._give_back(parts)
                raise
        now = self._clock()
        pool.rate.add(now, count)
        self._maybe_prefetch(pool, now)
        return Reservation(partition=partition, parts=parts, size=count)

    def settle(self, reservation: Reservation, used: int) -> None:
        """Charge ``used`` (<= reserved) queries; the rest returns to its leases if still live."""
        if reservation.settled:
            raise RuntimeError("reservation already settled")
        if not 0 <= used <= reservation.size:
            raise ValueError(f"used={used} outside 0..{reservation.size}")
        reservation.settled = True
        unused = reservation.size - used
        # Give back from the most recently taken part first (the lease expiring last).
        refund: list[tuple[_Lease, int]] = []
        for lease, taken in reversed(reservation.parts):
            if unused == 0:
                break
            back = min(unused, taken)
            refund.append((lease, back))
            unused -= back
        if refund:
            self._give_back(refund)
        if used and self._metrics is not None:
            pool = self._pools.get(reservation.partition)
            if pool is not None and pool.charged is not None:
                pool.charged.inc(used)
            else:  # the pool was evicted meanwhile
                self._metrics.queries_charged.labels(
                    self._metrics.model_id, reservation.partition or DEFAULT_GROUP
                ).inc(used)

    def remaining(self, partition: str | None = None) -> int:
        return self._pool(partition).available(self._clock())

    async def close(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- leases -----------------------------------------------------------------------------

    def _pool(self, partition: str | None) -> _Pool:
        pool = self._pools.get(partition)
        if pool is None:
            if len(self._pools) >= MAX_PARTITIONS:
                self._evict_idle_pools()
            pool = _Pool(partition=partition, rate=_RateWindow(span=self._horizon))
            self._pools[partition] = pool
            if self._metrics is not None:
                group = partition or DEFAULT_GROUP
                model_id = self._metrics.model_id
                pool.charged = self._metrics.queries_charged.labels(model_id, group)
                # Computed when scraped: no gauge update on every reservation.
                self._metrics.lease_remaining.labels(self._model, group).set_function(
                    lambda: pool.available(self._clock()))
        return pool

    def _evict_idle_pools(self) -> None:
        """Forget tenants with nothing live (a header value may be anything a client sends)."""
        now = self._clock()
        for key, pool in list(self._pools.items()):
            if pool.fetch is None and not any(now < lease.deadline for lease in pool.leases):
                del self._pools[key]
                if self._metrics is not None:
                    self._metrics.lease_remaining.remove(self._model, key or DEFAULT_GROUP)
        if len(self._pools) >= MAX_PARTITIONS:
            raise LedgerUnavailable(f"more than {MAX_PARTITIONS} tenants hold live leases")

    def _take(self, pool: _Pool, need: int, parts: list[tuple[_Lease, int]]) -> int:
        now = self._clock()
        if now >= pool.first_deadline:
            self._drop_dead(pool, now)
        taken_total = 0
        for lease in pool.leases:  # oldest first: it expires first
            if lease.remaining <= 0 or now >= lease.deadline:
                continue
            take = min(lease.remaining, need - taken_total)
            lease.remaining -= take
            parts.append((lease, take))
            taken_total += take
            if taken_total == need:
                break
        return taken_total

    def _give_back(self, parts: list[tuple[_Lease, int]]) -> None:
        now = self._clock()
        for lease, count in parts:
            if now < lease.deadline:
                lease.remaining += count

    def _drop_dead(self, pool: _Pool, now: float) -> None:
        # Used-up leases stay until they expire: a reservation may still give units back.
        alive: deque[_Lease] = deque()
        for lease in pool.leases:
            if now < lease.deadline:
                alive.append(lease)
            elif lease.remaining and self._metrics is not None:
                self._metrics.lease_expired.labels(
                    self._metrics.model_id, pool.partition or DEFAULT_GROUP
                ).inc(lease.remaining)
        pool.leases = alive
        pool.first_deadline = min((lease.deadline for lease in alive), default=math.inf)

    def _next_size(self, pool: _Pool, need: int) -> int:
        rate = pool.rate.per_second(self._clock())
        if rate is None:
            size = self._settings.initial_size
        else:
            horizon = self._horizon
            if pool.last_ttl is not None:
                horizon = min(horizon, pool.last_ttl / 2)
            size = math.ceil(rate * horizon)
        return max(1, min(max(size, need), self._settings.max_size))

    async def _wait_for_lease(self, pool: _Pool, need: int) -> None:
        now = self._clock()
        if pool.failure is not None and now < pool.failure_until:
            failure = pool.failure
            if isinstance(failure, LedgerUnavailable):
                failure = LedgerUnavailable(failure.message, pool.failure_until - now)
            raise failure
        if pool.fetch is None:
            self._start_fetch(pool, self._next_size(pool, need))
        assert pool.fetch is not None
        # shield: a client that goes away must not cancel a fetch other requests wait on.
        await asyncio.shield(pool.fetch)
        if pool.failure is not None and self._clock() < pool.failure_until:
            raise pool.failure

    def _maybe_prefetch(self, pool: _Pool, now: float) -> None:
        if pool.fetch is not None or pool.last_granted == 0:
            return
        if pool.failure is not None and now < pool.failure_until:
            return
        if pool.available(now) < self._settings.prefetch_fraction * pool.last_granted:
            self._start_fetch(pool, self._next_size(pool, 1))

    def _start_fetch(self, pool: _Pool, size: int) -> None:
        task = asyncio.get_running_loop().create_task(self._fetch(pool, size))
        pool.fetch = task
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _fetch(self, pool: _Pool, size: int) -> None:
        """Fetch one lease into ``pool``; failures are recorded in the pool, never raised."""
        try:
            lease = await self._request_lease(pool, size)
        except LeaseFailure as failure:
            pool.failure = failure
            if isinstance(failure, BudgetExhausted):
                pool.failure_until = self._clock() + EXHAUSTED_RECHECK_SECONDS
            elif isinstance(failure, LedgerUnavailable):
                pool.failure_until = self._clock() + failure.retry_after
        else:
            pool.failure = None
            pool.failure_until = 0.0
            pool.add(lease)
            pool.last_granted = lease.granted
        finally:
            pool.fetch = None

    def _read_token(self) -> str:
        # Read on every request: projected ServiceAccount tokens are rotated by the kubelet.
        try:
            token = self._token_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LedgerUnavailable(f"cannot read token {self._token_path}: {exc}") from exc
        if not token:
            raise LedgerUnavailable(f"token file {self._token_path} is empty")
        return token

    async def _attestation_headers(self, lease_id: str) -> dict[str, str]:
        """The attestation token (and proof) of one lease request; none unless configured.
        Fail closed: without a token no request is sent (503 + Retry-After to clients)."""
        if self._attestation is None:
            return {}
        try:
            return await self._attestation.headers(lease_id)
        except AttestationUnavailable as exc:
            logger.warning("no attestation token, no lease request: %s", exc.message)
            raise LedgerUnavailable(f"no attestation token: {exc.message}") from exc

    def _new_lease_id(self, pool: _Pool, above: int = 0) -> str:
        """The pool's next sequenced id: above its last one, ``above`` and the wall clock."""
        pool.sequence = max(pool.sequence + 1, above + 1, self._wall_ns() // 1000)
        return sequenced_id(self._pod, pool.partition, pool.sequence)

    async def _request_lease(self, pool: _Pool, size: int) -> _Lease:
        if pool.pending is None:
            pool.pending = (self._new_lease_id(pool), size)
        lease_id, requested = pool.pending
        body = self._lease_body(pool, lease_id, requested)
        group = pool.partition or DEFAULT_GROUP
        last_problem = "no attempt made"
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(min(1.0, 0.05 * 4**attempt))
            started = self._clock()
            try:
                token = self._read_token()
                headers = {"Authorization": f"Bearer {token}",
                           **await self._attestation_headers(lease_id)}
                async with self._session.post(
                    self._url, json=body, timeout=self._timeout, headers=headers,
                ) as response:
                    status = response.status
                    raw = await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                last_problem = f"ledger unreachable: {type(exc).__name__}: {exc}"
                self._count(group, "unreachable")
                continue
            finally:
                if self._metrics is not None:
                    self._metrics.lease_duration.labels(self._model).observe(
                        self._clock() - started
                    )
            payload = _json_object(raw)
            if status == 200:
                try:
                    grant = LeaseGrant.model_validate(payload)
                except ValidationError as exc:
                    # Not definitive: the ledger may have debited, so keep the id and retry.
                    last_problem = f"ledger sent an invalid grant: {exc.error_count()} errors"
                    self._count(group, "invalid")
                    continue
                if grant.lease_id != lease_id:
                    last_problem = "ledger answered for another lease id"
                    self._count(group, "invalid")
                    continue
                pool.pending = None
                self._count(group, "granted")
                return self._accept(pool, grant, requested)
            message = str(payload.get("message", "")) if payload else raw[:200].decode(
                "utf-8", "replace")
            reason = str(payload.get("reason", "")) if payload else ""
            if status >= 500:
                # 503 Unavailable: nothing granted; other 5xx: unknown, so keep the id too.
                last_problem = f"ledger answered {status} {reason}: {message}".strip()
                self._count(group, "unavailable")
                continue
            if status == 409 and reason == "LeaseIdUsed":
                # Definitive for this id (never charged again); a new id above the mark.
                last_problem = f"ledger answered {status} {reason}: {message}"
                self._count(group, "reused")
                lease_id = self._new_lease_id(pool, _high_water(payload))
                pool.pending = (lease_id, requested)
                body = self._lease_body(pool, lease_id, requested)
                continue
            pool.pending = None  # definitive: a later request gets a fresh id
            if status == 429:
                self._count(group, "exhausted")
                spent = _float_or_none(payload.get("epsilonSpent")) if payload else None
                remaining = _float_or_none(payload.get("epsilonRemaining")) if payload else None
                self._report_budget(group, spent, remaining)
                raise BudgetExhausted(message or "privacy budget exhausted", spent, remaining)
            self._count(group, "refused")
            if reason == "VersionMismatch":
                # The model moved past this pod's version (it is being replaced) or the ledger
                # has not seen the new version yet: no budget to charge, so fail closed.
                logger.warning("ledger knows no version %s of %s: %s",
                               self._model_version, self._model, message)
                raise LedgerUnavailable(
                    f"the ledger charges no budget for {self._model} {self._model_version}: "
                    f"{message}")
            if reason == "AttestationFailed" and self._attestation is not None:
                self._attestation.invalidate()  # the next request presents a fresh token
            logger.error("ledger refused lease request: %s %s: %s", status, reason, message)
            raise LedgerUnavailable(f"ledger refused the lease ({status} {reason}): {message}")
        logger.warning("no lease after %d attempts: %s", self._attempts, last_problem)
        raise LedgerUnavailable(last_problem)

    def _lease_body(self, pool: _Pool, lease_id: str, requested: int) -> dict[str, Any]:
        return LeaseRequest(
            lease_id=lease_id, model=self._model, model_version=self._model_version,
            pod=self._pod, mechanism=self._mechanism, partition=pool.partition,
            requested=requested,
        ).wire()

    def _accept(self, pool: _Pool, grant: LeaseGrant, requested: int) -> _Lease:
        now_wall = time.time()
        try:
            expires = datetime.fromisoformat(grant.expires_at).timestamp()
        except ValueError as exc:
            raise LedgerUnavailable(f"ledger sent a bad expiresAt: {grant.expires_at!r}") from exc
        ttl = expires - now_wall
        pool.last_ttl = max(0.0, ttl)
        if ttl <= EXPIRY_MARGIN_SECONDS:
            # Granted (and debited) but unusable: lost, like a crashed pod's remainder.
            logger.error("lease %s expired on arrival (expiresAt %s): clock skew?",
                         grant.lease_id, grant.expires_at)
            raise LedgerUnavailable("ledger granted a lease that had already expired")
        # Serve at most what was asked for even if the ledger granted more.
        granted = min(grant.granted, requested)
        group = pool.partition or DEFAULT_GROUP
        if self._metrics is not None:
            self._metrics.lease_granted.labels(self._model, group).inc(granted)
        self._report_budget(group, grant.epsilon_spent, grant.epsilon_remaining)
        return _Lease(
            lease_id=grant.lease_id, granted=granted, remaining=granted,
            deadline=self._clock() + ttl - EXPIRY_MARGIN_SECONDS,
        )

    # --- metrics ----------------------------------------------------------------------------

    def _count(self, group: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.lease_requests.labels(self._model, group, result).inc()

    def _report_budget(self, group: str, spent: float | None, remaining: float | None) -> None:
        if self._metrics is None:
            return
        if spent is not None:
            self._metrics.budget_consumed.labels(self._model, group).set(spent)
        if remaining is not None:
            self._metrics.budget_remaining.labels(self._model, group).set(remaining)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _high_water(payload: dict[str, Any] | None) -> int:
    """The ``highWater`` of a LeaseIdUsed answer (0 if missing or malformed)."""
    value = payload.get("highWater") if payload else None
    if isinstance(value, str) and len(value) == 16:
        with contextlib.suppress(ValueError):
            return int(value, 16)
    return 0


def _float_or_none(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None

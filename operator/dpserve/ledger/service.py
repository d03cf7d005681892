"""The ledger service: ``POST /v1/leases`` (debit before grant), health, metrics.

One request: authenticate the pod's token (TokenReview), match it to the PrivateModel's
ServiceAccount, find the budget of the model version the pod serves (the current version's
``status.budget``, a retired version's ``status.versions`` record; an unknown version is
refused), check the mechanism against the model's spec, then on the budget's queue
read -> compute (:mod:`dpserve.ledger.state`) -> write the status with the resourceVersion
precondition -> on 409 re-read and recompute -> and only once the write landed, answer 200.
Any doubt answers 503 and grants nothing; a retry with the same lease id gets the grant if
the write had in fact landed, and is never debited twice.

Each budget has one queue per process, drained by one task (group commit: the requests that
arrive while a write is in flight share the next write). That only saves this process from
conflicting with itself; two processes (or a restart racing an old instance) stay correct
through the precondition.

The PrivacyBudget controller calls :meth:`LedgerService.recompute` (same code path, same
precondition) to write the status on create and spec change, and
:meth:`LedgerService.record_training` to charge a DP-SGD run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from dpserve.accounting.events import Event
from dpserve.api.lease import (
    LEASE_PATH,
    MAX_LEASE_BODY_BYTES,
    LeaseError,
    LeaseErrorReason,
    LeaseGrant,
    LeaseRequest,
)
from dpserve.api.privacybudget import PrivacyBudgetSpec, PrivacyBudgetStatus, TrainingSpend
from dpserve.api.privatemodel import PrivateModelSpec
from dpserve.ledger import events as ev
from dpserve.ledger import state
from dpserve.ledger.accountant import Accounting, default_accounting
from dpserve.ledger.auth import CachingReviewer, Forbidden, TokenReviewer, authorize, bearer_token
from dpserve.ledger.metrics import LedgerMetrics, metrics_for
from dpserve.ledger.settings import LedgerSettings
from dpserve.ledger.store import Conflict, NotFound, Obj, Store, Unavailable

log = logging.getLogger("dpserve.ledger")

STATUS_OF_REASON: dict[LeaseErrorReason, int] = {
    "BadRequest": 400,
    "Unauthenticated": 401,
    "Forbidden": 403,
    "NotFound": 404,
    "MechanismMismatch": 409,
    "VersionMismatch": 409,
    "TooLarge": 413,
    "BudgetExhausted": 429,
    "Unavailable": 503,
}
RETRY_AFTER_S = "1"
MAX_BATCH = 64  # decisions carried by one status write (group commit)
# The durable watermark of recorded spend (an annotation) is raised at most this often.
WATERMARK_INTERVAL_S = 5.0

T = TypeVar("T")


class LeaseFailure(Exception):
    """A lease request that ends in a documented error answer."""

    def __init__(
        self,
        reason: LeaseErrorReason,
        message: str,
        epsilon_spent: float | None = None,
        epsilon_remaining: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error = LeaseError(
            reason=reason,
            message=message,
            epsilon_spent=epsilon_spent,
            epsilon_remaining=epsilon_remaining,
        )

    @property
    def http_status(self) -> int:
        return STATUS_OF_REASON[self.error.reason]


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


@dataclass(frozen=True)
class ModelView:
    """What the ledger needs of a PrivateModel."""

    namespace: str
    name: str
    spec: PrivateModelSpec
    budget: str  # the budget the current version spends
    version: str  # the current version
    # Retired versions (status.versions) -> the budget each one spent; pods of a retired
    # version keep serving until the rollout replaces them, and keep spending that budget.
    retired: Mapping[str, str] = field(default_factory=dict)

    @property
    def consumer(self) -> str:
        return f"{self.namespace}/{self.name}"

    def budget_of(self, version: str) -> str | None:
        """The budget ``version`` spends; None when the model lists no such version."""
        if version == self.version:
            return self.budget
        return self.retired.get(version)

    def declared_training(self, version: str) -> TrainingSpend | None:
        """The declared DP-SGD run of the artifact, when ``version`` is that artifact."""
        if self.spec.model.training is None or version != self.spec.model.version:
            return None
        return ev.training_spend(self.spec.model.training)


@dataclass(frozen=True)
class _Job:
    """One queued decision on a budget and the future its caller awaits."""

    decide: Callable[[Budget, datetime], _Outcome[Any]]
    fresh: bool
    on_persist: Callable[[], None] | None
    future: asyncio.Future[Any]


@dataclass(frozen=True)
class _Outcome(Generic[T]):
    result: T
    write: PrivacyBudgetStatus | None = None  # persist this before answering
    events: tuple[state.BudgetEvent, ...] = ()
    recheck: bool = False  # decided on a cached copy and negative: confirm on a fresh read


class LedgerService:
    """The lease server; ``app`` for embedding, ``start``/``stop`` to serve it alone."""

    def __init__(
        self,
        store: Store,
        reviewer: TokenReviewer,
        *,
        settings: LedgerSettings | None = None,
        accounting: Accounting | None = None,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings if settings is not None else LedgerSettings.from_env()
        self.reviewer: TokenReviewer = (
            CachingReviewer(reviewer, ttl_s=self.settings.token_cache_s)
            if self.settings.token_cache_s > 0
            else reviewer
        )
        self.accounting = accounting if accounting is not None else default_accounting()
        self.registry = registry
        self.metrics: LedgerMetrics = metrics_for(registry)
        self.clock = clock if clock is not None else (lambda: datetime.now(UTC))
        self._queues: dict[tuple[str, str], list[_Job]] = {}
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._stopped = False
        self._budgets: dict[tuple[str, str], Budget] = {}
        # Evidence of recorded spend: per budget (and its uid), the most this process has
        # written or read. Held here, out of reach of a status patch: a status that holds
        # less lost spend and is restored before anything is granted from it.
        self._evidence: dict[tuple[str, str], tuple[str, PrivacyBudgetStatus]] = {}
        # When each budget's durable watermark (an annotation) was last raised.
        self._watermarked: dict[tuple[str, str], float] = {}
        self._lost_reported: set[tuple[str, str]] = set()
        self._specs: dict[tuple[str, int], tuple[PrivacyBudgetSpec | None, str | None]] = {}
        self._models: dict[tuple[str, str], tuple[float, ModelView]] = {}
        self._model_specs: dict[tuple[str, int], PrivateModelSpec] = {}
        # PLD accounting can take seconds: it runs on one worker thread, off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-pld")
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ HTTP app

    @property
    def app(self) -> web.Application:
        if self._app is None:
            app = web.Application(client_max_size=MAX_LEASE_BODY_BYTES * 4)
            app.router.add_post(LEASE_PATH, self._handle_lease)
            app.router.add_get("/healthz", self._handle_healthz)
            app.router.add_get("/readyz", self._handle_readyz)
            app.router.add_get("/metrics", self._handle_metrics)
            self._app = app
        return self._app

    async def start(self, host: str = "127.0.0.1", port: int = 8443) -> int:
        """Serve on host:port (port 0 picks one); returns the bound port."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        addresses = self._runner.addresses
        return int(addresses[0][1]) if addresses else port

    async def stop(self) -> None:
        self._stopped = True
        for worker in self._workers.values():
            worker.cancel()
        for queue in self._queues.values():
            _fail(queue, Unavailable("the ledger is stopping"))
            queue.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _handle_readyz(self, request: web.Request) -> web.Response:
        try:
            await self.store.ping()
        except (Unavailable, NotFound) as exc:
            return _error_response(LeaseFailure("Unavailable", f"API server not usable: {exc}"))
        return web.json_response({"status": "ready"})

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _handle_lease(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            body = await _read_body(request)
            grant = await self.lease(body, request.headers.get("Authorization"))
        except LeaseFailure as failure:
            self.metrics.refusals.labels(failure.error.reason).inc()
            return _error_response(failure)
        except Exception:  # never crash on a request: fail closed, nothing granted
            log.exception("lease request failed")
            self.metrics.refusals.labels("Unavailable").inc()
            return _error_response(LeaseFailure("Unavailable", "internal error; nothing granted"))
        self.metrics.grant_seconds.observe(time.perf_counter() - started)
        return web.json_response(grant.wire())

    # ------------------------------------------------------------------ lease logic

    async def lease(self, body: bytes, authorization: str | None) -> LeaseGrant:
        """Answer one lease request (raises :class:`LeaseFailure` with the error answer)."""
        token = bearer_token(authorization)
        if token is None:
            raise LeaseFailure("Unauthenticated", "Authorization: a Bearer token is required")
        try:
            identity = await self.reviewer.review(token)
        except Unavailable as exc:
            raise LeaseFailure("Unavailable", f"cannot review the token: {exc}") from exc
        if identity is None:
            raise LeaseFailure(
                "Unauthenticated",
                "Authorization: the token is not valid for the dpserve-ledger audience",
            )
        request = _parse_request(body)
        namespace, model_name = request.model.split("/", 1)
        try:
            authorize(identity, namespace, model_name, request.pod)
        except Forbidden as exc:
            raise LeaseFailure("Forbidden", str(exc)) from exc

        model = await self._model(namespace, model_name)
        version = request.model_version
        budget_name = model.budget_of(version)
        if budget_name is None and self.settings.model_cache_s > 0:
            # A cached view may predate a retrain: confirm on a fresh read before refusing.
            model = await self._model(namespace, model_name, fresh=True)
            budget_name = model.budget_of(version)
        if budget_name is None:
            known = ", ".join([model.version, *model.retired])
            raise LeaseFailure(
                "VersionMismatch",
                f"modelVersion: {model.consumer} has no version {version!r} (current "
                f"{model.version}; known {known}): no budget to charge",
            )
        expected = model.spec.serving.mechanism
        if ev.canonical_mechanism(request.mechanism) != ev.canonical_mechanism(expected):
            raise LeaseFailure(
                "MechanismMismatch",
                f"mechanism: the request's {request.mechanism.wire()} differs from the "
                f"PrivateModel's spec.serving.mechanism {expected.wire()}",
            )
        grant_request = state.GrantRequest(
            consumer=model.consumer,
            model_version=version,
            mechanism=expected,
            requested=request.requested,
            lease_id=request.lease_id,
            pod=request.pod,
            partition=request.partition,
            training=model.declared_training(version),
        )

        def decide(budget: Budget, now: datetime) -> _Outcome[state.Grant | state.Refusal]:
            if budget.spec is None:
                refusal = state.Refusal("Unavailable", f"budget spec invalid: {budget.spec_error}")
                return _Outcome(refusal)
            result = state.grant(
                budget.spec,
                budget.generation,
                budget.status,
                grant_request,
                now,
                accounting=self.accounting,
                policy=self.settings.policy,
            )
            if isinstance(result, state.Refusal):
                return _Outcome(result, recheck=True)
            return _Outcome(
                result, write=result.status if result.changed else None, events=result.events
            )

        try:
            result = await self._mutate(
                namespace, budget_name, decide, fresh=False, on_persist=self._crash_hook
            )
        except NotFound as exc:
            raise LeaseFailure(
                "NotFound",
                f"model: the PrivacyBudget {namespace}/{budget_name} of "
                f"{model.consumer} {version} does not exist",
            ) from exc
        except Unavailable as exc:
            raise LeaseFailure(
                "Unavailable",
                f"the ledger could not persist: {exc}; nothing "
                "granted, retry with the same leaseId",
            ) from exc
        if isinstance(result, state.Refusal):
            raise LeaseFailure(
                result.reason, result.message, result.epsilon_spent, result.epsilon_remaining
            )
        if not result.replay:
            self.metrics.grants.labels(model.consumer).inc()
            self.metrics.queries_granted.labels(model.consumer).inc(result.granted)
        self.metrics.budget_consumed.labels(model.consumer, result.lease.partition or "all").set(
            result.epsilon_spent
        )
        return LeaseGrant(
            lease_id=result.lease.lease_id,
            granted=result.granted,
            epsilon_spent=result.epsilon_spent,
            epsilon_remaining=result.epsilon_remaining,
            expires_at=result.lease.expires_at,
            partition=result.lease.partition,
        )

    def _crash_hook(self) -> None:
        hook = self.settings.crash_after_persist
        if hook == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif hook == "hang":
            log.warning("crash hook: hanging after persist until killed")
            while True:  # block the loop on purpose: nothing may answer
                time.sleep(3600)

    async def _model(self, namespace: str, name: str, *, fresh: bool = False) -> ModelView:
        key = (namespace, name)
        now = time.monotonic()
        cached = self._models.get(key)
        if cached is not None and cached[0] > now and not fresh:
            return cached[1]
        try:
            raw = await self.store.get_model(namespace, name)
        except NotFound as exc:
            raise LeaseFailure(
                "NotFound", f"model: PrivateModel {namespace}/{name} not found"
            ) from exc
        except Unavailable as exc:
            raise LeaseFailure("Unavailable", f"cannot read the PrivateModel: {exc}") from exc
        view = self._model_view(namespace, name, raw)
        if self.settings.model_cache_s > 0:
            self._models[key] = (now + self.settings.model_cache_s, view)
        return view

    def _model_view(self, namespace: str, name: str, raw: Obj) -> ModelView:
        meta = raw.get("metadata", {})
        spec_key = (str(meta.get("uid")), int(meta.get("generation") or 0))
        spec = self._model_specs.get(spec_key)
        if spec is None:
            try:
                spec = PrivateModelSpec.model_validate(raw.get("spec") or {})
            except ValidationError as exc:
                raise LeaseFailure(
                    "NotFound",
                    f"model: PrivateModel {namespace}/{name} has an invalid spec: "
                    f"{_first_error(exc)}",
                ) from exc
            if len(self._model_specs) > 4096:
                self._model_specs.clear()
            self._model_specs[spec_key] = spec
        status = raw.get("status") or {}
        retired: dict[str, str] = {}
        for record in status.get("versions") or []:
            # Records are appended as versions retire; a malformed one names no budget, so
            # its version is refused (fail closed) rather than charged to a guess.
            if isinstance(record, dict):
                version, budget = record.get("version"), record.get("budget")
                if isinstance(version, str) and isinstance(budget, str) and budget:
                    retired[version] = budget
        return ModelView(
            namespace=namespace,
            name=name,
            spec=spec,
            budget=str(status.get("budget") or spec.budget_ref.name),
            version=str(status.get("modelVersion") or spec.model.version),
            retired=retired,
        )

    # ------------------------------------------------------------------ read/compute/write

    async def _read(self, namespace: str, name: str) -> Budget:
        budget = self._parse_budget(await self.store.get_budget(namespace, name))
        return await self._verify(namespace, name, budget)

    async def _raise_watermark(self, key: tuple[str, str], status: PrivacyBudgetStatus) -> None:
        """Raise the durable watermark at most every WATERMARK_INTERVAL_S per budget.

        It lags the status by up to that interval: after a restart, spend recorded in the
        last interval and then erased is not detected (the in-process evidence covers it
        while the process lives). Best effort: a failed patch is retried on a later write.
        """
        last = self._watermarked.get(key)
        if last is not None and time.monotonic() - last < WATERMARK_INTERVAL_S:
            return
        self._watermarked[key] = time.monotonic()
        mark = state.format_watermark(state.watermark(status))
        try:
            await self.store.annotate_budget(*key, {state.WATERMARK_ANNOTATION: mark})
        except Exception:
            self._watermarked.pop(key, None)
            log.warning("could not record the watermark of %s/%s", *key, exc_info=True)
            return
        # The cached copy's resourceVersion is now stale: its next write gets one 409 and
        # re-reads, as after any foreign write.

    def _remember(self, key: tuple[str, str], budget: Budget) -> None:
        uid = str(budget.raw.get("metadata", {}).get("uid") or "")
        if budget.status is not None:
            self._evidence[key] = (uid, budget.status)

    async def _verify(self, namespace: str, name: str, budget: Budget) -> Budget:
        """Restore spend the status lost relative to the evidence; never grant from less.

        A budget deleted and created again (another uid) starts from its own status.
        """
        key = (namespace, name)
        uid = str(budget.raw.get("metadata", {}).get("uid") or "")
        held = self._evidence.get(key)
        if held is None or held[0] != uid or budget.spec is None:
            # No evidence in this process (it just started): the durable watermark decides.
            annotations = budget.raw.get("metadata", {}).get("annotations") or {}
            below = state.below_watermark(budget.status,
                                          annotations.get(state.WATERMARK_ANNOTATION))
            if below is not None:
                message = (f"PrivacyBudget {namespace}/{name} lost recorded spend: {below}; "
                           "nothing is granted from it until status.ledger is restored (or "
                           "the annotation removed, accepting the status as it is)")
                if key not in self._lost_reported:
                    self._lost_reported.add(key)
                    log.error("%s", message)
                    await self._emit(namespace, budget.raw, [
                        state.BudgetEvent("Warning", "RecordedSpendLost", message)])
                raise Unavailable(message)
            self._lost_reported.discard(key)
            self._remember(key, budget)
            return budget
        lost = state.lost_spend(held[1], budget.status)
        if not lost:
            self._remember(key, budget)
            return budget
        self.metrics.status_writes.labels("restore").inc()
        restored = state.restore_spend(budget.spec, budget.generation, held[1], budget.status,
                                       self.clock(), accounting=self.accounting)
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
        await self._emit(namespace, written, [
            state.BudgetEvent("Warning", "RecordedSpendRestored", message),
            *restored.events])
        budget = replace(budget, raw=written, status=restored.status)
        self._remember(key, budget)
        return budget

    def _parse_budget(self, raw: Obj) -> Budget:
        meta = raw.get("metadata", {})
        spec_key = (str(meta.get("uid")), int(meta.get("generation") or 0))
        parsed = self._specs.get(spec_key)
        if parsed is None:
            try:
                parsed = (PrivacyBudgetSpec.model_validate(raw.get("spec") or {}), None)
            except ValidationError as exc:
                parsed = (None, _first_error(exc))
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
                f"status: {_first_error(exc)}"
            ) from exc
        return Budget(raw=raw, spec=parsed[0], spec_error=parsed[1], status=status)

    def _decide_all(
        self, jobs: Sequence[_Job], budget: Budget, now: datetime
    ) -> tuple[list[_Outcome[Any] | Exception], PrivacyBudgetStatus | None]:
        """Decide the jobs one after the other, each on the status the previous one left."""
        outcomes: list[_Outcome[Any] | Exception] = []
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

    async def _mutate(
        self,
        namespace: str,
        name: str,
        decide: Callable[[Budget, datetime], _Outcome[T]],
        *,
        fresh: bool,
        on_persist: Callable[[], None] | None = None,
    ) -> T:
        """Queue a decision on the budget; it is answered once its write has landed.

        Group commit: while one status write is in flight, further requests for the same
        budget queue up; the next write carries all of them (each decided on the status the
        previous one left), so one API write answers many grants under load.
        """
        if self._stopped:
            raise Unavailable("the ledger is stopping")
        key = (namespace, name)
        job = _Job(decide, fresh, on_persist, asyncio.get_running_loop().create_future())
        self._queues.setdefault(key, []).append(job)
        worker = self._workers.get(key)
        if worker is None or worker.done():
            self._workers[key] = asyncio.create_task(self._drain(key))
        result: T = await job.future
        return result

    async def _drain(self, key: tuple[str, str]) -> None:
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

    async def _commit(self, key: tuple[str, str], jobs: list[_Job]) -> None:
        """Read -> decide all -> one write with the precondition -> re-read on conflict."""
        namespace, name = key
        budget = None if any(job.fresh for job in jobs) else self._budgets.get(key)
        cached = budget is not None
        if budget is None:
            budget = await self._read_or_forget(key)
        for attempt in range(self.settings.max_write_attempts):
            now = self.clock()
            if budget.spec is not None and budget.spec.accountant == "pld":
                loop = asyncio.get_running_loop()
                outcomes, write = await loop.run_in_executor(
                    self._executor, self._decide_all, jobs, budget, now
                )
            else:
                outcomes, write = self._decide_all(jobs, budget, now)
            if cached and any(isinstance(o, _Outcome) and o.recheck for o in outcomes):
                # a refusal decided on the cached copy: confirm it on a fresh read
                budget, cached = await self._read_or_forget(key), False
                continue
            if write is not None:
                body = dict(budget.raw)
                body["status"] = write.wire()
                try:
                    written = await self.store.replace_budget_status(namespace, name, body)
                except Conflict:
                    self.metrics.status_writes.labels("conflict").inc()
                    # Somebody else wrote: back off a little (two writers must not livelock).
                    await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                    budget, cached = await self._read_or_forget(key), False
                    continue
                except (Unavailable, NotFound):
                    self.metrics.status_writes.labels("error").inc()
                    self._budgets.pop(key, None)
                    raise
                self.metrics.status_writes.labels("ok").inc()
                self._budgets[key] = replace(budget, raw=written, status=write)
                self._remember(key, self._budgets[key])
                for job in jobs:
                    if job.on_persist is not None:
                        job.on_persist()
                self._observe_budget(namespace, name, budget, write)
                events = [e for o in outcomes if isinstance(o, _Outcome) for e in o.events]
                await self._emit(namespace, written, events)
            for job, outcome in zip(jobs, outcomes, strict=True):
                if job.future.done():
                    continue  # the caller went away; a persisted grant is replayed on retry
                if isinstance(outcome, Exception):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome.result)
            if write is not None:  # after the answers: the watermark never delays a grant
                await self._raise_watermark(key, write)
            return
        raise Unavailable(
            f"gave up after {self.settings.max_write_attempts} conflicting status writes"
        )

    async def _read_or_forget(self, key: tuple[str, str]) -> Budget:
        try:
            return await self._read(*key)
        except (Unavailable, NotFound):
            self._budgets.pop(key, None)
            raise

    def _observe_budget(
        self, namespace: str, name: str, budget: Budget, status: PrivacyBudgetStatus
    ) -> None:
        if budget.spec is None:
            return
        try:
            self.metrics.epsilon_limit.labels(namespace, name).set(float(budget.spec.epsilon))
            if status.epsilon_spent is not None:
                self.metrics.epsilon_spent.labels(namespace, name).set(float(status.epsilon_spent))
            exhausted = any(
                c.type == "Exhausted" and c.status == "True" for c in status.conditions
            )
            self.metrics.exhausted.labels(namespace, name).set(1.0 if exhausted else 0.0)
        except ValueError:
            pass

    async def _emit(
        self, namespace: str, involved: Obj, events: Sequence[state.BudgetEvent]
    ) -> None:
        for event in events:
            try:
                await self.store.emit_event(namespace, involved, event)
            except Exception:  # an Event is best effort; the status already says it
                log.warning(
                    "could not emit Event %s for %s", event.reason, namespace, exc_info=True
                )

    # ------------------------------------------------------------------ controller API

    async def recompute(
        self, namespace: str, name: str, probes: Sequence[Event] = ()
    ) -> PrivacyBudgetStatus:
        """Bring the budget's status up to date (first reconcile, spec edits, lease expiry).

        Writes only when the status changes (no steady-state writes), with the same
        precondition and retries as a grant. ``probes``: query events of the PrivateModels
        bound to the budget, so Exhausted also covers mechanisms not yet on the ledger.
        """

        def decide(budget: Budget, now: datetime) -> _Outcome[PrivacyBudgetStatus]:
            if budget.spec is None:
                new = state.invalid_spec_status(
                    budget.status, budget.generation, now, f"spec: {budget.spec_error}"
                )
                update = state.StatusUpdate(new)
            else:
                update = state.compute_status(
                    budget.spec,
                    budget.generation,
                    budget.status,
                    now,
                    accounting=self.accounting,
                    probes=probes,
                )
            unchanged = budget.status is not None and update.status.wire() == budget.status.wire()
            return _Outcome(
                update.status, write=None if unchanged else update.status, events=update.events
            )

        return await self._mutate(namespace, name, decide, fresh=True)

    async def ensure_status(self, namespace: str, name: str) -> PrivacyBudgetStatus:
        """The status, written if missing or stale (alias of :meth:`recompute`)."""
        return await self.recompute(namespace, name)

    async def record_training(
        self,
        namespace: str,
        budget: str,
        *,
        consumer: str,
        model_version: str,
        spend: TrainingSpend,
        run: str | None = None,
    ) -> state.TrainingRecorded | state.Refusal:
        """Charge one DP-SGD run of ``consumer``'s ``model_version`` once, persisted.

        ``run`` (a retraining Job's uid): every distinct run is charged, see
        :func:`dpserve.ledger.state.record_training`.

        Returns the (persisted) outcome, or a Refusal when the run does not fit. Raises
        :class:`~dpserve.ledger.store.NotFound` / ``Unavailable`` from the store.
        """

        def decide(
            current: Budget, now: datetime
        ) -> _Outcome[state.TrainingRecorded | state.Refusal]:
            if current.spec is None:
                return _Outcome(
                    state.Refusal("Unavailable", f"budget spec invalid: {current.spec_error}")
                )
            result = state.record_training(
                current.spec,
                current.generation,
                current.status,
                consumer=consumer,
                model_version=model_version,
                spend=spend,
                now=now,
                accounting=self.accounting,
                run=run,
            )
            if isinstance(result, state.Refusal) or not result.changed:
                return _Outcome(result)
            return _Outcome(result, write=result.status, events=result.events)

        return await self._mutate(namespace, budget, decide, fresh=True)


def _fail(jobs: Sequence[_Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)


# ---------------------------------------------------------------------- request parsing


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_LEASE_BODY_BYTES:
        raise LeaseFailure(
            "TooLarge", f"body: {request.content_length} bytes, limit {MAX_LEASE_BODY_BYTES}"
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_LEASE_BODY_BYTES:
            raise LeaseFailure("TooLarge", f"body: over the limit of {MAX_LEASE_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_request(body: bytes) -> LeaseRequest:
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeaseFailure("BadRequest", f"body: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise LeaseFailure("BadRequest", "body: must be a JSON object")
    try:
        return LeaseRequest.model_validate(data)
    except ValidationError as exc:
        raise LeaseFailure("BadRequest", _all_errors(exc)) from exc


def _location(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{_location(first['loc'])}: {first['msg']}"


def _all_errors(exc: ValidationError) -> str:
    return "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in exc.errors()[:8])


def _error_response(failure: LeaseFailure) -> web.Response:
    headers = {"Retry-After": RETRY_AFTER_S} if failure.error.reason == "Unavailable" else None
    return web.json_response(
        failure.error.model_dump(by_alias=True, exclude_none=True, mode="json"),
        status=failure.http_status,
        headers=headers,
    )

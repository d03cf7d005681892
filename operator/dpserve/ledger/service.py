"""The ledger service: ``POST /v1/leases`` (debit before grant), health, metrics.

One request: authenticate the pod's token (TokenReview), match it to the PrivateModel's
ServiceAccount, check that its pod is a serving pod of the model asking from its own address
(:mod:`dpserve.ledger.podcheck`), find the budget of the model version the pod serves (the
current version's ``status.budget``, a retired version's ``status.versions`` record; an
unknown version is refused), check the mechanism against the model's spec, then on the
budget's queue (:mod:`dpserve.ledger.commit`) read -> compute (:mod:`dpserve.ledger.grant`)
-> write the status with the resourceVersion precondition -> on 409 re-read and recompute ->
and only once the write landed, answer 200. Any doubt answers 503 and grants nothing; a retry
with the same lease id gets the grant if the write had in fact landed, and is never debited
twice.

The PrivacyBudget controller calls :meth:`LedgerService.recompute` (same code path, same
precondition) to write the status on create and spec change, and
:meth:`LedgerService.record_training` to charge a DP-SGD run.

Module map: :mod:`handlers` (HTTP), :mod:`wire` (request parsing, error answers),
:mod:`modelview` (PrivateModels), :mod:`budgets` (PrivacyBudgets as read),
:mod:`evidence` (the lost-spend guard), :mod:`commit` (group commit), :mod:`state` (the
pure decisions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry

from dpserve.accounting.events import Event
from dpserve.api.lease import LeaseGrant, LeaseRequest
from dpserve.api.privacybudget import PrivacyBudgetStatus, TrainingSpend
from dpserve.attestation.wire import MAX_HEADER_FIELD
from dpserve.ledger import events as ev
from dpserve.ledger import state
from dpserve.ledger.accountant import Accounting, default_accounting
from dpserve.ledger.attestation import AttestationGate, Evidence
from dpserve.ledger.auth import (
    CachingReviewer,
    Forbidden,
    Identity,
    TokenReviewer,
    authorize,
    bearer_token,
)
from dpserve.ledger.budgets import Budget
from dpserve.ledger.commit import GroupCommit, Outcome
from dpserve.ledger.connections import PeerLimiter
from dpserve.ledger.evidence import SpendGuard
from dpserve.ledger.handlers import build_app
from dpserve.ledger.leases import prepare_next
from dpserve.ledger.metrics import LedgerMetrics, metrics_for
from dpserve.ledger.modelview import ModelReader, ModelView
from dpserve.ledger.outcomes import Prefetch
from dpserve.ledger.podcheck import ModelRef, Peer, PodVerifier
from dpserve.ledger.settings import LedgerSettings
from dpserve.ledger.store import NotFound, Store, Unavailable
from dpserve.ledger.wire import STATUS_OF_REASON, LeaseFailure, parse_request

log = logging.getLogger("dpserve.ledger")

__all__ = ["STATUS_OF_REASON", "Budget", "LeaseFailure", "LedgerService", "ModelView"]

MAX_HEADERS = 32  # a sidecar sends about ten


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
        self.models = ModelReader(store, self.settings.model_cache_s)
        self.pods = PodVerifier(store, cache_s=self.settings.pod_cache_s,
                                check_source=self.settings.check_source_address)
        self.guard = SpendGuard(store, self.metrics, self.accounting, self.clock)
        # spec.confidential.attestation: verified before the lease-id lookup and the debit.
        self.attestation = AttestationGate(
            store, registry, clock=lambda: self.clock().timestamp(),
            cache_s=self.settings.model_cache_s,
        )
        # PLD accounting can take seconds: it runs on one worker thread, off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-pld")
        self.commits = GroupCommit(store, self.guard, self.metrics, self.clock, self._executor,
                                   self.settings.max_write_attempts)
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.connections = PeerLimiter(self.settings.max_connections_per_client)

    # ------------------------------------------------------------------ HTTP app

    @property
    def app(self) -> web.Application:
        if self._app is None:
            self._app = build_app(self.lease, self.store, self.metrics, self.registry,
                                  self.settings.body_timeout_s)
        return self._app

    async def start(self, host: str = "127.0.0.1", port: int = 8443,
                    ssl_context: ssl.SSLContext | None = None) -> int:
        """Serve on host:port (port 0 picks one), over TLS when given a server context;
        returns the bound port."""
        # keepalive_timeout is also how long a connection may take to deliver a request's
        # headers (see connections.py); no lingering: an unread body is not waited for.
        # Header fields up to MAX_HEADER_FIELD: an attestation token (a Trustee EAR) can be
        # tens of KiB; few headers, so one request's headers stay bounded (about 2 MiB).
        # Longer fields or more headers are refused by the parser with 400.
        self._runner = web.AppRunner(
            self.app, access_log=None, keepalive_timeout=self.settings.header_timeout_s,
            lingering_time=0, max_field_size=MAX_HEADER_FIELD, max_headers=MAX_HEADERS,
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.connections.factory(server), host, port, reuse_address=True,
            ssl=ssl_context,
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.commits.stop()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ lease logic

    async def lease(
        self, body: bytes, authorization: str | None, evidence: Evidence | None = None,
        peer: Peer | None = None,
    ) -> LeaseGrant:
        """Answer one lease request (raises :class:`LeaseFailure` with the error answer).

        ``evidence``: the request's attestation headers, checked when the model's spec has
        ``confidential.attestation`` (before anything about the grant is looked up).
        ``peer``: the connection's addresses, for the source check (None: not judged, as for
        an in-process caller).
        """
        request, identity = await self._authorized_request(body, authorization)
        namespace, model_name = request.model.split("/", 1)
        model = await self.models.get(namespace, model_name)
        await self.pods.verify(identity, ModelRef(namespace, model_name, model.uid), peer)
        await self.attestation.check(model, request, evidence or Evidence())
        model, budget_name = await self._budget_of(model, request.model_version)
        expected = model.spec.serving.mechanism
        if ev.canonical_mechanism(request.mechanism) != ev.canonical_mechanism(expected):
            raise LeaseFailure(
                "MechanismMismatch",
                f"mechanism: the request's {request.mechanism.wire()} differs from the "
                f"PrivateModel's spec.serving.mechanism {expected.wire()}",
            )
        grant_request = state.GrantRequest(
            consumer=model.consumer,
            model_version=request.model_version,
            mechanism=expected,
            requested=request.requested,
            lease_id=request.lease_id,
            pod=request.pod,
            partition=request.partition,
            training=model.declared_training(request.model_version),
        )
        result = await self._grant(namespace, budget_name, grant_request)
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

    async def _authorized_request(
        self, body: bytes, authorization: str | None
    ) -> tuple[LeaseRequest, Identity]:
        """The parsed request of an authenticated caller allowed to lease for its model."""
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
        request = parse_request(body)
        namespace, model_name = request.model.split("/", 1)
        try:
            authorize(identity, namespace, model_name, request.pod)
        except Forbidden as exc:
            raise LeaseFailure("Forbidden", str(exc)) from exc
        return request, identity

    async def _budget_of(self, model: ModelView, version: str) -> tuple[ModelView, str]:
        """The model and the budget its ``version`` spends (409 VersionMismatch if none)."""
        budget_name = model.budget_of(version)
        if budget_name is None and self.settings.model_cache_s > 0:
            # A cached view may predate a retrain: confirm on a fresh read before refusing.
            model = await self.models.get(model.namespace, model.name, fresh=True)
            budget_name = model.budget_of(version)
        if budget_name is None:
            known = ", ".join([model.version, *model.retired])
            raise LeaseFailure(
                "VersionMismatch",
                f"modelVersion: {model.consumer} has no version {version!r} (current "
                f"{model.version}; known {known}): no budget to charge",
            )
        return model, budget_name

    async def _grant(
        self, namespace: str, budget_name: str, request: state.GrantRequest
    ) -> state.Grant:
        """The persisted grant, through the budget's queue (a LeaseFailure otherwise)."""

        def decide(budget: Budget, now: datetime) -> Outcome[state.Grant | state.Refusal]:
            if budget.spec is None:
                refusal = state.Refusal("Unavailable", f"budget spec invalid: {budget.spec_error}")
                return Outcome(refusal)
            result = state.grant(budget.spec, budget.generation, budget.status, request, now,
                                 accounting=self.accounting, policy=self.settings.policy)
            if isinstance(result, state.Refusal):
                notices = () if result.event is None else (result.event,)
                return Outcome(result, recheck=True, notices=notices)
            return Outcome(
                result, write=result.status if result.changed else None, events=result.events
            )

        try:
            result = await self.commits.mutate(
                (namespace, budget_name), decide, fresh=False
            )
        except NotFound as exc:
            raise LeaseFailure(
                "NotFound",
                f"model: the PrivacyBudget {namespace}/{budget_name} of "
                f"{request.consumer} {request.model_version} does not exist",
            ) from exc
        except Unavailable as exc:
            raise LeaseFailure(
                "Unavailable",
                f"the ledger could not persist: {exc}; nothing "
                "granted, retry with the same leaseId",
            ) from exc
        if isinstance(result, state.Refusal):
            raise LeaseFailure(
                result.reason, result.message, result.epsilon_spent, result.epsilon_remaining,
                high_water=result.high_water,
            )
        if result.prefetch is not None:
            self._prepare(result.prefetch)
        return result

    def _prepare(self, prefetch: Prefetch) -> None:
        """Answer ahead what the pod's next grant will ask the accountant (its fit and the
        PLD its lease will check: ``leases.prepare_next``), after this grant was answered.

        On the same worker as the decisions: a decision arriving meanwhile waits for it and
        then finds it cached instead of composing it a second time in parallel.
        """
        def run() -> None:
            try:
                prepare_next(prefetch, self.accounting)
            except Exception:  # a head start only: the next grant decides (and reports)
                log.debug("preparing the next grant failed", exc_info=True)

        with contextlib.suppress(RuntimeError):  # the executor is shut down: stopping
            self._executor.submit(run)

    # ------------------------------------------------------------------ controller API

    async def recompute(
        self, namespace: str, name: str, probes: Sequence[Event] = ()
    ) -> PrivacyBudgetStatus:
        """Bring the budget's status up to date (first reconcile, spec edits, lease expiry).

        Writes only when the status changes (no steady-state writes), with the same
        precondition and retries as a grant. ``probes``: query events of the PrivateModels
        bound to the budget, so Exhausted also covers mechanisms not yet on the ledger.
        """

        def decide(budget: Budget, now: datetime) -> Outcome[PrivacyBudgetStatus]:
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
            return Outcome(
                update.status, write=None if unchanged else update.status, events=update.events
            )

        return await self.commits.mutate((namespace, name), decide, fresh=True)

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
        ) -> Outcome[state.TrainingRecorded | state.Refusal]:
            if current.spec is None:
                return Outcome(
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
                return Outcome(result)
            return Outcome(result, write=result.status, events=result.events)

        return await self.commits.mutate((namespace, budget), decide, fresh=True)

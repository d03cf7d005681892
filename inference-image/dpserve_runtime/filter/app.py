"""The filter sidecar: the app, its wiring, and the request path every protocol shares.

Routes (the one public port; the model server listens on localhost only):

- ``POST /v1/predict`` (today's clients; tensor models and text classifiers), here;
- OpenAI-compatible ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
  ``/v1/models``: :mod:`dpserve_runtime.filter.openai_api`;
- Open Inference Protocol v2 ``/v2/...``: :mod:`dpserve_runtime.filter.oip`;
- ``/healthz``, ``/readyz``, ``/metrics``.

The shared request path (:func:`exchange`), used by ``/v1/predict``, embeddings and v2 infer:

1. read the body (at most ``maxBodyBytes``, within ``clientTimeoutSeconds``), decode UTF-8,
   parse JSON; the protocol module validates it and counts the inputs (the batch size);
2. with ``partitionHeader`` set, the tenant comes from that header;
3. reserve the batch size from the lease (the model never reports more than one query per
   input; an answer claiming more is refused) - or answer 429 / 503 without a lease;
4. forward to the model (never following redirects); 502 / 504 on errors and timeouts;
5. validate the answer and its ``queries``, charge them; the caller scans every string it
   releases (verbatim guard, PII), then sends it redacted, or withholds it (451), or answers
   500 if the filter failed: the unfiltered body is never sent. Only a 200 of the model is
   released as an answer; its 4xx/5xx become the sidecar's error in the protocol's shape.

Text generation (mechanism ``none``, enforced by :class:`FilterConfig`) is free: no lease.
Errors are :class:`ProxyError`, rendered in the shape of the protocol the path belongs to
(``/v1/predict``: ``{"reason", "message"}``; OpenAI: ``{"error": {"message", "type",
"param", "code"}}``; v2: ``{"error": "..."}``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dpserve.api.filterconfig import FilterConfig
from dpserve_runtime.filter.attestation import AttestationClient
from dpserve_runtime.filter.auditlog import AuditFormatter, AuditSink, LoggingAuditSink
from dpserve_runtime.filter.lease_client import (
    BudgetExhausted,
    LeaseClient,
    LedgerUnavailable,
    Reservation,
)
from dpserve_runtime.filter.metrics import DEFAULT_GROUP, FilterMetrics
from dpserve_runtime.filter.pii import PiiAnalyzer
from dpserve_runtime.filter.scan import OutputScanner, ScanResult
from dpserve_runtime.filter.stream import StreamFilter
from dpserve_runtime.filter.upstream import (
    REQUEST_ID,
    UpstreamError,
    UpstreamPool,
    UpstreamTooLarge,
    supports,
)
from dpserve_runtime.filter.verbatim import VerbatimGuard
from dpserve_runtime.httplimits import ConnectionGuard, ConnectionLimits
from dpserve_runtime.jsondepth import nesting_message

logger = logging.getLogger(__name__)

PREDICT_PATH = "/v1/predict"
MAX_UPSTREAM_BYTES = 32 * 1024 * 1024
# Answers with more text than this are scanned off the event loop.
INLINE_SCAN_CHARS = 16 * 1024
_PARTITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_SAFE_REASON = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")

CONFIG_KEY = web.AppKey("config", FilterConfig)
# Header deadline and connections per client of the public port (see httplimits); the body
# deadline is FilterConfig.clientTimeoutSeconds (read_json_body).
GUARD_KEY = web.AppKey("connection_guard", ConnectionGuard)


class ProxyError(Exception):
    """An answer of the sidecar's own: status, a reason and a message.

    Each protocol renders it in its own error shape: ``/v1/predict`` as ``{"reason",
    "message", ...extra}`` (:meth:`response`), OpenAI routes and Open Inference Protocol
    routes through their modules. ``param`` names the offending request field and ``code``
    a machine-readable code where the protocol has one (OpenAI's ``param`` and ``code``).
    """

    def __init__(self, status: int, reason: str, message: str, *,
                 headers: dict[str, str] | None = None,
                 extra: dict[str, object] | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}
        self.param = param
        self.code = code

    def response(self) -> web.Response:
        return error_response(self.status, self.reason, self.message, self.headers, **self.extra)


def error_response(status: int, reason: str, message: str,
                   headers: dict[str, str] | None = None, **extra: object) -> web.Response:
    body = {"reason": reason, "message": message, **extra}
    return web.json_response(body, status=status, headers=headers)


_NO_ENTITIES: Mapping[str, int] = {}


class Audit:
    """One audit line per request: counts and types, never values or text."""

    __slots__ = ("client_request_id", "entities", "inputs", "outcome", "queries_charged",
                 "queries_reserved", "request_id", "started", "status", "tenant",
                 "tenant_confirmed", "upstream_status", "verbatim_blocked", "written")

    def __init__(self, request_id: str, started: float, *,
                 client_request_id: bool = False) -> None:
        self.request_id = request_id  # validated or generated: [A-Za-z0-9._-] only
        # The client chose it: logged as a keyed hash only (AuditFormatter.client_id).
        self.client_request_id = client_request_id
        self.started = started
        self.tenant: str | None = None  # validated like the request id
        # The ledger granted a lease for this tenant: a partition of the budget, not just a
        # string the client sent (logged verbatim only then).
        self.tenant_confirmed = False
        self.outcome = "error"
        self.status = 500
        self.inputs = 0
        self.queries_reserved = 0
        self.queries_charged = 0
        self.upstream_status: int | None = None
        self.entities: Mapping[str, int] = _NO_ENTITIES
        self.verbatim_blocked = False
        self.written = False

    @classmethod
    def of(cls, request: web.Request) -> Audit:
        """The audit record of a request, started now, with its id (see request_id)."""
        given = request.headers.get("X-Request-Id")
        if given is not None and REQUEST_ID.fullmatch(given):
            return cls(given, time.perf_counter(), client_request_id=True)
        return cls(_new_request_id(), time.perf_counter())

    def line(self, formatter: AuditFormatter, ended: float) -> str:
        request_id = (formatter.client_id(self.request_id) if self.client_request_id
                      else self.request_id)
        tenant = self.tenant
        if tenant is not None and not self.tenant_confirmed:
            tenant = formatter.client_id(tenant)
        return formatter.predict_line(
            request_id=request_id, tenant=tenant, outcome=self.outcome,
            status=self.status, inputs=self.inputs, queries_reserved=self.queries_reserved,
            queries_charged=self.queries_charged, upstream_status=self.upstream_status,
            entities=self.entities, verbatim_blocked=self.verbatim_blocked,
            latency_ms=(ended - self.started) * 1000,
        )


class SidecarState:
    """Everything built once per process: analyzer, guard, sessions, lease client, metrics."""

    def __init__(self, config: FilterConfig, pod_name: str, *,
                 analyzer: PiiAnalyzer | None = None, guard: VerbatimGuard | None = None,
                 metrics: FilterMetrics | None = None,
                 audit_sink: AuditSink | None = None,
                 audit_id_key: bytes | None = None) -> None:
        self.config = config
        self.pod_name = pod_name
        self.metrics = metrics or FilterMetrics(config.model)
        self.audit_sink: AuditSink = audit_sink or LoggingAuditSink()
        self.audit_format = AuditFormatter(config.model, audit_id_key)
        of = config.output_filter
        if analyzer is None and of.entities:
            analyzer = PiiAnalyzer(
                of.entities, float(of.score_threshold),
                {k: float(v) for k, v in of.entity_thresholds.items()},
            )
        if guard is None and of.verbatim_guard.enabled and config.fingerprint_path:
            guard = VerbatimGuard.load(config.fingerprint_path)
        self.scanner = OutputScanner(analyzer, of.action, guard)
        self.charged = config.mechanism.type != "none"
        self.upstream_base = config.upstream.rstrip("/")
        self.upstream_ready_url = self.upstream_base + "/readyz"
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan")
        self.upstream: aiohttp.ClientSession | None = None
        # Whole answers (everything but streams and the readiness probe) go through the
        # lean pool: aiohttp's client was half of the sidecar's CPU per request.
        self.forwarder: UpstreamPool | None = None
        self.ledger: aiohttp.ClientSession | None = None
        self.agent: aiohttp.ClientSession | None = None  # the in-guest attestation agent
        self.leases: LeaseClient | None = None

    def stream_filter(self) -> StreamFilter:
        """A filter for one streamed text (one choice of a generation)."""
        return StreamFilter(self.scanner)

    async def start(self) -> None:
        # Keep-alive pool to the model on loopback. No cookie jar: a cookie the model set
        # must never be stored and sent along with other clients' requests.
        self.upstream = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=self.config.upstream_timeout_seconds),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        if supports(self.upstream_base):  # an https upstream stays on aiohttp's client
            self.forwarder = UpstreamPool(
                self.upstream_base, timeout=self.config.upstream_timeout_seconds,
                max_body=MAX_UPSTREAM_BYTES, limit=256, keepalive=30.0)
        ssl_context: Any = None
        if self.config.ledger_ca_path:
            import ssl

            ssl_context = ssl.create_default_context(cafile=self.config.ledger_ca_path)
        self.ledger = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context))
        attestation = None
        settings = self.config.attestation
        if settings is not None and self.charged:
            # Its own session, no cookies: the agent is on loopback, the ledger is not.
            self.agent = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
            attestation = AttestationClient(
                session=self.agent, agent=settings.agent, binding=settings.binding,
                max_age_s=settings.max_age_seconds, model=self.config.model,
                pod=self.pod_name,
            )
        if self.charged:
            self.leases = LeaseClient(
                session=self.ledger, ledger_url=self.config.ledger_url, model=self.config.model,
                model_version=self.config.model_version, pod=self.pod_name,
                mechanism=self.config.mechanism,
                token_path=self.config.token_path, settings=self.config.lease,
                metrics=self.metrics, request_timeout=self.config.ledger_timeout_seconds,
                attestation=attestation,
            )

    async def stop(self) -> None:
        if self.leases is not None:
            await self.leases.close()
        if self.forwarder is not None:
            await self.forwarder.close()
        for session in (self.upstream, self.ledger, self.agent):
            if session is not None:
                await session.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.audit_sink.flush()


STATE_KEY = web.AppKey("state", SidecarState)


_ID_PREFIX = uuid.uuid4().hex[:12]
_ID_COUNTER = itertools.count(1)


def request_id(request: web.Request) -> str:
    """The client's X-Request-Id when well-formed (echoed back and forwarded, never logged
    as is), else a new one."""
    given = request.headers.get("X-Request-Id")
    if given is not None and REQUEST_ID.fullmatch(given):
        return given
    return _new_request_id()


def _new_request_id() -> str:
    # Unique per process start and request; cheaper than a uuid4 (an urandom call) each time.
    return f"{_ID_PREFIX}-{next(_ID_COUNTER)}"


async def read_json_body(request: web.Request, config: FilterConfig) -> tuple[bytes, Any]:
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        raise ProxyError(413, "TooLarge",
                         f"request body over the limit of {config.max_body_bytes} bytes")
    try:
        if request.content.is_eof():  # the whole body is buffered already: nothing to wait on
            raw = await request.read()
        else:
            async with asyncio.timeout(config.client_timeout_seconds):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ProxyError(413, "TooLarge",
                         f"request body over the limit of {config.max_body_bytes} bytes") from exc
    except TimeoutError as exc:
        raise ProxyError(408, "RequestTimeout",
                         f"request body not received within {config.client_timeout_seconds}s"
                         ) from exc
    except (aiohttp.ClientPayloadError, ConnectionResetError) as exc:
        raise ProxyError(400, "BadRequest", f"incomplete request body: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProxyError(400, "BadRequest", f"body is not valid UTF-8 (byte {exc.start})",
                         code="invalid_encoding") from exc
    try:
        return raw, json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProxyError(400, "BadRequest", f"body is not valid JSON: {exc.msg} at "
                                            f"line {exc.lineno} column {exc.colno}",
                         code="invalid_json") from exc
    except RecursionError as exc:
        message, field = nesting_message(text)
        raise ProxyError(400, "BadRequest", message, param=field, code="invalid_json") from exc


def _batch_size(body: Any, config: FilterConfig) -> int:
    if not isinstance(body, dict):
        raise ProxyError(400, "BadRequest", "body must be a JSON object with field 'inputs'")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProxyError(400, "BadRequest", "field 'inputs' must be a non-empty array")
    limit = config.lease.max_size
    if len(inputs) > limit:
        raise ProxyError(413, "TooLarge",
                         f"field 'inputs' has {len(inputs)} items, more than lease.maxSize={limit}")
    return len(inputs)


def partition_of(request: web.Request, config: FilterConfig) -> str | None:
    header = config.partition_header
    if header is None:
        return None
    value = request.headers.get(header)
    if value is None:
        raise ProxyError(400, "BadRequest", f"header {header} (tenant) is required",
                         code="missing_tenant")
    if not _PARTITION_RE.match(value):
        raise ProxyError(400, "BadRequest",
                         f"header {header} must be 1-63 characters of [A-Za-z0-9._-]",
                         code="invalid_tenant")
    return value


async def _forward(state: SidecarState, path: str, payload: bytes,
                   request_id: str) -> tuple[int, bytes]:
    """POST ``payload`` to the model's ``path``; its status and body (bounded in size).

    Redirects are never followed: only the model's own 200 may be released.
    """
    pool = state.forwarder
    if pool is None:
        return await _forward_aiohttp(state, path, payload, request_id)
    try:
        return await pool.post(path, payload, request_id)
    except TimeoutError as exc:  # (an OSError too: first)
        raise upstream_timeout(state) from exc
    except UpstreamTooLarge as exc:
        raise ProxyError(502, "UpstreamError", "model answer over the size limit") from exc
    except (UpstreamError, OSError) as exc:
        raise upstream_unreachable(exc) from exc


async def _forward_aiohttp(state: SidecarState, path: str, payload: bytes,
                           request_id: str) -> tuple[int, bytes]:
    """:func:`_forward` through aiohttp's client (an upstream the pool does not serve)."""
    assert state.upstream is not None
    try:
        async with state.upstream.post(
            state.upstream_base + path, data=payload, allow_redirects=False,
            headers={"Content-Type": "application/json", "X-Request-Id": request_id},
        ) as response:
            return response.status, await read_bounded(response)
    except TimeoutError as exc:
        raise upstream_timeout(state) from exc
    except aiohttp.ClientError as exc:
        raise upstream_unreachable(exc) from exc


async def read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, refused (502) beyond ``MAX_UPSTREAM_BYTES``."""
    length = response.content_length
    if length is not None:
        if length > MAX_UPSTREAM_BYTES:
            raise ProxyError(502, "UpstreamError", "model answer over the size limit")
        return await response.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_UPSTREAM_BYTES:
            raise ProxyError(502, "UpstreamError", "model answer over the size limit")
        chunks.append(chunk)
    return b"".join(chunks)


def upstream_message(document: Any, status: int) -> str:
    """The message of a model server error: OpenAI's ``{"error": {"message"}}`` or the
    tensor server's ``{"reason", "message"}`` (the caller scans it before sending)."""
    source = document if isinstance(document, dict) else {}
    error = source.get("error")
    if isinstance(error, dict):
        source = error
    message = source.get("message")
    return message if isinstance(message, str) else f"the model answered HTTP {status}"


def scanned_message(state: SidecarState, message: str, status: int) -> str:
    """An error message of the model as it may be released: scanned like output (redacted),
    or replaced when the filter blocks it or fails."""
    try:
        scanned = state.scanner.scan(message)
    except Exception:
        logger.exception("output filter failed on an error message of the model")
        scanned = None
    if scanned is None or scanned.blocked is not None:
        return f"the model answered HTTP {status} (its message was withheld)"
    text: str = scanned.document
    return text


def upstream_rejection(state: SidecarState, answer: Answer) -> ProxyError:
    """The model's 4xx/5xx on ``/v1/predict`` as the sidecar's ``{"reason", "message"}``:
    its status, its reason when a short name, its message scanned."""
    document = answer.document if isinstance(answer.document, dict) else {}
    reason = document.get("reason")
    if not isinstance(reason, str) or not _SAFE_REASON.match(reason):
        reason = "UpstreamRejected"
    message = scanned_message(state, upstream_message(document, answer.status), answer.status)
    return ProxyError(answer.status, reason, message)


def upstream_timeout(state: SidecarState) -> ProxyError:
    return ProxyError(504, "UpstreamTimeout",
                      f"model did not answer within {state.config.upstream_timeout_seconds}s")


def upstream_unreachable(exc: BaseException) -> ProxyError:
    return ProxyError(502, "UpstreamError", f"model unreachable: {type(exc).__name__}")


def decode_answer(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProxyError(502, "UpstreamError", "model answer is not valid JSON") from exc


def _reported_queries(answer: Any, batch: int) -> int:
    queries = answer.get("queries") if isinstance(answer, dict) else None
    if not isinstance(queries, int) or isinstance(queries, bool):
        raise ProxyError(502, "UpstreamProtocolError",
                         "model answer lacks an integer 'queries' field")
    if not 0 <= queries <= batch:
        raise ProxyError(502, "UpstreamProtocolError",
                         f"model reported {queries} queries for {batch} inputs")
    return queries


async def scan(state: SidecarState, document: Any, size_hint: int, *,
               numbers: bool = True) -> ScanResult:
    """The output filter over ``document``; 500 FilterError (nothing sent) if it fails.

    ``numbers=False`` for OpenAI envelopes: their numbers (``created``, ``usage``, ``index``,
    DP-noised vector coordinates) are not model text, and a 10-digit timestamp is a valid
    phone number in some region. Every string is still scanned."""
    try:
        if size_hint > INLINE_SCAN_CHARS:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                state.executor, functools.partial(state.scanner.scan, numbers=numbers),
                document)
        return state.scanner.scan(document, numbers=numbers)
    except Exception as exc:
        logger.exception("output filter failed")
        raise ProxyError(500, "FilterError",
                         "the output filter failed; the answer was withheld") from exc


@dataclass(frozen=True, slots=True)
class Answer:
    """The model's answer to one forwarded request (any status; see :func:`exchange`)."""

    status: int
    document: Any
    raw: bytes


async def reserve(state: SidecarState, audit: Audit, batch: int,
                  partition: str | None) -> Reservation | None:
    """Take ``batch`` queries from the leases (None when the mechanism is free).

    429 BudgetExhausted / 503 LedgerUnavailable with Retry-After: fail closed, nothing sent.
    """
    if state.leases is None:
        return None
    try:
        reservation = await state.leases.reserve(batch, partition)
    except BudgetExhausted as exc:
        raise ProxyError(
            429, "BudgetExhausted", exc.message,
            extra=_eps(spent=exc.epsilon_spent, remaining=exc.epsilon_remaining),
        ) from exc
    except LedgerUnavailable as exc:
        retry = max(1, round(exc.retry_after))
        raise ProxyError(503, "LedgerUnavailable", exc.message,
                         headers={"Retry-After": str(retry)}) from exc
    audit.queries_reserved = batch
    audit.tenant_confirmed = partition is not None
    return reservation


async def exchange(state: SidecarState, audit: Audit, *, path: str, payload: bytes,
                   batch: int, partition: str | None, metered: bool = True) -> Answer:
    """The shared request path: reserve, forward, check the reported spend, charge.

    ``batch`` queries are reserved BEFORE the model sees the request; the model's answer
    must report an integer ``queries`` (0..batch) on a 200, which is charged and the rest
    refunded. A 200 whose spend cannot be read is charged in full (the model may have
    released); no answer at all, nothing. 4xx/5xx answers are returned for the caller to
    relay (charged what they report, if anything); any other status (a redirect, a 2xx
    that is not 200) is refused as 502. ``metered=False`` (free routes of a free mechanism,
    e.g. text generation): no reservation and no ``queries`` field expected.

    The answer is decoded but NOT scanned: the caller scans what it releases.
    """
    reservation = await reserve(state, audit, batch, partition) if metered else None
    charged = 0
    try:
        status, raw = await _forward(state, path, payload, audit.request_id)
        audit.upstream_status = status
        if 200 <= status < 300:
            # The model answered, so it may have released: charge the whole reservation
            # unless the answer proves to report its spend correctly.
            charged = batch if state.charged and metered else 0
        answer = decode_answer(raw) if status < 300 or status >= 400 else None
        if status != 200:
            if 400 <= status < 600:
                charged = _error_queries(answer, batch) if metered else 0
                return Answer(status, answer, raw)
            raise ProxyError(502, "UpstreamProtocolError",
                             f"model answered HTTP {status}; only a 200 answer is released")
        if metered:
            charged = _reported_queries(answer, batch)
            if not state.charged and charged:
                reported, charged = charged, 0
                raise ProxyError(502, "UpstreamProtocolError",
                                 f"mechanism 'none' is free but the model reported "
                                 f"{reported} queries")
        return Answer(status, answer, raw)
    finally:
        if reservation is not None and state.leases is not None:
            state.leases.settle(reservation, charged)
        audit.queries_charged = charged


def raise_if_blocked(state: SidecarState, audit: Audit, result: ScanResult) -> None:
    """Record the scan's findings; 451 if the answer must be withheld."""
    if result.entity_counts or result.verbatim_hits:
        audit.entities = result.entity_counts
        _count_findings(state, result)
    if result.blocked == "verbatim":
        audit.verbatim_blocked = True
        raise ProxyError(451, "VerbatimReproduction",
                         "the answer reproduced training data and was withheld",
                         code="verbatim_reproduction")
    if result.blocked == "pii":
        types = result.entity_types
        raise ProxyError(451, "OutputBlocked",
                         "the answer contained PII and was withheld: " + ", ".join(types),
                         extra={"entityTypes": types}, code="pii_detected")


def finish_audit(state: SidecarState, audit: Audit) -> None:
    """Metrics and the audit line of one request (always, whatever its outcome; once)."""
    if audit.written:
        return
    audit.written = True
    ended = time.perf_counter()
    state.metrics.request_outcome(audit.outcome).inc()
    state.metrics.request_duration.observe(ended - audit.started)
    state.audit_sink.write(audit.line(state.audit_format, ended))


def fail(audit: Audit, error: ProxyError) -> None:
    audit.status = error.status
    audit.outcome = OUTCOMES.get(error.reason, "error")


async def handle_predict(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    config = state.config
    audit = Audit.of(request)
    try:
        if config.task in ("text-generation", "feature-extraction"):
            # The model server has no /v1/predict for these tasks: say where to go instead.
            route = ("/v1/chat/completions or /v1/completions"
                     if config.task == "text-generation" else "/v1/embeddings")
            raise ProxyError(404, "NotFound",
                             f"model {config.served_name} serves {config.task}: use {route}")
        raw, body = await read_json_body(request, config)
        audit.inputs = batch = _batch_size(body, config)
        audit.tenant = partition = partition_of(request, config)
        answer = await exchange(state, audit, path=PREDICT_PATH, payload=raw, batch=batch,
                                partition=partition)
        headers = {"X-Request-Id": audit.request_id}
        if answer.status != 200:
            # A refusal of the model (e.g. bad inputs) becomes the sidecar's own error: its
            # status, reason and scanned message; nothing else of its body is released.
            rejection = upstream_rejection(state, answer)
            audit.outcome = "upstream_rejected"
            audit.status = answer.status
            response = rejection.response()
            response.headers.update(headers)
            return response
        result = await scan(state, answer.document, len(answer.raw))
        raise_if_blocked(state, audit, result)
        audit.outcome = "redacted" if result.changed else "ok"
        audit.status = answer.status
        if result.changed:
            return web.json_response(result.document, status=answer.status, headers=headers)
        return web.Response(body=answer.raw, status=answer.status, headers=headers,
                            content_type="application/json")
    except ProxyError as error:
        fail(audit, error)
        response = error.response()
        response.headers["X-Request-Id"] = audit.request_id
        return response
    finally:
        finish_audit(state, audit)


OUTCOMES = {
    "BadRequest": "bad_request",
    "TooLarge": "too_large",
    "RequestTimeout": "client_timeout",
    "BudgetExhausted": "budget_exhausted",
    "LedgerUnavailable": "ledger_unavailable",
    "UpstreamError": "upstream_error",
    "UpstreamTimeout": "upstream_timeout",
    "UpstreamProtocolError": "upstream_protocol_error",
    "FilterError": "filter_error",
    "OutputBlocked": "blocked_pii",
    "VerbatimReproduction": "blocked_verbatim",
    "NotFound": "bad_request",
    "MethodNotAllowed": "bad_request",
}


def _eps(*, spent: float | None, remaining: float | None) -> dict[str, object]:
    values = {"epsilonSpent": spent, "epsilonRemaining": remaining}
    return {name: value for name, value in values.items() if value is not None}


def _error_queries(answer: Any, batch: int) -> int:
    queries = answer.get("queries") if isinstance(answer, dict) else None
    if isinstance(queries, int) and not isinstance(queries, bool) and queries > 0:
        return min(queries, batch)
    return 0


def _count_findings(state: SidecarState, result: ScanResult) -> None:
    for entity, count in result.entity_counts.items():
        state.metrics.pii_found(entity).inc(count)
    if result.verbatim_hits:
        state.metrics.verbatim_blocked.labels(state.config.model).inc()


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def upstream_ready(state: SidecarState) -> bool:
    """Whether the model server answers its readiness probe with 200."""
    assert state.upstream is not None
    try:
        async with state.upstream.get(
            state.upstream_ready_url, timeout=aiohttp.ClientTimeout(total=2),
            allow_redirects=False,
        ) as response:
            await response.read()
            return response.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


async def handle_readyz(request: web.Request) -> web.Response:
    if not await upstream_ready(request.app[STATE_KEY]):
        return error_response(503, "UpstreamNotReady", "the model server is not ready")
    return web.json_response({"status": "ready"})


async def handle_metrics(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.Response(body=generate_latest(state.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


ErrorRenderer = Callable[[ProxyError], web.Response]


def _predict_shape(error: ProxyError) -> web.Response:
    return error.response()


# Which error shape answers a path: each protocol's own (the longest matching prefix wins).
ERROR_SHAPES_KEY = web.AppKey("error_shapes", list[tuple[str, ErrorRenderer]])


def render_error(app: web.Application, path: str, error: ProxyError) -> web.Response:
    for prefix, renderer in app[ERROR_SHAPES_KEY]:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return renderer(error)
    return _predict_shape(error)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413...) and crashes as JSON in the shape of the
    protocol the path belongs to, never HTML or a trace."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = {404: "NotFound", 405: "MethodNotAllowed", 413: "TooLarge"}.get(
            exc.status, "BadRequest" if exc.status < 500 else "InternalError")
        error = ProxyError(exc.status, reason, exc.reason or reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        error = ProxyError(500, "InternalError", "internal error")
    return render_error(request.app, request.path, error)


def create_app(config: FilterConfig, pod_name: str, *, analyzer: PiiAnalyzer | None = None,
               guard: VerbatimGuard | None = None, metrics: FilterMetrics | None = None,
               audit_sink: AuditSink | None = None,
               limits: ConnectionLimits | None = None,
               audit_id_key: bytes | None = None) -> web.Application:
    """The sidecar as an aiohttp application (sessions open on startup, close on cleanup).

    Audit lines go to ``audit_sink``; by default to the ``dpserve.audit`` logger; client-chosen
    ids in them are hashed under ``audit_id_key`` (default: random per process). The
    connection limits are enforced when it is served with ``app[GUARD_KEY]``
    (:func:`dpserve_runtime.httplimits.serve_until`).
    """
    # The protocol modules build on the shared request path defined here.
    from dpserve_runtime.filter import oip, openai_api

    state = SidecarState(config, pod_name, analyzer=analyzer, guard=guard, metrics=metrics,
                         audit_sink=audit_sink, audit_id_key=audit_id_key)
    connections = ConnectionGuard(limits or ConnectionLimits())
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[connections.middleware, json_errors])
    app[GUARD_KEY] = connections
    app[CONFIG_KEY] = config
    app[STATE_KEY] = state
    app[ERROR_SHAPES_KEY] = [*openai_api.ERROR_SHAPES, *oip.ERROR_SHAPES]

    async def on_startup(_: web.Application) -> None:
        await state.start()

    async def on_cleanup(_: web.Application) -> None:
        await state.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post(PREDICT_PATH, handle_predict)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    openai_api.add_routes(app)
    oip.add_routes(app)
    return app


__all__ = ["DEFAULT_GROUP", "GUARD_KEY", "create_app", "error_response"]

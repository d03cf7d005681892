"""OpenAI-compatible routes of the sidecar: chat/completions, completions, embeddings, models.

- ``POST /v1/chat/completions``, ``POST /v1/completions`` (task text-generation; ``stream:
  true`` answers Server-Sent Events), ``POST /v1/embeddings`` (task feature-extraction),
  ``GET /v1/models`` and ``GET /v1/models/{model}``.
- Requests are validated here (pydantic models of the OpenAI request bodies, restricted to
  the parameters dpserve serves: any other parameter is refused by name, never ignored),
  the model name and the task are checked, ``max_tokens`` and ``n`` are held to
  ``FilterConfig.generation`` - all before anything is reserved or forwarded.
- Every error is OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``:

  ====  ======================  ===========================================================
  400   invalid_request_error   code ``unsupported_parameter`` / ``missing_required_parameter``
                                / ``invalid_value`` / ``invalid_json`` / ``invalid_encoding``
                                / ``max_tokens_exceeded`` / ``too_many_choices`` /
                                ``too_many_inputs`` / ``missing_tenant`` / ``invalid_tenant``;
                                the model server's own 4xx relayed with its status, message
                                (scanned), type, param and code (e.g.
                                ``context_length_exceeded``)
  404   invalid_request_error   ``model_not_found`` (another model name), ``unsupported_task``
                                (a route this model's task does not serve)
  408   invalid_request_error   ``request_timeout`` (body not received in time)
  413   invalid_request_error   ``request_too_large`` (body over ``maxBodyBytes``)
  429   insufficient_quota      ``insufficient_quota``: the privacy budget is exhausted (with
                                ``x-should-retry: false``: waiting does not refill it)
  451   output_blocked          ``pii_detected`` / ``verbatim_reproduction``: withheld
  500   server_error            ``filter_error`` (the output filter failed; nothing sent)
  502   server_error            ``upstream_error`` / ``upstream_protocol_error``
  503   server_error            ``ledger_unavailable``, with ``Retry-After``
  504   server_error            ``upstream_timeout``
  5xx   server_error            the model server's own 5xx, relayed like its 4xx
  ====  ======================  ===========================================================

- Streams: the model server's chunks are relayed through one stream filter per choice
  index; each emitted chunk carries the filtered delta. A stream that must stop (PII with
  action block, verbatim reproduction, an upstream failure or malformed chunk) ends with a
  terminal event ``data: {"error": {"message", "type", "param", "code"}}`` (the same
  types/codes as above) and no ``[DONE]``; text held back by the filter is never sent.
  The official ``openai`` client raises ``openai.APIError`` on that event.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import re
import time
from collections import Counter
from typing import Annotated, Any, Literal, TypeVar

import aiohttp
import numpy as np
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from dpserve.api.filterconfig import FilterConfig
from dpserve_runtime.filter.app import (
    STATE_KEY,
    Answer,
    Audit,
    ErrorRenderer,
    ProxyError,
    SidecarState,
    decode_answer,
    exchange,
    fail,
    finish_audit,
    partition_of,
    raise_if_blocked,
    read_bounded,
    read_json_body,
    scan,
    upstream_message,
    upstream_timeout,
    upstream_unreachable,
)
from dpserve_runtime.filter.sse import DONE, DONE_EVENT, SseError, encode_event, iter_events
from dpserve_runtime.filter.stream import StreamFilter, StreamOutput

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
MODELS_PATH = "/v1/models"

# A short machine-readable string of the model server's error (type, param, code) that may
# be relayed as is; anything else is dropped rather than echoed unscanned.
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_.\[\]-]{1,64}$")
_FINISH_REASONS = frozenset({"stop", "length", "content_filter"})
_STARTED = int(time.time())
logger = logging.getLogger(__name__)  # "created" of the one model /v1/models lists


# --- requests ---------------------------------------------------------------------------------


class _Request(BaseModel):
    # Unknown parameters are refused by name: a parameter dpserve does not implement must
    # never be accepted and silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class Message(_Request):
    # "tool"/"function" messages belong to tool calling, which dpserve does not serve.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(min_length=1)]

    def upstream(self) -> dict[str, str]:
        """The message as the model server takes it: one string; OpenAI's "developer" role
        is its newer name for "system" instructions."""
        text = (self.content if isinstance(self.content, str)
                else "".join(part.text for part in self.content))
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


StopText = Annotated[str, StringConstraints(min_length=1)]
Stop = StopText | Annotated[list[StopText], Field(min_length=1, max_length=4)]


class _Generation(_Request):
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    # No stream_options: the model server reports no usage in streams.
    stream: bool = False
    temperature: Annotated[float, Field(ge=0.0, le=2.0, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    stop: Stop | None = None
    seed: int | None = None

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters that were given, as the model server receives them."""
        fields = ("n", "temperature", "top_p", "stop", "seed")
        out = {name: getattr(self, name) for name in fields if name in self.model_fields_set}
        if self.stream:
            out["stream"] = True
        return out


class ChatCompletionRequest(_Generation):
    messages: Annotated[list[Message], Field(min_length=1)]
    # OpenAI's newer name for max_tokens; forwarded as max_tokens.
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class CompletionRequest(_Generation):
    # Token-id prompts are refused: the sidecar filters text, and ids bypass nothing but
    # would need the tokenizer to bound or audit.
    prompt: str | Annotated[list[str], Field(min_length=1)]


class EmbeddingRequest(_Request):
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    input: (Annotated[str, StringConstraints(min_length=1)]
            | Annotated[list[Annotated[str, StringConstraints(min_length=1)]],
                        Field(min_length=1)])
    # The official client asks for base64 by default; the sidecar encodes it itself.
    encoding_format: Literal["float", "base64"] = "float"


M = TypeVar("M", bound=BaseModel)


# --- errors -----------------------------------------------------------------------------------

# reason of a ProxyError -> (OpenAI error type, default code)
_TYPES: dict[str, tuple[str, str | None]] = {
    "BadRequest": ("invalid_request_error", "invalid_value"),
    "TooLarge": ("invalid_request_error", "request_too_large"),
    "RequestTimeout": ("invalid_request_error", "request_timeout"),
    "NotFound": ("invalid_request_error", "not_found"),
    "MethodNotAllowed": ("invalid_request_error", "method_not_allowed"),
    "BudgetExhausted": ("insufficient_quota", "insufficient_quota"),
    "LedgerUnavailable": ("server_error", "ledger_unavailable"),
    "UpstreamError": ("server_error", "upstream_error"),
    "UpstreamTimeout": ("server_error", "upstream_timeout"),
    "UpstreamProtocolError": ("server_error", "upstream_protocol_error"),
    "FilterError": ("server_error", "filter_error"),
    "OutputBlocked": ("output_blocked", "pii_detected"),
    "VerbatimReproduction": ("output_blocked", "verbatim_reproduction"),
    "InternalError": ("server_error", "internal_error"),
}


def error_body(error: ProxyError) -> dict[str, Any]:
    """``{"error": {...}}`` of a sidecar error (for a response or a terminal stream event)."""
    kind, code = _TYPES.get(error.reason, ("server_error", None))
    relayed = error.extra.get("type")
    if error.reason == "UpstreamRejected" and isinstance(relayed, str):
        kind = relayed
    return {"error": {"message": error.message, "type": kind, "param": error.param,
                      "code": error.code or code}}


def render(error: ProxyError) -> web.Response:
    headers = dict(error.headers)
    if error.reason == "BudgetExhausted":
        # The openai client retries 429s by default; an exhausted budget does not come back.
        headers["x-should-retry"] = "false"
    return web.json_response(error_body(error), status=error.status, headers=headers)


ERROR_SHAPES: list[tuple[str, ErrorRenderer]] = [
    (CHAT_PATH, render), (COMPLETIONS_PATH, render), (EMBEDDINGS_PATH, render),
    (MODELS_PATH, render),
]


def _param(loc: tuple[int | str, ...]) -> str:
    """``messages[0].role`` from pydantic's location, without its union-member tags."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() and part not in {"str", "int", "float", "bool", "list"}:
            out += f".{part}" if out else part
    return out


def validation_error(exc: ValidationError) -> ProxyError:
    first = exc.errors(include_url=False)[0]
    param = _param(tuple(first["loc"])) or None
    if first["type"] == "extra_forbidden":
        return ProxyError(400, "BadRequest", f"unsupported parameter: '{param}'", param=param,
                          code="unsupported_parameter")
    if first["type"] == "missing":
        return ProxyError(400, "BadRequest", f"missing required parameter: '{param}'",
                          param=param, code="missing_required_parameter")
    where = f"'{param}'" if param else "the body"
    return ProxyError(400, "BadRequest", f"invalid value for {where}: {first['msg']}",
                      param=param, code="invalid_value")


def _parse(model: type[M], body: Any) -> M:
    if not isinstance(body, dict):
        raise ProxyError(400, "BadRequest", "the body must be a JSON object",
                         code="invalid_value")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def _check_task(config: FilterConfig, wanted: str, route: str) -> None:
    if config.task != wanted:
        serves = config.task or "tensor inputs"
        raise ProxyError(
            404, "NotFound",
            f"model {config.served_name} serves {serves}, not {route}"
            + (f"; use /v2/models/{config.served_name}/infer or /v1/predict"
               if config.task in (None, "text-classification") else ""),
            param="model", code="unsupported_task")


def _check_model(config: FilterConfig, model: str) -> None:
    if model != config.served_name:
        # Never echo the requested name: it is client text in a response.
        raise ProxyError(404, "NotFound",
                         f"the model does not exist; this endpoint serves "
                         f"'{config.served_name}'", param="model", code="model_not_found")


def _check_generation(config: FilterConfig, request: _Generation, max_tokens: int | None,
                      prompts: int) -> None:
    limits = config.generation
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ProxyError(400, "BadRequest",
                         f"max_tokens is {max_tokens}, more than the limit of "
                         f"{limits.max_tokens}", param="max_tokens", code="max_tokens_exceeded")
    if request.n * prompts > limits.max_choices:
        what = f"n={request.n}" if prompts == 1 else f"n={request.n} x {prompts} prompts"
        raise ProxyError(400, "BadRequest",
                         f"{what} asks for more than the limit of {limits.max_choices} "
                         f"choices", param="n", code="too_many_choices")


def _json_bytes(payload: Any) -> bytes:
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProxyError(400, "BadRequest",
                         "the body contains an unpaired surrogate escape (not valid Unicode "
                         "text)", code="invalid_value") from exc


def relay_upstream_error(state: SidecarState, answer: Answer) -> ProxyError:
    """The model server's 4xx/5xx as the sidecar's error, its message scanned like output.

    The server answers text routes in OpenAI's shape and other failures as ``{"reason",
    "message"}``; type/param/code are kept only when they are short machine tokens.
    """
    document = answer.document if isinstance(answer.document, dict) else {}
    error = document.get("error")
    source = error if isinstance(error, dict) else document
    message = upstream_message(document, answer.status)
    try:
        scanned = state.scanner.scan(message)
    except Exception:
        logger.exception("output filter failed on an error message of the model")
        scanned = None
    if scanned is None or scanned.blocked is not None:
        message = f"the model answered HTTP {answer.status} (its message was withheld)"
    else:
        message = scanned.document

    def token(name: str) -> str | None:
        value = source.get(name)
        return value if isinstance(value, str) and _SAFE_TOKEN.match(value) else None

    kind = token("type") if isinstance(error, dict) else None
    return ProxyError(answer.status, "UpstreamRejected", message, param=token("param"),
                      code=token("code"),
                      extra={"type": kind or ("invalid_request_error" if answer.status < 500
                                              else "server_error")})


# --- handlers ---------------------------------------------------------------------------------


async def handle_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list",
                              "data": [_model_card(request.app[STATE_KEY].config)]})


async def handle_model(request: web.Request) -> web.Response:
    config = request.app[STATE_KEY].config
    try:
        _check_model(config, request.match_info["model"])
    except ProxyError as error:
        return render(error)
    return web.json_response(_model_card(config))


def _model_card(config: FilterConfig) -> dict[str, Any]:
    return {"id": config.served_name, "object": "model", "created": _STARTED,
            "owned_by": "dpserve"}


async def handle_chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def handle_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def _generate(request: web.Request, *, chat: bool) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    config = state.config
    audit = Audit.of(request)
    path = CHAT_PATH if chat else COMPLETIONS_PATH
    try:
        _check_task(config, "text-generation", path)
        _, body = await read_json_body(request, config)
        parsed: ChatCompletionRequest | CompletionRequest
        if chat:
            parsed = _parse(ChatCompletionRequest, body)
            prompts = 1
            max_tokens = parsed.max_completion_tokens or parsed.max_tokens
            if (parsed.max_completion_tokens is not None and parsed.max_tokens is not None
                    and parsed.max_completion_tokens != parsed.max_tokens):
                raise ProxyError(400, "BadRequest",
                                 "max_tokens and max_completion_tokens disagree",
                                 param="max_completion_tokens", code="invalid_value")
        else:
            parsed = _parse(CompletionRequest, body)
            prompts = 1 if isinstance(parsed.prompt, str) else len(parsed.prompt)
            max_tokens = parsed.max_tokens
        _check_model(config, parsed.model)
        _check_generation(config, parsed, max_tokens, prompts)
        audit.inputs = prompts
        audit.tenant = partition_of(request, config)
        upstream: dict[str, Any] = {"model": config.served_name}
        if isinstance(parsed, ChatCompletionRequest):
            upstream["messages"] = [m.upstream() for m in parsed.messages]
        else:
            upstream["prompt"] = parsed.prompt
        if max_tokens is not None:
            upstream["max_tokens"] = max_tokens
        upstream.update(parsed.sampling())
        payload = _json_bytes(upstream)
        if parsed.stream:
            return await _stream(request, state, audit, path, payload, chat=chat,
                                 choices=parsed.n * prompts)
        answer = await exchange(state, audit, path=path, payload=payload, batch=prompts,
                                partition=audit.tenant, metered=False)
        if answer.status != 200:
            raise relay_upstream_error(state, answer)
        document = answer.document
        if not isinstance(document, dict) or not isinstance(document.get("choices"), list):
            raise ProxyError(502, "UpstreamProtocolError", "model answer lacks 'choices'")
        result = await scan(state, document, len(answer.raw), numbers=False)
        raise_if_blocked(state, audit, result)
        result.document["model"] = config.served_name
        audit.outcome = "redacted" if result.changed else "ok"
        audit.status = 200
        return web.json_response(result.document, headers={"X-Request-Id": audit.request_id})
    except ProxyError as error:
        fail(audit, error)
        response = render(error)
        response.headers["X-Request-Id"] = audit.request_id
        return response
    finally:
        finish_audit(state, audit)  # a stream has written it already


async def handle_embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    config = state.config
    audit = Audit.of(request)
    try:
        _check_task(config, "feature-extraction", EMBEDDINGS_PATH)
        _, body = await read_json_body(request, config)
        parsed = _parse(EmbeddingRequest, body)
        _check_model(config, parsed.model)
        inputs = [parsed.input] if isinstance(parsed.input, str) else parsed.input
        if len(inputs) > config.lease.max_size:
            raise ProxyError(400, "BadRequest",
                             f"input has {len(inputs)} items, more than lease.maxSize="
                             f"{config.lease.max_size}", param="input", code="too_many_inputs")
        audit.inputs = len(inputs)
        audit.tenant = partition_of(request, config)
        payload = _json_bytes({"model": config.served_name, "input": inputs,
                               "encoding_format": "float"})
        # One query per input is reserved before the model sees them; the answer's
        # "queries" (<= inputs) is charged, the rest refunded (see app.exchange).
        answer = await exchange(state, audit, path=EMBEDDINGS_PATH, payload=payload,
                                batch=len(inputs), partition=audit.tenant)
        if answer.status != 200:
            raise relay_upstream_error(state, answer)
        vectors = _embeddings(answer.document, len(inputs))
        result = await scan(state, answer.document, len(answer.raw), numbers=False)
        raise_if_blocked(state, audit, result)
        document = result.document
        document["model"] = config.served_name
        if parsed.encoding_format == "base64":
            for item, vector in zip(document["data"], vectors, strict=True):
                item["embedding"] = base64.b64encode(
                    np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
        audit.outcome = "redacted" if result.changed else "ok"
        audit.status = 200
        return web.json_response(document, headers={"X-Request-Id": audit.request_id})
    except ProxyError as error:
        fail(audit, error)
        response = render(error)
        response.headers["X-Request-Id"] = audit.request_id
        return response
    finally:
        finish_audit(state, audit)


def _embeddings(document: Any, count: int) -> list[list[float]]:
    """The vectors of an embeddings answer, in input order (502 if it is malformed)."""
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list) or len(data) != count:
        raise ProxyError(502, "UpstreamProtocolError",
                         f"model answer lacks one embedding per input ({count})")
    vectors: list[list[float]] = [[] for _ in range(count)]
    for position, item in enumerate(data):
        index = item.get("index") if isinstance(item, dict) else None
        vector = item.get("embedding") if isinstance(item, dict) else None
        if (not isinstance(index, int) or isinstance(index, bool) or index != position
                or not isinstance(vector, list) or not vector
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in vector)):
            raise ProxyError(502, "UpstreamProtocolError",
                             f"model answer has a malformed embedding at data[{position}]")
        vectors[position] = vector
    return vectors


# --- streaming --------------------------------------------------------------------------------


class _StreamStop(Exception):
    """Ends a stream with a terminal error event."""

    def __init__(self, error: ProxyError) -> None:
        super().__init__(error.message)
        self.error = error


class _ChoiceRelay:
    """The filtered text of the choices of one stream, one stream filter per choice index."""

    def __init__(self, state: SidecarState, audit: Audit, choices: int) -> None:
        self._state = state
        self._audit = audit
        self._choices = choices
        self._filters: dict[int, StreamFilter] = {}
        self._finished: set[int] = set()
        self.entities: Counter[str] = Counter()
        self.verbatim_hits = 0

    def feed(self, index: int, delta: str, finish: bool) -> str:
        if not 0 <= index < self._choices or index in self._finished:
            raise _StreamStop(ProxyError(502, "UpstreamProtocolError",
                                         f"model streamed an unexpected choice index {index}"))
        stream_filter = self._filters.get(index)
        if stream_filter is None:
            stream_filter = self._filters[index] = self._state.stream_filter()
        text = ""
        try:
            if delta:
                text += self._take(stream_filter.feed(delta))
            if finish:
                self._finished.add(index)
                text += self._take(stream_filter.finish())
        except _StreamStop:
            raise
        except Exception as exc:
            raise _StreamStop(ProxyError(
                500, "FilterError", "the output filter failed; the stream was stopped")) from exc
        return text

    def unfinished(self) -> list[int]:
        return sorted(set(self._filters) - self._finished)

    def _take(self, output: StreamOutput) -> str:
        if output.entity_counts:
            self.entities.update(output.entity_counts)
            for entity, count in output.entity_counts.items():
                self._state.metrics.pii_found(entity).inc(count)
        if output.verbatim_hits:
            self.verbatim_hits += output.verbatim_hits
        if output.blocked == "verbatim":
            self._audit.verbatim_blocked = True
            self._state.metrics.verbatim_blocked.labels(self._state.config.model).inc()
            raise _StreamStop(ProxyError(451, "VerbatimReproduction",
                                         "the answer reproduced training data; the stream "
                                         "was stopped"))
        if output.blocked is not None:
            types = ", ".join(sorted(self.entities)) or "PII"
            raise _StreamStop(ProxyError(451, "OutputBlocked",
                                         f"the answer contained PII ({types}); the stream "
                                         f"was stopped"))
        return output.text


def _chunk_choice(choice: Any, chat: bool) -> tuple[int, str, str | None, bool]:
    """(index, text delta, finish_reason, has role) of one streamed choice, or 502."""
    if not isinstance(choice, dict):
        raise _StreamStop(ProxyError(502, "UpstreamProtocolError", "malformed stream chunk"))
    index, finish = choice.get("index"), choice.get("finish_reason")
    if not isinstance(index, int) or isinstance(index, bool):
        raise _StreamStop(ProxyError(502, "UpstreamProtocolError",
                                     "stream chunk choice lacks an integer index"))
    if finish is not None and finish not in _FINISH_REASONS:
        raise _StreamStop(ProxyError(502, "UpstreamProtocolError",
                                     "stream chunk has an unknown finish_reason"))
    role = False
    if chat:
        delta = choice.get("delta")
        if not isinstance(delta, dict) or not set(delta) <= {"role", "content"}:
            raise _StreamStop(ProxyError(502, "UpstreamProtocolError",
                                         "stream chunk has a malformed delta"))
        if "role" in delta and delta["role"] != "assistant":
            raise _StreamStop(ProxyError(502, "UpstreamProtocolError",
                                         "stream chunk has an unexpected role"))
        role = "role" in delta
        text = delta.get("content")
    else:
        text = choice.get("text")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise _StreamStop(ProxyError(502, "UpstreamProtocolError",
                                     "stream chunk text is not a string"))
    return index, text, finish, role


async def _stream(request: web.Request, state: SidecarState, audit: Audit, path: str,
                  payload: bytes, *, chat: bool, choices: int) -> web.StreamResponse:
    """Relay the model server's SSE stream through the per-choice stream filters.

    Only text that went through a filter is sent; every outgoing chunk is rebuilt from the
    validated fields of the upstream chunk (no upstream string is copied unscanned).
    """
    assert state.upstream is not None
    config = state.config
    # Between chunks, not in total: a long generation may take longer than one answer.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.upstream_timeout_seconds,
                                    sock_read=config.upstream_timeout_seconds)
    try:
        upstream = await state.upstream.post(
            state.upstream_base + path, data=payload, allow_redirects=False, timeout=timeout,
            headers={"Content-Type": "application/json", "X-Request-Id": audit.request_id,
                     "Accept": "text/event-stream"})
    except TimeoutError as exc:
        raise upstream_timeout(state) from exc
    except aiohttp.ClientError as exc:
        raise upstream_unreachable(exc) from exc
    async with upstream:
        audit.upstream_status = upstream.status
        if upstream.status != 200:
            if not 400 <= upstream.status < 600:
                raise ProxyError(502, "UpstreamProtocolError",
                                 f"model answered HTTP {upstream.status}; only a 200 answer "
                                 f"is released")
            try:
                raw = await read_bounded(upstream)
            except TimeoutError as exc:
                raise upstream_timeout(state) from exc
            except aiohttp.ClientError as exc:
                raise upstream_unreachable(exc) from exc
            raise relay_upstream_error(state, Answer(upstream.status, decode_answer(raw), raw))
        if upstream.content_type != "text/event-stream":
            raise ProxyError(502, "UpstreamProtocolError",
                             f"model answered {upstream.content_type}, not an event stream")
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Request-Id": audit.request_id})
        audit.outcome = "streaming"  # from here on, this function writes the audit line
        audit.status = 200
        relay = _ChoiceRelay(state, audit, choices)
        try:
            await response.prepare(request)
            await _relay(upstream, response, relay, audit, chat=chat,
                         served=config.served_name)
            if relay.entities and state.scanner.action == "redact":
                audit.outcome = "redacted"
            else:
                audit.outcome = "ok"
        except _StreamStop as stop:
            fail(audit, stop.error)
            audit.status = 200  # the client got a 200 and a terminal error event
            if relay.entities:
                audit.entities = relay.entities
            try:
                await response.write(encode_event(error_body(stop.error)))
            except ConnectionResetError:
                audit.outcome = "client_closed"
        except ConnectionResetError:
            audit.outcome = "client_closed"
        except asyncio.CancelledError:
            audit.outcome = "client_closed"  # aiohttp cancels the handler of a gone client
            raise
        except Exception:
            # Headers are sent: the error can only be told as a terminal event.
            logger.exception("stream relay failed")
            audit.outcome = "error"
            with contextlib.suppress(ConnectionResetError):
                await response.write(encode_event(error_body(
                    ProxyError(500, "InternalError", "internal error; the stream was stopped"))))
        finally:
            if relay.entities:
                audit.entities = relay.entities
            finish_audit(state, audit)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response


async def _relay(upstream: aiohttp.ClientResponse, response: web.StreamResponse,
                 relay: _ChoiceRelay, audit: Audit, *, chat: bool, served: str) -> None:
    kind = "chat.completion.chunk" if chat else "text_completion"
    chunk_id = ("chatcmpl-" if chat else "cmpl-") + audit.request_id
    created = int(time.time())

    def chunk(entries: list[dict[str, Any]]) -> bytes:
        return encode_event({"id": chunk_id, "object": kind, "created": created,
                             "model": served, "choices": entries})

    def entry(index: int, text: str, finish: str | None, role: bool) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text:
                delta["content"] = text
            return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": index, "text": text, "finish_reason": finish, "logprobs": None}

    async def flush_unfinished() -> None:
        entries = [entry(i, text, None, False)
                   for i in relay.unfinished() if (text := relay.feed(i, "", True))]
        if entries:
            await response.write(chunk(entries))

    try:
        async for event in iter_events(upstream.content.iter_any()):
            if event.data == DONE:
                await flush_unfinished()
                await response.write(DONE_EVENT)
                return
            try:
                document = json.loads(event.data)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise _StreamStop(ProxyError(502, "UpstreamProtocolError",
                                             "model streamed a chunk that is not JSON")) from exc
            if isinstance(document, dict) and "error" in document:
                # The model server's own terminal event (it failed mid-generation).
                raise _StreamStop(ProxyError(502, "UpstreamError",
                                             "the model failed during the stream"))
            if not isinstance(document, dict) or not isinstance(document.get("choices"), list):
                raise _StreamStop(ProxyError(502, "UpstreamProtocolError",
                                             "model streamed a chunk without 'choices'"))
            entries = []
            for choice in document["choices"]:
                index, delta, finish, role = _chunk_choice(choice, chat)
                text = relay.feed(index, delta, finish is not None)
                if text or finish is not None or role:
                    entries.append(entry(index, text, finish, role))
            if entries:
                await response.write(chunk(entries))
    except SseError as exc:
        raise _StreamStop(ProxyError(502, "UpstreamError",
                                     f"the model's event stream broke off: {exc}")) from exc
    except TimeoutError as exc:
        raise _StreamStop(ProxyError(504, "UpstreamTimeout",
                                     "the model stopped streaming")) from exc
    except aiohttp.ClientError as exc:
        raise _StreamStop(ProxyError(502, "UpstreamError",
                                     "the model's stream was cut off")) from exc
    raise _StreamStop(ProxyError(502, "UpstreamError",
                                 "the model's stream ended without [DONE]"))


def add_routes(app: web.Application) -> None:
    app.router.add_post(CHAT_PATH, handle_chat)
    app.router.add_post(COMPLETIONS_PATH, handle_completions)
    app.router.add_post(EMBEDDINGS_PATH, handle_embeddings)
    app.router.add_get(MODELS_PATH, handle_models)
    app.router.add_get(MODELS_PATH + "/{model}", handle_model)

"""The model server for ``huggingface`` artifacts: OpenAI-shaped text routes on localhost.

Routes by task (request fields in :mod:`dpserve_runtime.server.openai_schema`):

- text-generation      ``POST /v1/completions``, ``POST /v1/chat/completions``; ``stream:
                       true`` answers ``text/event-stream``: ``data: {chunk}\\n\\n`` per
                       decoded text delta (``text_completion`` / ``chat.completion.chunk``,
                       one ``choices[0].index`` per choice), a chunk with ``finish_reason``
                       per choice, then ``data: [DONE]\\n\\n``. A failure mid-stream sends
                       ``data: {"error": {...}}\\n\\n`` and no ``[DONE]``.
- feature-extraction   ``POST /v1/embeddings``: OpenAI's list shape plus ``queries`` (DP
                       releases: one per input under a noisy mechanism, 0 under ``none``),
                       ``mechanism``, ``modelVersion`` and ``noise`` (the noise applied).
- text-classification  ``POST /v1/predict`` ``{"inputs": ["text", ...]}`` ->
                       ``{"outputs": [{"label", "text", "probabilities"}], "queries": 0, ...}``
- all                  ``GET /healthz``, ``GET /readyz``

Mechanisms: generation and classification are served with ``none`` only (their spend is the
DP fine-tuning); embeddings with ``none``, ``gaussian`` or ``laplace-embedding``, applied by
the tensor server's own mechanism classes to the pooled, L2-normalised vector.

Every error is OpenAI's ``{"error": {"message", "type", "param", "code"}}``; bad input is a
400 naming the field (``param``) before the model runs: ``max_tokens`` / ``n`` over the
server's limits, a prompt longer than the context (``context_length_exceeded``), unknown
roles or fields, wrong types.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from dpserve.api.text import ModelTask
from dpserve_runtime.generation import FinishReason, SamplingParams, Step, generate
from dpserve_runtime.jsondepth import nesting_message
from dpserve_runtime.server.lifecycle import ServingProcess
from dpserve_runtime.server.mechanisms import (
    MechanismConfigError,
    OutputMechanism,
    build_mechanism,
)
from dpserve_runtime.server.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIError,
    TextPredictRequest,
    error_body,
    from_validation_error,
)
from dpserve_runtime.server.textmodels import (
    SentenceEncoder,
    TextClassifier,
    TextGenerator,
    TextModel,
    resolve_device,
)

if TYPE_CHECKING:  # app.py imports this module
    from dpserve_runtime.server.app import ServerConfig

log = logging.getLogger("dpserve.server.text")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RequestT = TypeVar("RequestT", bound=BaseModel)

ROUTES: dict[str, ModelTask] = {
    "/v1/completions": "text-generation",
    "/v1/chat/completions": "text-generation",
    "/v1/embeddings": "feature-extraction",
    "/v1/predict": "text-classification",
}


@dataclass(frozen=True)
class _NoNoiseTarget:
    """What the mechanism check sees for a generator or classifier: one model, no vectors."""

    is_ensemble: bool = False
    member_count: int = 1
    num_outputs: int | None = None
    format: str = "huggingface"
    output_diameter: float = 2.0


def _json_error(status: int, message: str, **fields: Any) -> web.Response:
    return web.json_response(error_body(message, **fields), status=status)


@web.middleware
async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as OpenAI's error object; the server keeps serving."""
    try:
        return await handler(request)
    except OpenAIError as exc:
        return web.json_response(exc.body(), status=exc.status)
    except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413 (client_max_size), ...
        if exc.status < 400:
            raise
        return _json_error(exc.status, exc.reason or "error", code=f"http_{exc.status}")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json_error(500, "internal error; see the server log", type="server_error")


@dataclass(frozen=True)
class _Choice:
    index: int
    text: str
    finish_reason: FinishReason


class TextModelServer(ServingProcess):
    """Holds one huggingface artifact and serves its task."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config.workers, "dpserve-text", limits=config.limits(),
                         body_timeout=config.body_timeout)
        self.config = config
        self.text: TextModel | None = None
        self.mechanism: OutputMechanism | None = None
        self.generator: TextGenerator | None = None
        self.classifier: TextClassifier | None = None
        self.encoder: SentenceEncoder | None = None

    # ------------------------------------------------------------------ loading

    @property
    def max_tokens(self) -> int:
        return self.config.max_tokens or 256

    @property
    def max_choices(self) -> int:
        return self.config.max_choices or 4

    def load_blocking(self) -> None:
        """Load the artifact for its task and build the mechanism (ArtifactError,
        MechanismConfigError or ValueError with a message naming the field or flag)."""
        from dpserve_runtime.hfartifact import load_hf_manifest

        config = self.config
        task = config.task or load_hf_manifest(config.artifact).task
        if task != "text-generation":
            for flag, value in (("--max-tokens", config.max_tokens),
                                ("--max-choices", config.max_choices)):
                if value is not None:
                    raise ValueError(f"{flag}: applies to task text-generation, not {task}")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a log, no tty
        text = TextModel.load(config.artifact, task, resolve_device(config.device))
        text.context_length  # noqa: B018  (raises now, not per request, if none is stated)
        if task == "feature-extraction":
            encoder = SentenceEncoder(text)
            mechanism = build_mechanism(config.mechanism, encoder)
            self.encoder = encoder
        else:
            mechanism = build_mechanism(config.mechanism, _NoNoiseTarget())
            if mechanism.type != "none":
                raise MechanismConfigError(
                    f"mechanism.type: {task} is served with mechanism 'none' (its DP spend "
                    f"is the fine-tuning), not {mechanism.type!r}"
                )
            if task == "text-generation":
                self.generator = TextGenerator(text)
                if text.context_length < 2:
                    raise ValueError("the model's context length leaves no room to generate")
            else:
                self.classifier = TextClassifier(text)
        self.text, self.mechanism = text, mechanism
        log.info(
            "loaded huggingface artifact %s (task %s, version %s, device %s); mechanism %s",
            config.artifact, task, text.version, text.device, json.dumps(config.mechanism.wire()),
        )

    def app(self) -> web.Application:
        app = self.new_app(_openai_errors, self.config.max_body_bytes)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/predict", self.predict)
        return app

    async def readyz(self, _request: web.Request) -> web.Response:
        if self.text is None or self.mechanism is None:
            return _json_error(503, "the model is still loading", type="server_error",
                               code="not_ready")
        return web.json_response(
            {"status": "ready", "modelVersion": self.text.version, "task": self.text.task}
        )

    # ------------------------------------------------------------------ request parsing

    def _ready(self, path: str) -> TextModel:
        text = self.text
        if text is None or self.mechanism is None:
            raise OpenAIError(503, "the model is still loading", type="server_error",
                              code="not_ready")
        needed = ROUTES[path]
        if text.task != needed:
            raise OpenAIError(
                404,
                f"{path} needs a {needed} model; this server serves task {text.task}",
                code="unsupported_route",
            )
        return text

    async def _parse(self, request: web.Request, schema: type[RequestT]) -> RequestT:
        try:
            body = await self.read_body(request)
        except web.HTTPRequestEntityTooLarge as exc:
            raise OpenAIError(
                413, f"body exceeds {self.config.max_body_bytes} bytes", code="payload_too_large"
            ) from exc
        except TimeoutError as exc:
            raise OpenAIError(
                408, f"body not received within {self.config.body_timeout}s",
                code="request_timeout",
            ) from exc
        try:
            raw = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OpenAIError(400, f"body is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            message, field = nesting_message(body.decode("utf-8", "replace"))
            raise OpenAIError(400, message, param=field) from exc
        if not isinstance(raw, dict):
            raise OpenAIError(400, "body must be a JSON object")
        try:
            return schema.model_validate(raw)
        except ValidationError as exc:
            raise from_validation_error(exc) from exc

    def _check_batch(self, count: int, param: str) -> None:
        if count > self.config.max_batch:
            raise OpenAIError(
                400, f"{param}: {count} texts, at most {self.config.max_batch} per request",
                param=param,
            )

    def _sampling(
        self, request: CompletionRequest | ChatCompletionRequest, max_tokens: int | None,
        prompts: Sequence[Sequence[int]], prompt_param: str, max_tokens_param: str,
    ) -> SamplingParams:
        """The sampling parameters, after every limit check (400 naming the field)."""
        assert self.text is not None
        if max_tokens is not None and max_tokens > self.max_tokens:
            raise OpenAIError(
                400, f"{max_tokens_param}: {max_tokens} exceeds this model's limit of "
                f"{self.max_tokens} tokens per completion", param=max_tokens_param,
            )
        choices = request.n * len(prompts)
        if choices > self.max_choices:
            detail = "" if len(prompts) == 1 else f" ({len(prompts)} prompts × n={request.n})"
            raise OpenAIError(
                400, f"n: {choices} completions{detail} exceed this model's limit of "
                f"{self.max_choices} per request", param="n",
            )
        context = self.text.context_length
        longest = max(len(p) for p in prompts)
        if longest >= context:
            raise OpenAIError(
                400, f"{prompt_param}: {longest} tokens, but this model's maximum context "
                f"length is {context} tokens (prompt and completion together)",
                param=prompt_param, code="context_length_exceeded",
            )
        if max_tokens is not None and longest + max_tokens > context:
            raise OpenAIError(
                400, f"{max_tokens_param}: this model's maximum context length is {context} "
                f"tokens, you requested {longest + max_tokens} ({longest} in the prompt, "
                f"{max_tokens} for the completion)",
                param=max_tokens_param, code="context_length_exceeded",
            )
        budget = max_tokens if max_tokens is not None else min(self.max_tokens, context - longest)
        return SamplingParams(
            max_tokens=budget, n=request.n, temperature=float(request.temperature),
            top_p=float(request.top_p), stop=request.stop_strings(), seed=request.seed,
        )

    # ------------------------------------------------------------------ generation

    async def completions(self, request: web.Request) -> web.StreamResponse:
        text = self._ready(request.path)
        body = await self._parse(request, CompletionRequest)
        prompts = [text.token_ids(p) for p in body.prompts()]
        for i, ids in enumerate(prompts):
            if not ids:
                raise OpenAIError(400, "prompt: encodes to no tokens",
                                  param="prompt" if len(prompts) == 1 else f"prompt.{i}")
        params = self._sampling(body, body.max_tokens, prompts, "prompt", "max_tokens")
        return await self._generate(request, body.model, prompts, params, chat=False,
                                    stream=body.stream)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        self._ready(request.path)
        body = await self._parse(request, ChatCompletionRequest)
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise OpenAIError(400, "max_completion_tokens: give max_tokens or "
                              "max_completion_tokens, not both", param="max_completion_tokens")
        param = "max_tokens" if body.max_tokens is not None else "max_completion_tokens"
        assert self.generator is not None
        prompt = self.generator.chat_prompt_ids(body.messages)
        params = self._sampling(body, body.requested_max_tokens(), [prompt], "messages", param)
        return await self._generate(request, body.model, [prompt], params, chat=True,
                                    stream=body.stream)

    def _run_all(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams,
        cancelled: threading.Event, emit: Callable[[int, Step], None],
    ) -> None:
        assert self.text is not None
        for p, ids in enumerate(prompts):
            for step in generate(self.text.model, self.text.tokenizer, ids, params, cancelled):
                emit(p * params.n, step)

    async def _generate(
        self, request: web.Request, model_name: str, prompts: Sequence[Sequence[int]],
        params: SamplingParams, *, chat: bool, stream: bool,
    ) -> web.StreamResponse:
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        prompt_tokens = sum(len(p) for p in prompts)  # OpenAI counts a prompt once, not per n
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        if not stream:
            texts: dict[int, list[str]] = {}
            reasons: dict[int, FinishReason] = {}
            tokens: dict[int, int] = {}

            def collect(offset: int, step: Step) -> None:
                for i, (delta, reason) in enumerate(zip(step.deltas, step.finished,
                                                        strict=True)):
                    index = offset + i
                    if index in reasons:  # finished earlier: the batch decodes on
                        continue
                    texts.setdefault(index, []).append(delta)
                    tokens[index] = tokens.get(index, 0) + 1
                    if reason is not None:
                        reasons[index] = reason

            try:
                await loop.run_in_executor(
                    self.executor, self._run_all, prompts, params, cancelled, collect
                )
            except asyncio.CancelledError:
                cancelled.set()
                raise
            except (RuntimeError, ValueError) as exc:
                log.error("generation failed: %s", exc)
                raise OpenAIError(500, f"the model failed: {exc}", type="server_error",
                                  code="model_error") from exc
            choices = [_Choice(i, "".join(texts[i]), reasons[i]) for i in sorted(texts)]
            completion_tokens = sum(tokens.values())
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}
            return web.json_response(_completion_body(ident, created, model_name, choices,
                                                      usage, chat=chat))
        return await self._stream(request, ident, created, model_name, prompts, params,
                                  chat=chat)

    async def _stream(
        self, request: web.Request, ident: str, created: int, model_name: str,
        prompts: Sequence[Sequence[int]], params: SamplingParams, *, chat: bool,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Step] | BaseException | None] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(offset: int, step: Step) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (offset, step))

        def produce() -> None:
            try:
                self._run_all(prompts, params, cancelled, emit)
            except BaseException as exc:  # handed to the event loop, which reports it
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        future = loop.run_in_executor(self.executor, produce)
        obj = "chat.completion.chunk" if chat else "text_completion"

        async def send(choice: dict[str, Any]) -> None:
            chunk = {"id": ident, "object": obj, "created": created, "model": model_name,
                     "choices": [choice]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        try:
            if chat:
                for i in range(params.n * len(prompts)):
                    await send({"index": i, "delta": {"role": "assistant", "content": ""},
                                "logprobs": None, "finish_reason": None})
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    log.error("generation failed mid-stream: %s", item)
                    err = error_body(f"the model failed: {item}", type="server_error",
                                     code="model_error")
                    await response.write(f"data: {json.dumps(err)}\n\n".encode())
                    return response
                offset, step = item
                for i, (delta, reason) in enumerate(zip(step.deltas, step.finished,
                                                        strict=True)):
                    if delta:
                        await send(_chunk_choice(offset + i, delta, None, chat=chat))
                    if reason is not None:
                        await send(_chunk_choice(offset + i, "", reason, chat=chat))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            # The client went away: stop decoding at the next step.
            cancelled.set()
            raise
        finally:
            cancelled.set()
            with contextlib.suppress(BaseException):
                await asyncio.shield(future)
        return response

    # ------------------------------------------------------------------ embeddings

    async def embeddings(self, request: web.Request) -> web.Response:
        text = self._ready(request.path)
        body = await self._parse(request, EmbeddingRequest)
        inputs = body.inputs()
        self._check_batch(len(inputs), "input")
        text.check_lengths(inputs, "input")
        encoder, mechanism = self.encoder, self.mechanism
        assert encoder is not None and mechanism is not None

        def run() -> Any:
            return mechanism.release_vectors(encoder.embed(inputs)[None])

        try:
            vectors = await asyncio.get_running_loop().run_in_executor(self.executor, run)
        except (RuntimeError, ValueError) as exc:
            # Nothing is released on a model failure, so nothing is charged.
            log.error("encoder failed on %d inputs: %s", len(inputs), exc)
            raise OpenAIError(500, f"the model failed: {exc}", type="server_error",
                              code="model_error") from exc
        tokens = sum(len(text.token_ids(t)) for t in inputs)
        result: dict[str, Any] = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": row.tolist()}
                     for i, row in enumerate(vectors)],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "queries": mechanism.queries(len(inputs)),
            "mechanism": self.config.mechanism.wire(),
            "modelVersion": text.version,
        }
        noise = mechanism.noise()
        if noise is not None:
            result["noise"] = noise
        return web.json_response(result)

    # ------------------------------------------------------------------ classification

    async def predict(self, request: web.Request) -> web.Response:
        text = self._ready(request.path)
        body = await self._parse(request, TextPredictRequest)
        self._check_batch(len(body.inputs), "inputs")
        text.check_lengths(body.inputs, "inputs")
        classifier, mechanism = self.classifier, self.mechanism
        assert classifier is not None and mechanism is not None
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self.executor, classifier.classify, body.inputs
            )
        except (RuntimeError, ValueError) as exc:
            log.error("classifier failed on %d inputs: %s", len(body.inputs), exc)
            raise OpenAIError(500, f"the model failed: {exc}", type="server_error",
                              code="model_error") from exc
        return web.json_response({
            "outputs": outputs,
            "queries": mechanism.queries(len(outputs)),
            "mechanism": self.config.mechanism.wire(),
            "modelVersion": text.version,
        })


def _chunk_choice(
    index: int, delta: str, reason: FinishReason | None, *, chat: bool
) -> dict[str, Any]:
    if chat:
        return {"index": index, "delta": {"content": delta} if delta else {},
                "logprobs": None, "finish_reason": reason}
    return {"index": index, "text": delta, "logprobs": None, "finish_reason": reason}


def _completion_body(
    ident: str, created: int, model_name: str, choices: Sequence[_Choice],
    usage: dict[str, int], *, chat: bool,
) -> dict[str, Any]:
    rendered: list[dict[str, Any]]
    if chat:
        rendered = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                     "logprobs": None, "finish_reason": c.finish_reason} for c in choices]
    else:
        rendered = [{"index": c.index, "text": c.text, "logprobs": None,
                     "finish_reason": c.finish_reason} for c in choices]
    return {"id": ident, "object": "chat.completion" if chat else "text_completion",
            "created": created, "model": model_name, "choices": rendered, "usage": usage}

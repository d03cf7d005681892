"""The model server: aiohttp on localhost, one artifact, one DP mechanism.

Routes (request/response schema in :mod:`dpserve_runtime.server.schema`):

- ``POST /v1/predict``  ``{"inputs": [[...], ...]}`` -> outputs + ``queries`` (DP releases)
- ``GET /healthz``      200 while the process serves HTTP
- ``GET /readyz``       200 once the artifact is loaded and the mechanism built, else 503

A ``huggingface`` artifact (``manifest.json`` format) is served by
:class:`dpserve_runtime.server.textapp.TextModelServer` instead: OpenAI-shaped text routes
for its task; :func:`serve` picks the server from the manifest.

The artifact is loaded after the socket is open, so probes answer during loading; a load
or mechanism error ends the process (exit 1) so the pod never turns Ready with a bad model.
Inference and noise run in a small thread pool, off the event loop (torch and OpenDP's
Rust core release the GIL). Every error answer is JSON ``{"reason", "message"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from aiohttp import web
from pydantic import ValidationError

from dpserve.api.mechanism import Mechanism
from dpserve.api.text import ModelTask
from dpserve_runtime.hfartifact import read_format
from dpserve_runtime.httplimits import ConnectionLimits, serve_until
from dpserve_runtime.jsondepth import nesting_message
from dpserve_runtime.server.lifecycle import ServingProcess
from dpserve_runtime.server.mechanisms import OutputMechanism, build_mechanism
from dpserve_runtime.server.model import ModelOutputError, ServedModel
from dpserve_runtime.server.schema import (
    PredictRequest,
    PredictResponse,
    describe_validation_error,
    error_body,
)
from dpserve_runtime.server.textapp import TextModelServer

log = logging.getLogger("dpserve.server")

DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)

_REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    408: "RequestTimeout",
    415: "UnsupportedMediaType",
    503: "NotReady",
}


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server process is started with."""

    artifact: Path
    mechanism: Mechanism
    host: str = "127.0.0.1"
    port: int = 8081
    max_batch: int = DEFAULT_MAX_BATCH
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    workers: int = 2
    # huggingface artifacts only (None: not given; the text server then uses the manifest's
    # task and the GenerationLimits defaults)
    task: ModelTask | None = None
    max_tokens: int | None = None
    max_choices: int | None = None
    device: str = "auto"  # auto | cpu | cuda[:N]
    # Slow clients: seconds for request headers / body, open connections per client address
    # (0: unlimited; the sidecar holds up to 512 to this server: 256 in its pool for whole
    # answers, 256 for streams and probes).
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_client: int = 512

    def limits(self) -> ConnectionLimits:
        return ConnectionLimits(header_timeout=self.header_timeout,
                                max_per_client=self.max_connections_per_client)


class RequestError(Exception):
    """A client error with its HTTP status and reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def _json_error(status: int, reason: str, message: str) -> web.Response:
    return web.json_response(error_body(reason, message), status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error answer; the server keeps serving."""
    try:
        return await handler(request)
    except RequestError as exc:
        return _json_error(exc.status, exc.reason, exc.message)
    except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413 (client_max_size), ...
        if exc.status < 400:
            raise
        reason = _REASONS.get(exc.status, "HTTPError")
        return _json_error(exc.status, reason, exc.reason or reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json_error(500, "InternalError", "internal error; see the server log")


class ModelServer(ServingProcess):
    """Holds the loaded model and mechanism and serves them."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config.workers, "dpserve-infer", limits=config.limits(),
                         body_timeout=config.body_timeout)
        self.config = config
        self.model: ServedModel | None = None
        self.mechanism: OutputMechanism | None = None

    def load_blocking(self) -> None:
        """Load the artifact and build the mechanism (raises ArtifactError or
        MechanismConfigError with a message naming the field)."""
        config = self.config
        for flag, value in (("--task", config.task), ("--max-tokens", config.max_tokens),
                            ("--max-choices", config.max_choices)):
            if value is not None:
                raise ValueError(f"{flag}: applies to huggingface artifacts only; "
                                 f"{config.artifact} is a tensor model")
        model = ServedModel.load(self.config.artifact)
        mechanism = build_mechanism(self.config.mechanism, model)
        self.model, self.mechanism = model, mechanism
        log.info(
            "loaded artifact %s (format %s, version %s, %d member(s)); mechanism %s",
            self.config.artifact,
            model.manifest.format,
            model.version,
            len(model.members),
            json.dumps(self.config.mechanism.wire()),
        )

    def app(self) -> web.Application:
        app = self.new_app(_errors_as_json, self.config.max_body_bytes)
        app.router.add_post("/v1/predict", self.predict)
        return app

    async def readyz(self, _request: web.Request) -> web.Response:
        if self.model is None or self.mechanism is None:
            return _json_error(503, "NotReady", "the model is still loading")
        return web.json_response({"status": "ready", "modelVersion": self.model.version})

    def parse_inputs(self, body: bytes) -> torch.Tensor:
        """The request's inputs as a float32 tensor ``[n, input_size]`` (RequestError if bad)."""
        try:
            raw = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, "MalformedJSON", f"body is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            message, _ = nesting_message(body.decode("utf-8", "replace"))
            raise RequestError(400, "MalformedJSON", message) from exc
        if not isinstance(raw, dict):
            raise RequestError(400, "InvalidRequest", 'body must be an object {"inputs": [...]}')
        rows = raw.get("inputs")
        if isinstance(rows, list) and len(rows) > self.config.max_batch:
            raise RequestError(
                413,
                "BatchTooLarge",
                f"inputs: {len(rows)} rows, at most {self.config.max_batch} per request",
            )
        try:
            request = PredictRequest.model_validate(raw)
        except ValidationError as exc:
            raise RequestError(400, "InvalidRequest", describe_validation_error(exc)) from exc
        assert self.model is not None
        expected = self.model.input_size
        width = expected if expected is not None else len(request.inputs[0])
        for i, row in enumerate(request.inputs):
            if len(row) != width:
                raise RequestError(
                    400, "InvalidRequest", f"inputs.{i}: has {len(row)} values, expected {width}"
                )
            if any(abs(v) > _FLOAT32_MAX for v in row):
                raise RequestError(
                    400, "InvalidRequest", f"inputs.{i}: value outside the float32 range"
                )
        return torch.tensor(request.inputs, dtype=torch.float32)

    async def predict(self, request: web.Request) -> web.Response:
        model, mechanism = self.model, self.mechanism
        if model is None or mechanism is None:
            raise RequestError(503, "NotReady", "the model is still loading")
        try:
            body = await self.read_body(request)
        except web.HTTPRequestEntityTooLarge as exc:
            raise RequestError(
                413, "PayloadTooLarge", f"body exceeds {self.config.max_body_bytes} bytes"
            ) from exc
        except TimeoutError as exc:
            raise RequestError(
                408, "RequestTimeout", f"body not received within {self.config.body_timeout}s"
            ) from exc
        x = self.parse_inputs(body)
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self.executor, mechanism.release, x)
        except (ModelOutputError, RuntimeError, ValueError) as exc:
            # Nothing is released on a model failure, so nothing is charged.
            log.error("model failed on a batch of %d: %s", x.shape[0], exc)
            raise RequestError(500, "ModelError", f"the model failed: {exc}") from exc
        response = PredictResponse(
            outputs=outputs,
            queries=mechanism.queries(len(outputs)),
            mechanism=self.config.mechanism.wire(),
            model_version=model.version,
            noise=mechanism.noise(),
        )
        return web.json_response(response.wire())


def build_server(config: ServerConfig) -> ModelServer | TextModelServer:
    """The tensor or the text server, by the format the artifact's manifest names."""
    if read_format(config.artifact) == "huggingface":
        return TextModelServer(config)
    return ModelServer(config)


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> int:
    """Open the socket, load the model, serve until ``stop`` is set; the exit code."""
    server = build_server(config)
    stop = stop or asyncio.Event()
    listening = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(serve_until(
        server.app(), config.host, config.port, server.guard, stop,
        on_listening=listening.set_result))
    try:
        await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():  # it could not listen
            serving.result()
        log.info("listening on %s:%d", config.host, listening.result())
        try:
            await server.load()
        except Exception as exc:
            log.error("cannot serve %s: %s", config.artifact, exc)
            return 1
        await stop.wait()
        return 0
    finally:
        stop.set()
        await serving
